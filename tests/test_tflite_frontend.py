"""TFLite frontend: converter-made float, fp16-weight, dynamic-range and sparse models import
into the IR and run (qatir.run, TF) like LiteRT runs them."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import qatir  # noqa: E402
from qatir.frontends.tflite_reader import read_model  # noqa: E402
from qatir.litert_run import interpreter  # noqa: E402
from tests.helpers.keras_models import convert, mobilenet_like  # noqa: E402

L = tf.keras.layers


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfl")
    model = mobilenet_like()
    paths = {}
    for mode in ("float", "fp16", "dynamic"):
        paths[mode] = d / f"{mode}.tflite"
        paths[mode].write_bytes(convert(model, mode))
    return paths


@pytest.fixture(scope="module")
def graphs(models):
    return {mode: qatir.load(p) for mode, p in models.items()}


def _litert(path, feeds):
    runner = interpreter(path.read_bytes()).get_signature_runner()
    return runner(**feeds)


def _inputs(seed=0):
    return {"image": np.random.default_rng(seed).uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)}


def _ops_used(path) -> set[str]:
    m = read_model(str(path), path.read_bytes())
    return {op.name for op in m.ops}


def test_converter_emits_the_ops_under_test(models):
    ops = _ops_used(models["float"])
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "ADD", "SUB",
               "MUL", "DIV", "PRELU", "LEAKY_RELU", "LOGISTIC", "TANH", "HARD_SWISH", "MAX_POOL_2D",
               "AVERAGE_POOL_2D", "MEAN", "PAD", "PADV2", "RESHAPE", "CONCATENATION",
               "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH",
               "SOFTMAX", "TRANSPOSE", "STRIDED_SLICE"):
        assert op in ops, op
    assert "DEQUANTIZE" in _ops_used(models["fp16"])


def test_signature_names_become_io_names(graphs):
    g = graphs["float"]
    assert [t.name for t in g.inputs] == ["image"]
    assert sorted(t.name for t in g.outputs) == ["features", "logits", "prob"]
    assert g.inputs[0].shape == (1, 16, 16, 3)


@pytest.mark.parametrize("mode", ["float", "fp16"])
def test_float_models_match_litert(models, graphs, mode):
    g = graphs[mode]
    assert not any(n.op in ("DEQUANTIZE", "DENSIFY") for n in g.nodes)  # folded at import
    assert all(t.dtype == np.float32 for t in g.tensors.values() if t.is_const and t.rank > 1)
    for seed in (0, 1):
        feeds = _inputs(seed)
        ref = _litert(models[mode], feeds)
        out = qatir.run(g, feeds)
        for name, want in ref.items():
            np.testing.assert_allclose(out[name], want, rtol=1e-4, atol=1e-4 * np.abs(want).max(),
                                       err_msg=f"{mode} output {name}")


def test_fp16_weights_widen_exactly(models, graphs):
    m = read_model(str(models["fp16"]), models["fp16"].read_bytes())
    g = graphs["fp16"]
    checked = 0
    for op in m.ops:
        if op.name != "DEQUANTIZE":
            continue
        src, dst = m.tensors[op.inputs[0]], m.tensors[op.outputs[0]]
        assert src.dtype == np.float16
        half = np.frombuffer(m.buffers[src.buffer].tobytes(), np.float16).reshape(src.shape)
        got = g.tensors.get(dst.name)
        if got is None:  # a scalar operand that became an attribute (PADV2 constant_values)
            assert half.size == 1
            continue
        assert got.is_const and got.dtype == np.float32
        np.testing.assert_array_equal(got.data, half.astype(np.float32))
        checked += 1
    assert checked >= 5


def test_dynamic_range_weights_dequantize_exactly(models, graphs):
    m = read_model(str(models["dynamic"]), models["dynamic"].read_bytes())
    g = graphs["dynamic"]
    checked = 0
    for t in m.tensors:
        if t.dtype != np.int8 or t.buffer == 0 or m.buffers[t.buffer] is None:
            continue
        q = np.frombuffer(m.buffers[t.buffer].tobytes(), np.int8).reshape(t.shape)
        scale = t.quant.scale.astype(np.float64)
        if scale.size > 1:
            shape = [1] * q.ndim
            shape[t.quant.axis] = scale.size
            scale = scale.reshape(shape)
        want = ((q.astype(np.float64) - 0) * scale).astype(np.float32)
        got = g.tensors[t.name]
        assert got.is_const and got.dtype == np.float32, t.name
        np.testing.assert_array_equal(got.data, want)  # bit-exact
        checked += 1
    assert checked >= 2  # the converter quantizes weights of >= 1024 elements (dense, tconv)
    assert not any(c.dtype == np.int8 for c in g.tensors.values())


def test_dynamic_range_outputs_close(models, graphs):
    feeds = _inputs(3)
    ref = _litert(models["dynamic"], feeds)
    out = qatir.run(graphs["dynamic"], feeds)
    # LiteRT's hybrid kernels also quantize the activations; the IR runs them in float.
    for name, want in ref.items():
        np.testing.assert_allclose(out[name], want, rtol=0, atol=0.02 * np.abs(want).max() + 1e-6)


def test_dump_is_stable_and_complete(models, graphs):
    text = str(graphs["float"])
    assert text == str(qatir.load(models["float"]))
    for op in ("TRANSPOSE_CONV", "DEPTHWISE_CONV_2D", "STRIDED_SLICE", "PRELU", "act=RELU6"):
        assert op in text
    assert "depth_multiplier=2" in text
    assert text.count("\n") == len(graphs["float"].nodes) + text.count("= const") + 1


@pytest.mark.parametrize("mode", ["float", "dynamic"])
def test_qatir_roundtrip_is_lossless(tmp_path, graphs, mode):
    g = graphs[mode]
    p = tmp_path / "m.qatir"
    qatir.save(g, p)
    g2 = qatir.load(p)
    assert str(g2) == str(g)
    feeds = _inputs(5)
    a, b = qatir.run(g, feeds), qatir.run(g2, feeds)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_sparse_weights_densify(tmp_path):
    inp = tf.keras.Input((8, 8, 16), batch_size=1, name="x")
    y = L.Conv2D(32, 3, padding="same")(inp)
    y = L.Dense(64)(L.Flatten()(y))
    model = tf.keras.Model(inp, y)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        ws = layer.get_weights()
        if ws:
            layer.set_weights([ws[0] * (rng.random(ws[0].shape) < 0.1)] + ws[1:])
    path = tmp_path / "sparse.tflite"
    path.write_bytes(convert(model, "sparse"))
    assert "DENSIFY" in _ops_used(path)
    g = qatir.load(path)
    assert [n.op for n in g.nodes] == ["CONV_2D", "RESHAPE", "FULLY_CONNECTED"]
    conv_w = model.layers[1].get_weights()[0].transpose(3, 0, 1, 2)  # HWIO -> OHWI
    np.testing.assert_array_equal(g.nodes[0].inputs[1].data, conv_w)
    np.testing.assert_array_equal(g.nodes[2].inputs[1].data, model.layers[3].get_weights()[0].T)
    feeds = {"x": rng.uniform(-1, 1, (1, 8, 8, 16)).astype(np.float32)}
    ref = _litert(path, feeds)
    out = qatir.run(g, feeds)
    for name, want in ref.items():
        np.testing.assert_allclose(out[name], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_dynamic_batch_shape_plumbing_folds(tmp_path):
    """Flatten on a dynamic batch: SHAPE -> STRIDED_SLICE -> PACK -> RESHAPE becomes [-1, 144]."""
    inp = tf.keras.Input((8, 8, 3), name="x")
    model = tf.keras.Model(inp, L.Dense(5)(L.Flatten()(L.Conv2D(4, 3)(inp))))
    path = tmp_path / "dyn.tflite"
    path.write_bytes(convert(model, "float"))
    assert {"SHAPE", "PACK"} <= _ops_used(path)
    g = qatir.load(path)
    assert g.inputs[0].shape == (None, 8, 8, 3)
    assert [n.op for n in g.nodes] == ["CONV_2D", "RESHAPE", "FULLY_CONNECTED"]
    assert g.nodes[1].attrs["new_shape"] == [-1, 144]
    x = np.random.default_rng(2).uniform(-1, 1, (3, 8, 8, 3)).astype(np.float32)
    out = qatir.run(g, {"x": x})[g.outputs[0].name]
    np.testing.assert_allclose(out, model(x).numpy(), rtol=1e-4, atol=1e-5)
    ref = _litert(path, {"x": x[:1]})
    np.testing.assert_allclose(qatir.run(g, {"x": x[:1]})[g.outputs[0].name], ref["output_0"],
                               rtol=1e-4, atol=1e-5)


def _n(g, op, ins, attrs=None):
    return g.add_node(op, ins, attrs or {}).output


def _w(g, name, *shape):
    return g.const(np.random.default_rng(len(name)).normal(size=shape).astype(np.float32), name)


# Ops and attributes the converter rarely emits, written by qatir's own TFLite writer.
HAND_BUILT = {
    "gather": lambda g, x: _n(g, "GATHER", [x, g.const(np.array([3, 0, 1], np.int32), "i")],
                              {"axis": 3}),
    "batch_matmul": lambda g, x: _n(g, "BATCH_MATMUL", [
        _n(g, "RESHAPE", [x], {"new_shape": [6, 6, 4]}), _w(g, "m", 6, 4, 5)]),
    "unary": lambda g, x: _n(g, "RSQRT", [_n(g, "ADD", [
        _n(g, "EXP", [_n(g, "NEG", [_n(g, "ABS", [x])])]), g.const(np.float32(1), "one")])]),
    "resize_align_corners": lambda g, x: _n(g, "RESIZE_BILINEAR", [x],
                                            {"size": [11, 11], "align_corners": True}),
    "softmax_beta": lambda g, x: _n(g, "SOFTMAX", [x], {"beta": 0.5}),
    "minimum_leaky": lambda g, x: _n(g, "MINIMUM", [_n(g, "LEAKY_RELU", [x], {"alpha": 0.3}),
                                                    g.const(np.float32(0.5), "h")]),
    "relu_0_to_1": lambda g, x: _n(g, "RELU_0_TO_1", [x]),
    "relu_n1_to_1": lambda g, x: _n(g, "RELU_N1_TO_1", [_n(g, "MAXIMUM", [
        x, g.const(np.float32(-0.5), "lo")])]),
    "strided_slice_negative": lambda g, x: _n(g, "STRIDED_SLICE", [x], {
        "begin": [0, 5, 0, 1], "end": [1, -7, 6, 4], "strides": [1, -2, 3, 1],
        "shrink_axis": [0]}),
    "max_pool_same_relu": lambda g, x: _n(g, "MAX_POOL_2D", [x], {
        "filter": [3, 3], "stride": [2, 2], "padding": "SAME", "fused_activation": "RELU"}),
    "fc_keep_num_dims": lambda g, x: _n(g, "FULLY_CONNECTED", [x, _w(g, "fw", 3, 4), _w(g, "fb", 3)],
                                        {"keep_num_dims": True,
                                         "fused_activation": "RELU_N1_TO_1"}),
    "dilated_conv": lambda g, x: _n(g, "CONV_2D", [x, _w(g, "cw", 2, 3, 3, 4)],
                                    {"dilation": [2, 2], "padding": "SAME"}),
    "transpose_conv_valid_bias": lambda g, x: _n(g, "TRANSPOSE_CONV", [
        x, _w(g, "tw", 2, 3, 3, 4), _w(g, "tb", 2)], {"stride": [2, 2], "padding": "VALID"}),
    "reduce_squeeze": lambda g, x: _n(g, "REDUCE_MAX", [_n(g, "SQUEEZE", [
        _n(g, "SUM", [x], {"axis": [1], "keep_dims": True})], {"squeeze_dims": [1]})],
        {"axis": [1], "keep_dims": False}),
}


@pytest.mark.parametrize("case", sorted(HAND_BUILT))
def test_hand_built_models_via_writer(case):
    from qatir.frontends.tflite import load_tflite_bytes

    g = qatir.Graph("hand")
    x = g.add_input("x", [1, 6, 6, 4])
    g.outputs = [HAND_BUILT[case](g, x)]
    buf = qatir.to_tflite(g)
    h = load_tflite_bytes(buf, f"{case}.tflite")
    assert [(n.op, n.attrs) for n in h.nodes] == [(n.op, n.attrs) for n in g.nodes]
    xv = np.random.default_rng(3).normal(size=(1, 6, 6, 4)).astype(np.float32)
    (want,) = interpreter(buf).get_signature_runner()(x=xv).values()
    got = qatir.run(h, {"x": xv})[h.outputs[0].name]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_fused_tanh_imports_as_litert_runs_it():
    """LiteRT's kernels ignore a fused TANH (they clamp only for the RELU family)."""
    from qatir.frontends.tflite import load_tflite_bytes

    g = qatir.Graph("tanh")
    x = g.add_input("x", [1, 6, 6, 4])
    g.outputs = [_n(g, "CONV_2D", [x, _w(g, "w", 8, 3, 3, 4)],
                    {"padding": "SAME", "fused_activation": "TANH"})]
    buf = qatir.to_tflite(g)
    with pytest.warns(UserWarning, match="fused TANH"):
        h = load_tflite_bytes(buf, "tanh.tflite")
    assert h.nodes[0].attrs["fused_activation"] == "NONE"
    xv = np.random.default_rng(3).normal(size=(1, 6, 6, 4)).astype(np.float32)
    (want,) = interpreter(buf).get_signature_runner()(x=xv).values()
    np.testing.assert_allclose(qatir.run(h, {"x": xv})[h.outputs[0].name], want, rtol=1e-5,
                               atol=1e-5)


def _encode_block_csr(dense: np.ndarray, block: int):
    """An independent encoder for the schema's format: rows dense, column blocks CSR, block dense."""
    from qatir.frontends.tflite_reader import SparseDim, Sparsity

    rows, cols = dense.shape
    blocks = dense.reshape(rows, cols // block, block)
    segments, indices, values = [0], [], []
    for r in range(rows):
        for c in range(cols // block):
            if np.any(blocks[r, c]):
                indices.append(c)
                values.extend(blocks[r, c])
        segments.append(len(indices))
    sp = Sparsity([0, 1, 2], [1], [SparseDim(True, rows),
                                   SparseDim(False, 0, np.array(segments), np.array(indices)),
                                   SparseDim(True, block)])
    return np.array(values, dense.dtype), sp


@pytest.mark.parametrize("block", [1, 4])
def test_densify_block_csr(block):
    from qatir.frontends.tflite_sparse import densify

    rng = np.random.default_rng(block)
    dense = (rng.normal(size=(6, 16)) * (rng.random((6, 16)) < 0.3)).astype(np.float32)
    dense[2] = 0  # an empty row
    if block == 1:
        values, sp = _encode_block_csr(dense, 1)
        sp.block_map, sp.traversal_order, sp.dims = [], [0, 1], sp.dims[:2]
    else:
        values, sp = _encode_block_csr(dense, block)
    np.testing.assert_array_equal(densify(values, dense.shape, sp, 10_000, "w"), dense)
    with pytest.raises(ValueError, match="values"):
        densify(values[:-1], dense.shape, sp, 10_000, "w")
    with pytest.raises(ValueError, match="not plausible"):
        densify(values, (6, 1 << 40), sp, 10_000, "w")
    # Found by fuzzing: a dense level declaring 2^31 entries once allocated them (a hang).
    sp.dims[0].dense_size = 2**31 - 1
    with pytest.raises(ValueError, match="dense level 0 has size"):
        densify(values, dense.shape, sp, 10_000, "w")


def test_tile_imports_and_runs_like_litert(tmp_path):
    """TILE (float and int8) read back from files qatir wrote; both match LiteRT."""
    from qatir.ir import Graph
    from tests.helpers import CASES, QB, int8_feed, litert_run

    g = Graph("tile")
    x = g.add_input("x", [1, 3, 4, 2])
    g.outputs = [g.add_node("TILE", [x], {"multiples": [1, 2, 1, 3]}, name="t").output]
    path = tmp_path / "tile.tflite"
    path.write_bytes(qatir.to_tflite(g))
    back = qatir.load(path)
    assert [n.op for n in back.nodes] == ["TILE"]
    xv = np.random.default_rng(0).normal(size=(1, 3, 4, 2)).astype(np.float32)
    np.testing.assert_array_equal(qatir.run(back, {"x": xv})[back.outputs[0].name],
                                  np.tile(xv, [1, 2, 1, 3]))

    qb = QB(seed=3)
    q = qb.output(CASES["tile"](qb))
    path8 = tmp_path / "tile_int8.tflite"
    path8.write_bytes(qatir.to_tflite(q))
    back8 = qatir.load(path8)
    feeds = int8_feed(back8)
    got, _ = litert_run(path8.read_bytes(), feeds, ref=False)
    want = qatir.run_reference(back8, feeds)
    for name, y in want.items():
        np.testing.assert_array_equal(got[name], y)

"""The converter's other modes: ``to_tflite(mode="dynamic" | "float16")``.

Every file loads and runs under both LiteRT resolvers (BUILTIN_REF and the default
XNNPACK path). Dynamic-range files match qatir's reference (``run_mode_reference``,
LiteRT's hybrid kernels and XNNPACK's qd8) bit for bit; float16 files, float32
arithmetic on float16-rounded weights, match it within the float tolerance of
``reference_float`` (accumulation order).
"""

from __future__ import annotations

import numpy as np
import pytest

import qatir
from qatir.errors import ExportError
from qatir.ir import Graph
from qatir.modes import file_mode, lower_mode, run_mode_reference, symmetric_weights
from qatir.parity import xnnpack_coverage
from qatir.reference_float import close
from qatir.reference_hybrid import asymmetric_quantize_rows
from tests.helpers import litert_run
from tests.helpers.graphs import mobile_block, qat_net

RESOLVERS = (("reference", True), ("xnnpack", False))


def _w(rng, *shape, scale=0.3):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _single(op: str, seed: int = 0) -> Graph:
    """One weight op on a float input (the shapes the hybrid kernels see in real models)."""
    rng = np.random.default_rng(seed)
    g = Graph(op.lower())
    if op == "conv":
        x = g.add_input("x", [2, 9, 9, 5])
        y = g.add_node("CONV_2D", [x, g.const(_w(rng, 7, 3, 3, 5)), g.const(_w(rng, 7))],
                       {"padding": "SAME", "stride": [1, 1]}).output
    elif op == "conv_strided":
        x = g.add_input("x", [1, 11, 11, 4])
        y = g.add_node("CONV_2D", [x, g.const(_w(rng, 6, 3, 3, 4)), g.const(_w(rng, 6))],
                       {"padding": "VALID", "stride": [2, 2], "dilation": [1, 1],
                        "fused_activation": "RELU6"}).output
    elif op == "conv_dilated_1x1":
        x = g.add_input("x", [1, 10, 10, 3])
        y = g.add_node("CONV_2D", [x, g.const(_w(rng, 4, 3, 3, 3)), g.const(_w(rng, 4))],
                       {"padding": "SAME", "dilation": [2, 2]}).output
        y = g.add_node("CONV_2D", [y, g.const(_w(rng, 5, 1, 1, 4)), g.const(_w(rng, 5))],
                       {"fused_activation": "RELU"}).output  # XNNPACK: per-pixel qd8
    elif op == "depthwise_strided":
        x = g.add_input("x", [1, 9, 9, 6])
        y = g.add_node("DEPTHWISE_CONV_2D", [x, g.const(_w(rng, 1, 3, 3, 6)), g.const(_w(rng, 6))],
                       {"padding": "VALID", "stride": [2, 2]}).output
    elif op == "conv_equal_scales":  # LiteRT's other hybrid path: symmetric input quantization
        w = _w(rng, 4, 1, 1, 6)
        w /= np.abs(w).reshape(4, -1).max(axis=1)[:, None, None, None]
        x = g.add_input("x", [1, 5, 5, 6])
        y = g.add_node("CONV_2D", [x, g.const(w.astype(np.float32)), g.const(_w(rng, 4))]).output
    elif op == "depthwise":
        x = g.add_input("x", [2, 8, 8, 4])
        y = g.add_node("DEPTHWISE_CONV_2D", [x, g.const(_w(rng, 1, 3, 3, 8)), g.const(_w(rng, 8))],
                       {"padding": "SAME", "depth_multiplier": 2, "fused_activation": "RELU"}).output
    elif op == "fc":
        x = g.add_input("x", [3, 40])
        y = g.add_node("FULLY_CONNECTED", [x, g.const(_w(rng, 9, 40)), g.const(_w(rng, 9))]).output
    elif op == "fc_3d":
        x = g.add_input("x", [1, 4, 24])
        y = g.add_node("FULLY_CONNECTED", [x, g.const(_w(rng, 6, 24)), g.const(_w(rng, 6))],
                       {"keep_num_dims": True}).output
    elif op == "batch_matmul":
        x = g.add_input("x", [2, 3, 16])
        y = g.add_node("BATCH_MATMUL", [x, g.const(_w(rng, 16, 5))]).output
    elif op == "batch_matmul_adj_y":
        x = g.add_input("x", [1, 4, 12])
        y = g.add_node("BATCH_MATMUL", [x, g.const(_w(rng, 7, 12))], {"adj_y": True}).output
    else:
        raise ValueError(op)
    g.outputs = [y]
    return g


SINGLE = ("conv", "conv_strided", "conv_dilated_1x1", "conv_equal_scales", "depthwise",
          "depthwise_strided", "fc", "fc_3d",
          "batch_matmul", "batch_matmul_adj_y")


def _feeds(g: Graph, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # mixed magnitudes and a shifted mean: zero points away from 0 and -128
    shape = {t.name: [1 if d is None else d for d in t.shape] for t in g.inputs}  # files: batch 1
    return {t.name: (rng.standard_normal(shape[t.name]) * (1 + seed) + 0.3 * seed
                     ).astype(np.float32) for t in g.inputs}


def _compare(g: Graph, mode: str, seeds=(0, 1, 2, 3)) -> tuple[int, float]:
    """(mismatching elements, worst |LiteRT - reference| / max|reference|) over both
    resolvers and ``seeds``; asserts float16 stays within the float tolerance."""
    buf = qatir.to_tflite(g, mode=mode)
    bad, worst = 0, 0.0
    for seed in seeds:
        feeds = _feeds(g, seed)
        for kernels, ref in RESOLVERS:
            got, _ = litert_run(buf, feeds, ref)
            want = run_mode_reference(g, feeds, mode, kernels)
            for name, w in want.items():
                lrt = np.asarray(list(got.values())[0] if len(got) == 1 else got[name])
                assert lrt.shape == w.shape and lrt.dtype == np.float32
                bad += int(np.sum(lrt != w))
                worst = max(worst, float(np.abs(lrt - w).max() / max(np.abs(w).max(), 1e-30)))
                if mode == "float16":
                    assert close(lrt, w), (name, kernels, float(np.abs(lrt - w).max()))
    return bad, worst


@pytest.mark.parametrize("op", SINGLE)
def test_dynamic_single_op_bit_exact(op):
    bad, worst = _compare(_single(op), "dynamic")
    assert bad == 0, f"{op}: {bad} elements differ (worst {worst:.2e})"


@pytest.mark.parametrize("op", SINGLE)
def test_float16_single_op_within_float_tolerance(op):
    _compare(_single(op), "float16")


def _opcodes(buf: bytes) -> dict[str, set[int]]:
    import tflite

    model = tflite.Model.GetRootAsModel(buf, 0)
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    out: dict[str, set[int]] = {}
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        out.setdefault(names[code], set()).add(oc.Version())
    return out


@pytest.mark.parametrize("op, code, version", [
    ("conv", "CONV_2D", 5), ("conv_equal_scales", "CONV_2D", 5), ("depthwise", "DEPTHWISE_CONV_2D", 6),
    ("fc", "FULLY_CONNECTED", 12), ("batch_matmul", "BATCH_MATMUL", 4)])
def test_dynamic_op_versions(op, code, version):
    """op_version.cc's hybrid versions: per-channel CONV_2D 5, DEPTHWISE 6, FC 12;
    BATCH_MATMUL with asymmetric_quantize_inputs 4."""
    buf = qatir.to_tflite(_single(op), mode="dynamic")
    assert _opcodes(buf)[code] == {version}
    assert file_mode(buf) == "dynamic"


def test_float16_file_layout():
    """Weights and biases are float16 behind DEQUANTIZE v3, and XNNPACK takes every node."""
    g = _single("conv")
    buf = qatir.to_tflite(g, mode="float16")
    assert _opcodes(buf) == {"DEQUANTIZE": {3}, "CONV_2D": {1}}
    assert file_mode(buf) == "float16"
    assert all(taken for _, taken in xnnpack_coverage(buf))
    f32 = qatir.to_tflite(g, mode="float")
    assert file_mode(f32) == "float"
    assert len(buf) < len(f32)


def test_dynamic_xnnpack_partition():
    """XNNPACK runs hybrid CONV_2D, FULLY_CONNECTED and BATCH_MATMUL itself; DEPTHWISE stays
    on LiteRT's kernel (the reference models both, see the bit-exact tests)."""
    for op, taken in (("conv", True), ("fc", True), ("batch_matmul", True), ("depthwise", False)):
        buf = qatir.to_tflite(_single(op), mode="dynamic")
        assert [t for _, t in xnnpack_coverage(buf)] == [taken], op


def test_dynamic_weights_are_symmetric_per_channel():
    g = _single("conv")
    low = lower_mode(g, "dynamic")
    conv = next(n for n in low.nodes if n.op == "CONV_2D")
    w = conv.inputs[1]
    assert w.dtype == np.int8 and w.quant.axis == 0 and set(w.quant.zero_point) == {0}
    assert len(w.quant.scale) == 7 and int(np.abs(w.data).max()) == 127
    q, s = symmetric_weights(g.nodes[0].inputs[1].data, 0)
    np.testing.assert_array_equal(q, w.data)
    zero = symmetric_weights(np.zeros((2, 3), np.float32), 0)
    assert zero[1].tolist() == [1.0, 1.0] and not zero[0].any()


def test_asymmetric_quantize_rows_edge_cases():
    """All-zero rows (scale 1, zero point 0), all-positive and all-negative rows."""
    x = np.array([[0, 0, 0], [1, 2, 3], [-3, -2, -1]], np.float32)
    q, s, z = asymmetric_quantize_rows(x)
    assert q[0].tolist() == [0, 0, 0] and s[0] == 1 and z[0] == 0
    assert z[1] == -128 and q[1].tolist()[-1] == 127
    assert z[2] == 127 and q[2].tolist()[0] == -128


def _graph_compare(g: Graph, mode: str, seeds=(0, 1, 2, 3)) -> None:
    """A whole graph: outputs within the float tolerance on both resolvers (its float ops,
    SOFTMAX and pooling, are exact only to that tolerance, and a 1-ulp difference can move
    a hybrid op's on-the-fly quantization); under BUILTIN_REF every hybrid node, fed
    LiteRT's own input, gives LiteRT's output bit for bit."""
    from qatir.reference_hybrid import HYBRID_KERNELS, is_hybrid

    buf = qatir.to_tflite(g, mode=mode)
    low = lower_mode(g, mode)
    for seed in seeds:
        feeds = _feeds(g, seed)
        for kernels, ref in RESOLVERS:
            got, it = litert_run(buf, feeds, ref, preserve=ref)
            want = run_mode_reference(g, feeds, mode, kernels)
            for name, w in want.items():
                lrt = np.asarray(list(got.values())[0] if len(got) == 1 else got[name])
                assert close(lrt, w), (name, kernels, float(np.abs(lrt - w).max()))
            if not ref:
                continue
            by_name = {d["name"]: d["index"] for d in it.get_tensor_details()}
            hybrid = [n for n in low.nodes if is_hybrid(n)]
            assert hybrid or mode != "dynamic"
            for node in hybrid:
                xs = [None if t is None else (t.data if t.is_const else it.get_tensor(by_name[t.name]))
                      for t in node.inputs]
                mine = HYBRID_KERNELS[node.op](node, xs, kernels)
                np.testing.assert_array_equal(it.get_tensor(by_name[node.outputs[0].name]), mine)


def test_small_graph_both_modes():
    """A MobileNet-like block (BN folded, hard-swish, pools, concat, FCs, softmax)."""
    g = mobile_block()
    _graph_compare(g, "dynamic")
    _graph_compare(g, "float16")
    ops = _opcodes(qatir.to_tflite(g, mode="dynamic"))
    assert ops["CONV_2D"] == {5} and ops["DEPTHWISE_CONV_2D"] == {6}
    assert ops["FULLY_CONNECTED"] == {12}


def test_dynamic_sqnr_close_to_float():
    """Int8 weights with on-the-fly input quantization stay close to float (> 30 dB)."""
    from qatir.metrics import sqnr_db

    g = mobile_block(c=16)
    f32 = qatir.to_tflite(g, mode="float")
    dyn = qatir.to_tflite(g, mode="dynamic")
    feeds = _feeds(g, 0)
    want, _ = litert_run(f32, feeds, False)
    got, _ = litert_run(dyn, feeds, False)
    assert sqnr_db(list(want.values())[0], list(got.values())[0]) > 30


def test_per_channel_fake_quant_weights_kept():
    """A graph with per-channel FAKE_QUANT FC weights (which the int8 file refuses: its FC
    is per-tensor) exports in dynamic mode with exactly the fake-quant integer steps."""
    from qatir.lowering.constants import fq_int_values

    q = qat_net(np.random.default_rng(0))
    dyn = lower_mode(q, "dynamic")
    fqs = [n for n in q.nodes if n.op == "FAKE_QUANT" and n.inputs[0].is_const]
    dyn_w = [n.inputs[1] for n in dyn.nodes if n.op == "FULLY_CONNECTED"]
    assert len(dyn_w) == len(fqs) == 2
    for fq, w in zip(fqs, dyn_w):
        ints, p = fq_int_values(fq, fq.inputs[0].data)
        np.testing.assert_array_equal(w.data, ints)
        assert w.quant.scale == p.scale and w.quant.axis == 0
    assert not any(n.op == "FAKE_QUANT" for n in dyn.nodes)
    assert _compare(q, "dynamic")[0] == 0  # FC -> FC: nothing between the hybrid ops
    _compare(q, "float16")


def test_qat_trained_graph_exports_dynamic():
    """quantize -> calibrate -> fit (QAT, TensorFlow): the dynamic file carries the trained
    int8 weights of the int8 file (conv per channel, FC per tensor) and runs bit-exact."""
    from qatir.lowering import lower

    g = mobile_block(seed=3)
    q = qatir.quantize(g)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 8, 8, 3)).astype(np.float32)
    qatir.calibrate(q, [{"x": x[i:i + 1]} for i in range(8)], progress=False)
    before = lower(q, io="int8")
    y = rng.integers(0, 10, 8)
    qatir.fit(q, ({"x": x}, y), loss="sparse_categorical_crossentropy",  # the graph has batch 1
              optimizer="adam", epochs=2, batch_size=1, verbose=False)
    dyn, full = lower_mode(q, "dynamic"), lower(q, io="int8")
    conv = [n.inputs[1].data for g_ in (before, full) for n in g_.nodes if n.op == "CONV_2D"]
    assert not np.array_equal(conv[0], conv[len(conv) // 2]), "training changed no weight"
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
        a = [n.inputs[1] for n in dyn.nodes if n.op == op]
        b = [n.inputs[1] for n in full.nodes if n.op == op]
        assert a and len(a) == len(b), op
        for wa, wb in zip(a, b):
            np.testing.assert_array_equal(wa.data, wb.data)
            assert wa.quant.scale == wb.quant.scale, op
    _graph_compare(q, "dynamic", seeds=(0, 1))


def test_mode_errors(tmp_path):
    from qatir.lowering import lower

    g = _single("fc")
    with pytest.raises(ExportError, match="mode must be one of"):
        qatir.to_tflite(g, mode="int4")
    assert lower_mode(g, "dynamic").metadata["mode"] == "dynamic"
    qatir.save(g, tmp_path / "fc.tflite", mode="float16")  # save passes the mode through
    assert file_mode((tmp_path / "fc.tflite").read_bytes()) == "float16"
    q = qatir.quantize(g)
    qatir.calibrate(q, [_feeds(g, 0)], progress=False)
    with pytest.raises(ExportError, match="already int8"):
        qatir.to_tflite(lower(q, io="int8"), mode="dynamic")


# ------------------------------------------------------------------ ONNX, CLI, verify
def test_onnx_model_against_onnxruntime(tmp_path):
    """An imported ONNX model (BN, SE blocks, hard-swish): float16 within 1e-2 of
    onnxruntime's largest output, dynamic above 25 dB against it, on both resolvers."""
    from qatir.metrics import sqnr_db
    from tests.helpers.onnx_models import mobilenet_like, run_ort, save

    model = mobilenet_like(size=32)
    g = qatir.load(save(model, tmp_path / "m.onnx"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    want = run_ort(model, {g.inputs[0].name: x})[0]
    feeds = {g.inputs[0].name: x.transpose(0, 2, 3, 1)}
    for mode in ("float16", "dynamic"):
        buf = qatir.to_tflite(g, mode=mode)
        for _, ref in RESOLVERS:
            got = np.asarray(list(litert_run(buf, feeds, ref)[0].values())[0]).reshape(want.shape)
            if mode == "float16":
                assert np.abs(got - want).max() <= 1e-2 * np.abs(want).max()
            else:
                assert sqnr_db(want, got) > 25


def test_cli_mode_all_prints_the_table(tmp_path, capsys):
    from qatir.cli import main
    from tests.helpers.onnx_models import tiny_onnx

    model = tiny_onnx(tmp_path / "tiny.onnx")
    out = tmp_path / "t.tflite"
    rc = main(["compile", model, "-o", str(out), "--mode", "all"])
    text = capsys.readouterr().out
    assert rc == 0
    for mode, path in (("int8", out), ("dynamic", tmp_path / "t.dynamic.tflite"),
                       ("float16", tmp_path / "t.float16.tflite")):
        assert path.is_file()
        line = next(ln for ln in text.splitlines() if ln.startswith(f"{mode} "))
        assert str(path) in line and "dB" in line, line
        assert file_mode(path.read_bytes()) == mode
    assert "dynamic: qatir's reference vs LiteRT on 1 sample: max |diff| 0 (bit-exact)" in text
    rc = main(["compile", model, "-o", str(tmp_path / "d.tflite"), "--mode", "dynamic"])
    text = capsys.readouterr().out
    assert rc == 0 and "dynamic " in text and "int8 " not in text


def test_cli_verify_reports_mode_files(tmp_path, capsys):
    from qatir.cli import main
    from tests.helpers.onnx_models import tiny_onnx

    model = tiny_onnx(tmp_path / "tiny.onnx", batch=1)
    for mode in ("dynamic", "float16"):
        out = tmp_path / f"{mode}.tflite"
        out.write_bytes(qatir.to_tflite(qatir.load(model), mode=mode))
        for resolver in ("default", "ref"):
            rc = main(["verify", str(out), "--against", model, "--samples", "2",
                       "--resolver", resolver])
            text = capsys.readouterr().out
            assert rc == 0, text
            assert f"file mode: {mode}" in text and "OK: LiteRT" in text


@pytest.mark.parametrize("op, attrs, shape", [
    ("MEAN", {"axis": [1, 2], "keep_dims": False}, (1, 7, 7, 32)),
    ("MEAN", {"axis": [1, 2], "keep_dims": True}, (2, 5, 5, 8)),
    ("MEAN", {"axis": [1], "keep_dims": False}, (1, 6, 10)),
    ("HARD_SWISH", {}, (1, 16, 16, 8))])
def test_float_ops_between_hybrid_ops_bit_exact(op, attrs, shape):
    """The float ops that sit between a CNN's hybrid ops (global pool, hard-swish) follow
    each resolver's formula and order, so a dynamic-range CNN stays bit-exact end to end."""
    g = Graph("f")
    x = g.add_input("x", list(shape))
    g.outputs = [g.add_node(op, [x], attrs).output]
    buf = qatir.to_tflite(g, mode="float")
    for seed in range(3):
        feeds = _feeds(g, seed)
        for kernels, ref in RESOLVERS:
            got = list(litert_run(buf, feeds, ref)[0].values())[0]
            want = list(run_mode_reference(g, feeds, "float", kernels).values())[0]
            np.testing.assert_array_equal(got, want)


def test_cnn_dynamic_bit_exact_end_to_end(tmp_path):
    """conv -> BN -> ReLU -> global pool -> FC (tiny_onnx): bit-exact on both resolvers."""
    from tests.helpers.onnx_models import tiny_onnx

    g = qatir.load(tiny_onnx(tmp_path / "tiny.onnx", batch=1))
    assert _compare(g, "dynamic")[0] == 0


def test_hybrid_input_quantization_at_a_tie():
    """x·(1/scale) = 1.5 exactly: LiteRT rounds it to 2 and then adds the zero point (-126);
    rounding zp + x·(1/scale) = -126.5 would give -127 (found on MobileNetV2)."""
    x = np.array([[0.0, 255 / 128, 1.5 / 128, 2.5 / 128]], np.float32)
    q, s, z = asymmetric_quantize_rows(x)
    assert s[0] == np.float32(1 / 128) and z[0] == -128
    assert q[0].tolist() == [-128, 127, -126, -125]
    g = Graph("tie")
    inp = g.add_input("x", [1, 4])
    w = np.array([[1, 2, 3, 4], [-4, 3, -2, 1]], np.float32)
    g.outputs = [g.add_node("FULLY_CONNECTED",
                            [inp, g.const(w), g.const(np.zeros(2, np.float32))]).output]
    buf = qatir.to_tflite(g, mode="dynamic")
    got, _ = litert_run(buf, {"x": x}, True)
    want = run_mode_reference(g, {"x": x}, "dynamic", "reference")
    np.testing.assert_array_equal(list(got.values())[0], list(want.values())[0])


def test_quantized_graph_per_tensor_fc_bit_exact():
    """A table that quantizes FC weights per tensor (the default is per channel): the
    dynamic file keeps them (FULLY_CONNECTED v9: hybrid, asymmetric inputs) and matches on
    both resolvers."""
    from qatir.table import load_table

    table = load_table().data
    table["weights"] = dict(table["weights"])
    table["weights"]["per_channel_axis"] = {
        k: v for k, v in table["weights"]["per_channel_axis"].items() if k != "FULLY_CONNECTED"}
    g = _single("fc")
    q = qatir.quantize(g, table=table)
    qatir.calibrate(q, [_feeds(g, s) for s in range(3)], progress=False)
    buf = qatir.to_tflite(q, mode="dynamic")
    assert _opcodes(buf)["FULLY_CONNECTED"] == {9}
    w = next(n.inputs[1] for n in lower_mode(q, "dynamic").nodes if n.op == "FULLY_CONNECTED")
    assert w.quant.axis is None and len(w.quant.scale) == 1
    assert _compare(q, "dynamic")[0] == 0


def test_cli_refuses_int8_only_options_in_other_modes(tmp_path, capsys):
    from qatir.cli import main
    from tests.helpers.onnx_models import tiny_onnx

    model = tiny_onnx(tmp_path / "tiny.onnx")
    rc = main(["compile", model, "-o", str(tmp_path / "d.tflite"), "--mode", "float16",
               "--save-ir", str(tmp_path / "d.qatir")])
    err = capsys.readouterr().err
    assert rc == 2 and "--save-ir apply to the int8 file" in err
    assert not (tmp_path / "d.tflite").exists()


def test_print_ir_after_shows_the_mode_step():
    import io

    buf = io.StringIO()
    qatir.to_tflite(_single("fc"), mode="dynamic", print_ir_after="lower.mode", ir_out=buf)
    text = buf.getvalue()
    assert text.startswith("// IR after lowering step lower.mode (dynamic)")
    assert "i8[9,40]" in text, text


def test_grouped_conv_stays_float_in_dynamic_mode():
    """A grouped CONV_2D (v6) keeps float weights in a dynamic-range file (qatir's hybrid
    reference has no grouped kernel); it runs on both resolvers within the float tolerance."""
    from qatir.evaluate import strip_fake_quant
    from tests.helpers import QB
    from tests.helpers.cases import CASES

    qb = QB(seed=3)
    g = strip_fake_quant(qb.output(CASES["conv_grouped4_s2"](qb)))
    buf = qatir.to_tflite(g, mode="dynamic")
    assert _opcodes(buf) == {"CONV_2D": {6}}
    x = np.random.default_rng(0).uniform(-1, 2, (1, 9, 9, 8)).astype(np.float32)
    for kernels, ref in RESOLVERS:
        got, _ = litert_run(buf, {g.inputs[0].name: x}, ref)
        want = run_mode_reference(g, {g.inputs[0].name: x}, "dynamic", kernels)
        assert close(next(iter(got.values())), next(iter(want.values())))

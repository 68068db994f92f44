"""LayerNorm and InstanceNorm end to end: ONNX LayerNormalization / InstanceNormalization
(and PoolFormer's GroupNorm(1) spelling), Keras LayerNormalization, the converter's TFLite
chain; float against onnxruntime / Keras / LiteRT, and the int8 chain (MEAN,
SQUARED_DIFFERENCE, MEAN, ADD, RSQRT, SUB, MUL, MUL, ADD) bit for bit against LiteRT on
both resolvers, after calibration and after QAT."""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import qatir  # noqa: E402
from qatir.errors import UnsupportedOpError  # noqa: E402
from qatir.ir import QuantParams  # noqa: E402
from qatir.lower import lower  # noqa: E402
from qatir.reference import run_reference  # noqa: E402
from qatir.tflite_writer import to_tflite  # noqa: E402
from tests.helpers import QB, compare_all, litert_run  # noqa: E402
from tests.helpers.onnx_models import OnnxBuilder, compare_with_ort, ops_of, rnd, save  # noqa: E402
from tests.helpers.qbuild import assert_int8_file_matches_reference  # noqa: E402

CHAIN = ["MEAN", "SQUARED_DIFFERENCE", "MEAN", "ADD", "RSQRT", "SUB", "MUL", "MUL", "ADD"]


def _ln_model(shape, axis=-1, bias=True, eps=1e-5, seed=0):
    """x -> LayerNormalization(axis) -> y (opset 17); γ, β of the normalized shape."""
    b = OnnxBuilder(17, seed=seed)
    x = b.input("x", list(shape))
    norm = list(shape)[axis:]
    ins = [x, b.init(1 + 0.3 * b.randn(*norm), "gamma")]
    if bias:
        ins.append(b.init(b.randn(*norm), "beta"))
    b.output(b.node("LayerNormalization", ins, out="y", axis=axis, epsilon=eps))
    return b.model()


def _convnext_block(seed=0):
    """NCHW conv -> Transpose to NHWC -> LayerNorm(-1) -> Transpose back -> conv (ConvNeXt)."""
    b = OnnxBuilder(17, seed=seed)
    x = b.conv(b.input("x", [1, 4, 6, 6]), 4, 8)
    t = b.node("Transpose", [x], perm=[0, 2, 3, 1])
    n = b.node("LayerNormalization", [t, b.init(1 + 0.3 * b.randn(8)), b.init(b.randn(8))],
               axis=-1, epsilon=1e-6)
    y = b.node("Transpose", [n], perm=[0, 3, 1, 2])
    b.output(b.conv(y, 8, 4), [1, 4, 6, 6])
    b.outputs[-1].name = b.nodes[-1].output[0]
    return b.model()


def _instance_norm_model(c=6, seed=0):
    b = OnnxBuilder(17, seed=seed)
    x = b.conv(b.input("x", [1, 3, 7, 5]), 3, c)
    y = b.node("InstanceNormalization", [x, b.init(1 + 0.3 * b.randn(c)), b.init(b.randn(c))],
               out="y", epsilon=1e-5)
    b.output(y)
    return b.model()


def _group_norm1_model(c=6, seed=0, back=None):
    """PoolFormer's GroupNorm(1, C): Reshape [N, 1, -1] -> InstanceNorm(1) -> Reshape back
    -> per-channel Mul/Add (what torch.onnx writes for nn.GroupNorm)."""
    b = OnnxBuilder(17, seed=seed)
    x = b.conv(b.input("x", [1, 3, 6, 6]), 3, c)
    r = b.node("Reshape", [x, b.ints([1, 1, -1])])
    n = b.node("InstanceNormalization", [r, b.init(np.ones(1, np.float32)),
                                         b.init(np.zeros(1, np.float32))], epsilon=1e-5)
    r2 = b.node("Reshape", [n, b.ints(back or [1, c, 6, 6])])
    if back is not None:  # another shape: no per-channel affine
        b.output(b.node("Relu", [r2], out="y"))
        return b.model()
    m = b.node("Mul", [r2, b.init((1 + 0.3 * b.randn(c)).reshape(c, 1, 1))])
    b.output(b.node("Add", [m, b.init(b.randn(c).reshape(c, 1, 1))], out="y"))
    return b.model()


# ------------------------------------------------------------------ float
@pytest.mark.parametrize("shape,axis,bias", [((1, 10, 16), -1, True), ((2, 5, 12), -1, False),
                                             ((1, 4, 3, 8), -2, True), ((3, 20), 1, True)])
def test_onnx_layer_norm_matches_onnxruntime(tmp_path, shape, axis, bias):
    model = _ln_model(shape, axis, bias)
    x = rnd(*shape, seed=1, scale=3.0) + 1.5
    g = compare_with_ort(model, {"x": x}, tmp_path, rtol=1e-5)
    ops = ops_of(g)
    assert ops.count("RSQRT") == 1 and ops.count("SQUARED_DIFFERENCE") == 1
    assert ops.count("ADD") == (2 if bias else 1)


def test_convnext_layer_norm_needs_no_transpose(tmp_path):
    g = compare_with_ort(_convnext_block(), {"x": rnd(1, 4, 6, 6, seed=2, scale=2.0)}, tmp_path)
    assert "TRANSPOSE" not in ops_of(g)  # the permutes are absorbed into the layout
    means = [n for n in g.nodes if n.op == "MEAN"]
    assert all(n.attrs["axis"] == [3] for n in means)  # NHWC channels


def test_instance_norm_matches_onnxruntime(tmp_path):
    g = compare_with_ort(_instance_norm_model(), {"x": rnd(1, 3, 7, 5, seed=3, scale=2.0)},
                         tmp_path)
    assert [n.attrs["axis"] for n in g.nodes if n.op == "MEAN"] == [[1, 2], [1, 2]]


def test_group_norm_spelling_matches_onnxruntime(tmp_path):
    g = compare_with_ort(_group_norm1_model(), {"x": rnd(1, 3, 6, 6, seed=4, scale=2.0)},
                         tmp_path)
    # fused: one normalization over H, W, C of the NHWC tensor, no TRANSPOSE or RESHAPE
    assert "TRANSPOSE" not in ops_of(g) and "RESHAPE" not in ops_of(g)
    assert [n.attrs["axis"] for n in g.nodes if n.op == "MEAN"] == [[1, 2, 3]] * 2


def test_group_norm_spelling_reshaped_elsewhere_runs_as_written(tmp_path):
    g = compare_with_ort(_group_norm1_model(back=[1, 36, 6]),
                         {"x": rnd(1, 3, 6, 6, seed=5, scale=2.0)}, tmp_path)
    assert [n.attrs["axis"] for n in g.nodes if n.op == "MEAN"] == [[2], [2]]


@pytest.mark.parametrize("opset,groups", [(21, 1), (21, 6), (18, 1), (18, 6)])
def test_onnx_group_normalization_matches_onnxruntime(tmp_path, opset, groups):
    b = OnnxBuilder(opset, seed=7)
    x = b.conv(b.input("x", [1, 3, 5, 5]), 3, 6)
    n = 6 if opset == 21 else groups
    b.output(b.node("GroupNormalization", [x, b.init(1 + 0.3 * b.randn(n)), b.init(b.randn(n))],
                    out="y", num_groups=groups, epsilon=1e-5))
    g = compare_with_ort(b.model(), {"x": rnd(1, 3, 5, 5, seed=8, scale=2.0)}, tmp_path)
    assert "TRANSPOSE" not in ops_of(g)


def test_group_normalization_with_other_group_counts_is_refused(tmp_path):
    b = OnnxBuilder(21)
    x = b.input("x", [1, 6, 4, 4])
    b.output(b.node("GroupNormalization", [x, b.init(np.ones(6, np.float32)),
                                           b.init(np.zeros(6, np.float32))], out="y",
                    num_groups=3))
    with pytest.raises(UnsupportedOpError, match="num_groups=3 with 6 channels"):
        qatir.load(save(b.model(), tmp_path / "m.onnx"))


def test_layer_norm_statistics_outputs_are_refused(tmp_path):
    b = OnnxBuilder(17)
    x = b.input("x", [1, 4, 8])
    y, mean = b.node("LayerNormalization", [x, b.init(np.ones(8, np.float32))], n_out=2)
    b.output(y)
    b.output(mean)
    with pytest.raises(UnsupportedOpError, match="Mean / InvStdDev"):
        qatir.load(save(b.model(), tmp_path / "m.onnx"))


def test_layer_norm_scale_of_the_wrong_shape_is_refused(tmp_path):
    b = OnnxBuilder(17)
    x = b.input("x", [1, 4, 8])
    b.output(b.node("LayerNormalization", [x, b.init(np.ones(5, np.float32))], out="y"))
    with pytest.raises(qatir.QatirError, match="scale of shape .5. does not broadcast"):
        qatir.load(save(b.model(), tmp_path / "m.onnx"))


def test_keras_layer_norm_matches_keras():
    import keras

    inp = keras.Input((5, 12), batch_size=1, name="x")
    y = keras.layers.LayerNormalization(epsilon=1e-3)(keras.layers.Dense(12)(inp))
    z = keras.layers.LayerNormalization(axis=[1, 2], center=False)(y)
    m = keras.Model(inp, z)
    rng = np.random.default_rng(0)
    for layer in m.layers[2:]:
        for w in layer.weights:
            w.assign(rng.uniform(0.5, 1.5, w.shape).astype(np.float32))
    g = qatir.load(m)
    assert ops_of(g).count("RSQRT") == 2
    x = (2 * rng.standard_normal((1, 5, 12)) + 1).astype(np.float32)
    (got,) = qatir.run(g, {g.inputs[0].name: x}).values()
    np.testing.assert_allclose(got, m(x).numpy(), rtol=1e-5, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = _quantized(g, (1, 5, 12))
        assert compare_all(q, seeds=(1, 2)) == {"reference": 0, "xnnpack": 0}


# ------------------------------------------------------------------ int8
def _quantized(g, shape, seed=0, batches=8):
    q = qatir.quantize(g)
    rng = np.random.default_rng(seed)
    qatir.calibrate(q, [{g.inputs[0].name: (2 * rng.standard_normal(shape) + 0.5)
                         .astype(np.float32)} for _ in range(batches)], progress=False)
    return q


@pytest.mark.parametrize("name", ["layer_norm_tokens", "convnext", "instance_norm",
                                  "group_norm"])
def test_int8_chain_bit_exact_on_both_resolvers(tmp_path, name):
    model, shape = {
        "layer_norm_tokens": (_ln_model((1, 10, 16)), (1, 10, 16)),
        "convnext": (_convnext_block(), (1, 6, 6, 4)),
        "instance_norm": (_instance_norm_model(), (1, 7, 5, 3)),
        "group_norm": (_group_norm1_model(), (1, 6, 6, 3)),
    }[name]
    g = qatir.load(save(model, tmp_path / "m.onnx"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = _quantized(g, shape)
        lowered = lower(q, io="int8")
        assert {"SQUARED_DIFFERENCE", "RSQRT"} <= set(ops_of(lowered))
        assert "DEQUANTIZE" not in ops_of(lowered)  # the whole chain is int8
        assert compare_all(q, seeds=(1, 2, 3)) == {"reference": 0, "xnnpack": 0}


def test_qat_trains_the_chain_and_exports_bit_exact(tmp_path):
    import keras

    g = qatir.load(save(_ln_model((1, 10, 16)), tmp_path / "m.onnx"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = _quantized(g, (1, 10, 16))
        rng = np.random.default_rng(5)
        data = [({"x": (2 * rng.standard_normal((1, 10, 16)) + 0.5).astype(np.float32)},
                 rng.standard_normal((1, 10, 16)).astype(np.float32)) for _ in range(4)]
        gamma = next(n for n in q.nodes if n.name.endswith("__scaled")).inputs[1]
        before = gamma.producer.inputs[0].data.copy()
        qatir.fit(q, data, loss="mse", optimizer=keras.optimizers.SGD(0.05), epochs=2,
                  verbose=False)
        assert not np.array_equal(gamma.producer.inputs[0].data, before)  # γ was trained
        assert compare_all(q, seeds=(1, 2)) == {"reference": 0, "xnnpack": 0}


def _int8_accuracy(shape, seed):
    """SQNR (dB) of the int8 LayerNorm against float, on its own calibration data."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        g = qatir.load(save(_ln_model(shape, seed=seed), os.path.join(d, "m.onnx")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = _quantized(g, shape, seed=seed, batches=16)
        x = (2 * np.random.default_rng(seed + 100).standard_normal(shape) + 0.5).astype(
            np.float32)
        want = qatir.run(g, {"x": x})["y"]
        buf = to_tflite(q, io="float")
    (got,) = litert_run(buf, {"x": x}, True)[0].values()
    return 10 * np.log10(np.sum(want ** 2) / np.sum((got - want) ** 2))


def test_int8_layer_norm_accuracy_is_usable():
    """Measured 2026-12-02: 35.2 dB (10x16) and 31.9 dB (20x64) for N(0.5, 2²) tokens; the
    floor of 25 dB catches a broken chain (tools/bench_layernorm_sqnr.py has the survey)."""
    for shape in ((1, 10, 16), (1, 20, 64)):
        assert _int8_accuracy(shape, seed=shape[-1]) > 25.0


# ------------------------------------------------------------------ single kernels
def _lowered_rsqrt(si, zi, so, zo):
    qb = QB(seed=0)
    g = qb.output(qb.op("RSQRT", [qb.input("x", [1, 256], 0, 1)], None, (0, 4)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lg = lower(g, io="int8")
    lg.inputs[0].quant = QuantParams((si,), (zi,))
    lg.outputs[0].quant = QuantParams((so,), (zo,))
    return lg


def test_rsqrt_every_input_value_bit_exact():
    """All 256 int8 values (at and above the zero point) over random scales, both resolvers."""
    rng = np.random.default_rng(11)
    for _ in range(12):
        si, so = float(rng.uniform(1e-4, 0.5)), float(rng.uniform(1e-3, 0.5))
        zi, zo = -128, int(rng.integers(-128, 0))
        lg = _lowered_rsqrt(si, zi, so, zo)
        buf = to_tflite(lg, io="int8")
        feed = {"x": np.arange(-128, 128, dtype=np.int8).reshape(1, 256)}
        for mode, ref in (("reference", True), ("xnnpack", False)):
            (got,) = litert_run(buf, feed, ref)[0].values()
            want = run_reference(lg, feed, kernels=mode)[lg.outputs[0].name]
            np.testing.assert_array_equal(got, want, err_msg=f"{mode} {(si, zi, so, zo)}")


def test_xnnpack_leaves_int8_rsqrt_and_squared_difference_to_builtin_kernels():
    from qatir.parity import xnnpack_coverage

    qb = QB(seed=0)
    x = qb.input("x", [1, 4, 8], -2, 2)
    m = qb.input("m", [1, 4, 1], -1, 1)
    sq = qb.op("SQUARED_DIFFERENCE", [x, m], None, (0, 9))
    g = qb.output(qb.op("RSQRT", [sq], None, (0, 8)))
    assert sorted(xnnpack_coverage(to_tflite(g))) == [("RSQRT", False),
                                                       ("SQUARED_DIFFERENCE", False)]


# ------------------------------------------------------------------ TFLite import
def _keras_ln_model(batch=1, center=True):
    import keras

    inp = keras.Input((6, 6, 3), batch_size=batch, name="x")
    y = keras.layers.Conv2D(8, 3, padding="same")(inp)
    y = keras.layers.LayerNormalization(epsilon=1e-6, center=center)(y)
    y = keras.layers.Conv2D(8, 3, padding="same", groups=8)(y)  # converted as grouped CONV_2D
    y = keras.layers.Reshape((-1, 8))(y)
    return keras.Model(inp, keras.layers.Dense(4)(y))


def _converted(model, tmp_path):
    import tensorflow as tf

    rng = np.random.default_rng(3)
    for layer in model.layers:
        if layer.weights and "normalization" in layer.name:
            for w in layer.weights:
                w.assign(rng.uniform(0.5, 1.5, w.shape).astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        buf = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    path = tmp_path / "f.tflite"
    path.write_bytes(buf)
    return path


@pytest.mark.parametrize("batch,center", [(1, True), (None, False)])
def test_converter_layer_norm_is_canonicalized_and_bit_exact(tmp_path, batch, center):
    """x·(r·γ) + (β − μ·r·γ) / + NEG(μ)·r·γ become the centred chain (no NEG float island),
    and the int8 export (a dynamic batch, flattened by RESHAPE [-1, C]) is bit-exact."""
    g = qatir.load(_converted(_keras_ln_model(batch, center), tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = _quantized(g, (1, 6, 6, 3))
        ops = ops_of(q)
        assert "NEG" not in ops and ops.count("SUB") == 1 and "RSQRT" in ops
        assert "DEQUANTIZE" not in ops_of(lower(q, io="int8"))
        assert compare_all(q, seeds=(1, 2)) == {"reference": 0, "xnnpack": 0}


def test_tflite_layer_norm_from_the_converter(tmp_path):
    """The converter's chain (MEAN, SQUARED_DIFFERENCE, RSQRT, NEG, MUL, ADD), its grouped
    CONV_2D and its shape plumbing (SHAPE, REDUCE_PROD, PACK) import and match LiteRT."""
    from ai_edge_litert.interpreter import Interpreter

    path = _converted(_keras_ln_model(), tmp_path)
    g = qatir.load(path)
    assert {"SQUARED_DIFFERENCE", "RSQRT", "NEG", "DEPTHWISE_CONV_2D"} <= set(ops_of(g))
    x = np.random.default_rng(4).uniform(-2, 2, (1, 6, 6, 3)).astype(np.float32)
    (want,) = Interpreter(model_path=str(path)).get_signature_runner()(x=x).values()
    (got,) = qatir.run(g, {g.inputs[0].name: x}).values()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    from qatir.pipeline import FLOAT_PIPELINE

    canonical = qatir.quantize(g, passes=list(FLOAT_PIPELINE))
    assert "NEG" not in ops_of(canonical)
    (canon,) = qatir.run(canonical, {g.inputs[0].name: x}).values()
    np.testing.assert_allclose(canon, want, rtol=1e-4, atol=1e-4)  # the rewrite is exact


# ------------------------------------------------------------------ limits
def _sqdiff_graph(out_hi: float):
    qb = QB(seed=0)
    x, y = qb.input("x", [1, 8], -100, 100), qb.input("y", [1, 8], -100, 100)
    return qb.output(qb.op("SQUARED_DIFFERENCE", [x, y], None, (0, out_hi)))


def test_squared_difference_output_too_narrow_is_refused_not_aborted():
    """LiteRT's prepare aborts (SIGABRT, measured) when (2·max s_in)² / (2^14·s_out) >= 1."""
    from qatir.errors import ExportError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ExportError, match="SQUARED_DIFFERENCE.*not below 1"):
            to_tflite(_sqdiff_graph(0.001))
        # just inside the limit (multiplier ~0.77): runs, bit-exact on both resolvers
        assert compare_all(_sqdiff_graph(0.05)) == {"reference": 0, "xnnpack": 0}


def test_rsqrt_of_a_negative_int8_value_is_a_clear_error():
    from qatir.errors import ExportError

    lg = _lowered_rsqrt(0.01, 0, 0.01, -128)
    feed = {"x": np.full((1, 256), -3, np.int8)}
    with pytest.raises(ExportError, match="RSQRT.*below its zero point"):
        run_reference(lg, feed)


def _decomposed_ln_model(c=16):
    """TorchScript's LayerNorm below opset 17: ReduceMean, Sub, Pow 2, ReduceMean, Add ε,
    Sqrt, Div, Mul γ, Add β."""
    b = OnnxBuilder(13, seed=2)
    x = b.input("x", [1, 10, c])
    mean = b.node("ReduceMean", [x], axes=[-1], keepdims=1)
    d = b.node("Sub", [x, mean])
    var = b.node("ReduceMean", [b.node("Pow", [d, b.init(np.float32(2.0))])], axes=[-1],
                 keepdims=1)
    std = b.node("Sqrt", [b.node("Add", [var, b.init(np.float32(1e-5))])])
    y = b.node("Mul", [b.node("Div", [d, std]), b.init(1 + 0.3 * b.randn(c))])
    b.output(b.node("Add", [y, b.init(b.randn(c))], out="y"))
    return b.model()


def test_decomposed_layer_norm_becomes_int8(tmp_path):
    model = _decomposed_ln_model()
    g = compare_with_ort(model, {"x": rnd(1, 10, 16, seed=6, scale=2.0)}, tmp_path)
    assert {"SQRT", "DIV"} <= set(ops_of(g))  # as written; no int8 kernel for either
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = _quantized(g, (1, 10, 16))
        assert not {"SQRT", "DIV"} & set(ops_of(q)) and "RSQRT" in ops_of(q)
        assert "DEQUANTIZE" not in ops_of(lower(q, io="int8"))
        assert compare_all(q, seeds=(1, 2)) == {"reference": 0, "xnnpack": 0}


def test_converter_int8_layer_norm_runs_bit_exact_in_the_reference(tmp_path):
    """TF's converter's own int8 LayerNorm (its int8 MEAN, SQUARED_DIFFERENCE, RSQRT, MUL,
    ADD; it keeps NEG float between DEQUANTIZE and QUANTIZE), read back by qatir: the
    integer reference predicts LiteRT on both resolvers."""
    import keras
    import tensorflow as tf

    inp = keras.Input((6, 6, 3), batch_size=1, name="x")
    y = keras.layers.LayerNormalization(epsilon=1e-6)(keras.layers.Conv2D(8, 3, padding="same")(inp))
    model = keras.Model(inp, keras.layers.Dense(4)(y))
    rng = np.random.default_rng(0)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: (
        [rng.uniform(-2, 2, (1, 6, 6, 3)).astype(np.float32)] for _ in range(8))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    path = tmp_path / "q.tflite"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path.write_bytes(conv.convert())
    g = qatir.load(path)
    assert {"SQUARED_DIFFERENCE", "RSQRT", "MEAN"} <= set(ops_of(g))
    assert_int8_file_matches_reference(path, g, rng, (1, 6, 6, 3))

"""TFLite frontend on fully int8 converter models: quant params on every tensor, the lowered
int8 form (qatir/lower.py), QUANTIZE/DEQUANTIZE edges, and the integer reference vs LiteRT."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: E402

import qatir  # noqa: E402
from qatir.frontends.tflite_reader import read_model  # noqa: E402
from qatir.litert_run import interpreter  # noqa: E402
from qatir.lower import is_lowered  # noqa: E402
from qatir.numerics import round_half_away  # noqa: E402

L = tf.keras.layers


def _model() -> tf.keras.Model:
    inp = tf.keras.Input((12, 12, 3), batch_size=1, name="image")
    x = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(8, 3, strides=2, padding="same")(inp)))
    h = L.ReLU(6.0)(L.Conv2D(16, 1)(x))
    h = L.DepthwiseConv2D(3, padding="same", activation="relu")(h)
    h = L.Conv2D(8, 1)(h)
    x = L.Add()([x, h])
    a = L.UpSampling2D(2, interpolation="bilinear")(x)
    b = L.Lambda(lambda t: tf.image.resize(t, (12, 12), method="nearest"))(x)
    x = L.Concatenate()([a, b])
    x = L.MaxPooling2D(2)(x)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="valid")(x)
    x = L.Conv2DTranspose(4, 3, strides=2, padding="same")(x)
    x = L.AveragePooling2D(2)(x)
    f = L.Activation("sigmoid")(L.Dense(6)(L.Flatten()(x)))
    g = L.Dense(6)(L.GlobalAveragePooling2D()(x))
    out = L.Softmax(name="prob")(L.Add()([f, g]))
    return tf.keras.Model(inp, out)


def _convert(model, io_int8: bool) -> bytes:
    rng = np.random.default_rng(0)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: (
        [rng.uniform(-1, 1, (1, 12, 12, 3)).astype(np.float32)] for _ in range(16))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if io_int8:
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    return conv.convert()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("int8")
    model = _model()
    paths = {}
    for name, io8 in (("int8_io", True), ("float_io", False)):
        paths[name] = d / f"{name}.tflite"
        paths[name].write_bytes(_convert(model, io8))
    return paths


def _by_index(path, g):
    """TFLite tensor index -> IR tensor (IR names are the model's, signature names at the edges)."""
    m = read_model(str(path), path.read_bytes())
    sig = {**m.signature_inputs, **m.signature_outputs}
    out = {}
    for t in m.tensors:
        name = sig.get(t.index, t.name)
        if name in g.tensors:
            out[t.index] = g.tensors[name]
    return m, out


@pytest.mark.parametrize("which", ["int8_io", "float_io"])
def test_quant_params_match_the_interpreter(models, which):
    path = models[which]
    g = qatir.load(path)
    g.verify()
    m, ir = _by_index(path, g)
    interp = interpreter(path.read_bytes())
    checked = 0
    for d in interp.get_tensor_details():
        qp = d["quantization_parameters"]
        t = ir.get(d["index"])
        if t is None or d["dtype"] not in (np.int8, np.int32) or len(qp["scales"]) == 0:
            continue
        assert t.quant is not None, t.name
        assert t.dtype == d["dtype"], t.name
        np.testing.assert_array_equal(np.asarray(t.quant.scale, np.float32), qp["scales"])
        np.testing.assert_array_equal(t.quant.zero_point, qp["zero_points"])
        if len(qp["scales"]) > 1:
            assert t.quant.axis == qp["quantized_dimension"], t.name
        else:
            assert t.quant.axis is None
        if t.is_const:
            np.testing.assert_array_equal(t.data, interp.get_tensor(d["index"]))
        checked += 1
    assert checked >= 25


def test_lowered_form(models):
    g = qatir.load(models["int8_io"])
    assert is_lowered(g)
    assert g.inputs[0].dtype == np.int8 and g.outputs[0].dtype == np.int8
    for n in g.nodes:
        for t in n.outputs:
            assert t.dtype == np.int8 and t.quant is not None and t.quant.axis is None, t.name
        if n.op in ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED"):
            w, b = n.inputs[1], n.inputs[2]
            assert w.dtype == np.int8 and w.quant.narrow_range
            assert all(z == 0 for z in w.quant.zero_point)
            assert b.dtype == np.int32 and b.quant.dtype == "int32"
            axis = {"DEPTHWISE_CONV_2D": 3}.get(n.op, 0)
            if w.quant.axis is not None:
                assert w.quant.axis == axis
            in_s = np.float32(n.inputs[0].quant.scale[0])
            np.testing.assert_allclose(b.quant.scale, in_s * np.asarray(w.quant.scale, np.float32),
                                       rtol=1e-6)
    assert {n.op for n in g.nodes} >= {"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "ADD",
                                       "FULLY_CONNECTED", "SOFTMAX", "LOGISTIC", "CONCATENATION"}


def test_float_io_keeps_quantize_edges(models):
    g = qatir.load(models["float_io"])
    assert g.inputs[0].dtype == np.float32 and g.outputs[0].dtype == np.float32
    assert g.inputs[0].users[0].op == "QUANTIZE"
    assert g.outputs[0].producer.op == "DEQUANTIZE"
    text = str(g)
    assert "QUANTIZE(%image)" in text and "q[axis=0" in text and "q[axis=3" in text


def test_dump_and_roundtrip(tmp_path, models):
    g = qatir.load(models["int8_io"])
    p = tmp_path / "m.qatir"
    qatir.save(g, p)
    g2 = qatir.load(p)
    assert str(g2) == str(g)
    for name, t in g.tensors.items():
        assert g2.tensors[name].quant == t.quant


@pytest.mark.parametrize("which", ["int8_io", "float_io"])
def test_reference_matches_litert_builtin_ref(models, which):
    path = models[which]
    g = qatir.load(path)
    interp = interpreter(path.read_bytes(), "ref")
    runner = interp.get_signature_runner()
    rng = np.random.default_rng(4)
    edge_in = g.inputs[0] if which == "int8_io" else g.inputs[0].users[0].output
    edge_out = g.outputs[0] if which == "int8_io" else g.outputs[0].producer.inputs[0]
    qi, qo = edge_in.quant, edge_out.quant
    for _ in range(3):
        x = rng.uniform(-1, 1, (1, 12, 12, 3)).astype(np.float32)
        v = x / np.float32(qi.scale[0])  # TFLite rounds half away from zero
        x8 = np.clip(round_half_away(v) + qi.zero_point[0], -128, 127)
        x8 = x8.astype(np.int8)
        (want,) = runner(image=x8 if which == "int8_io" else x).values()
        got = qatir.run_reference(g, {"image": x8})[g.outputs[0].name]
        assert got.dtype == np.int8
        if which == "int8_io":
            np.testing.assert_array_equal(got, want)
        else:  # LiteRT dequantizes its int8 result: real = (q - zp) * scale
            real = ((got.astype(np.float64) - qo.zero_point[0]) * qo.scale[0]).astype(np.float32)
            np.testing.assert_array_equal(real, want)


@pytest.mark.parametrize("resolver", [OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                                      OpResolverType.AUTO])
def test_reexport_runs_like_the_original(models, resolver):
    """Import, then write again with qatir's writer: LiteRT computes the same int8 outputs."""
    path = models["int8_io"]
    buf = qatir.to_tflite(qatir.load(path), io="int8")
    orig = Interpreter(model_path=str(path), experimental_op_resolver_type=resolver)
    again = Interpreter(model_content=buf, experimental_op_resolver_type=resolver)
    rng = np.random.default_rng(9)
    for _ in range(3):
        x = rng.integers(-128, 128, (1, 12, 12, 3)).astype(np.int8)
        (want,) = orig.get_signature_runner()(image=x).values()
        (got,) = again.get_signature_runner()(image=x).values()
        np.testing.assert_array_equal(got, want)

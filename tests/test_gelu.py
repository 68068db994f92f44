"""GELU end to end: ONNX Gelu and the exporters' Erf/Tanh spellings, TFLite GELU from TF's
converter, the float kernels, and the int8 table bit for bit against LiteRT (both resolvers,
including rounding ties that tell LiteRT's erfc form apart from the 1 + erf forms)."""

from __future__ import annotations

import math
import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from onnx import numpy_helper  # noqa: E402

import qatir  # noqa: E402
from qatir.errors import UnsupportedOpError  # noqa: E402
from qatir.ir import QuantParams  # noqa: E402
from qatir.lower import lower  # noqa: E402
from qatir.reference import run_reference  # noqa: E402
from qatir.tflite_writer import to_tflite  # noqa: E402
from tests.helpers import QB, compare_all, litert_run  # noqa: E402
from tests.helpers.onnx_models import OnnxBuilder, compare_with_ort, ops_of, rnd, save  # noqa: E402
from tests.helpers.qbuild import assert_int8_file_matches_reference  # noqa: E402

SQRT2 = np.float32(math.sqrt(2.0))
K = np.float32(math.sqrt(2.0 / math.pi))


def np_gelu(x, approximate=False):
    x = np.asarray(x, np.float64)
    if approximate:
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


# ------------------------------------------------------------------ float kernels
@pytest.mark.parametrize("approximate", [False, True])
def test_tf_kernel_matches_numpy(approximate):
    g = qatir.Graph("g")
    x = g.add_input("x", [3, 50])
    g.outputs = [g.add_node("GELU", [x], {"approximate": approximate}, outputs=["y"]).output]
    v = np.linspace(-7, 7, 150, dtype=np.float32).reshape(3, 50)
    np.testing.assert_allclose(qatir.run(g, {"x": v})["y"], np_gelu(v, approximate),
                               rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ ONNX import
def _gelu_model(spelling: str, opset: int = 18):
    """Conv -> a GELU spelling -> output, NCHW [1, 4, 5, 5] -> [1, 6, 5, 5]."""
    b = OnnxBuilder(opset, seed=1)
    x = b.conv(b.input("x", [1, 4, 5, 5]), 4, 6)

    def c(v):
        return b.init(np.asarray(v, np.float32), "k")

    if spelling == "gelu_none":
        y = b.node("Gelu", [x], approximate="none")
    elif spelling == "gelu_tanh":
        y = b.node("Gelu", [x], approximate="tanh")
    elif spelling.startswith("erf"):
        # erf_{div|mul}_{a|b|c}: x/√2 or x·(1/√2); association a: (x·S)·0.5, b: x·(S·0.5),
        # c: (x·0.5)·S; operand orders alternate so both sides of each Mul/Add are exercised
        _, scale, assoc = spelling.split("_")
        t = (b.node("Div", [x, c(SQRT2)]) if scale == "div"
             else b.node("Mul", [c(1 / SQRT2), x]))
        s = b.node("Add", [b.node("Erf", [t]), c(1.0)])
        if assoc == "a":
            y = b.node("Mul", [b.node("Mul", [x, s]), c(0.5)])
        elif assoc == "b":
            y = b.node("Mul", [x, b.node("Mul", [c(0.5), s])])
        else:
            y = b.node("Mul", [s, b.node("Mul", [x, c(0.5)])])
    elif spelling.startswith("tanh"):
        cube = (b.node("Pow", [x, c(3.0)]) if spelling == "tanh_pow"
                else b.node("Mul", [b.node("Mul", [x, x]), x]))
        inner = b.node("Add", [x, b.node("Mul", [c(0.044715), cube])])
        s = b.node("Add", [c(1.0), b.node("Tanh", [b.node("Mul", [inner, c(K)])])])
        y = b.node("Mul", [b.node("Mul", [c(0.5), x]), s])
    else:
        raise ValueError(spelling)
    b.node("Identity", [y], out="y")
    b.output("y", [1, 6, 5, 5])
    return b.model()


SPELLINGS = ["gelu_none", "gelu_tanh", "tanh_pow", "tanh_cube"] + [
    f"erf_{s}_{a}" for s in ("div", "mul") for a in "abc"]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_onnx_spellings_become_one_gelu(tmp_path, spelling):
    opset = 20 if spelling.startswith("gelu") else 18
    model = _gelu_model(spelling, opset)
    g = compare_with_ort(model, {"x": rnd(1, 4, 5, 5, seed=2, scale=2.0)}, tmp_path, rtol=1e-5)
    assert ops_of(g) == ["CONV_2D", "GELU"], ops_of(g)
    want = spelling in ("gelu_tanh", "tanh_pow", "tanh_cube")
    assert g.nodes[1].attrs["approximate"] is want


def test_erf_pattern_with_a_shared_intermediate_is_not_fused(tmp_path):
    """1 + erf(x/√2) also feeds a second output: no fusion, so the Erf is refused."""
    b = OnnxBuilder(18)
    x = b.input("x", [2, 3])
    s = b.node("Add", [b.node("Erf", [b.node("Div", [x, b.init(SQRT2, "k")])]),
                       b.init(np.float32(1), "k")], name="plus_one")
    b.node("Mul", [b.node("Mul", [x, s]), b.init(np.float32(0.5), "k")], out="y")
    b.node("Relu", [s], out="z")
    b.output("y")
    b.output("z")
    with pytest.raises(UnsupportedOpError, match="Erf"):
        qatir.load(save(b.model(), tmp_path / "shared.onnx"))


def test_erf_pattern_with_other_constants_is_not_fused(tmp_path):
    b = OnnxBuilder(18)
    x = b.input("x", [2, 3])
    s = b.node("Add", [b.node("Erf", [b.node("Div", [x, b.init(np.float32(2.0), "k")])]),
                       b.init(np.float32(1), "k")])
    b.node("Mul", [b.node("Mul", [x, s]), b.init(np.float32(0.5), "k")], out="y")
    b.output("y")
    with pytest.raises(UnsupportedOpError, match="Erf"):
        qatir.load(save(b.model(), tmp_path / "half.onnx"))


def test_erf_pattern_with_constant_nodes(tmp_path):
    """Constants given as Constant nodes (as the exporters write them) are recognized too."""
    b = OnnxBuilder(18)
    x = b.input("x", [2, 7])
    consts = {}
    for name, v in (("r2", SQRT2), ("one", 1.0), ("half", 0.5)):
        consts[name] = b.node("Constant", [], value=numpy_helper.from_array(np.float32(v)))
    s = b.node("Add", [b.node("Erf", [b.node("Div", [x, consts["r2"]])]), consts["one"]])
    b.node("Mul", [b.node("Mul", [x, s]), consts["half"]], out="y")
    b.output("y", [2, 7])
    g = compare_with_ort(b.model(), {"x": rnd(2, 7, seed=5, scale=3.0)}, tmp_path, rtol=1e-5)
    assert ops_of(g) == ["GELU"]


def test_standalone_erf_stays_unsupported(tmp_path):
    b = OnnxBuilder(18)
    b.node("Erf", [b.input("x", [2, 3])], out="y")
    b.output("y")
    with pytest.raises(UnsupportedOpError, match="Erf"):
        qatir.load(save(b.model(), tmp_path / "erf.onnx"))


def test_gelu_unknown_approximate_is_refused(tmp_path):
    b = OnnxBuilder(20)
    b.node("Gelu", [b.input("x", [2, 3])], out="y", approximate="cubic")
    b.output("y")
    with pytest.raises(UnsupportedOpError, match="approximate"):
        qatir.load(save(b.model(), tmp_path / "bad.onnx"))


@pytest.mark.parametrize("spelling", ["erf_div_a", "erf_mul_c", "tanh_pow", "gelu_none"])
def test_onnx_gelu_quantized_is_bit_exact(tmp_path, spelling):
    """quantize -> calibrate -> to_tflite -> LiteRT (BUILTIN_REF and default) == run_reference."""
    g = qatir.load(save(_gelu_model(spelling, 20 if spelling.startswith("gelu") else 18),
                        tmp_path / "m.onnx"))
    q = qatir.quantize(g)
    rng = np.random.default_rng(0)
    qatir.calibrate(q, [{"x": (2 * rng.standard_normal((1, 5, 5, 4))).astype(np.float32)}
                        for _ in range(4)], progress=False)
    assert "GELU" in ops_of(lower(q))
    assert compare_all(q, seeds=(1, 2, 3)) == {"reference": 0, "xnnpack": 0}


# ------------------------------------------------------------------ int8 table, ties
def _naive_exact(x: np.float32) -> np.float32:
    """0.5·x·(1 + erf(x/√2)) in double: the form LiteRT's table does *not* use."""
    return np.float32(0.5 * float(x) * (1.0 + math.erf(float(x) / math.sqrt(2.0))))


def _tie_params(approximate: bool, count: int, seed: int):
    """(in_scale, in_zp, out_scale, out_zp) whose table has an entry within float rounding
    of a .5 tie, so that the transform's exact float spelling decides the rounding."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        si = np.float32(rng.uniform(0.005, 0.05))
        zi = int(rng.integers(-100, 0))
        v = int(rng.integers(-128, 128))
        x = float(np.float32(si * np.float32(v - zi)))
        y = float(np_gelu(x, approximate))
        if abs(y) < 1e-3:
            continue
        k = int(rng.integers(5, 120))
        so = np.float32(abs(y) / (k + 0.5))
        out.append((float(si), zi, float(so), -100 if y > 0 else 100))
    return out


def _lowered_gelu(approximate, si, zi, so, zo):
    qb = QB(seed=0)
    x = qb.input("x", [1, 256], -1, 1)
    g = qb.output(qb.op("GELU", [x], {"approximate": approximate}, (-0.2, 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lg = lower(g, io="int8")
    lg.inputs[0].quant = QuantParams((si,), (zi,))
    lg.outputs[0].quant = QuantParams((so,), (zo,))
    return lg


@pytest.mark.parametrize("approximate", [False, True])
def test_table_ties_bit_exact_on_both_resolvers(approximate):
    feed = {"x": np.arange(-128, 128, dtype=np.int8).reshape(1, 256)}
    naive_differs = 0
    for si, zi, so, zo in _tie_params(approximate, 24, seed=7 + approximate):
        lg = _lowered_gelu(approximate, si, zi, so, zo)
        buf = to_tflite(lg, io="int8")
        for mode, ref in (("reference", True), ("xnnpack", False)):
            (got,) = litert_run(buf, feed, ref)[0].values()
            want = run_reference(lg, feed, kernels=mode)[lg.outputs[0].name]
            np.testing.assert_array_equal(got, want, err_msg=f"{mode} {(si, zi, so, zo)}")
        if not approximate:
            deq = np.float32(si) * (np.arange(-128, 128) - zi).astype(np.float32)
            naive = [np.clip(np.sign(t) * np.floor(abs(t) + 0.5) + zo, -128, 127) for t in
                     (np.float32(_naive_exact(d) * (np.float32(1) / np.float32(so))) for d in deq)]
            naive_differs += int((np.asarray(naive) != want[0]).sum())
    if not approximate:
        assert naive_differs > 0, "the ties did not tell the erfc form from the 1 + erf form"


def test_xnnpack_leaves_int8_gelu_to_the_builtin_kernel():
    from qatir.parity import xnnpack_coverage

    qb = QB(seed=0)
    g = qb.output(qb.op("GELU", [qb.input("x", [1, 64], -3, 3)], None, (-0.2, 3)))
    assert xnnpack_coverage(to_tflite(g)) == [("GELU", False)]


def test_writer_versions_and_options():
    from tflite.GeluOptions import GeluOptions
    from tflite.Model import Model

    qb = QB(seed=0)
    g = qb.output(qb.op("GELU", [qb.input("x", [1, 64], -3, 3)], {"approximate": True},
                        (-0.2, 3)))
    for io, version in (("int8", 2), ("float", 2)):
        m = Model.GetRootAs(to_tflite(g, io=io), 0)
        codes = {max(m.OperatorCodes(i).BuiltinCode(), m.OperatorCodes(i).DeprecatedBuiltinCode()):
                 m.OperatorCodes(i).Version() for i in range(m.OperatorCodesLength())}
        assert codes[150] == version  # BuiltinOperator.GELU
        sg = m.Subgraphs(0)
        op = next(sg.Operators(i) for i in range(sg.OperatorsLength())
                  if m.OperatorCodes(sg.Operators(i).OpcodeIndex()).BuiltinCode() == 150)
        opts = GeluOptions()
        t = op.BuiltinOptions()
        opts.Init(t.Bytes, t.Pos)
        assert opts.Approximate() is True
        meta = {m.Metadata(i).Name().decode(): m.Metadata(i).Buffer()
                for i in range(m.MetadataLength())}
        data = m.Buffers(meta["min_runtime_version"]).DataAsNumpy().tobytes()
        assert data.rstrip(b"\0") == b"2.9.0"
    f = qatir.Graph("f")
    x = f.add_input("x", [1, 8])
    f.outputs = [f.add_node("GELU", [x], outputs=["y"]).output]
    buf = to_tflite(f)
    m = Model.GetRootAs(buf, 0)
    assert [m.OperatorCodes(i).Version() for i in range(m.OperatorCodesLength())] == [1]
    v = np.linspace(-6, 6, 8, dtype=np.float32).reshape(1, 8)
    for ref in (True, False):  # float GELU: builtin kernel, and XNNPACK (which takes it)
        (got,) = litert_run(buf, {"x": v}, ref)[0].values()
        np.testing.assert_allclose(got, qatir.run(f, {"x": v})["y"], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ TFLite import
def _keras_gelu(approximate: bool):
    import keras

    inp = keras.Input((6, 6, 3), batch_size=1, name="x")
    y = keras.layers.Conv2D(4, 3, padding="same")(inp)
    y = keras.layers.Activation(lambda t: keras.activations.gelu(t, approximate=approximate))(y)
    y = keras.layers.Dense(5)(y)
    return keras.Model(inp, y)


def _convert(model, int8: bool) -> bytes:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        rng = np.random.default_rng(0)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: (
            [rng.uniform(-2, 2, (1, 6, 6, 3)).astype(np.float32)] for _ in range(8))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return conv.convert()


@pytest.mark.parametrize("approximate", [False, True])
def test_tflite_gelu_from_the_converter(tmp_path, approximate):
    from ai_edge_litert.interpreter import Interpreter

    model = _keras_gelu(approximate)
    path = tmp_path / "f.tflite"
    path.write_bytes(_convert(model, int8=False))
    g = qatir.load(path)
    gelu = [n for n in g.nodes if n.op == "GELU"]
    assert len(gelu) == 1 and gelu[0].attrs["approximate"] is approximate
    x = np.random.default_rng(1).uniform(-2, 2, (1, 6, 6, 3)).astype(np.float32)
    (want,) = Interpreter(model_path=str(path)).get_signature_runner()(x=x).values()
    (got,) = qatir.run(g, {g.inputs[0].name: x}).values()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    path8 = tmp_path / "q.tflite"
    path8.write_bytes(_convert(model, int8=True))
    g8 = qatir.load(path8)
    assert "GELU" in ops_of(g8)
    rng = np.random.default_rng(2)
    assert_int8_file_matches_reference(path8, g8, rng, (1, 6, 6, 3))


def test_gelu_node_before_opset_20_is_refused(tmp_path):
    """A real Gelu node needs opset 20; only the fused spellings bypass the schema check."""
    b = OnnxBuilder(18)
    b.node("Gelu", [b.input("x", [2, 3])], out="y")
    b.output("y")
    with pytest.raises(qatir.QatirError, match="Gelu is not defined in opset 18"):
        qatir.load(save(b.model(), tmp_path / "early.onnx"))

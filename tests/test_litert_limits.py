"""Models LiteRT cannot load are refused at export, naming the node (found by tools/fuzz.py --deep).

Each limit is checked on both sides: just inside it the model loads and matches the
integer reference under XNNPACK; at the limit qatir refuses to write it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import qatir
from qatir.errors import ExportError, ModelFormatError, ShapeError
from qatir.ir import Graph, QuantParams
from qatir.lower import ADD_MAX_RATIO, XNN_MAX_REQUANT, lower
from tests.helpers import QB, int8_feed, litert_run

S_IN, S_W = 2 / 255, 1 / 127  # input range [-1, 1]; weights of 1.0 -> symmetric scale 1/127

WEIGHT_CASES = {
    "CONV_2D": ((4, 3, 3, 3), 0, {"padding": "SAME"}, [1, 4, 4, 3]),
    "DEPTHWISE_CONV_2D": ((1, 3, 3, 3), 3, {"padding": "SAME", "depth_multiplier": 1}, [1, 4, 4, 3]),
    "FULLY_CONNECTED": ((4, 3), None, {}, [1, 3]),
    "TRANSPOSE_CONV": ((4, 3, 3, 3), 0, {"padding": "SAME", "stride": [2, 2]}, [1, 4, 4, 3]),
}


def weight_op(op: str, ratio: float) -> Graph:
    """``op`` whose requantization scale (input x weight / output scale) is ``ratio``."""
    w_shape, axis, attrs, x_shape = WEIGHT_CASES[op]
    qb = QB(0)
    x = qb.input("x", x_shape, -1.0, 1.0)
    wq = qb.weight(np.ones(w_shape, np.float32), axis)
    s_out = S_IN * S_W / ratio
    return qb.output(qb.op(op, [x, wq], attrs, rng=(-128 * s_out, 127 * s_out), name="node"))


def add_const(ratio: float) -> Graph:
    """ADD of an input in [-1, 1] and a constant whose scale is ``ratio`` x the output's."""
    qb = QB(0)
    x = qb.input("x", [1, 4, 4, 3], -1.0, 1.0)
    s = S_IN * ratio
    c = qb.fq(qb.g.const(np.ones(3, np.float32), "c"), -128 * s, 127 * s)
    return qb.output(qb.op("ADD", [x, c], {}, rng=(-1.0, 1.0), name="node"))


def runs_exactly_under_xnnpack(g: Graph) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ADD beyond XNNPACK's own ratio range: a warning
        buf = qatir.to_tflite(g)
    feeds = int8_feed(g)
    got, _ = litert_run(buf, feeds, ref=False)
    want = qatir.run_reference(g, feeds, kernels="xnnpack")
    for name, y in want.items():
        np.testing.assert_array_equal(got[name], y)


@pytest.mark.parametrize("op", sorted(WEIGHT_CASES))
def test_requantization_scale_xnnpack_rejects_is_refused(op):
    runs_exactly_under_xnnpack(weight_op(op, XNN_MAX_REQUANT * 0.99))
    with pytest.raises(ExportError, match=r"node 'node' .*not below 256.*XNNPACK"):
        qatir.to_tflite(weight_op(op, XNN_MAX_REQUANT))


@pytest.mark.filterwarnings("ignore:scale ratios outside XNNPACK")
def test_add_ratio_that_aborts_litert_is_refused():
    g = add_const(ADD_MAX_RATIO * 0.99)  # beyond XNNPACK's limit: runs on the builtin kernel
    buf = qatir.to_tflite(g)
    feeds = int8_feed(g)
    got, _ = litert_run(buf, feeds, ref=False)
    np.testing.assert_array_equal(got[g.outputs[0].name],
                                  qatir.run_reference(g, feeds)[g.outputs[0].name])
    with pytest.raises(ExportError, match=r"node 'node' \(ADD\).*aborts"):
        qatir.to_tflite(add_const(ADD_MAX_RATIO))


def test_gather_along_a_dynamic_batch_is_checked_at_the_exported_batch_size():
    g = Graph("gather_batch")
    x = g.add_input("x", [None, 4])
    idx = g.const(np.array([0, 1], np.int32), "idx")
    g.outputs = [g.add_node("GATHER", [x, idx], {"axis": 0}, name="pick").output]
    with pytest.raises(ExportError, match=r"node 'pick' \(GATHER\) does not fit batch size 1"):
        qatir.to_tflite(g)
    buf = qatir.to_tflite(g, batch_size=2)
    x2 = np.arange(8, dtype=np.float32).reshape(2, 4)
    got, _ = litert_run(buf, {"x": x2}, ref=False)
    np.testing.assert_array_equal(got[g.outputs[0].name], x2)
    assert g.inputs[0].shape == (None, 4)  # the caller's graph keeps its dynamic batch


def test_reshape_of_a_dynamic_batch_must_keep_the_known_size():
    g = Graph("reshape_batch")
    x = g.add_input("x", [None, 1, 1, 16])
    with pytest.raises(ShapeError, match=r"cannot reshape \[\?|cannot reshape \[None"):
        g.add_node("RESHAPE", [x], {"new_shape": [1, 1]})
    y = g.add_node("RESHAPE", [x], {"new_shape": [2, 16]}).output  # a batch of 2 fits
    assert y.shape == (2, 16)


def test_transpose_conv_channels_must_match_its_weights():
    g = Graph("tconv")
    x = g.add_input("x", [1, 4, 4, 3])
    w = g.const(np.ones((2, 3, 3, 4), np.float32), "w")
    with pytest.raises(ShapeError, match="input channels 3 != weight channels 4"):
        g.add_node("TRANSPOSE_CONV", [x, w], {"padding": "SAME", "stride": [2, 2]})


def test_empty_activations_are_refused_at_export():
    g = Graph("empty")
    x = g.add_input("x", [1, 0, 4])
    g.outputs = [g.add_node("RELU", [x], name="r").output]
    with pytest.raises(ExportError, match=r"\[1, 0, 4\] is empty"):
        qatir.to_tflite(g)


# ------------------------------------------- imported int8 models that break the spec
def q(scale: float, zp: int) -> QuantParams:
    return QuantParams((scale,), (zp,), None, 8, False, "int8")


def lowered(op: str, attrs: dict, out_q: QuantParams | None, shape=(1, 4, 4, 3)) -> Graph:
    """An int8 graph in lowered form: x (int8, q(0.02, 0)) -> op -> y with ``out_q``."""
    g = Graph("lowered")
    x = g.add_input("x", list(shape), np.int8)
    x.quant = q(0.02, 0)
    y = g.add_node(op, [x], attrs, name="node").output
    y.quant = out_q
    g.outputs = [y]
    return g


def test_same_scale_op_with_a_different_output_grid_is_refused():
    attrs = {"size": [8, 8], "align_corners": False, "half_pixel_centers": True}
    qatir.to_tflite(lowered("RESIZE_BILINEAR", attrs, q(0.02, 0)))  # the spec's form exports
    with pytest.raises(ExportError, match=r"'node' \(RESIZE_BILINEAR\).*quantization differ"):
        qatir.to_tflite(lowered("RESIZE_BILINEAR", attrs, q(0.0200001, 0)))


def test_fixed_output_params_are_enforced_on_imported_graphs():
    qatir.to_tflite(lowered("SOFTMAX", {}, q(1 / 256, -128), shape=(1, 10)))
    with pytest.raises(ExportError, match=r"'node' \(SOFTMAX\).*fixes it at scale 0.00390625"):
        qatir.to_tflite(lowered("SOFTMAX", {}, q(1 / 256, -25), shape=(1, 10)))


def test_int8_tensor_without_quantization_is_refused():
    with pytest.raises(ExportError, match=r"int8 tensor %\S+ has no quantization"):
        qatir.to_tflite(lowered("MAX_POOL_2D", {"filter": [2, 2], "stride": [2, 2],
                                                "padding": "VALID"}, None))


def test_int8_conv_with_a_float_bias_is_refused():
    g = Graph("fbias")
    x = g.add_input("x", [1, 4, 4, 3], np.int8)
    x.quant = q(0.02, 0)
    w = g.const(np.ones((2, 1, 1, 3), np.int8), "w",
                quant=QuantParams((0.01, 0.01), (0, 0), 0, 8, True, "int8"))
    b = g.const(np.zeros(2, np.float32), "b")
    y = g.add_node("CONV_2D", [x, w, b], {"padding": "SAME"}, name="conv").output
    y.quant = q(0.05, 0)
    g.outputs = [y]
    with pytest.raises(ExportError, match=r"'conv' \(CONV_2D\): the bias %b .*int32"):
        qatir.to_tflite(g)


def patched(buf: bytes, old: bytes, new: bytes) -> bytes:
    assert buf.count(old) == 1, "the patched bytes must be unique in the model"
    return buf.replace(old, new)


def test_tflite_import_refuses_quantization_litert_would_reject(tmp_path):
    """Patch a valid int8 model qatir wrote: zero point -53 -> 300, then a subnormal scale."""
    g = lowered("RELU", {}, q(0.0123, -53))
    buf = qatir.to_tflite(g)
    qatir.load(_write(tmp_path / "ok.tflite", buf))
    bad_zp = patched(buf, np.int64(-53).tobytes(), np.int64(300).tobytes())
    with pytest.raises(ModelFormatError, match=r"zero point 300 is outside \[-128, 127\]"):
        qatir.load(_write(tmp_path / "zp.tflite", bad_zp))
    bad_scale = patched(buf, np.float32(0.0123).tobytes(), np.float32(1e-40).tobytes())
    with pytest.raises(ModelFormatError, match="not a positive normal float32"):
        qatir.load(_write(tmp_path / "scale.tflite", bad_scale))


def _write(path, buf: bytes) -> str:
    path.write_bytes(buf)
    return str(path)


def test_quantize_to_a_float_tensor_is_refused():
    g = Graph("quant_float")
    x = g.add_input("x", [1, 4], np.float32)
    y = g.add_node("QUANTIZE", [x], {"dtype": "int8"}, name="qz").output
    y.quant = q(0.02, 0)
    z = g.add_node("QUANTIZE", [y], {"dtype": "float32"}, name="bad").output
    g.outputs = [z]
    with pytest.raises(ExportError, match=r"'bad' \(QUANTIZE\): output %\S+ must be a quantized"):
        qatir.to_tflite(g)


def test_int8_conv_weights_must_be_int8_constants():
    g = Graph("boolw")
    x = g.add_input("x", [1, 4, 4, 3], np.int8)
    x.quant = q(0.02, 0)
    w = g.const(np.ones((2, 1, 1, 3), bool), "w")
    y = g.add_node("CONV_2D", [x, w], {"padding": "SAME"}, name="conv").output
    y.quant = q(0.05, 0)
    g.outputs = [y]
    with pytest.raises(ExportError, match=r"'conv' \(CONV_2D\): the weights .* not bool"):
        qatir.to_tflite(g)


def test_activations_beyond_int32_elements_are_refused():
    g = Graph("huge")
    x = g.add_input("x", [1, 65536, 65536, 1])
    g.outputs = [g.add_node("RELU", [x], name="r").output]
    with pytest.raises(ExportError, match=r"more than 2\^31-1 elements"):
        qatir.to_tflite(g)


# ------------------------------------------------------------- SOFTMAX under BUILTIN_REF
# reference_ops::Softmax<int8, int8> aborts (TFLITE_CHECK on the reciprocal's exponent) when
# a row's sum of exps reaches 512.0, and SoftmaxPrepare aborts (QuantizeMultiplierGreaterThanOne)
# when beta x input scale <= 2^-26; see qatir/target.py and docs/parity-report.md. Wider
# heads are written as an int16-output SOFTMAX + QUANTIZE (qatir/lowering/softmax.py).
_RUN_FILE = """
import sys, numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType
buf = open(sys.argv[1], 'rb').read()
feeds = dict(np.load(sys.argv[2]))
kind = OpResolverType.BUILTIN_REF if sys.argv[3] == 'ref' else OpResolverType.AUTO
it = Interpreter(model_content=buf, experimental_op_resolver_type=kind, num_threads=1)
it.allocate_tensors()
for d in it.get_input_details():
    it.set_tensor(d['index'], feeds[d['name']])
it.invoke()
np.savez(sys.argv[4], **{d['name']: it.get_tensor(d['index']) for d in it.get_output_details()})
"""


def run_in_subprocess(tmp_path, buf: bytes, feeds: dict, resolver: str):
    """Run ``buf`` in a fresh process (an abort must not take pytest down): (rc, outputs)."""
    import subprocess
    import sys

    model, data, out = (tmp_path / f"{resolver}.{ext}" for ext in ("tflite", "in.npz", "out.npz"))
    model.write_bytes(buf)
    np.savez(data, **feeds)
    proc = subprocess.run([sys.executable, "-c", _RUN_FILE, str(model), str(data), resolver,
                           str(out)], capture_output=True, timeout=300)
    return proc.returncode, (dict(np.load(out)) if proc.returncode == 0 else None)


def softmax_head(depth: int, lo: float = -8.0, hi: float = 8.0) -> Graph:
    qb = QB(0)
    x = qb.input("x", [1, depth], lo, hi)
    return qb.output(qb.op("SOFTMAX", [x], {"beta": 1.0}, rng=(0.0, 255 / 256), name="head"))


def softmax_feeds(depth: int) -> list[dict[str, np.ndarray]]:
    """The worst row for the REF kernel (every entry equal to the row maximum: the sum of
    exps is the depth), a random row, and a peaked one (outputs well above zero)."""
    rng = np.random.default_rng(0)
    peaked = np.full((1, depth), -128, np.int8)
    peaked[0, rng.integers(0, depth, 8)] = rng.integers(60, 128, 8)
    return [{"x": np.full((1, depth), 7, np.int8)},
            {"x": rng.integers(-128, 128, (1, depth)).astype(np.int8)}, {"x": peaked}]


def runs_under_both_resolvers_bit_exact(tmp_path, g: Graph) -> None:
    buf = qatir.to_tflite(g)
    for feeds in softmax_feeds(g.inputs[0].shape[-1]):
        for resolver, mode in (("ref", "reference"), ("auto", "xnnpack")):
            rc, got = run_in_subprocess(tmp_path, buf, feeds, resolver)
            assert rc == 0, f"{resolver}: exit code {rc}"
            want = qatir.run_reference(g, feeds, kernels=mode)
            np.testing.assert_array_equal(got["head_q"], want["head_q"])


def test_softmax_at_the_ref_limit_stays_one_int8_op_and_runs_bit_exact(tmp_path):
    from qatir.target import SOFTMAX_MAX_DEPTH

    g = softmax_head(SOFTMAX_MAX_DEPTH)
    assert [n.op for n in lower(g).nodes] == ["SOFTMAX"]
    runs_under_both_resolvers_bit_exact(tmp_path, g)


@pytest.mark.parametrize("depth", [512, 1000])
def test_softmax_past_the_ref_limit_runs_through_int16_bit_exact(tmp_path, depth):
    lg = lower(softmax_head(depth))
    assert [(n.op, n.outputs[0].dtype.name) for n in lg.nodes] == [("SOFTMAX", "int16"),
                                                                   ("QUANTIZE", "int8")]
    runs_under_both_resolvers_bit_exact(tmp_path, softmax_head(depth))


def test_wide_softmax_file_reimports_and_runs_like_litert(tmp_path):
    """A qatir file with a 1000-class head (SOFTMAX int8 -> int16 on (1/65536, -32768), then
    QUANTIZE int16 -> int8) imports again; the integer reference of the import, and a
    re-export of it, compute what LiteRT computes from the file."""
    from qatir.frontends.tflite import load_tflite_bytes

    buf = qatir.to_tflite(softmax_head(1000))
    h = load_tflite_bytes(buf, "wide_softmax.tflite")
    assert [(n.op, n.outputs[0].dtype.name) for n in h.nodes] == [("SOFTMAX", "int16"),
                                                                  ("QUANTIZE", "int8")]
    wide = h.nodes[0].outputs[0].quant
    assert (wide.scale, wide.zero_point, wide.dtype) == ((1 / 65536,), (-32768,), "int16")
    again = qatir.to_tflite(h)
    out = h.outputs[0].name
    for feeds in softmax_feeds(1000):
        for resolver, mode in (("ref", "reference"), ("auto", "xnnpack")):
            rc, got = run_in_subprocess(tmp_path, buf, feeds, resolver)
            assert rc == 0, f"{resolver}: exit code {rc}"
            np.testing.assert_array_equal(qatir.run_reference(h, feeds, kernels=mode)[out],
                                          got["head_q"])
            rc, got_again = run_in_subprocess(tmp_path, again, feeds, resolver)
            assert rc == 0, f"{resolver} (re-export): exit code {rc}"
            np.testing.assert_array_equal(got_again[out], got["head_q"])


def test_int16_zero_point_minus_32768_is_accepted_on_a_softmax_output_only():
    from qatir.errors import ModelFormatError
    from qatir.frontends.tflite_quant import quant_params
    from qatir.frontends.tflite_reader import TQuant, TTensor

    t = TTensor(0, "y", (1, 1000), None, np.dtype(np.int16), 0,
                TQuant(np.array([1 / 65536]), np.array([-32768]), 0), None, False)
    assert quant_params("m.tflite", t, t.dtype, producer="SOFTMAX").zero_point == (-32768,)
    for producer in (None, "QUANTIZE", "ADD"):
        with pytest.raises(ModelFormatError, match="int16 zero points must be 0, got -32768"):
            quant_params("m.tflite", t, t.dtype, producer=producer)


def test_softmax_past_the_int16_limit_becomes_a_float_island(tmp_path):
    """Over 4095 classes no int8 SOFTMAX runs under BUILTIN_REF: it is written as
    DEQUANTIZE, float SOFTMAX, QUANTIZE (warned as a float island; strict_int8 refuses it),
    runs under both resolvers, and the int8 output is the reference's within one step."""
    from qatir.lowering.islands import FloatIslandWarning
    from qatir.target import SOFTMAX_INT16_MAX_DEPTH

    depth = SOFTMAX_INT16_MAX_DEPTH + 1
    g = softmax_head(depth)
    assert [(n.op, n.outputs[0].dtype.name) for n in lower(g).nodes] == [
        ("DEQUANTIZE", "float32"), ("SOFTMAX", "float32"), ("QUANTIZE", "int8")]
    with pytest.warns(FloatIslandWarning, match="head_float"):
        buf = qatir.to_tflite(g)
    with pytest.raises(ExportError, match="head_float.*strict_int8"):
        qatir.to_tflite(g, strict_int8=True)
    for feeds in softmax_feeds(depth):
        for resolver, mode in (("ref", "reference"), ("auto", "xnnpack")):
            rc, got = run_in_subprocess(tmp_path, buf, feeds, resolver)
            assert rc == 0, f"{resolver}: exit code {rc}"
            want = qatir.run_reference(g, feeds, kernels=mode)["head_q"]
            assert np.abs(got["head_q"].astype(int) - want.astype(int)).max() <= 1


@pytest.mark.parametrize("depth", [8, 1000])
def test_softmax_with_a_tiny_input_scale_is_requantized_and_runs_bit_exact(tmp_path, depth):
    """beta x input scale <= 2^-26 aborts LiteRT's SoftmaxPrepare; such logits (here 2e-6
    wide) have a flat softmax, so qatir requantizes the input onto 2^-25 / beta, where the
    row is exactly flat, and the output is the uniform 1/depth the float softmax rounds to."""
    g = softmax_head(depth, -1e-6, 1e-6)
    ops = [n.op for n in lower(g).nodes]
    assert ops[:2] == ["QUANTIZE", "SOFTMAX"], ops
    runs_under_both_resolvers_bit_exact(tmp_path, g)
    for feeds in softmax_feeds(depth):
        got = qatir.run_reference(g, feeds)["head_q"]
        np.testing.assert_array_equal(got, np.round(256 / depth) - 128)


def test_softmax_far_below_the_scale_floor_is_refused_by_name():
    """An input scale so small that even the requantize onto the floor would need a shift
    past 31 is refused, naming the node and LiteRT's limit."""
    with pytest.raises(ExportError, match=r"'head' \(SOFTMAX\).*2\^-26.*prepare"):
        qatir.to_tflite(softmax_head(8, -1e-15, 1e-15))


@pytest.mark.parametrize("case", ["depth", "scale"])
def test_what_qatir_avoids_does_abort_litert_reference_kernels(tmp_path, monkeypatch, case):
    """The limits are LiteRT's, not qatir's caution: an int8 SOFTMAX of 512 classes, or one
    with a tiny input scale, aborts the process under BUILTIN_REF (SIGABRT) and runs on the
    default resolver."""
    import qatir.lowering.litert as litert_step
    import qatir.lowering.softmax as softmax_step

    monkeypatch.setattr(litert_step, "softmax_ref_limit", lambda *a: None)
    monkeypatch.setattr(softmax_step, "SOFTMAX_MAX_DEPTH", 1 << 20)
    monkeypatch.setattr(softmax_step, "SOFTMAX_MIN_BETA_SCALE", 0.0)
    g = softmax_head(512) if case == "depth" else softmax_head(8, -1e-6, 1e-6)
    buf = qatir.to_tflite(g)
    feeds = softmax_feeds(g.inputs[0].shape[-1])[0]
    rc, _ = run_in_subprocess(tmp_path, buf, feeds, "ref")
    assert rc != 0, "expected LiteRT's reference SOFTMAX to abort"
    rc, _ = run_in_subprocess(tmp_path, buf, feeds, "auto")
    assert rc == 0


def hard_swish(ratio: float) -> Graph:
    """HARD_SWISH of an input in [-1, 1] whose output scale is the input's / ``ratio``."""
    qb = QB(0)
    x = qb.input("x", [1, 4, 4, 3], -1.0, 1.0)
    s = S_IN / ratio
    return qb.output(qb.op("HARD_SWISH", [x], {}, rng=(-128 * s, 127 * s), name="node"))


def test_hard_swish_ratio_litert_cannot_prepare_is_refused():
    from qatir.target import HARD_SWISH_MAX_RATIO

    g = hard_swish(HARD_SWISH_MAX_RATIO * 0.99)
    buf = qatir.to_tflite(g)
    feeds = int8_feed(g)
    for ref, mode in ((True, "reference"), (False, "xnnpack")):
        got, _ = litert_run(buf, feeds, ref=ref)
        np.testing.assert_array_equal(got["node_q"], qatir.run_reference(g, feeds, mode)["node_q"])
    with pytest.raises(ExportError, match=r"'node' \(HARD_SWISH\).*not below 128"):
        qatir.to_tflite(hard_swish(HARD_SWISH_MAX_RATIO * 1.01))

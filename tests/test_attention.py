"""Attention end to end: ONNX Einsum and MatMul attention blocks (single- and multi-head)
against onnxruntime, then quantized with the default table and exported int8: bit-exact
against LiteRT on both resolvers, BATCH_MATMUL int8 with a zero-point-0 right-hand side
(so XNNPACK takes it), no float islands. Also Softmax on a non-last axis, the constant
subgraphs exporters write (Where/Expand/Equal masks, Mod, ScatterND) folded at import,
Expand of an activation, and the refusals (Einsum equations, Mod of floats without fmod)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import qatir  # noqa: E402
from qatir.errors import QatirError, UnsupportedOpError  # noqa: E402
from qatir.lower import lower  # noqa: E402
from qatir.lowering.islands import summary  # noqa: E402
from qatir.parity import xnnpack_coverage  # noqa: E402
from qatir.tflite_writer import to_tflite  # noqa: E402
from tests.helpers import compare_all, litert_run  # noqa: E402
from tests.helpers.onnx_attention import attention_block, qkv_block  # noqa: E402
from tests.helpers.onnx_models import (  # noqa: E402
    OnnxBuilder,
    compare_with_ort,
    ops_of,
    rnd,
    save,
)


def _quantized(g, shape, n=6, seed=0):
    q = qatir.quantize(g)
    rng = np.random.default_rng(seed)
    qatir.calibrate(q, [{g.inputs[0].name: rng.standard_normal(shape).astype(np.float32)}
                        for _ in range(n)], progress=False)
    return q


# ------------------------------------------------------------------ Einsum, float
EQUATIONS = [
    ("bhid,bhjd->bhij", (1, 2, 5, 4), (1, 2, 6, 4)),
    ("bhij,bhjd->bhid", (1, 2, 5, 6), (1, 2, 6, 4)),
    ("...ij,...jk->...ik", (2, 3, 5, 4), (2, 3, 4, 6)),
    ("...ij,jk->...ik", (2, 3, 5, 4), (4, 6)),
    ("bij,bjk", (2, 5, 4), (2, 4, 3)),  # implicit output
    ("bqhd,bkhd->bhqk", (1, 4, 3, 8), (1, 7, 3, 8)),
    ("bhqk,bkhd->bqhd", (1, 3, 4, 7), (1, 7, 3, 8)),
    ("ij,bjk->bik", (5, 4), (2, 4, 3)),
    ("bhwc,hkc->bhwk", (1, 4, 5, 8), (4, 6, 8)),
    ("i,i->", (3,), (3,)),
    ("...IJ,...JK->...IK", (2, 5, 4), (2, 4, 3)),  # capitals next to an ellipsis
    ("...ij,...jk", (2, 5, 4), (2, 4, 3)),  # implicit output with an ellipsis
]


@pytest.mark.parametrize("eq,sa,sb", EQUATIONS, ids=[e[0] for e in EQUATIONS])
def test_einsum_of_two_activations_matches_onnxruntime(tmp_path, eq, sa, sb):
    b = OnnxBuilder(13)
    b.node("Einsum", [b.input("a", list(sa)), b.input("b", list(sb))], equation=eq, out="y")
    b.output("y")
    g = compare_with_ort(b.model(), {"a": rnd(*sa, seed=1), "b": rnd(*sb, seed=2)}, tmp_path,
                         rtol=1e-5)
    assert ops_of(g).count("BATCH_MATMUL") == 1, ops_of(g)


@pytest.mark.parametrize("eq,sa,sb", [("ij,ij->ij", (2, 3), (2, 3)), ("bi,bj->bij", (2, 3), (2, 4)),
                                      ("ij,j->ji", (2, 3), (3,))])
def test_einsum_without_contraction_is_a_mul(tmp_path, eq, sa, sb):
    b = OnnxBuilder(13)
    b.node("Einsum", [b.input("a", list(sa)), b.input("b", list(sb))], equation=eq, out="y")
    b.output("y")
    g = compare_with_ort(b.model(), {"a": rnd(*sa, seed=1), "b": rnd(*sb, seed=2)}, tmp_path,
                         rtol=1e-5)
    assert "MUL" in ops_of(g) and "BATCH_MATMUL" not in ops_of(g)


@pytest.mark.parametrize("eq,wshape,const_first", [
    ("bid,jd->bij", (3, 4), False), ("jd,bid->bij", (3, 4), True),
    ("bid,dj->bij", (4, 3), False)])
def test_einsum_with_a_constant_is_one_fully_connected(tmp_path, eq, wshape, const_first):
    b = OnnxBuilder(13)
    x, w = b.input("a", [1, 5, 4]), b.init(rnd(*wshape, seed=2), "w")
    b.node("Einsum", [w, x] if const_first else [x, w], equation=eq, out="y")
    b.output("y")
    g = compare_with_ort(b.model(), {"a": rnd(1, 5, 4, seed=1)}, tmp_path, rtol=1e-5)
    assert ops_of(g) == ["FULLY_CONNECTED"]


def test_einsum_of_constants_is_folded(tmp_path):
    b = OnnxBuilder(13)
    w = b.node("Einsum", [b.init(rnd(2, 3, seed=1), "p"), b.init(rnd(3, 4, seed=2), "q")],
               equation="ij,jk->ik")
    b.node("Add", [b.input("x", [2, 4]), w], out="y")
    b.output("y")
    g = compare_with_ort(b.model(), {"x": rnd(2, 4, seed=3)}, tmp_path, rtol=1e-5)
    assert ops_of(g) == ["ADD"]


@pytest.mark.parametrize("eq,shapes,why", [
    ("ii->i", [(3, 3)], "two operands"),
    ("ij,jk,kl->il", [(3, 3)] * 3, "two operands"),
    ("bij,bjk->bi", [(2, 3, 4), (2, 4, 5)], "summed out of one operand"),
    ("iij,jk->ik", [(3, 3, 4), (4, 5)], "repeated subscript"),
    ("ij,jk->iz", [(3, 4), (4, 5)], "appear in no operand"),
    ("ijk,jk->ik", [(3, 4), (4, 5)], "rank 2"),
])
def test_other_einsum_equations_are_refused_naming_node_and_equation(tmp_path, eq, shapes, why):
    b = OnnxBuilder(13)
    ins = [b.input(f"x{i}", list(s)) for i, s in enumerate(shapes)]
    b.node("Einsum", ins, equation=eq, out="y", name="attn_scores")
    b.output("y")
    with pytest.raises(UnsupportedOpError, match=why) as e:
        qatir.load(save(b.model(), tmp_path / "e.onnx"))
    assert "attn_scores" in str(e.value) and repr(eq) in str(e.value)


# ------------------------------------------------------------------ attention blocks
BLOCKS = {
    "matmul_1head": lambda: attention_block(1, "matmul"),
    "matmul_2heads": lambda: attention_block(2, "matmul"),
    "einsum_1head": lambda: attention_block(1, "einsum"),
    "einsum_2heads": lambda: attention_block(2, "einsum"),
    "qkv_2heads": lambda: qkv_block(2),
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_attention_block_float_then_int8_bit_exact(tmp_path, name):
    """onnxruntime == qatir.run in float; the int8 export is bit-exact with LiteRT
    (BUILTIN_REF and the default XNNPACK path), every BATCH_MATMUL is int8 with a
    zero-point-0 right-hand input and is taken by XNNPACK, nothing is a float island."""
    g = compare_with_ort(BLOCKS[name](), {"x": rnd(1, 6, 8, seed=1)}, tmp_path, rtol=1e-5)
    assert ops_of(g).count("BATCH_MATMUL") == 2
    q = _quantized(g, (1, 6, 8))
    lg = lower(q)
    bmm = [n for n in lg.nodes if n.op == "BATCH_MATMUL"]
    assert len(bmm) == 2 and all(n.inputs[1].quant.zero_point == (0,) for n in bmm)
    assert all(n.inputs[0].dtype == np.int8 and n.outputs[0].dtype == np.int8 for n in bmm)
    s = summary(lg)
    assert s["float"] == [] and s["int8_mac_share"] == 1.0
    cover = xnnpack_coverage(to_tflite(q))
    assert [taken for op, taken in cover if op == "BATCH_MATMUL"] == [True, True], cover
    assert compare_all(q, seeds=(1, 2, 3)) == {"reference": 0, "xnnpack": 0}


def test_attention_int8_tracks_float(tmp_path):
    """The int8 block stays close to the float one (SQNR over 25 dB on calibration-like
    data): softmax's fixed (1/256, -128) output and the symmetric right-hand sides."""
    g = compare_with_ort(attention_block(2, "matmul"), {"x": rnd(1, 6, 8, seed=1)}, tmp_path)
    q = _quantized(g, (1, 6, 8), n=16)
    x = np.random.default_rng(7).standard_normal((1, 6, 8)).astype(np.float32)
    ref = qatir.run(g, {"x": x})["y"]
    lg = lower(q, io="int8")
    s_in, z_in = lg.inputs[0].quant.scale[0], lg.inputs[0].quant.zero_point[0]
    xi = np.clip(np.round(x / s_in) + z_in, -128, 127).astype(np.int8)
    yi = qatir.run_reference(q, {"x": xi})["y"]
    so, zo = lg.outputs[0].quant.scale[0], lg.outputs[0].quant.zero_point[0]
    y = (yi.astype(np.float32) - zo) * so
    sqnr = 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - y) ** 2))
    assert sqnr > 25, sqnr


def test_symmetric_rhs_edge_when_the_range_is_shared(tmp_path):
    """A right-hand input whose producer's range is tied to another tensor (CONCATENATION
    shares ranges) gets its own symmetric FAKE_QUANT on the edge: a requantize at export."""
    b = OnnxBuilder(13)
    x, y = b.input("x", [1, 4, 6]), b.input("z", [1, 4, 6])
    cat = b.node("Concat", [x, y], axis=1)  # [1, 8, 6]
    b.node("MatMul", [b.input("a", [1, 5, 8]), cat], out="out")
    b.output("out")
    feeds = {k: rnd(*s, seed=i) for i, (k, s) in enumerate(
        {"x": (1, 4, 6), "z": (1, 4, 6), "a": (1, 5, 8)}.items())}
    g = compare_with_ort(b.model(), feeds, tmp_path, rtol=1e-5)
    q = qatir.quantize(g)
    qatir.calibrate(q, [{k: v + i for k, v in feeds.items()} for i in range(3)], progress=False)
    lg = lower(q)
    bmm = next(n for n in lg.nodes if n.op == "BATCH_MATMUL")
    assert bmm.inputs[1].quant.zero_point == (0,)
    assert bmm.inputs[1].producer.op == "QUANTIZE"
    assert compare_all(q) == {"reference": 0, "xnnpack": 0}


# ------------------------------------------------------------------ softmax axis
@pytest.mark.parametrize("shape,axis", [((1, 4, 6), 1), ((2, 3, 4, 5), 2), ((2, 3, 4, 5), 1),
                                        ((2, 3, 4, 5), 0)])
def test_softmax_on_any_axis(tmp_path, shape, axis):
    b = OnnxBuilder(13)
    b.node("Softmax", [b.input("x", list(shape))], axis=axis, out="y")
    b.output("y")
    g = compare_with_ort(b.model(), {"x": rnd(*shape, seed=1, scale=2)}, tmp_path, rtol=1e-5)
    q = qatir.quantize(g)
    rng = np.random.default_rng(0)
    nhwc = (shape[0], *shape[2:], shape[1]) if len(shape) == 4 else shape
    qatir.calibrate(q, [{"x": 2 * rng.standard_normal(nhwc).astype(np.float32)}
                        for _ in range(3)], progress=False)
    sm = [n for n in lower(q).nodes if n.op == "SOFTMAX"]
    assert len(sm) == 1 and sm[0].outputs[0].quant.zero_point == (-128,)
    assert compare_all(q) == {"reference": 0, "xnnpack": 0}


# ------------------------------------------------------------------ constant subgraphs
def _swin_mask(b: OnnxBuilder, n: int) -> str:
    """Swin's shifted-window mask as the exporter writes it: region ids built with
    ScatterND, a Mod, Expand, a pairwise Equal and a Where(0, -100)."""
    ids = b.node("ScatterND", [b.init(np.zeros(n, np.float32), "img"),
                               b.init(np.arange(n // 2, n, dtype=np.int64).reshape(-1, 1), "idx"),
                               b.init(np.ones(n - n // 2, np.float32), "upd")])
    ids = b.node("Mod", [b.node("Add", [ids, b.init(np.float32(2), "two")]),
                         b.init(np.float32(2), "two")], fmod=1)
    rows = b.node("Expand", [b.node("Unsqueeze", [ids, b.ints([1])]), b.ints([n, n])])
    cols = b.node("Expand", [b.node("Unsqueeze", [ids, b.ints([0])]), b.ints([n, n])])
    same = b.node("Equal", [rows, cols])
    return b.node("Where", [same, b.init(np.float32(0), "z"), b.init(np.float32(-100), "m")])


def test_where_expand_equal_mod_scatternd_mask_is_folded(tmp_path):
    n = 6
    b = OnnxBuilder(13)
    s = b.input("s", [1, 2, n, n])
    b.node("Softmax", [b.node("Add", [s, _swin_mask(b, n)])], axis=-1, out="y")
    b.output("y")
    g = compare_with_ort(b.model(), {"s": rnd(1, 2, n, n, seed=1)}, tmp_path, rtol=1e-5)
    assert [op for op in ops_of(g) if op not in ("TRANSPOSE", "RESHAPE")] == ["ADD", "SOFTMAX"]
    add = next(nd for nd in g.nodes if nd.op == "ADD")
    mask = next(t for t in add.inputs if t.is_const).data
    assert set(np.unique(mask).tolist()) == {-100.0, 0.0}


@pytest.mark.parametrize("fmod,a,b", [(0, np.array([-7, 7, 5], np.int64), np.int64(3)),
                                      (1, np.array([-7.5, 7.5], np.float32), np.float32(2))])
def test_mod_folds_with_onnx_sign_rules(tmp_path, fmod, a, b):
    ob = OnnxBuilder(13)
    m = ob.node("Mod", [ob.init(a, "a"), ob.init(b, "b")], fmod=fmod)
    ob.node("Add", [ob.input("x", [a.size]), ob.node("Cast", [m], to=1)], out="y")
    ob.output("y")
    compare_with_ort(ob.model(), {"x": rnd(a.size, seed=1)}, tmp_path, rtol=1e-6)


def test_mod_of_floats_without_fmod_is_refused(tmp_path):
    ob = OnnxBuilder(13)
    m = ob.node("Mod", [ob.init(np.float32([1.5]), "a"), ob.init(np.float32([1]), "b")],
                name="bad_mod")
    ob.node("Add", [ob.input("x", [1]), m], out="y")
    ob.output("y")
    with pytest.raises(QatirError, match="bad_mod.*fmod"):
        qatir.load(save(ob.model(), tmp_path / "m.onnx"))


def test_expand_of_an_activation_is_a_tile(tmp_path):
    b = OnnxBuilder(13)
    b.node("Expand", [b.input("x", [3, 1]), b.ints([2, 3, 4])], out="y")
    b.output("y")
    g = compare_with_ort(b.model(), {"x": rnd(3, 1, seed=1)}, tmp_path, rtol=1e-6)
    assert ops_of(g) == ["RESHAPE", "TILE"]


@pytest.mark.parametrize("shape,axis", [((2, 7), -1), ((1, 4, 6), 1)])
def test_log_softmax_any_axis_float_and_in_litert(tmp_path, shape, axis):
    """LogSoftmax imports on any axis (LOG_SOFTMAX over the last IR axis); the float file
    runs in LiteRT on both resolvers; in a quantized graph it is a float island."""
    b = OnnxBuilder(13)
    h = b.node("Mul", [b.input("x", list(shape)), b.init(np.float32(1.5), "k")])
    b.node("Mul", [b.node("LogSoftmax", [h], axis=axis), b.init(np.float32(0.5), "k")], out="y")
    b.output("y")
    x = rnd(*shape, seed=1, scale=3)
    g = compare_with_ort(b.model(), {"x": x}, tmp_path, rtol=1e-5)
    assert "LOG_SOFTMAX" in ops_of(g)
    want = qatir.run(g, {"x": x})["y"]
    for ref in (True, False):
        got, _ = litert_run(to_tflite(g), {"x": x}, ref)
        np.testing.assert_allclose(got["y"], want, rtol=1e-5, atol=1e-5)
    q = qatir.quantize(g)
    qatir.calibrate(q, [{"x": x}], progress=False)
    assert [r["op"] for r in summary(lower(q))["float"]] == ["LOG_SOFTMAX"]


def test_nan_from_a_float_island_quantizes_as_litert_does():
    """EfficientViT's linear attention divides by a sum that int8 can make exactly 0: 0/0 in
    the float DIV island, then QUANTIZE. XNNPACK writes 127 for NaN and +inf, the builtin
    kernel -128 for both; the reference predicts each (bit-exact on feeds making NaN, inf)."""
    import warnings

    from tests.helpers import QB

    qb = QB(seed=0)
    x, y = qb.input("x", [1, 8], -1, 1), qb.input("y", [1, 8], 0, 2)
    g = qb.output(qb.op("DIV", [x, y], None, (-3, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lg = lower(g, io="int8")
        buf = to_tflite(g, io="int8")
    zx, zy = (t.quant.zero_point[0] for t in lg.inputs)
    feeds = {"x": np.full((1, 8), zx, np.int8), "y": np.full((1, 8), zy, np.int8)}
    feeds["x"][0, :4] = zx + 10  # finite lanes too
    feeds["y"][0, :2] = zy + 50
    for ref, mode in ((True, "reference"), (False, "xnnpack")):
        got, _ = litert_run(buf, feeds, ref)
        want = qatir.run_reference(g, feeds, kernels=mode)
        out = lg.outputs[0].name
        np.testing.assert_array_equal(got[out], want[out])
        assert want[out][0, -1] == (-128 if ref else 127)


def test_default_table_places_fake_quant_for_attention_and_training_sees_deployment(tmp_path):
    """FAKE_QUANT after Q·Kᵀ, softmax (fixed 1/256, -128), ·V and the residual ADD, the
    right-hand inputs symmetric: the fake-quant TF execution (what QAT trains) is within
    1 LSB of the int8 integer reference (what LiteRT runs) on a fresh input."""
    g = qatir.load(save(attention_block(2, "matmul"), tmp_path / "a.onnx"))
    q = _quantized(g, (1, 6, 8), n=8)
    after = {n.name: n.outputs[0].uses for n in q.nodes
             if n.op in ("BATCH_MATMUL", "SOFTMAX", "ADD")}
    assert all(len(u) == 1 and u[0][0].op == "FAKE_QUANT" for u in after.values()), after
    sm = next(n for n in q.nodes if n.op == "SOFTMAX").outputs[0].uses[0][0]
    assert sm.attrs["quantizer"] == "fixed"
    assert (sm.outputs[0].quant.scale, sm.outputs[0].quant.zero_point) == ((1 / 256,), (-128,))
    lg = lower(q, io="int8")
    for n in (n for n in lg.nodes if n.op == "BATCH_MATMUL"):
        assert n.inputs[1].quant.zero_point == (0,)
    x = np.random.default_rng(9).standard_normal((1, 6, 8)).astype(np.float32)
    trained = qatir.run(q, {"x": x})["y"]
    (si,), (zi,) = lg.inputs[0].quant.scale, lg.inputs[0].quant.zero_point
    xi = np.clip(np.round(x / si) + zi, -128, 127).astype(np.int8)
    deployed = qatir.run_reference(q, {"x": xi})["y"].astype(np.float64)
    (so,), (zo,) = lg.outputs[0].quant.scale, lg.outputs[0].quant.zero_point
    assert np.abs(np.round(trained / so) + zo - deployed).max() <= 1


def test_matmul_plus_bias_becomes_one_fully_connected(tmp_path):
    """The exporters' MatMul + Add(bias) of every projection folds into the FC's bias
    (fold_bias_add): one requantization, no ADD that XNNPACK refuses for its scale ratio."""
    g = qatir.load(save(attention_block(2, "matmul"), tmp_path / "a.onnx"))
    q = qatir.quantize(g)
    fcs = [n for n in q.nodes if n.op == "FULLY_CONNECTED"]
    assert len(fcs) == 4 and all(len(n.inputs) == 3 and n.inputs[2].is_const for n in fcs)
    assert [n.op for n in q.nodes].count("ADD") == 1  # the residual
    x = rnd(1, 6, 8, seed=3)
    from qatir.pipeline import FLOAT_PIPELINE

    folded = qatir.quantize(g, passes=list(FLOAT_PIPELINE))
    assert [n.op for n in folded.nodes].count("ADD") == 1
    np.testing.assert_allclose(qatir.run(folded, {"x": x})["y"], qatir.run(g, {"x": x})["y"],
                               rtol=1e-5, atol=1e-6)


def test_batch_matmul_above_rank_5_is_refused_naming_the_node():
    from tests.helpers import QB

    qb = QB(seed=0)
    a = qb.input("a", [1, 2, 2, 2, 3, 4], -1, 1)
    b = qb.fq(qb.g.add_input("b", [1, 2, 2, 2, 4, 3]), -1, 1, narrow=True)
    g = qb.output(qb.op("BATCH_MATMUL", [a, b], None, (-4, 4), name="big_bmm"))
    with pytest.raises(QatirError, match="big_bmm.*ranks 2 to 5"):
        to_tflite(g)


def test_quantize_of_values_beyond_int32_wraps_as_litert_builtin():
    """LiteRT's builtin QUANTIZE casts round(x / scale) to int32 (x86: INT32_MIN when out of
    range) and adds the zero point with wrap-around: a huge finite value lands at -128 for
    zero point >= 0 and at 127 for a negative one; XNNPACK saturates. Both predicted."""
    import warnings

    from tests.helpers import QB

    for lo, hi in ((-1e-6, 1e-6), (-1e-7, 5e-7)):  # zero point 0 and negative, tiny scales
        qb = QB(seed=0)
        x, y = qb.input("x", [1, 8], -1, 1), qb.input("y", [1, 8], 0, 2)
        g = qb.output(qb.op("DIV", [x, y], None, (lo, hi)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lg = lower(g, io="int8")
            buf = to_tflite(g, io="int8")
        zx, zy = (t.quant.zero_point[0] for t in lg.inputs)
        feeds = {"x": np.full((1, 8), zx + 100, np.int8).clip(-128, 127),
                 "y": np.full((1, 8), zy, np.int8)}
        feeds["y"][0, :4] = zy + 1  # large finite quotients next to x/0
        out = lg.outputs[0].name
        for ref, mode in ((True, "reference"), (False, "xnnpack")):
            got, _ = litert_run(buf, feeds, ref)
            np.testing.assert_array_equal(got[out],
                                          qatir.run_reference(g, feeds, kernels=mode)[out])


def test_symmetric_inputs_is_table_policy(tmp_path):
    """Without constraints.symmetric_inputs the right-hand sides keep asymmetric ranges:
    still bit-exact (LiteRT's reference kernel runs them), but XNNPACK leaves them; an
    unknown op in the entry is refused naming it."""
    import tomllib

    from qatir.errors import TableError
    from qatir.table import builtin_tables, validate_table

    data = tomllib.loads(builtin_tables()["int8_default"].read_text())
    del data["constraints"]["symmetric_inputs"]
    g = compare_with_ort(attention_block(2, "matmul"), {"x": rnd(1, 6, 8, seed=1)}, tmp_path)
    q = qatir.quantize(g, table=data)
    rng = np.random.default_rng(0)
    qatir.calibrate(q, [{"x": rng.standard_normal((1, 6, 8)).astype(np.float32)}
                        for _ in range(4)], progress=False)
    zps = [n.inputs[1].quant.zero_point[0] for n in lower(q).nodes if n.op == "BATCH_MATMUL"]
    assert any(z != 0 for z in zps), zps
    cover = xnnpack_coverage(to_tflite(q))
    assert not all(taken for op, taken in cover if op == "BATCH_MATMUL")
    assert compare_all(q) == {"reference": 0, "xnnpack": 0}
    data["constraints"]["symmetric_inputs"] = {"BATCH_MATMULL": [1]}
    with pytest.raises(TableError, match="constraints.symmetric_inputs: unknown op 'BATCH_MATMULL'"):
        validate_table(data, "mine.toml")

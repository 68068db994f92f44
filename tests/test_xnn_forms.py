"""The ``xnn_forms`` lowering step's strided-slice form: a spatially strided int8
STRIDED_SLICE becomes SPACE_TO_DEPTH plus a stride-1 slice, which XNNPACK takes."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from qatir.lower import lower
from qatir.parity import xnnpack_coverage
from qatir.tflite_writer import to_tflite
from tests.helpers import QB, compare_all, int8_feed

BIG = 1 << 31


def _patch_merging(qb: QB, hw: int = 8, ch: int = 6):
    """Swin's patch merging: the four phases x[:, i::2, j::2, :] concatenated on channels."""
    x = qb.input("x", [1, hw, hw, ch], -2, 2)
    y = qb.conv("CONV_2D", x, [ch, 1, 1, ch], {"padding": "VALID"}, (-3, 3))
    parts = [qb.op("STRIDED_SLICE", [y], {"begin": [0, i, j, 0], "end": [1, BIG, BIG, ch],
                                          "strides": [1, 2, 2, 1]}, name=f"s{i}{j}")
             for i, j in ((0, 0), (1, 0), (0, 1), (1, 1))]
    return qb.op("CONCATENATION", parts, {"axis": 3}, None, name="cat")


def _ops(g) -> list[str]:
    return [n.op for n in g.nodes]


def test_patch_merging_slices_share_one_delegated_space_to_depth():
    qb = QB(seed=7)
    g = qb.output(_patch_merging(qb))
    lg = lower(g)
    assert _ops(lg).count("SPACE_TO_DEPTH") == 1 and _ops(lg).count("STRIDED_SLICE") == 4
    assert all(n.attrs["strides"] == [1, 1, 1, 1] for n in lg.nodes if n.op == "STRIDED_SLICE")
    cover = xnnpack_coverage(to_tflite(g))
    assert all(taken for _, taken in cover), cover
    assert compare_all(g) == {"reference": 0, "xnnpack": 0}


def test_slice_form_outputs_equal_the_strided_slice():
    """The rewritten graph returns the very values of x[:, i::2, j::2, :]: the conv output
    is a graph output too, and each phase output equals numpy's strided slice of it."""
    from qatir.reference import run_reference

    qb = QB(seed=8)
    x = qb.input("x", [1, 6, 4, 5], -2, 2)
    y = qb.conv("CONV_2D", x, [5, 1, 1, 5], {"padding": "VALID"}, (-3, 3))
    cases = {"a": ([0, 1, 0, 1], [1, 6, 4, 4]), "b": ([0, 2, 3, 0], [1, 5, 4, 5]),
             "c": ([0, 0, 1, 2], [1, 4, BIG, 3])}
    outs = [qb.op("STRIDED_SLICE", [y], {"begin": b, "end": e, "strides": [1, 2, 2, 1]},
                  name=k) for k, (b, e) in cases.items()]
    g = qb.output(y, *outs)
    lg = lower(g)
    assert _ops(lg).count("SPACE_TO_DEPTH") == 1
    feeds = int8_feed(g, 2)
    got = run_reference(g, feeds)
    yq = got[g.outputs[0].name]
    for t, (b, e) in zip(g.outputs[1:], cases.values()):
        want = yq[tuple(slice(lo, hi, s) for lo, hi, s in zip(b, e, [1, 2, 2, 1]))]
        np.testing.assert_array_equal(got[t.name], want)
    assert all(taken for _, taken in xnnpack_coverage(to_tflite(g)))
    assert compare_all(g) == {"reference": 0, "xnnpack": 0}


@pytest.mark.parametrize("attrs, shape", [
    ({"begin": [0, 0, 0, 0], "end": [1, 7, 8, 4], "strides": [1, 2, 2, 1]}, [1, 7, 8, 4]),
    ({"begin": [0, 0, 0, 0], "end": [1, 8, 8, 4], "strides": [1, 2, 1, 1]}, [1, 8, 8, 4]),
    ({"begin": [0, 0, 0, 0], "end": [1, 8, 8, 4], "strides": [1, 2, 2, 2]}, [1, 8, 8, 4]),
])
def test_slices_without_a_space_to_depth_form_stay(attrs, shape):
    """H not divisible by the stride, unequal H/W strides, a channel stride: no form."""
    qb = QB(seed=9)
    g = qb.output(qb.op("STRIDED_SLICE", [qb.input("x", shape, -1, 1)], attrs))
    assert _ops(lower(g)) == ["STRIDED_SLICE"]


def test_forms_can_be_chosen(monkeypatch):
    """The step applies DEFAULT_FORMS; without the slice form the slices stay strided."""
    xnn_forms = importlib.import_module("qatir.lowering.xnn_forms")  # the module, not the step
    assert xnn_forms.DEFAULT_FORMS <= set(xnn_forms.FORMS)
    monkeypatch.setattr(xnn_forms, "DEFAULT_FORMS",
                        xnn_forms.DEFAULT_FORMS - {"strided_slice_s2d"})
    qb = QB(seed=7)
    lg = lower(qb.output(_patch_merging(qb)))
    assert "SPACE_TO_DEPTH" not in _ops(lg)
    assert [n.attrs["strides"] for n in lg.nodes if n.op == "STRIDED_SLICE"] == [[1, 2, 2, 1]] * 4


def _turn_on(monkeypatch, form: str) -> None:
    """Forms off by default (measured not faster) are turned on for their tests."""
    forms = importlib.import_module("qatir.lowering.xnn_forms")
    assert form in forms.FORMS and form not in forms.DEFAULT_FORMS
    monkeypatch.setattr(forms, "DEFAULT_FORMS", forms.DEFAULT_FORMS | {form})


@pytest.fixture
def with_nearest_form(monkeypatch):
    _turn_on(monkeypatch, "nearest_as_d2s")


@pytest.fixture
def with_gather_form(monkeypatch):
    _turn_on(monkeypatch, "gather_as_slices")


@pytest.fixture
def with_maxpool_pad_form(monkeypatch):
    _turn_on(monkeypatch, "maxpool_pad_at_zero")


@pytest.mark.parametrize("half", [False, True])
def test_nearest_upsample_by_two_is_a_delegated_depth_to_space(half, with_nearest_form):
    """RESIZE_NEAREST_NEIGHBOR x2 (no XNNPACK case) becomes D2S(2) of 4 channel copies:
    both delegated, bit-exact, and equal to numpy's repeat of the resize input."""
    from qatir.reference import run_reference

    qb = QB(seed=10)
    x = qb.input("x", [1, 3, 5, 4], -2, 2)
    y = qb.conv("CONV_2D", x, [4, 1, 1, 4], {"padding": "VALID"}, (-3, 3))
    up = qb.op("RESIZE_NEAREST_NEIGHBOR", [y], {"size": [6, 10], "half_pixel_centers": half})
    g = qb.output(y, up)
    assert _ops(lower(g)) == ["CONV_2D", "CONCATENATION", "DEPTH_TO_SPACE"]
    cover = xnnpack_coverage(to_tflite(g))
    assert all(taken for _, taken in cover), cover
    assert compare_all(g) == {"reference": 0, "xnnpack": 0}
    got = run_reference(g, int8_feed(g, 4))
    yq, upq = (got[t.name] for t in g.outputs)
    np.testing.assert_array_equal(upq, yq.repeat(2, axis=1).repeat(2, axis=2))


@pytest.mark.parametrize("attrs", [
    {"size": [6, 10], "align_corners": True, "half_pixel_centers": True},  # not o // 2
    {"size": [9, 15]},                            # factor 3
    {"size": [6, 5]},                             # only H doubled
])
def test_other_nearest_resizes_stay(attrs, with_nearest_form):
    qb = QB(seed=11)
    g = qb.output(qb.op("RESIZE_NEAREST_NEIGHBOR", [qb.input("x", [1, 3, 5, 4], -1, 1)], attrs))
    assert _ops(lower(g)) == ["RESIZE_NEAREST_NEIGHBOR"]


def test_two_one_axis_slices_compose_into_the_space_to_depth_form():
    """ONNX spells x[:, i::2, j::2] as a slice of H then one of W (YOLOX's Focus): the pair
    composes into one stride-2 slice of x, then the SPACE_TO_DEPTH form; the inner slice
    is dead and removed. Bit-exact and equal to numpy's slice."""
    from qatir.reference import run_reference

    qb = QB(seed=12)
    x = qb.input("x", [1, 8, 6, 3], -2, 2)
    y = qb.conv("CONV_2D", x, [3, 1, 1, 3], {"padding": "VALID"}, (-3, 3))
    parts = []
    for i, j in ((0, 0), (1, 0), (0, 1), (1, 1)):
        hs = qb.op("STRIDED_SLICE", [y], {"begin": [0, i, 0, 0], "end": [1, BIG, 6, 3],
                                          "strides": [1, 2, 1, 1]})
        parts.append(qb.op("STRIDED_SLICE", [hs], {"begin": [0, 0, j, 0], "end": [1, 4, BIG, 3],
                                                   "strides": [1, 1, 2, 1]}))
    g = qb.output(y, qb.op("CONCATENATION", parts, {"axis": 3}, None, name="cat"))
    lg = lower(g)
    assert _ops(lg).count("SPACE_TO_DEPTH") == 1 and _ops(lg).count("STRIDED_SLICE") == 4
    cover = xnnpack_coverage(to_tflite(g))
    assert all(taken for _, taken in cover), cover
    assert compare_all(g) == {"reference": 0, "xnnpack": 0}
    got = run_reference(g, int8_feed(g, 5))
    yq, cat = (got[t.name] for t in g.outputs)
    want = np.concatenate([yq[:, i::2, j::2] for i, j in ((0, 0), (1, 0), (0, 1), (1, 1))], 3)
    np.testing.assert_array_equal(cat, want)


def _unchanged_by(form: str, g, monkeypatch, seeds=(1, 2, 3)) -> None:
    """The graph's outputs with ``form`` equal those without it, on both reference modes."""
    from qatir.reference import run_reference

    forms = importlib.import_module("qatir.lowering.xnn_forms")
    on = lower(g)
    monkeypatch.setattr(forms, "DEFAULT_FORMS", forms.DEFAULT_FORMS - {form})
    off = lower(g)
    monkeypatch.undo()
    assert str(on) != str(off)
    for seed in seeds:
        feeds = int8_feed(g, seed)
        for mode in ("reference", "xnnpack"):
            a, b = run_reference(on, feeds, kernels=mode), run_reference(off, feeds, kernels=mode)
            for name in a:
                np.testing.assert_array_equal(a[name], b[name], err_msg=f"{name} {mode}")


def test_squeeze_is_a_delegated_reshape(monkeypatch):
    qb = QB(seed=13)
    x = qb.input("x", [1, 4, 1, 8], -2, 2)
    y = qb.conv("CONV_2D", x, [8, 1, 1, 8], {"padding": "VALID"}, (-3, 3))
    g = qb.output(qb.op("SQUEEZE", [y], {"squeeze_dims": [2]}))
    assert _ops(lower(g)) == ["CONV_2D", "RESHAPE"]
    cover = xnnpack_coverage(to_tflite(g))
    assert cover == [("CONV_2D", True), ("RESHAPE", True)], cover
    assert compare_all(g) == {"reference": 0, "xnnpack": 0}
    _unchanged_by("squeeze_as_reshape", g, monkeypatch)


def _relu_pad_pool(qb: QB, act: str, pads=((1, 1), (1, 1))):
    """conv (fused ``act``) on a grid with zero point above -128 -> PAD(-inf) -> max pool."""
    x = qb.input("x", [1, 8, 8, 4], -2, 2)
    y = qb.conv("CONV_2D", x, [4, 3, 3, 4], {"padding": "SAME", "fused_activation": act},
                (-2.0, 6.0))
    p = qb.op("PAD", [y], {"paddings": [[0, 0], list(pads[0]), list(pads[1]), [0, 0]],
                           "constant_value": float(np.finfo(np.float32).min)})
    return qb.op("MAX_POOL_2D", [p], {"filter": [3, 3], "stride": [2, 2], "padding": "VALID"})


@pytest.mark.parametrize("act", ["RELU", "RELU6"])
def test_max_pool_padding_of_a_clamped_tensor_is_a_delegated_pad(act, monkeypatch,
                                                                  with_maxpool_pad_form):
    """-inf padding before a max pool, of a ReLU output whose zero point is above -128
    (DenseNet's stem on the dense block's grid): padding with the zero point is the same
    pool, and it is a PAD, which XNNPACK takes (PADV2 it does not)."""
    qb = QB(seed=14)
    g = qb.output(_relu_pad_pool(qb, act))
    assert lower(g).outputs[0].quant.zero_point[0] > -128
    cover = xnnpack_coverage(to_tflite(g))
    assert cover == [("CONV_2D", True), ("PAD", True), ("MAX_POOL_2D", True)], cover
    assert compare_all(g) == {"reference": 0, "xnnpack": 0}
    _unchanged_by("maxpool_pad_at_zero", g, monkeypatch)


@pytest.mark.parametrize("act, pads", [("NONE", ((1, 1), (1, 1))), ("RELU", ((3, 0), (1, 1)))])
def test_other_padding_is_a_delegated_concatenation_of_constant_blocks(act, pads, monkeypatch):
    """No clamp at the zero point, or a window of padding only: the zero point would change
    the pool, so the -inf padding (PADV2) becomes constant blocks of its int8 value
    concatenated on each padded axis: delegated, bit-exact, outputs unchanged."""
    qb = QB(seed=14)
    g = qb.output(_relu_pad_pool(qb, act, pads))
    cover = xnnpack_coverage(to_tflite(g))
    assert cover == [("CONV_2D", True), ("CONCATENATION", True), ("CONCATENATION", True),
                     ("MAX_POOL_2D", True)], cover
    assert compare_all(g) == {"reference": 0, "xnnpack": 0}
    _unchanged_by("pad_as_concat", g, monkeypatch)
    monkeypatch.setattr(importlib.import_module("qatir.lowering.xnn_forms"), "DEFAULT_FORMS",
                        frozenset())
    assert [op for op, _ in xnnpack_coverage(to_tflite(g))] == ["CONV_2D", "PADV2",
                                                                "MAX_POOL_2D"]


def test_slice_form_leaves_outputs_unchanged(monkeypatch):
    qb = QB(seed=7)
    _unchanged_by("strided_slice_s2d", qb.output(_patch_merging(qb)), monkeypatch)


@pytest.mark.parametrize("indices, want_ops", [
    (np.int32(1), ["STRIDED_SLICE", "RESHAPE"]),                         # qkv[1]
    (np.array([2, 3, 4], np.int32), ["STRIDED_SLICE"]),                   # one run
    (np.array([3, 4, 5, 0, 1, 2], np.int32), ["STRIDED_SLICE"] * 2 + ["CONCATENATION"]),  # roll
    (np.array([-1, 0], np.int32), ["STRIDED_SLICE"] * 2 + ["CONCATENATION"]),
])
def test_gather_of_constant_runs_is_delegated_slices(indices, want_ops, monkeypatch,
                                                     with_gather_form):
    qb = QB(seed=15)
    x = qb.input("x", [1, 6, 4, 5], -2, 2)
    y = qb.conv("CONV_2D", x, [5, 1, 1, 5], {"padding": "VALID"}, (-3, 3))
    g = qb.output(qb.op("GATHER", [y, qb.g.const(indices, name="idx")], {"axis": 1}))
    assert sorted(_ops(lower(g))) == sorted(["CONV_2D", *want_ops])
    cover = xnnpack_coverage(to_tflite(g))
    assert all(taken for _, taken in cover), cover
    assert compare_all(g) == {"reference": 0, "xnnpack": 0}
    _unchanged_by("gather_as_slices", g, monkeypatch)


def test_gather_of_scattered_indices_stays(with_gather_form):
    qb = QB(seed=15)
    x = qb.input("x", [1, 12, 4], -2, 2)
    idx = qb.g.const(np.array([0, 2, 4, 6, 8, 10], np.int32), name="idx")  # 6 runs
    g = qb.output(qb.op("GATHER", [x, idx], {"axis": 1}))
    assert _ops(lower(g)) == ["GATHER"]


def _windows_summing_to_every_value(n: int) -> np.ndarray:
    """[1, 1, n, 255·n + ...] int8: channel c's n values sum to the c-th of every sum an
    n-window of int8 values can have (-128·n .. 127·n)."""
    sums = np.arange(-128 * n, 127 * n + 1)
    base, extra = np.divmod(sums, n)
    vals = base[None, :] + (np.arange(n)[:, None] < extra[None, :])
    return vals.astype(np.int8).reshape(1, 1, n, sums.size)


@pytest.mark.parametrize("filt, stride", [((1, 3), (1, 3)), ((1, 1), (1, 2)), ((1, 5), (1, 5))])
def test_odd_valid_average_pool_is_an_exact_delegated_depthwise_conv(filt, stride, monkeypatch):
    """AVERAGE_POOL_2D (int8 refused by XNNPACK) with VALID padding and an odd window
    count is a DEPTHWISE_CONV_2D of weights 127 on 1/(127·n): for every sum a window can
    have, LiteRT's file (both resolvers), the reference with and without the form agree."""
    n = filt[0] * filt[1]
    x8 = _windows_summing_to_every_value(n)
    if stride[1] != n:  # 1x1 windows: every value, strided
        x8 = np.arange(-128, 128, dtype=np.int8).reshape(1, 1, 1, 256).repeat(2, axis=2)
    qb = QB(seed=16)
    x = qb.input("x", list(x8.shape), -1.3, 2.1)
    g = qb.output(qb.op("AVERAGE_POOL_2D", [x], {"filter": list(filt), "stride": list(stride),
                                                 "padding": "VALID"}))
    lg = lower(g)
    assert _ops(lg) == ["DEPTHWISE_CONV_2D"]
    buf = to_tflite(g)
    assert xnnpack_coverage(buf) == [("DEPTHWISE_CONV_2D", True)]
    from qatir.reference import run_reference
    from tests.helpers import litert_run

    forms = importlib.import_module("qatir.lowering.xnn_forms")
    monkeypatch.setattr(forms, "DEFAULT_FORMS", forms.DEFAULT_FORMS - {"avgpool_as_dwconv"})
    pool = lower(g)
    assert _ops(pool) == ["AVERAGE_POOL_2D"]
    feeds = {"x": x8}
    (want,) = run_reference(pool, feeds).values()
    for ref, mode in ((True, "reference"), (False, "xnnpack")):
        (got,) = litert_run(buf, feeds, ref)[0].values()
        np.testing.assert_array_equal(got, want, err_msg=mode)
        (mine,) = run_reference(lg, feeds, kernels=mode).values()
        np.testing.assert_array_equal(mine, want, err_msg=mode)


@pytest.mark.parametrize("attrs", [
    {"filter": [2, 2], "stride": [2, 2], "padding": "VALID"},   # even count: ties
    {"filter": [3, 3], "stride": [1, 1], "padding": "SAME"},    # border counts differ
])
def test_other_average_pools_stay(attrs):
    qb = QB(seed=17)
    g = qb.output(qb.op("AVERAGE_POOL_2D", [qb.input("x", [1, 6, 6, 4], -1, 1)], attrs))
    assert _ops(lower(g)) == ["AVERAGE_POOL_2D"]


def test_every_form_passes_over_the_other_ops():
    """Each form looks at its own op only: a graph with one node of each op they rewrite
    plus others lowers (every form sees every node)."""
    qb = QB(seed=18)
    x = qb.input("x", [1, 8, 8, 4], -2, 2)
    y = qb.conv("CONV_2D", x, [4, 3, 3, 4], {"padding": "SAME", "fused_activation": "RELU"},
                (-1, 6))
    pool = qb.op("AVERAGE_POOL_2D", [y], {"filter": [3, 3], "stride": [2, 2],
                                          "padding": "VALID"})
    sl = qb.op("STRIDED_SLICE", [y], {"begin": [0, 0, 0, 0], "end": [1, 8, 8, 4],
                                      "strides": [1, 2, 2, 1]})
    g = qb.output(pool, sl, qb.op("MAX_POOL_2D", [y], {"filter": [2, 2], "stride": [2, 2]}),
                  qb.op("SQUEEZE", [qb.op("MEAN", [y], {"axis": [1, 2], "keep_dims": True},
                                          (0, 3))], {"squeeze_dims": [1, 2]}))
    assert all(taken for _, taken in xnnpack_coverage(to_tflite(g)))
    assert compare_all(g) == {"reference": 0, "xnnpack": 0}

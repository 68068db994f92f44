"""A conv/FC bias that overflows int32 at in x weight scale widens the weight scale (as
TFLite's converter does) instead of clipping the bias; LiteRT runs it bit-exact with the
integer reference on both resolvers, and the output follows the float one."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from qatir.lower import lower
from qatir.reference import run_reference
from tests.helpers import QB, compare_all, int8_feed

RNG = np.random.default_rng(7)
BIAS = np.linspace(-1.5, 1.5, 6).astype(np.float32)  # distinct per channel


def _graph(op: str, out: float = 2.0) -> tuple:
    qb = QB(0)
    if op == "CONV_2D":
        x = qb.input("x", [1, 3, 3, 4], -1.0, 1.0)
        w = (RNG.normal(0, 1e-8, (6, 1, 1, 4))).astype(np.float32)  # tiny weight scale
        wq = qb.weight(w, 0, name="w")
        attrs = {"padding": "VALID"}
    else:
        x = qb.input("x", [1, 4], -1.0, 1.0)
        w = (RNG.normal(0, 1e-8, (6, 4))).astype(np.float32)
        wq = qb.weight(w, None, name="w")
        attrs = {}
    b = qb.g.const(BIAS, name="b")
    g = qb.output(qb.op(op, [x, wq, b], attrs, rng=(-out, out), name="node"))
    return g, w.reshape(6, 4)


def _dequant(t, q):
    return (q.astype(np.float64) - t.quant.zero_point[0]) * t.quant.scale[0]


@pytest.mark.parametrize("op", ["CONV_2D", "FULLY_CONNECTED"])
def test_overflowing_bias_widens_weight_scale(op):
    g, w = _graph(op)
    s_in, s_w = 2 / 255, float(np.abs(w).max()) / 127
    assert np.abs(BIAS).max() / (s_in * s_w) > 2**31  # the bias overflows at these scales
    with pytest.warns(UserWarning, match=r"node 'node'.*weight scale of channel.*widened so "
                      "the bias %b fits int32") as rec:
        lg = lower(g)
    assert not any("clipped" in str(r.message) for r in rec)
    node = next(n for n in lg.nodes if n.op == op)
    qb = node.inputs[2].data
    assert np.all(np.abs(qb.astype(np.int64)) <= 2**30)  # head-room for the accumulator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert compare_all(g) == {"reference": 0, "xnnpack": 0}
        feeds = int8_feed(g)
        got = run_reference(g, feeds)
    xin, yout = lg.inputs[0], lg.outputs[0]
    xf = _dequant(xin, feeds[xin.name]).reshape(-1, 4)
    want = (xf @ w.T.astype(np.float64) + BIAS).reshape(-1)
    y = _dequant(yout, got[g.outputs[0].name]).reshape(-1)
    step = yout.quant.scale[0]
    assert np.abs(y - want).max() <= 1.01 * step  # the float output, to one step
    assert np.ptp(y) > 100 * step  # not one constant value (clipping gave ~0 everywhere)


@pytest.mark.parametrize("op", ["CONV_2D", "FULLY_CONNECTED"])
def test_widening_stops_at_the_xnnpack_requantization_limit(op):
    """Output range 1e-10: the fitting scale would give in x w / out >= 256, which XNNPACK
    refuses; the scale stops below it and the rest is clipped. The bias is then still
    billions of output steps, so every output saturates to the float bias's sign."""
    g, _ = _graph(op, out=1e-10)
    with pytest.warns(UserWarning) as rec:
        lg = lower(g)
    msgs = " ".join(str(r.message) for r in rec)
    assert "widened so the bias %b fits int32" in msgs and "clipped" in msgs
    node = next(n for n in lg.nodes if n.op == op)
    ratio = (np.asarray(node.inputs[2].quant.scale) / lg.outputs[0].quant.scale[0])
    assert np.all(ratio < 256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert compare_all(g) == {"reference": 0, "xnnpack": 0}
        got = run_reference(g, int8_feed(g))[g.outputs[0].name].reshape(-1, 6)
    want = np.where(BIAS > 0, 127, -128)
    assert np.all(got == want)


@pytest.mark.parametrize("op", ["CONV_2D", "FULLY_CONNECTED"])
def test_a_bias_that_fits_int32_with_its_accumulator_is_kept_exact(op):
    """|bias| / (in x w scale) = 1.5e9: past 2^30 (where it was clipped, costing RepVGG-A0
    0.65 dB) but inside int32 with the largest accumulator the weights can add, so it is
    stored exactly, without widening or clipping, and LiteRT still matches the reference."""
    qb = QB(0)
    shape = [1, 3, 3, 4] if op == "CONV_2D" else [1, 4]
    x = qb.input("x", shape, -1.0, 1.0)
    w = RNG.normal(0, 1e-3, (6, 1, 1, 4) if op == "CONV_2D" else (6, 4)).astype(np.float32)
    wq = qb.weight(w, 0 if op == "CONV_2D" else None, name="w")
    s_in = np.float32(2 / 255)
    s_w = (np.abs(w).reshape(6, -1).max(axis=1) if op == "CONV_2D"
           else np.full(6, np.abs(w).max())).astype(np.float32) / np.float32(127)
    bias = (1.5e9 * s_in * s_w * np.sign(BIAS)).astype(np.float32)
    attrs = {"padding": "VALID"} if op == "CONV_2D" else {}
    g = qb.output(qb.op(op, [x, wq, qb.g.const(bias, name="b")], attrs, rng=(-2.0, 2.0),
                        name="node"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither widened nor clipped
        lg = lower(g)
    node = next(n for n in lg.nodes if n.op == op)
    stored = node.inputs[2].data.astype(np.int64)
    assert np.all(np.abs(stored) > 2**30)
    b_s = np.asarray(node.inputs[2].quant.scale, np.float64)
    np.testing.assert_array_equal(stored, np.round(bias.astype(np.float64) / b_s))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert compare_all(g) == {"reference": 0, "xnnpack": 0}

"""Integer reference vs LiteRT, bit for bit: BUILTIN_REF == kernels="reference" and the
default resolver (XNNPACK) == kernels="xnnpack", for every op the writer emits, alone and
in small graphs."""

from __future__ import annotations

import numpy as np
import pytest

from qatir.errors import ExportError
from qatir.reference import run_reference
from qatir.reference_math import mbqm, quantize_multiplier, srdhm
from tests.helpers import CASES, QB, compare_all, int8_feed
from tests.helpers.cases import RANDOM_CASES, rr  # noqa: F401


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_matches_litert_bit_exact(case):
    qb = QB(seed=3)
    g = qb.output(CASES[case](qb))
    worst = compare_all(g, seeds=(1, 2))
    assert worst == {"reference": 0, "xnnpack": 0}


def test_reference_outputs_are_not_trivially_saturated():
    """Guard against vacuous exactness: a conv's outputs cover much of the int8 range."""
    qb = QB(seed=3)
    g = qb.output(CASES["conv_same_s2"](qb))
    out = run_reference(g, int8_feed(g))
    vals = next(iter(out.values()))
    assert len(np.unique(vals)) > 60
    assert (vals == 127).mean() < 0.2 and (vals == -128).mean() < 0.2


def test_mbqm_double_rounding_matches_hand_values():
    qm, shift = quantize_multiplier(0.5)
    assert (qm, shift) == (1 << 30, 0)
    # gemmlowp's high multiply nudges ties upward: 1.5 -> 2, -1.5 -> -1
    assert mbqm(np.array([3, -3]), qm, shift).tolist() == [2, -1]
    # 0.25 = 2^30 * 2^-31 * 2^-1: rounding twice turns 5 * 0.25 = 1.25 into 2 (double rounding)
    qm, shift = quantize_multiplier(0.25)
    assert mbqm(np.array([6, -6, 5]), qm, shift).tolist() == [2, -2, 2]
    assert int(srdhm(np.array(-(2**31)), -(2**31))) == 2**31 - 1
    qm, shift = quantize_multiplier(3.0)
    assert mbqm(np.array([5]), qm, shift).tolist() == [15]


def test_reference_rejects_float_graph_and_bad_mode():
    qb = QB()
    x = qb.g.add_input("x", [1, 4])
    g = qb.output(qb.op("RELU", [x]))
    with pytest.raises(ExportError, match="float graph"):
        run_reference(g, {"x": np.zeros((1, 4), np.float32)})
    qb = QB()
    g = qb.output(CASES["relu"](qb))
    with pytest.raises(ExportError, match="kernels"):
        run_reference(g, int8_feed(g), kernels="gpu")


def test_reference_accepts_lowered_graph_and_checks_feed_dtype():
    from qatir.lower import lower

    qb = QB(seed=3)
    g = qb.output(CASES["conv_same_s2"](qb))
    feeds = int8_feed(g)
    lowered = lower(g)
    a = run_reference(g, feeds)
    b = run_reference(lowered, feeds)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(ExportError, match="expected int8"):
        run_reference(g, {"x": feeds["x"].astype(np.float32)})


def test_pipeline_quantized_graph_is_bit_exact():
    """A graph quantized and calibrated by qatir's own pipeline, end to end."""
    import qatir

    rng = np.random.default_rng(0)
    qb = QB(seed=0)
    x = qb.g.add_input("x", [1, 16, 16, 3])

    def c(shape, name):
        return qb.g.const(rng.normal(0, 0.3, shape).astype(np.float32), name=name)

    y = qb.op(
        "CONV_2D",
        [x, c((8, 3, 3, 3), "w1"), c((8,), "b1")],
        {"padding": "SAME", "stride": [2, 2], "fused_activation": "RELU6"},
    )
    z = qb.op(
        "DEPTHWISE_CONV_2D",
        [y, c((1, 3, 3, 8), "w2"), c((8,), "b2")],
        {"padding": "SAME", "fused_activation": "RELU6"},
    )
    z = qb.op("CONV_2D", [z, c((8, 1, 1, 8), "w3"), c((8,), "b3")], {"padding": "VALID"})
    s = qb.op("ADD", [y, z])
    a = qb.op("AVERAGE_POOL_2D", [s], {"filter": [2, 2], "stride": [2, 2]})
    h = qb.op("HARD_SWISH", [a])
    cat = qb.op("CONCATENATION", [h, a], {"axis": 3})
    m = qb.op("MEAN", [cat], {"axis": [1, 2], "keep_dims": False})
    f = qb.op("FULLY_CONNECTED", [m, c((10, 16), "wf"), c((10,), "bf")])
    g = qb.output(qb.op("SOFTMAX", [f]))
    q = qatir.quantize(g)
    qatir.calibrate(
        q, [{"x": rng.normal(size=(1, 16, 16, 3)).astype(np.float32)} for _ in range(4)]
    )
    assert compare_all(q, seeds=(1, 2)) == {"reference": 0, "xnnpack": 0}




@pytest.mark.parametrize("name", sorted(RANDOM_CASES))
def test_random_params_bit_exact(name):
    """Random ranges, weight scales, strides, activations and betas (4 draws per op)."""
    import warnings

    for s in range(4):
        r = np.random.default_rng(100 + s)
        qb = QB(seed=s)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g = qb.output(RANDOM_CASES[name](qb, r))
            assert compare_all(g, seeds=(s,)) == {"reference": 0, "xnnpack": 0}, f"draw {s}"


def test_dynamic_batch_binds_to_feed():
    from qatir.tflite_writer import to_tflite
    from tests.helpers import litert_run

    qb = QB(seed=0)
    x = qb.input("x", [None, 4, 4, 2], -1, 1)
    y = qb.conv("CONV_2D", x, [3, 3, 3, 2], {"padding": "SAME"}, (-2, 2))
    y = qb.op("RESHAPE", [y], {"new_shape": [-1, 48]})
    g = qb.output(qb.conv("FULLY_CONNECTED", y, [5, 48], None, (-3, 3)))
    feeds = {"x": np.random.default_rng(0).integers(-128, 128, (3, 4, 4, 2)).astype(np.int8)}
    want, _ = litert_run(to_tflite(g, batch_size=3), feeds, ref=True)
    got = run_reference(g, feeds)
    assert got.keys() == want.keys()
    assert all(np.array_equal(got[k], want[k]) for k in got)
    with pytest.raises(ExportError, match="shape"):
        run_reference(g, {"x": feeds["x"][:, :2]})


def test_fast_primitives_equal_gemmlowp_written_out():
    """srdhm's one shift, quantize_multipliers' vectorized frexp and the float GEMMs of
    conv2d/depthwise agree with the C formulas they replace, at the edges."""
    from qatir.reference_kernels import _exact_dtype
    from qatir.reference_math import quantize_multipliers

    def srdhm_c(a, b):  # gemmlowp, with C's truncating division
        ab = int(a) * int(b)
        nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
        q = abs(ab + nudge) >> 31
        return 2**31 - 1 if a == b == -2**31 else (q if ab + nudge >= 0 else -q)

    rng = np.random.default_rng(0)
    edges = [-2**31, -2**31 + 1, -2**30, -1, 0, 1, 2**30, 2**31 - 1]
    a = np.array(edges + rng.integers(-2**31, 2**31, 200).tolist(), np.int64)
    b = np.array(edges + rng.integers(-2**31, 2**31, 200).tolist(), np.int64)
    for bb in (b, np.roll(b, 3), np.int64(-2**31), np.int64(1 << 30)):
        want = [srdhm_c(x, y) for x, y in zip(a, np.broadcast_to(bb, a.shape))]
        assert srdhm(a, bb).tolist() == want
    ms = np.array([0.0, 1e-12, 2.0**-40, 0.5, 1.0 - 2**-40, 1.0, 3.0, 1e-5, 0.999999999999,
                   *rng.uniform(1e-6, 4.0, 100)])
    qm, sh = quantize_multipliers(ms)
    assert list(zip(qm.tolist(), sh.tolist())) == [quantize_multiplier(float(m)) for m in ms]
    x = np.array([-128, 127], np.int8)
    w = np.array([-127, 127], np.int8)
    assert _exact_dtype(x, w, -128, 9) == np.float32  # 9 * 255 * 127 < 2^24
    assert _exact_dtype(x, w, -128, 600) == np.float64  # 600 * 255 * 127 > 2^24

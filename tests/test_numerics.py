"""Numerics: the shared layer (``qatir.numerics``) against C, TF and its TF twins at the
ties; then edge cases through the public API: NaN/Inf, zero channels, constant
activations, tiny and huge scales. Every exported model must load and run in LiteRT
and match the integer reference bit for bit."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import re  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import qatir  # noqa: E402
from qatir.errors import ExportError, NumericsError, QatirError, ShapeError  # noqa: E402
from qatir.ir import Graph  # noqa: E402
from tests.helpers import litert_run  # noqa: E402

# ------------------------------------------------------------------ the numerics layer
F32 = np.float32


def _ties_and_neighbours(dtype) -> np.ndarray:
    """k + 0.5 for small and large k, both signs, and the floats either side of each."""
    k = np.concatenate([np.arange(-6, 6), [2**22 - 1, 2**23 - 3, 1000.0]])
    t = (k + 0.5).astype(dtype)
    big = np.asarray([2**23 + 1, 2**23 + 3, 2**24 - 1] if dtype == np.float32 else
                     [2**52 + 1, 2**52 + 3], dtype)
    x = np.concatenate([t, np.nextafter(t, dtype(-np.inf)), np.nextafter(t, dtype(np.inf)),
                        [np.nextafter(dtype(0.5), dtype(0))], big])
    return np.concatenate([x, -x]).astype(dtype)


def _c_round(dtype):
    """libm's roundf / round (C ``round()``), the function LiteRT's TfLiteRound calls."""
    import ctypes
    import ctypes.util

    lib = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
    fn, ct = (lib.roundf, ctypes.c_float) if dtype == np.float32 else (lib.round, ctypes.c_double)
    fn.restype, fn.argtypes = ct, [ct]
    return fn


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_half_away_is_c_round(dtype):
    from qatir.numerics import round_half_away

    x = _ties_and_neighbours(dtype)
    c_round = _c_round(dtype)
    want = np.array([c_round(float(v)) for v in x], dtype)
    got = round_half_away(x)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want)
    assert round_half_away(dtype(0.5)) == 1 and round_half_away(dtype(-2.5)) == -3
    np.testing.assert_array_equal(round_half_away(np.array([np.inf, -np.inf], dtype)),
                                  [np.inf, -np.inf])
    assert np.isnan(round_half_away(np.array([np.nan], dtype)))[0]
    np.testing.assert_array_equal(round_half_away(np.array([-3, 4])), [-3, 4])


def test_round_half_away_tf_twin_agrees_at_exact_ties():
    from qatir.numerics import round_half_away
    from qatir.tf.kernels import round_half_away as tf_round

    x = (np.arange(-300, 300) + 0.5).astype(F32)
    np.testing.assert_array_equal(tf_round(x).numpy(), round_half_away(x))
    y = np.random.default_rng(0).uniform(-300, 300, 10000).astype(F32)
    np.testing.assert_array_equal(tf_round(y).numpy(), round_half_away(y))


def test_round_half_away_tf_twin_agrees_next_to_ties():
    from qatir.numerics import round_half_away
    from qatir.tf.kernels import round_half_away as tf_round

    x = _ties_and_neighbours(np.float32)
    np.testing.assert_array_equal(tf_round(x).numpy(), round_half_away(x))


def _tie_range(k: int, bits: int = 8, narrow: bool = False, step: float = 2.0**-6):
    """(lo, hi) whose zero point from min is exactly k + 0.5 (a power-of-two scale)."""
    qmin = 1 if narrow else 0
    lo = F32(-(k + 0.5 - qmin) * step)
    return lo, F32(lo + ((1 << bits) - 1 - qmin) * step)


@pytest.mark.parametrize("narrow", [False, True])
def test_nudged_params_tf_twin_agrees_at_zero_point_ties(narrow):
    from qatir.numerics import nudged_params
    from qatir.tf.fake_quant import _nudged_bounds

    for k in (1, 2, 7, 100, 200):
        lo, hi = _tie_range(k, narrow=narrow)
        scale, zp, nmin, nmax = nudged_params(lo, hi, 8, narrow)
        assert int(zp) + 128 == k + 1  # the tie rounds away from zero
        tmin, tmax = _nudged_bounds(lo, hi, 8, narrow)
        assert (float(tmin), float(tmax)) == (float(nmin), float(nmax))
        # and TF's own op puts 0.0 exactly on the grid the nudged range defines
        import tensorflow as tf
        y = tf.quantization.fake_quant_with_min_max_vars(
            np.array([0.0, nmin, nmax], F32), lo, hi, narrow_range=narrow).numpy()
        np.testing.assert_array_equal(y, [0.0, nmin, nmax])


@pytest.mark.parametrize("bits,narrow", [(8, False), (8, True), (4, False), (16, True)])
@pytest.mark.parametrize("per_channel", [False, True])
def test_numpy_fake_quant_is_tf_bit_for_bit_at_grid_ties(bits, narrow, per_channel):
    """Inputs on the half-way points of the nudged grid and the floats either side of them."""
    import tensorflow as tf

    from qatir.numerics import fake_quant, nudged_params

    rng = np.random.default_rng(bits + 2 * narrow)
    for _ in range(10):
        lo, hi = F32(-rng.uniform(0, 5)), F32(rng.uniform(0.01, 5))
        scale, _, nmin, _ = nudged_params(lo, hi, bits, narrow)
        k = rng.integers(0, (1 << bits) - 1, 500).astype(F32)
        t = (nmin + (k + F32(0.5)) * scale).astype(F32)
        x = np.concatenate([t, np.nextafter(t, F32(-np.inf)), np.nextafter(t, F32(np.inf)),
                            rng.uniform(lo - 1, hi + 1, 200).astype(F32)])
        if per_channel:
            want = tf.quantization.fake_quant_with_min_max_vars_per_channel(
                x[:, None], [lo], [hi], num_bits=bits, narrow_range=narrow).numpy()[:, 0]
            got = fake_quant(x[:, None], [lo], [hi], bits, narrow, axis=-1)[:, 0]
        else:
            want = tf.quantization.fake_quant_with_min_max_vars(
                x, lo, hi, num_bits=bits, narrow_range=narrow).numpy()
            got = fake_quant(x, lo, hi, bits, narrow)
        np.testing.assert_array_equal(got, want)
    z = np.linspace(-1, 1, 7).astype(F32)
    np.testing.assert_array_equal(fake_quant(z, 0.0, 0.0), np.zeros(7, F32))  # TF: zeros


@pytest.mark.parametrize("size,k,s,d", [(8, 3, 1, 1), (8, 3, 2, 1), (9, 3, 2, 1), (7, 4, 3, 1),
                                        (5, 7, 2, 1), (10, 3, 1, 2), (11, 2, 1, 3), (1, 3, 1, 1)])
def test_same_padding_is_tf_same(size, k, s, d):
    """An index image convolved by TF with padding="SAME" equals our explicit pads + VALID."""
    import tensorflow as tf

    from qatir.numerics import same_padding

    out, before, after = same_padding(size, k, s, d)
    x = np.arange(1, size + 1, dtype=F32).reshape(1, size, 1, 1)
    w = np.zeros((k, 1, 1, k), F32)
    for i in range(k):
        w[i, 0, 0, i] = 1.0  # output channel i = tap i of the window
    same = tf.nn.conv2d(x, w, [1, s, 1, 1], "SAME", dilations=[1, d, 1, 1]).numpy()
    padded = np.pad(x, ((0, 0), (before, after), (0, 0), (0, 0)))
    valid = tf.nn.conv2d(padded, w, [1, s, 1, 1], "VALID", dilations=[1, d, 1, 1]).numpy()
    assert same.shape[1] == out
    np.testing.assert_array_equal(same, valid)


def test_normalize_axis_and_axes():
    from qatir.numerics import normalize_axes, normalize_axis

    assert [normalize_axis(a, 4) for a in (-4, -1, 0, 3)] == [0, 3, 0, 3]
    assert normalize_axis(4, 4, allow_end=True) == 4 and normalize_axis(-4, 4, allow_end=True) == 0
    for bad in (4, -5):
        with pytest.raises(ShapeError, match=rf"Softmax axis {bad} out of range for rank 4"):
            normalize_axis(bad, 4, "Softmax axis")
    with pytest.raises(ShapeError, match="out of range for rank 0"):
        normalize_axis(0, 0)
    assert normalize_axes([3, -1, 0], 4) == [0, 3]
    with pytest.raises(ShapeError, match=r"duplicate Unsqueeze axis in \[3, -1\]"):
        normalize_axes([3, -1], 4, "Unsqueeze axis", unique=True)


def _resize_nearest_align_ties() -> Graph:
    """3 -> 5 with align_corners: source positions 0, 0.5, 1, 1.5, 2 (two exact ties)."""
    from tests.helpers import QB

    qb = QB(seed=3)
    x = qb.input("x", [1, 3, 3, 2], -1, 1)
    return qb.output(qb.op("RESIZE_NEAREST_NEIGHBOR", [x], {"size": [5, 5],
                                                           "align_corners": True}))


def test_resize_nearest_align_corners_rounds_ties_away_in_tf():
    """The TF kernel (what training runs) picks source rows [0, 1, 1, 2, 2]: ties away from 0."""
    from qatir.numerics import round_half_away

    g = Graph("rn")
    x = g.add_input("x", [1, 3, 3, 1])
    g.outputs = [g.add_node("RESIZE_NEAREST_NEIGHBOR", [x], {"size": [5, 5],
                                                             "align_corners": True}).output]
    xv = np.arange(9, dtype=F32).reshape(1, 3, 3, 1)
    y = qatir.run(g, {"x": xv})[g.outputs[0].name]
    rows = round_half_away(np.arange(5, dtype=F32) * F32(0.5)).astype(int)
    assert rows.tolist() == [0, 1, 1, 2, 2]
    np.testing.assert_array_equal(y[0, :, :, 0], xv[0, rows][:, rows, 0])


def test_reference_resize_nearest_align_corners_matches_litert_at_ties():
    from tests.helpers import compare_all

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert compare_all(_resize_nearest_align_ties(), seeds=(1,)) == {"reference": 0,
                                                                          "xnnpack": 0}


def _bias_tie_graph() -> Graph:
    """x (scale 2^-5) -> FULLY_CONNECTED (weight scale 2^-6) + bias 2.5 * 2^-11: the bias
    sits exactly half-way between two int32 steps of in_scale * w_scale = 2^-11."""
    from qatir.quant import refresh_quant

    g = Graph("bias_tie")

    def fq(t, lo, hi, **attrs):
        return g.add_node("FAKE_QUANT", [t, g.const(np.asarray(lo, F32), "mn"),
                                         g.const(np.asarray(hi, F32), "mx")], attrs).output

    xq = fq(g.add_input("x", [1, 2]), -4.0, 3.96875)
    m = F32(127 / 64)
    wq = fq(g.const(np.array([[m, -m]], F32), "w"), -m, m, narrow_range=True, symmetric=True,
            kind="weight")
    y = g.add_node("FULLY_CONNECTED", [xq, wq, g.const(np.array([2.5 * 2**-11], F32), "b")],
                   name="fc").output
    g.outputs = [fq(y, -128 * 2**-11, 127 * 2**-11)]
    refresh_quant(g)
    return g


def test_trained_bias_equals_exported_bias_at_a_tie():
    from qatir.lower import lower

    g = _bias_tie_graph()
    trained = qatir.run(g, {"x": np.zeros((1, 2), F32)})[g.outputs[0].name]
    b = next(n for n in lower(g, io="int8").nodes if n.op == "FULLY_CONNECTED").inputs[2]
    assert b.data.tolist() == [3]  # round_half_away(2.5)
    np.testing.assert_array_equal(trained.ravel(), (b.data * b.quant.scale[0]).astype(F32))


def test_old_homes_reexport_the_numerics_layer():
    """Other modules import these names from their old homes; they are the same objects."""
    import qatir.numerics as nm
    import qatir.quant
    import qatir.reference_math

    assert qatir.reference_math.round_half_away is nm.round_half_away
    assert qatir.quant.nudged_params is nm.nudged_params


# ------------------------------------------------------------------ the public API
def conv_net(w0: np.ndarray | None = None, b0: np.ndarray | None = None,
             w1: np.ndarray | None = None, seed: int = 0) -> Graph:
    """x[1,6,6,3] -> CONV_2D 3x3 (4 ch) -> RELU -> FULLY_CONNECTED(144 -> 5)."""
    rng = np.random.default_rng(seed)
    g = Graph("numerics")
    x = g.add_input("x", [1, 6, 6, 3])
    w0 = rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32) if w0 is None else w0
    b0 = rng.normal(0, 0.1, 4).astype(np.float32) if b0 is None else b0
    y = g.add_node("CONV_2D", [x, g.const(w0, "w0"), g.const(b0, "b0")],
                   {"padding": "SAME"}, name="conv0").output
    y = g.add_node("RELU", [y], name="relu0").output
    y = g.add_node("RESHAPE", [y], {"new_shape": [1, 144]}, name="flat").output
    w1 = rng.normal(0, 0.1, (5, 144)).astype(np.float32) if w1 is None else w1
    y = g.add_node("FULLY_CONNECTED", [y, g.const(w1, "w1"), g.const(np.zeros(5, np.float32), "b1")],
                   name="fc1", outputs=["logits"]).output
    g.outputs = [y]
    g.verify()
    return g


def batches(n: int = 4, scale: float = 1.0, seed: int = 1, value: float | None = None):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = rng.normal(0, scale, (1, 6, 6, 3)).astype(np.float32)
        yield {"x": np.full_like(x, value) if value is not None else x}


def export_and_run(q: Graph) -> tuple[bytes, dict[str, np.ndarray]]:
    """Export int8; run in LiteRT (reference kernels and XNNPACK); both must equal run_reference."""
    buf = qatir.to_tflite(q, io="int8")
    feeds = {"x": np.random.default_rng(7).integers(-128, 128, (1, 6, 6, 3)).astype(np.int8)}
    want = qatir.run_reference(q, feeds)
    got, _ = litert_run(buf, feeds, ref=True)
    np.testing.assert_array_equal(got["logits"], want["logits"])
    got_x, _ = litert_run(buf, feeds, ref=False)
    assert np.abs(got_x["logits"].astype(int) - want["logits"].astype(int)).max() <= 1
    return buf, got


def scales_of(q: Graph) -> list[float]:
    return [s for t in q.tensors.values() if t.quant is not None for s in t.quant.scale]


# ------------------------------------------------------------------ NaN / Inf
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["w0", "b0", "w1"])
def test_non_finite_constant_refused_by_quantize(bad, where):
    g = conv_net()
    t = g.tensors[where]
    data = t.data.copy()
    data.flat[1] = bad
    t.data = data
    with pytest.raises(NumericsError, match=rf"%{where}\b") as info:
        qatir.quantize(g)
    assert isinstance(info.value, QatirError)
    assert "insert_fake_quant" in str(info.value)  # the pass that found it


def test_non_finite_constant_refused_by_float_export():
    g = conv_net()
    data = g.tensors["w1"].data.copy()
    data[0, 0] = np.nan
    g.tensors["w1"].data = data
    with pytest.raises(NumericsError, match=r"%w1\b"):
        qatir.to_tflite(g)


def test_nan_from_batch_norm_names_the_parameter():
    """A NaN batch-norm variance would poison the folded weight: the error names the BN tensor."""
    g = conv_net()
    conv_out = g.nodes[0].output
    relu = g.nodes[1]
    c = 4
    params = [np.ones(c), np.zeros(c), np.zeros(c), np.array([1.0, np.nan, 1.0, 1.0])]
    consts = [g.const(p.astype(np.float32), name=f"bn_{k}")
              for p, k in zip(params, ("gamma", "beta", "mean", "var"))]
    bn = g.add_node("BATCH_NORM", [conv_out, *consts], {"epsilon": 1e-3}, name="bn0").output
    relu.set_input(0, bn)
    g.toposort()
    g.verify()
    with pytest.raises(NumericsError, match=r"bn_var"):
        qatir.quantize(g)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_calibration_data_names_the_input(bad):
    q = qatir.quantize(conv_net())
    data = list(batches(3))
    data[1]["x"][0, 2, 2, 1] = bad
    with pytest.raises(NumericsError, match=r"(%x\b|'x')"):
        qatir.calibrate(q, data)


# ------------------------------------------------------------------ degenerate ranges
def test_all_zero_weight_channel_gets_valid_scale_and_runs():
    w0 = np.random.default_rng(3).normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
    w0[2] = 0.0
    q = qatir.quantize(conv_net(w0=w0))
    qatir.calibrate(q, batches())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_and_run(q)
    w_fq = next(n for n in q.nodes if n.op == "FAKE_QUANT" and n.inputs[0].name == "w0")
    scale = np.asarray(w_fq.output.quant.scale)
    assert scale.shape == (4,) and np.all(np.isfinite(scale)) and np.all(scale > 0)


def test_all_zero_weight_tensor_runs():
    q = qatir.quantize(conv_net(w0=np.zeros((4, 3, 3, 3), np.float32),
                                b0=np.array([0.5, -0.25, 0.0, 2.0], np.float32)))
    qatir.calibrate(q, batches())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, got = export_and_run(q)
    assert all(np.isfinite(s) and s > 0 for s in scales_of(q))
    # the conv output is its bias only: every spatial position is the same
    assert got["logits"].shape == (1, 5)


@pytest.mark.parametrize("value", [0.0, 3.5, -2.0])
def test_constant_activation_gets_valid_scale(value):
    q = qatir.quantize(conv_net())
    qatir.calibrate(q, batches(value=value))
    s = scales_of(q)
    assert s and all(np.isfinite(v) and v > 0 for v in s)
    x_fq = next(n for n in q.nodes if n.op == "FAKE_QUANT" and n.inputs[0].name == "x")
    lo, hi = float(x_fq.inputs[1].data), float(x_fq.inputs[2].data)
    assert lo <= min(value, 0.0) and hi >= max(value, 0.0)
    assert 0 < x_fq.output.quant.scale[0] < 1.0  # a zero range still gets a usable scale
    export_and_run(q)


# ------------------------------------------------------------------ tiny and huge scales
def test_bias_beyond_int32_widens_the_weight_scale_with_a_warning_naming_it():
    """Tiny weight and input scales with a normal bias: bias / (s_in * s_w) > 2^31; the
    weight scale is widened (not the bias clipped; tests/test_bias_fit.py)."""
    w0 = (np.random.default_rng(5).normal(0, 1, (4, 3, 3, 3)) * 1e-7).astype(np.float32)
    q = qatir.quantize(conv_net(w0=w0, b0=np.array([1.0, -1.0, 0.5, 0.0], np.float32)))
    qatir.calibrate(q, batches(scale=1e-3))
    with pytest.warns(UserWarning, match=r"weight scale of channel.*widened so the bias %b0\b "
                      "fits int32"):
        export_and_run(q)


def test_bias_scale_below_float_floor_is_clamped_with_a_warning_naming_the_weight():
    w0 = (np.random.default_rng(6).normal(0, 1, (4, 3, 3, 3)) * 1e-25).astype(np.float32)
    q = qatir.quantize(conv_net(w0=w0))
    qatir.calibrate(q, batches(scale=1e-9))
    with pytest.warns(UserWarning, match=r"%w0(_fq)?\b"):
        buf = qatir.to_tflite(q)
    assert buf[4:8] == b"TFL3"
    feeds = {"x": np.zeros((1, 6, 6, 3), np.int8)}
    got, _ = litert_run(buf, feeds, ref=True)
    assert got["logits"].shape == (1, 5)


def test_huge_dynamic_range_weights_export_and_run():
    """Per-channel weights spanning 1e-6 .. 1e6: every scale finite and positive, LiteRT runs it."""
    rng = np.random.default_rng(8)
    w0 = rng.normal(0, 1, (4, 3, 3, 3)).astype(np.float32)
    w0 *= np.array([1e-6, 1e-2, 1e2, 1e6], np.float32)[:, None, None, None]
    w1 = rng.normal(0, 1, (5, 144)).astype(np.float32)
    w1[:, ::2] *= 1e-6  # per-tensor FC: most weights round to 0, the rest are huge
    w1[:, 1::2] *= 1e6
    q = qatir.quantize(conv_net(w0=w0, w1=w1))
    qatir.calibrate(q, batches(scale=10.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_and_run(q)
    s = scales_of(q)
    assert all(np.isfinite(v) and v > 0 for v in s)
    assert max(s) / min(s) > 1e6


def test_overflow_inside_the_graph_during_calibration_names_the_tensor():
    """Finite inputs whose conv output overflows float32: the error names where Inf appeared."""
    w0 = np.full((4, 3, 3, 3), 1e30, np.float32)
    q = qatir.quantize(conv_net(w0=w0))
    with pytest.raises(NumericsError, match=r"NaN or Inf") as info:
        qatir.calibrate(q, batches(value=1e30))
    assert "%conv0" in str(info.value)


def test_non_finite_training_data_names_the_input():
    q = qatir.quantize(conv_net())
    qatir.calibrate(q, batches())
    x = np.random.default_rng(0).normal(size=(8, 6, 6, 3)).astype(np.float32)
    x[3, 1, 1, 1] = np.nan
    y = np.zeros((8, 5), np.float32)
    with pytest.raises(NumericsError, match=r"(%x\b|'x')"):
        qatir.fit(q, [({"x": x[i:i + 1]}, y[i:i + 1]) for i in range(8)], loss="mse", epochs=1,
                  verbose=False)


# ------------------------------------------------------------------ refused at export, or runs exactly
# Graphs that `tools/fuzz.py --deep` reached from mutated files. Each test says which way it goes:
# refused with an ExportError naming the tensor or node, or exported, run in LiteRT and compared
# with the integer reference bit for bit.
def export_error(g: Graph) -> str:
    """quantize + to_tflite must refuse ``g`` with an ExportError; returns its message."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatir.quantize(g)
        with pytest.raises(ExportError) as info:
            qatir.to_tflite(q)
    return str(info.value)


def runs_like_reference(g: Graph) -> None:
    """quantize + to_tflite + LiteRT (reference kernels) equals run_reference bit for bit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatir.quantize(g)
        buf = qatir.to_tflite(q, io="int8")
    feeds = {t.name: np.random.default_rng(3).integers(-128, 128, [d or 1 for d in t.shape])
             .astype(np.int8) for t in q.inputs}
    got, _ = litert_run(buf, feeds, ref=True)
    for name, want in qatir.run_reference(q, feeds).items():
        np.testing.assert_array_equal(got[name], want)


def single(op: str, x_shape: list[int], consts: list[tuple[np.ndarray, str]],
           attrs: dict | None = None) -> Graph:
    g = Graph(op.lower())
    x = g.add_input("x", x_shape)
    ins = [x] + [g.const(a, n) for a, n in consts]
    y = g.add_node(op, ins, attrs, name="node", outputs=["y"]).output
    g.outputs = [y]
    g.verify()
    return g


def test_dims_beyond_int32_are_refused():
    """A declared input dim of 2^31 (TFLite stores dims as int32)."""
    assert re.search(r"%x\b.*2147483648.*int32", export_error(single("RELU", [1, 2**31], [])))


def test_pad_amounts_beyond_int32_are_refused():
    g = single("PAD", [1, 4, 4, 2], [], {"paddings": [[0, 0], [2**30, 2**30], [0, 0], [0, 0]]})
    assert re.search(r"%y\b.*'node'.*int32", export_error(g))


def test_pad_amounts_within_int32_run_like_the_reference():
    runs_like_reference(single("PAD", [1, 4, 4, 2], [],
                               {"paddings": [[0, 0], [3, 1], [0, 2], [0, 0]]}))


def test_bias_of_the_wrong_length_is_refused():
    # refused as soon as the node is built: shape inference checks the bias length
    with pytest.raises(ShapeError, match=r"%b has shape \[3\], expected \[4\]"):
        single("CONV_2D", [1, 4, 4, 2], [(np.ones((4, 1, 1, 2), np.float32), "w"),
                                         (np.zeros(3, np.float32), "b")])


def test_constant_gather_indices_out_of_range_are_refused():
    with pytest.raises(ShapeError, match=r"%idx range \[0, 99\] outside \[-8, 8\)"):
        single("GATHER", [1, 8], [(np.array([0, 99], np.int32), "idx")], {"axis": 1})


def test_effective_scale_litert_cannot_check_is_refused():
    """Weights of 1e15 with an uncalibrated output range: in_scale * w_scale / out_scale ~ 1e14,
    beyond LiteRT's |bias_scale - in_scale * w_scale| <= 0.02 * out_scale prepare check."""
    g = single("FULLY_CONNECTED", [1, 16], [(np.full((4, 16), 1e15, np.float32), "w")])
    assert re.search(r"node 'node' \(FULLY_CONNECTED\): bias scale", export_error(g))


def test_ordinary_weights_with_the_default_range_run_like_the_reference():
    w = np.random.default_rng(4).normal(0, 0.1, (4, 16)).astype(np.float32)
    runs_like_reference(single("FULLY_CONNECTED", [1, 16], [(w, "w")]))


def test_pad_constant_at_a_tie_rounds_half_away_in_reference_and_file():
    """PADV2's int8 fill value: 0.078125 on scale 2^-5 is 2.5 steps; both the reference and
    the written constant take 3 (C round), as LiteRT's own quantizer would."""
    from qatir.lower import lower
    from qatir.reference import run_reference
    from tests.helpers import QB, compare_all, litert_run

    def graph() -> Graph:
        qb = QB(seed=5)
        x = qb.input("x", [1, 2, 2, 1], -4.0, 3.96875)  # scale exactly 2^-5, zero point 0
        return qb.output(qb.op("PAD", [x], {"paddings": [[0, 0], [1, 0], [0, 0], [0, 0]],
                                           "constant_value": 0.078125}))

    g = graph()
    lowered = lower(graph())
    out = lowered.outputs[0]
    assert float(out.quant.scale[0]) == 2.0 ** -5 and int(out.quant.zero_point[0]) == 0
    feed = {"x": np.zeros((1, 2, 2, 1), np.int8)}
    y = run_reference(lowered, feed)[out.name]
    assert y[0, 0].ravel().tolist() == [3, 3]
    got = next(iter(litert_run(qatir.to_tflite(g), feed, ref=True)[0].values()))
    assert got[0, 0].ravel().tolist() == [3, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert compare_all(graph(), seeds=(1,)) == {"reference": 0, "xnnpack": 0}


@pytest.mark.parametrize("op", ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"])
def test_exported_weights_are_what_tf_fake_quant_trained_next_to_ties(op):
    """Trained = deployed for weights: the int8 weights the lowering writes, dequantized,
    equal TF's fake-quant of the float weights bit for bit, also on and next to the grid's
    half-way points (where dividing by the scale and multiplying by its inverse differ)."""
    import tensorflow as tf

    from qatir.lower import lower
    from qatir.numerics import nudged_params
    from tests.helpers import QB

    qb = QB(seed=3)
    shapes = {"CONV_2D": ([1, 4, 4, 3], [5, 3, 3, 3]), "DEPTHWISE_CONV_2D": ([1, 4, 4, 5], [1, 3, 3, 5]),
              "FULLY_CONNECTED": ([2, 6], [5, 6])}
    x_shape, w_shape = shapes[op]
    x = qb.input("x", x_shape, -1.0, 1.0)
    attrs = {} if op == "FULLY_CONNECTED" else {"padding": "SAME"}
    g = qb.output(qb.conv(op, x, w_shape, attrs, (-4.0, 4.0)))
    wfq = next(n for n in g.nodes if n.op == "FAKE_QUANT" and n.inputs[0].is_const)
    lo, hi = wfq.inputs[1].data, wfq.inputs[2].data
    axis, bits, narrow = wfq.attrs["axis"], int(wfq.attrs["bits"]), bool(wfq.attrs["narrow_range"])
    scale, _, nmin, _ = nudged_params(lo, hi, bits, narrow)
    w = wfq.inputs[0].data
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    s, m = np.reshape(scale, shape), np.reshape(nmin, shape)
    r = np.random.default_rng(0)
    k = r.integers(0, (1 << bits) - 2, w.shape).astype(F32)
    t = (m + (k + F32(0.5)) * s).astype(F32)  # half-way points, and the floats beside them
    w[...] = np.where(r.random(w.shape) < 0.5, t, np.nextafter(t, F32(np.inf * r.choice([-1, 1]))))
    lw = next(n for n in lower(g, io="int8").nodes if n.op == op).inputs[1]
    zp = np.reshape(np.asarray(lw.quant.zero_point), shape if axis is not None else [])
    deployed = ((lw.data.astype(np.int64) - zp) * np.reshape(lw.quant.scale, shape)).astype(F32)
    if axis is None:
        trained = tf.quantization.fake_quant_with_min_max_vars(
            w, float(lo), float(hi), num_bits=bits, narrow_range=narrow).numpy()
    else:
        perm = [i for i in range(w.ndim) if i != axis] + [axis]
        trained = tf.quantization.fake_quant_with_min_max_vars_per_channel(
            np.transpose(w, perm), lo, hi, num_bits=bits, narrow_range=narrow).numpy()
        trained = np.transpose(trained, np.argsort(perm))
    np.testing.assert_array_equal(deployed, trained)

"""Calibration and training of the IR in TensorFlow (float and fake-quant)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import qatir
from qatir.errors import NumericsError, QatirError
from qatir.ir import Graph
from qatir.quant import nudged_params
from tests.helpers.graphs import fq, qat_net


def float_cnn(rng):
    g = Graph("cnn")
    x = g.add_input("x", [None, 8, 8, 3])
    w = g.const(0.3 * rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    y = g.add_node("CONV_2D", [x, w], {"padding": "SAME"}).output
    bn_params = [g.const(np.full(4, v, np.float32), n)
                 for v, n in ((1, "gamma"), (0, "beta"), (0, "mmean"), (1, "mvar"))]
    y = g.add_node("BATCH_NORM", [y, *bn_params], {"momentum": 0.9, "epsilon": 1e-3}).output
    y = g.add_node("RELU", [y]).output
    y = g.add_node("MEAN", [y]).output
    fw = g.const(rng.standard_normal((2, 4)).astype(np.float32), "fw")
    g.outputs = [g.add_node("FULLY_CONNECTED", [y, fw, g.const(np.zeros(2, np.float32), "fb")]).output]
    return g


def classification_data(rng, n=512, d=6):
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int32) + (x[:, 2] > 1).astype(np.int32)
    return x, y


def on_grid(values, lo, hi):
    scale, _, nmin, _ = nudged_params(np.float32(lo), np.float32(hi))
    k = (values - nmin) / scale
    return np.abs(k - np.round(k)).max()


# ---------------------------------------------------------------------- float
def test_float_fit_reduces_loss(rng):
    g = float_cnn(rng)
    x = rng.standard_normal((256, 8, 8, 3)).astype(np.float32)
    y = (x[..., 0].mean((1, 2)) > 0).astype(np.int32)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    hist = qatir.fit(g, ({"x": x}, y), loss=loss, optimizer=keras.optimizers.Adam(0.05), epochs=6,
                     batch_size=32, verbose=False)
    assert len(hist["loss"]) == 6
    assert hist["loss"][-1] < 0.6 * hist["loss"][0]
    acc = (qatir.run(g, {"x": x})[g.outputs[0].name].argmax(1) == y).mean()
    assert acc > 0.8


def test_batch_norm_moving_stats_update_like_keras(rng):
    g = float_cnn(rng)
    x = rng.standard_normal((16, 8, 8, 3)).astype(np.float32)
    w = g.tensors["w"].data
    conv = qatir.run(_conv_only(g), {"x": x})["conv"]
    y = np.zeros((16, 2), np.float32)
    qatir.fit(g, [({"x": x}, y)], loss="mse", optimizer=keras.optimizers.SGD(0.0), verbose=False)
    np.testing.assert_array_equal(g.tensors["w"].data, w)  # lr 0: weights unchanged
    np.testing.assert_allclose(g.tensors["mmean"].data, 0.1 * conv.mean((0, 1, 2)), atol=1e-5)
    np.testing.assert_allclose(g.tensors["mvar"].data, 0.9 + 0.1 * conv.var((0, 1, 2)), atol=1e-5)


def _conv_only(g):
    c = Graph("conv")
    x = c.add_input("x", [None, 8, 8, 3])
    c.outputs = [c.add_node("CONV_2D", [x, c.const(g.tensors["w"].data, "w")],
                            {"padding": "SAME"}, name="conv", outputs=["conv"]).output]
    return c


# ------------------------------------------------------------------------ QAT
def test_qat_fit_changes_weights_and_stays_on_grid(rng):
    g = qat_net(rng)
    x, y = classification_data(rng)
    w_before = g.tensors["w1"].data.copy()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    hist = qatir.fit(g, ({"x": x}, y), loss=loss, optimizer=keras.optimizers.Adam(0.02),
                     epochs=4, verbose=False)
    assert hist["loss"][-1] < hist["loss"][0]
    assert np.abs(g.tensors["w1"].data - w_before).max() > 1e-3
    out_node = g.outputs[0].producer
    lo, hi = out_node.inputs[1].data, out_node.inputs[2].data
    assert (lo, hi) != (-4.0, 4.0)  # moving-average range followed the data
    out = qatir.run(g, {"x": x})[g.outputs[0].name]
    assert on_grid(out, lo, hi) < 1e-3
    # the weight range written back is the final weights' abs-max per channel
    wq = g.tensors["w1"].uses[0][0]
    np.testing.assert_allclose(wq.inputs[2].data, np.abs(g.tensors["w1"].data).max(1), rtol=1e-6)
    assert wq.outputs[0].quant.axis == 0 and wq.outputs[0].quant.zero_point[0] == 0


def test_learned_range_trains_and_fixed_range_does_not(rng):
    g = qat_net(rng, act_quantizer="learned")
    fixed = g.outputs[0].producer
    fixed.attrs["quantizer"] = "fixed"
    first = g.inputs[0].uses[0][0]
    x, y = classification_data(rng)
    lo0 = float(first.inputs[1].data)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    qatir.fit(g, ({"x": x}, y), loss=loss, optimizer=keras.optimizers.Adam(0.05), epochs=2,
              verbose=False)
    assert abs(float(first.inputs[1].data) - lo0) > 1e-3
    assert float(fixed.inputs[1].data) == -4.0 and float(fixed.inputs[2].data) == 4.0


# ----------------------------------------------------------------- calibration
def outlier_net():
    g = Graph("outlier")
    x = g.add_input("x", [None, 16])
    h = g.add_node("MUL", [x, g.const(np.float32(2.0), "two")]).output
    g.outputs = [fq(g, h, 0.0, 1.0, quantizer="minmax")]
    return g


def test_percentile_beats_minmax_with_an_outlier(rng):
    clean = [{"x": rng.standard_normal((64, 16)).astype(np.float32)} for _ in range(8)]
    dirty = [dict(b) for b in clean]
    spike = clean[3]["x"].copy()
    spike[5, 7] = 200.0  # one activation outlier
    dirty[3] = {"x": spike}
    test_x = rng.standard_normal((256, 16)).astype(np.float32)
    errors = {}
    for method in ("minmax", "percentile"):
        g = outlier_net()
        g.outputs[0].producer.attrs["quantizer"] = method
        qatir.calibrate(g, dirty, progress=False)
        out = qatir.run(g, {"x": test_x})[g.outputs[0].name]
        errors[method] = float(np.mean((out - 2 * test_x) ** 2))
    assert errors["percentile"] < 0.1 * errors["minmax"], errors
    assert errors["minmax"] > 1e-2


def test_mse_lowers_the_calibration_error_on_heavy_tails(rng):
    # MSE-optimal clipping trades tail error for a finer grid; measured on the calibration data
    batches = [{"x": rng.laplace(size=(1024, 16)).astype(np.float32)} for _ in range(2)]
    data = np.concatenate([b["x"] for b in batches])
    errors = {}
    for method in ("minmax", "mse"):
        g = outlier_net()
        g.outputs[0].producer.attrs["quantizer"] = method
        qatir.calibrate(g, batches, progress=False)
        out = qatir.run(g, {"x": data})[g.outputs[0].name]
        errors[method] = float(np.mean((out - 2 * data) ** 2))
    assert errors["mse"] < 0.95 * errors["minmax"], errors


def test_calibrate_minmax_range_includes_zero_and_sets_quant(rng):
    g = outlier_net()
    batches = [{"x": (rng.random((32, 16)) + 1).astype(np.float32)} for _ in range(3)]
    qatir.calibrate(g, batches, progress=False)
    node = g.outputs[0].producer
    assert float(node.inputs[1].data) == 0.0
    np.testing.assert_allclose(node.inputs[2].data, 2 * max(b["x"].max() for b in batches), rtol=1e-6)
    assert g.outputs[0].quant.zero_point == (-128,)


def test_shared_range_pools_all_users(rng):
    g = Graph("shared")
    a, b = g.add_input("a", [None, 4]), g.add_input("b", [None, 4])
    lo, hi = g.const(np.float32(0), "lo"), g.const(np.float32(1), "hi")
    qa = g.add_node("FAKE_QUANT", [a, lo, hi]).output
    qb = g.add_node("FAKE_QUANT", [b, lo, hi]).output
    g.outputs = [g.add_node("CONCATENATION", [qa, qb], {"axis": 1}).output]
    feeds = {"a": np.full((2, 4), -3.0, np.float32), "b": np.full((2, 4), 5.0, np.float32)}
    qatir.calibrate(g, [feeds], progress=False)
    assert (float(lo.data), float(hi.data)) == (-3.0, 5.0)
    assert qa.producer.outputs[0].quant == qb.producer.outputs[0].quant


def test_nan_in_data_raises_numerics_error(rng):
    g = outlier_net()
    bad = rng.standard_normal((4, 16)).astype(np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(NumericsError, match="'x'"):
        qatir.calibrate(g, [{"x": bad}], progress=False)
    with pytest.raises(NumericsError, match="'x'"):
        qatir.fit(g, [({"x": bad}, np.zeros((4, 16), np.float32))], verbose=False)
    ds = tf.data.Dataset.from_tensor_slices(({"x": bad}, np.zeros((4, 16), np.float32))).batch(2)
    with pytest.raises(NumericsError, match="'x'"):
        qatir.fit(g, ds, verbose=False)


def test_bad_arguments_raise_qatir_errors(rng):
    g = outlier_net()
    with pytest.raises(QatirError, match="no FAKE_QUANT"):
        qatir.calibrate(float_cnn(rng), [{"x": np.zeros((1, 8, 8, 3), np.float32)}])
    with pytest.raises(QatirError, match="no batches"):
        qatir.calibrate(g, [], progress=False)
    with pytest.raises(QatirError, match="missing input"):
        qatir.calibrate(g, [{"y": np.zeros((1, 16), np.float32)}], progress=False)
    with pytest.raises(QatirError, match="unknown loss"):
        qatir.fit(g, [({"x": np.zeros((1, 16), np.float32)}, np.zeros((1, 16)))], loss="nope")


def test_fit_on_a_tf_data_dataset_with_callbacks(rng):
    g = qat_net(rng)
    x, y = classification_data(rng, n=256)
    ds = tf.data.Dataset.from_tensor_slices(({"x": x}, y)).batch(64)
    seen = []

    def stop_after_two(epoch, logs):
        seen.append((epoch, logs["loss"]))
        return epoch == 1

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    hist = qatir.fit(g, ds, loss=loss, epochs=5, callbacks=[stop_after_two], verbose=False)
    assert [e for e, _ in seen] == [0, 1] and len(hist["loss"]) == 2
    assert all(np.isfinite(v) for _, v in seen)

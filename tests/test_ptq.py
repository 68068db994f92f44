"""Post-training accuracy techniques (issue 16): per-channel FULLY_CONNECTED weights,
bias correction and cross-layer equalization, each on a small graph."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest

import qatir
from qatir.parity import xnnpack_coverage
from qatir.pipeline import FLOAT_PIPELINE
from qatir.reference import run_reference
from qatir.table import load_table
from qatir.tflite_writer import to_tflite
from tests.helpers import QB, compare_all, int8_feed, litert_run

Model = importlib.import_module("tflite.Model").Model


def _fc_graph(per_channel: bool, batch: int = 512) -> qatir.Graph:
    """One FC whose output channels have weight ranges 100x apart (per-channel pays)."""
    qb = QB(seed=3)
    x = qb.input("x", [batch, 64], -1.3, 2.1)
    r = np.random.default_rng(5)
    w = (r.normal(0, 1, size=(48, 64)) * r.uniform(0.01, 1, size=(48, 1))).astype(np.float32)
    wq = qb.weight(w, 0 if per_channel else None, name="fc_w")
    b = qb.g.const(r.normal(0, 0.5, 48).astype(np.float32), name="fc_b")
    return qb.output(qb.op("FULLY_CONNECTED", [x, wq, b], {}, (-7, 9)))


def test_per_channel_fc_is_bit_exact_on_both_resolvers_and_delegated():
    g = _fc_graph(per_channel=True)
    buf = to_tflite(g, io="int8")
    it = litert_run(buf, int8_feed(g), ref=True)[1]
    w = next(d for d in it.get_tensor_details() if d["name"] == "fc_w_q")
    assert len(w["quantization_parameters"]["scales"]) == 48
    assert w["quantization_parameters"]["quantized_dimension"] == 0
    m = Model.GetRootAs(buf, 0)
    assert [m.OperatorCodes(i).Version() for i in range(m.OperatorCodesLength())] == [4]
    assert dict(xnnpack_coverage(buf))["FULLY_CONNECTED"] is True  # XNNPACK takes it
    assert compare_all(g, seeds=(1, 2)) == {"reference": 0, "xnnpack": 0}


def test_per_channel_fc_reference_rounding_is_the_float_rule():
    """The check can fail: gemmlowp double rounding (what CONV uses) would be off by one
    on some of these 24576 outputs; LiteRT's per-channel reference FC rounds
    round_half_away(double(acc) * in*w[i]/out), like the per-tensor one."""
    import qatir.reference_kernels as K

    g = _fc_graph(per_channel=True)
    feeds = int8_feed(g)
    got = litert_run(to_tflite(g, io="int8"), feeds, ref=True)[0]
    want = run_reference(g, feeds)
    name = next(iter(got))
    np.testing.assert_array_equal(got[name], want[name])
    orig = K._requant
    K._requant = lambda acc, node, eff, mode, float_round=False: orig(acc, node, eff, mode)
    try:
        double = run_reference(g, feeds)
    finally:
        K._requant = orig
    assert (double[name] != got[name]).sum() > 0


def test_default_table_quantizes_fc_per_channel_and_its_weights_are_closer():
    """The file's FC weights (int8 x scale) against the float ones: per-channel keeps the
    small channels' weights, per-tensor rounds them on the largest channel's grid."""
    rng = np.random.default_rng(0)
    w = (rng.normal(0, 1, (16, 32)) * np.geomspace(0.01, 1, 16)[:, None]).astype(np.float32)
    g = qatir.Graph("fc")
    x = g.add_input("x", [1, 32])
    g.outputs = [g.add_node("FULLY_CONNECTED", [x, g.const(w, "w")], {"keep_num_dims": False},
                            name="fc", outputs=["y"]).output]
    data = [{"x": rng.normal(size=(1, 32)).astype(np.float32)} for _ in range(8)]
    errs = {}
    for per_channel in (True, False):
        q = qatir.quantize(g, table=load_table().data if per_channel else _per_tensor_fc_table())
        assert q.tensors["w"].users[0].attrs["axis"] == (0 if per_channel else None)
        qatir.calibrate(q, data, progress=False)
        it = litert_run(qatir.to_tflite(q, io="float"), data[0], ref=False)[1]
        d = next(d for d in it.get_tensor_details() if d["name"] == "w_fq")
        scales = d["quantization_parameters"]["scales"]
        got = it.get_tensor(d["index"]).astype(np.float32) * scales.reshape(-1, 1)
        errs[per_channel] = float(np.abs(got - w)[0].max() / np.abs(w[0]).max())
    assert errs[True] < 0.01 < errs[False]


def _per_tensor_fc_table() -> dict:
    data = load_table().data
    data = {**data, "weights": dict(data["weights"])}
    data["weights"]["per_channel_axis"] = {
        k: v for k, v in data["weights"]["per_channel_axis"].items() if k != "FULLY_CONNECTED"}
    return data


# ----------------------------------------------------------------- cross-layer equalization
def _table(**changes) -> dict:
    """The default table's data with ``fusions`` / ``calibration`` entries added."""
    data = load_table().data
    data = {**data, "fusions": list(data["fusions"]), "calibration": dict(data["calibration"])}
    data["fusions"] += changes.get("fusions", [])
    data["calibration"].update(changes.get("calibration", {}))
    return data


SCALE_SHIFT = {"name": "fold_scale_shift", "kind": "scale_shift",
               "ops": ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"],
               "note": "op(x)·s = op'(x); op(x) + t: b' = b + t"}
CLE = {"name": "cle", "kind": "cross_layer_equalization",
       "ops": ["DEPTHWISE_CONV_2D", "CONV_2D"], "note": "W1/s, b1/s, W2*s per channel"}


def _dw_pw(act: str = "RELU", seed: int = 0) -> qatir.Graph:
    """x -> DEPTHWISE_CONV_2D{act} -> CONV_2D 1x1, depthwise channels ranges 1000x apart."""
    rng = np.random.default_rng(seed)
    g = qatir.Graph("dw_pw")
    x = g.add_input("x", [1, 8, 8, 6])
    w1 = (rng.normal(size=(1, 3, 3, 6)) * np.geomspace(0.01, 10, 6)).astype(np.float32)
    b1 = rng.normal(size=6).astype(np.float32)
    dw = g.add_node("DEPTHWISE_CONV_2D", [x, g.const(w1, "w1"), g.const(b1, "b1")],
                    {"padding": "SAME", "depth_multiplier": 1, "fused_activation": act},
                    name="dw", outputs=["d"])
    w2 = rng.normal(size=(5, 1, 1, 6)).astype(np.float32)
    pw = g.add_node("CONV_2D", [dw.output, g.const(w2, "w2"), g.const(np.zeros(5, np.float32), "b2")],
                    {"padding": "VALID"}, name="pw", outputs=["y"])
    g.outputs = [pw.output]
    return g


def _float_out(q: qatir.Graph, feed: dict) -> np.ndarray:
    from qatir.evaluate import FloatRun, strip_fake_quant

    return next(iter(FloatRun(strip_fake_quant(q)).run(feed).values()))


def _weight(q: qatir.Graph, node: str) -> np.ndarray:
    """The float weights behind node ``node``'s weight FAKE_QUANT."""
    return next(n for n in q.nodes if n.name == node).inputs[1].producer.inputs[0].data


def test_cle_leaves_the_float_output_unchanged_and_balances_the_ranges():
    g = _dw_pw("RELU")
    feed = {"x": np.random.default_rng(1).normal(size=(1, 8, 8, 6)).astype(np.float32)}
    plain, cle = qatir.quantize(g), qatir.quantize(g, table=_table(fusions=[CLE]))
    np.testing.assert_allclose(_float_out(cle, feed), _float_out(plain, feed), rtol=1e-5,
                               atol=1e-5)
    w1, w2 = _weight(cle, "dw"), _weight(cle, "pw")
    r1, r2 = np.abs(w1).max(axis=(0, 1, 2)), np.abs(w2).max(axis=(0, 1, 2))
    np.testing.assert_allclose(r1, r2, rtol=1e-5)  # both layers' channel c: sqrt(r1 * r2)
    w1_before = _weight(plain, "dw")
    spread = lambda r: r.max() / r.min()  # noqa: E731
    assert spread(r1) < spread(np.abs(w1_before).max(axis=(0, 1, 2))) / 10
    twice = qatir.quantize(g, table=_table(fusions=[CLE]), passes=[
        *FLOAT_PIPELINE, "equalize_cross_layer", "equalize_cross_layer"])
    runs = [p["modified"] for p in twice.metadata["pipeline"]["passes"][-2:]]
    assert runs == [True, False]  # balanced after one run: the second changes nothing


def test_cle_skips_a_producer_whose_activation_does_not_commute_with_scaling():
    g = _dw_pw("RELU6")  # relu6(x / s) != relu6(x) / s
    cle = qatir.quantize(g, table=_table(fusions=[CLE]))
    np.testing.assert_array_equal(_weight(cle, "dw"), g.tensors["w1"].data)


# ----------------------------------------------------------------- bias correction
def _conv_graph(op: str = "CONV_2D", seed: int = 0) -> qatir.Graph:
    """x (positive, mean 0.5) -> one conv-like op whose 64-channel input makes the
    weight rounding error ΔW·E[x] a visible per-channel output offset."""
    rng = np.random.default_rng(seed)
    g = qatir.Graph("bc")
    if op == "FULLY_CONNECTED":
        x = g.add_input("x", [16, 256])
        w = rng.normal(size=(12, 256)).astype(np.float32)
        attrs = {"keep_num_dims": False}
    elif op == "DEPTHWISE_CONV_2D":
        x = g.add_input("x", [1, 12, 12, 64])
        w = rng.normal(size=(1, 5, 5, 64)).astype(np.float32)
        attrs = {"padding": "VALID", "depth_multiplier": 1}
    else:
        x = g.add_input("x", [1, 12, 12, 64])
        w = rng.normal(size=(12, 3, 3, 64)).astype(np.float32)
        attrs = {"padding": "VALID"}
    g.outputs = [g.add_node(op, [x, g.const(w, "w")], attrs, name="op", outputs=["y"]).output]
    return g


def _mean_error(q: qatir.Graph, g: qatir.Graph, tests: list[dict]) -> float:
    """Mean over channels of |mean over the data of (int8 file - float graph ``g``)|."""
    from qatir.evaluate import FloatRun

    buf = qatir.to_tflite(q, io="float")
    errs = []
    for feed in tests:
        got = next(iter(litert_run(buf, feed, ref=True)[0].values()))
        errs.append(got - next(iter(FloatRun(g).run(feed).values())))
    e = np.concatenate([a.reshape(-1, a.shape[-1]) for a in errs])
    return float(np.abs(e.mean(axis=0)).mean())


@pytest.mark.parametrize("op", ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"])
def test_bias_correction_reduces_the_mean_output_error(op):
    g = _conv_graph(op)
    rng = np.random.default_rng(7)
    shape = list(g.inputs[0].shape)
    calib = [{"x": rng.uniform(0, 1, shape).astype(np.float32)} for _ in range(8)]
    tests = [{"x": rng.uniform(0, 1, shape).astype(np.float32)} for _ in range(4)]
    errs = {}
    for on in (False, True):
        table = _table(calibration={"bias_correction": on})
        q = qatir.quantize(g, table=table)
        qatir.calibrate(q, calib, progress=False)
        assert bool(q.metadata.get("bias_corrections")) == on
        errs[on] = _mean_error(q, g, tests)
    assert errs[True] < errs[False] / 2, errs


def test_bias_correction_does_not_accumulate_over_calibrations():
    g = _conv_graph()
    rng = np.random.default_rng(3)
    calib = [{"x": rng.uniform(0, 1, (1, 12, 12, 64)).astype(np.float32)} for _ in range(4)]
    q = qatir.quantize(g, table=_table(calibration={"bias_correction": True}))
    qatir.calibrate(q, calib, progress=False)
    first = np.array(next(n for n in q.nodes if n.name == "op").inputs[2].data)
    qatir.calibrate(q, calib, progress=False)
    np.testing.assert_allclose(next(n for n in q.nodes if n.name == "op").inputs[2].data, first,
                               rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------- scale / shift folding
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (6,), (1, 1, 1, 6)])
def test_conv_then_constant_mul_and_add_fold_into_the_conv_exactly(shape):
    """paddle2onnx's affine blocks: conv -> MUL(s) -> ADD(t) becomes one conv."""
    rng = np.random.default_rng(2)
    g = qatir.Graph("affine")
    x = g.add_input("x", [1, 8, 8, 3])
    w = rng.normal(size=(6, 3, 3, 3)).astype(np.float32)
    c = g.add_node("CONV_2D", [x, g.const(w, "w")], {"padding": "SAME"}, name="conv",
                   outputs=["c"])
    s = g.const(rng.uniform(-2, 2, shape).astype(np.float32), "s")
    m = g.add_node("MUL", [s, c.output], name="mul", outputs=["m"])  # constant first
    t = g.const(rng.normal(size=shape).astype(np.float32), "t")
    a = g.add_node("ADD", [m.output, t], name="add", outputs=["y"])
    g.outputs = [a.output]
    feed = {"x": rng.normal(size=(1, 8, 8, 3)).astype(np.float32)}
    assert "MUL" in [n.op for n in qatir.quantize(g).nodes]  # not in the default table
    q = qatir.quantize(g, table=_table(fusions=[SCALE_SHIFT]))
    assert [n.op for n in q.nodes if n.op != "FAKE_QUANT"] == ["CONV_2D"]
    from qatir.evaluate import FloatRun

    np.testing.assert_allclose(_float_out(q, feed), next(iter(FloatRun(g).run(feed).values())),
                               rtol=1e-5, atol=1e-5)


def test_scale_shift_is_not_folded_over_an_activation_or_a_shared_output():
    rng = np.random.default_rng(2)
    g = qatir.Graph("affine")
    x = g.add_input("x", [1, 4, 4, 3])
    w = rng.normal(size=(6, 1, 1, 3)).astype(np.float32)
    c = g.add_node("CONV_2D", [x, g.const(w, "w")], {"padding": "SAME",
                                                     "fused_activation": "RELU"},
                   name="conv", outputs=["c"])
    m = g.add_node("MUL", [c.output, g.const(np.float32(2.0).reshape(1), "s")], name="mul",
                   outputs=["m"])
    c2 = g.add_node("CONV_2D", [x, g.const(w, "w2")], {"padding": "SAME"}, name="conv2",
                    outputs=["c2"])
    a = g.add_node("ADD", [c2.output, g.const(np.ones(6, np.float32), "t")], name="add",
                   outputs=["a"])
    g.outputs = [m.output, a.output, c2.output]  # c2 is also an output: not single use
    ops = [n.op for n in qatir.quantize(g, table=_table(fusions=[SCALE_SHIFT])).nodes
           if n.op != "FAKE_QUANT"]
    assert ops.count("MUL") == 1 and ops.count("ADD") == 1


@pytest.mark.parametrize("op, w_shape, attrs", [
    ("CONV_2D", (4, 3, 3, 5), {"padding": "SAME", "stride": [2, 2]}),
    ("CONV_2D", (4, 3, 2, 5), {"padding": "VALID", "dilation": [2, 1]}),
    ("DEPTHWISE_CONV_2D", (1, 3, 3, 10), {"padding": "SAME", "depth_multiplier": 2}),
])
def test_bias_delta_is_the_exact_mean_of_the_weight_error_conv(op, w_shape, attrs):
    """Σ ΔW · E[x at each tap] equals the mean of conv(x, ΔW) itself, padding included
    (a 5x5 map with a 3x3 kernel: a channel mean would be off at the borders)."""
    from qatir.bias_correction import bias_delta, tap_means
    from qatir.evaluate import FloatRun

    rng = np.random.default_rng(4)
    g = qatir.Graph("dconv")
    x = g.add_input("x", [2, 5, 5, 5])
    dw = rng.normal(size=w_shape).astype(np.float32)
    node = g.add_node(op, [x, g.const(dw, "dw")], attrs, name="op", outputs=["y"])
    g.outputs = [node.output]
    xs = (rng.uniform(0, 1, (2, 5, 5, 5)) + np.arange(5)[:, None, None]).astype(np.float32)
    want = next(iter(FloatRun(g).run({"x": xs}).values())).reshape(-1, node.output.shape[-1])
    sums, n = tap_means(node, xs)
    np.testing.assert_allclose(bias_delta(node, dw.astype(np.float64), sums / n),
                               want.mean(axis=0), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------- denormal weight channels
def test_a_weight_channel_of_denormals_quantizes_to_zero_without_overflow():
    """PP-OCRv4's recognizer has conv channels with |w| ~ 1e-39 (a batch norm's gamma
    near zero folded in): their inverse step overflowed float32 and the int8 weights of
    the channel came from NaN casts."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    w[2] = np.float32(1e-39) * np.sign(w[2])
    g = qatir.Graph("tiny")
    x = g.add_input("x", [1, 6, 6, 3])
    g.outputs = [g.add_node("CONV_2D", [x, g.const(w, "w"), g.const(np.ones(4, np.float32), "b")],
                            {"padding": "SAME"}, name="conv", outputs=["y"]).output]
    q = qatir.quantize(g)
    feeds = [{"x": rng.normal(size=(1, 6, 6, 3)).astype(np.float32)} for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        qatir.calibrate(q, feeds, progress=False)
        buf = qatir.to_tflite(q, io="float")
    it = litert_run(buf, feeds[0], ref=True)[1]
    d = next(d for d in it.get_tensor_details() if d["name"] == "w_fq")
    np.testing.assert_array_equal(it.get_tensor(d["index"])[2], 0)
    assert compare_all(q, seeds=(1,)) == {"reference": 0, "xnnpack": 0}


# ----------------------------------------------------------------- tools/compare_peers.py
def _compare_peers():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "compare_peers.py"
    spec = importlib.util.spec_from_file_location("compare_peers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compare_peers_variants_are_valid_tables_one_change_each():
    from qatir.table import validate_table

    cp = _compare_peers()
    base = load_table().data
    for name in cp.VARIANTS:
        data = cp.variant_table(name)
        validate_table(data, f"variant {name}")
        changed = [k for k in ("fusions", "calibration", "weights", "constraints", "exclude")
                   if data.get(k) != base.get(k)]
        if name not in ("minmax", "no_bias_correction", "no_cle", "no_scale_shift",
                        "requant_shared"):
            assert len(changed) == 1, (name, changed)  # the defaults' own values change nothing


def test_compare_peers_table_counts_the_models_behind():
    cp = _compare_peers()
    rows = [{"name": "a", "status": "ok", "data": "real", "qatir_db": 30.0, "aeq_db": 31.0,
             "first_behind": {"node": "conv", "op": "CONV_2D", "qatir_db": 20.0,
                              "aeq_db": 22.0}},
            {"name": "b", "status": "ok", "data": "real", "qatir_db": 30.0, "aeq_db": 29.0},
            {"name": "c", "status": "CRASH", "error": "SIGSEGV"}]
    text = cp.format_table(rows, 0.5)
    assert "conv (CONV_2D): 20.0 vs 22.0 dB" in text and "c " in text and "CRASH" in text
    assert "median: qatir 30.0 dB, ai-edge-quantizer 30.0 dB" in text
    assert "behind on 1 of 2" in text


def test_compare_peers_more_tests_table_counts_on_all_inputs():
    cp = _compare_peers()
    rows = [{"name": "a", "status": "ok", "data": "real", "qatir_db": 30.0, "aeq_db": 31.0,
             "more": {"tests": 16, "qatir_db": 31.0, "aeq_db": 31.2,
                      "variants_db": {"v": 30.0}}},
            {"name": "b", "status": "ok", "data": "real", "qatir_db": 30.0, "aeq_db": 29.0,
             "more": {"tests": 8, "qatir_db": 20.0, "aeq_db": 29.0, "variants_db": {"v": 29.0}}}]
    text = cp.format_more(rows, 0.5)
    assert "on all N inputs qatir more than 0.5 dB behind on 1 of 2; v: 1" in text
    assert text.splitlines()[3].split()[:2] == ["b", "8"]

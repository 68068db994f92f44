"""Post-training accuracy techniques (issue 16): per-channel FULLY_CONNECTED weights,
bias correction and cross-layer equalization, each on a small graph."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest

import qatir
from qatir.parity import xnnpack_coverage
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

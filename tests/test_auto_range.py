"""Quantizer ``auto``: each range's rule chosen by the held-out int8 output error."""

from __future__ import annotations

import numpy as np
import pytest

import qatir
from qatir.ir import Graph
from qatir.table import load_table


def conv_net() -> Graph:
    """x[1, 8, 8, 3] -> 1x1 CONV_2D (4 channels): the output error follows the input range."""
    rng = np.random.default_rng(0)
    g = Graph("conv_net")
    x = g.add_input("x", [1, 8, 8, 3])
    w = g.const(rng.normal(0, 0.5, (4, 1, 1, 3)).astype(np.float32), "w")
    b = g.const(np.zeros(4, np.float32), "b")
    g.outputs = [g.add_node("CONV_2D", [x, w, b], {"padding": "SAME"}, name="conv").output]
    return g


def auto_table() -> dict:
    data = load_table(None).data
    return {**data, "calibration": {**data["calibration"], "activation": "auto"}}


def batches(scales: list[float], spike: dict[int, float] | None = None) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    out = []
    for k, s in enumerate(scales):
        x = (rng.normal(0, 1, (1, 8, 8, 3)) * s).astype(np.float32)
        if spike and k in spike:
            x[0, 3, 3, 0] = spike[k]
        out.append(x)
    return out


def calibrate_auto(data, **kw) -> Graph:
    q = qatir.quantize(conv_net(), table=auto_table())
    return qatir.calibrate(q, data, progress=False, **kw)


def input_range(g: Graph) -> tuple[float, float]:
    fq = g.tensors["x"].users[0]
    return float(fq.inputs[1].data.min()), float(fq.inputs[2].data.max())


def ranges(g: Graph) -> dict[str, tuple[list, list]]:
    return {n.name: (n.inputs[1].data.tolist(), n.inputs[2].data.tolist())
            for n in g.nodes if n.op == "FAKE_QUANT"}


def test_an_outlier_in_one_batch_makes_auto_take_ema():
    # one fold: batches 0, 2, 4, 6 set the ranges (the outlier in 2), 1, 3, 5, 7 score them
    data = batches([1.0] * 8, spike={2: 200.0})
    g = calibrate_auto(data, quantizer_options={"auto": {"folds": 1}})
    err = g.metadata["auto_range_errors"]
    assert err["ema"] < err["minmax"] / 4
    assert g.metadata["auto_ranges"]["x_fq"] == "ema"
    assert input_range(g)[1] < 50  # not the outlier's 200: ema's range on all batches


def test_a_narrow_first_batch_makes_auto_take_minmax():
    data = batches([0.05] + [1.0] * 7)  # ema starts at the narrow first batch
    g = calibrate_auto(data)  # two folds: odd batches scored on the even's ranges, and back
    err = g.metadata["auto_range_errors"]
    assert err["minmax"] < err["ema"] / 4
    assert g.metadata["auto_ranges"]["x_fq"] == "minmax"
    assert input_range(g)[1] == pytest.approx(max(float(x.max()) for x in data))


def test_auto_is_deterministic_and_streams_from_a_generator():
    data = batches([1.0] * 8, spike={2: 200.0})
    a = calibrate_auto(data, quantizer_options={"auto": {"folds": 1}})
    b = calibrate_auto((x for x in data),  # a one-shot generator: one pass is enough
                       quantizer_options={"auto": {"folds": 1}})
    assert a.metadata["auto_ranges"] == b.metadata["auto_ranges"]
    assert a.metadata["auto_range_errors"] == b.metadata["auto_range_errors"]
    assert ranges(a) == ranges(b) and ranges(a)


def test_auto_streams_from_tf_data():
    tf = pytest.importorskip("tensorflow")
    data = batches([0.05] + [1.0] * 7)
    ds = tf.data.Dataset.from_tensor_slices({"x": np.concatenate(data)}).batch(1)
    a, b = calibrate_auto(data), calibrate_auto(ds)
    assert a.metadata["auto_ranges"] == b.metadata["auto_ranges"]
    assert input_range(a) == input_range(b)


def test_one_batch_takes_the_first_candidate_and_alone_auto_is_minmax():
    data = batches([1.0], spike={0: 200.0})
    g = calibrate_auto(data)
    assert set(g.metadata["auto_ranges"].values()) == {"minmax"}
    assert input_range(g)[1] == pytest.approx(200.0)


def test_candidates_are_an_option():
    data = batches([1.0] * 8, spike={2: 200.0})
    g = calibrate_auto(data, quantizer_options={"auto": {"candidates": ["ema", "minmax"],
                                                         "refine": 0, "folds": 1}})
    assert set(g.metadata["auto_range_errors"]) == {"ema", "minmax"}
    assert g.metadata["auto_ranges"]["x_fq"] == "ema"


def test_two_folds_score_both_parities_and_one_fold_only_the_odd_batches():
    data = batches([1.0] * 8)
    two = calibrate_auto(data, quantizer_options={"auto": {"refine": 0}})
    one = calibrate_auto(data, quantizer_options={"auto": {"refine": 0, "folds": 1}})
    for name in ("minmax", "ema"):
        assert two.metadata["auto_range_errors"][name] > one.metadata["auto_range_errors"][name]

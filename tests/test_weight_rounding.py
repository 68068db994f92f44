"""GPTQ weight rounding (``[calibration] weight_rounding = "gptq"``, qatir.weight_rounding)
on single layers: it lowers the layer's output error on data it did not see, keeps every
weight on its nearest-rounding grid, stays bit-exact in LiteRT, and never runs twice."""

from __future__ import annotations

import re

import numpy as np
import pytest

import qatir
from qatir import weight_rounding
from qatir.bias_correction import weights
from qatir.errors import QatirError, TableError
from qatir.table import builtin_tables, load_table
from tests.helpers import compare_all

MIX = np.random.default_rng(100).normal(size=(32, 32)) / np.sqrt(32)
LOW_RANK = np.random.default_rng(101).normal(size=(16, 128))


def _table(rounding: str) -> dict:
    data = load_table().data
    return {**data, "calibration": {**data["calibration"], "weight_rounding": rounding}}


def _layer(op: str, seed: int = 0) -> qatir.Graph:
    rng = np.random.default_rng(seed)
    g = qatir.Graph("wr")
    if op == "FULLY_CONNECTED":
        x = g.add_input("x", [64, 128])
        w = rng.normal(size=(32, 128)).astype(np.float32)
        attrs = {"keep_num_dims": False}
    elif op == "DEPTHWISE_CONV_2D":
        x = g.add_input("x", [1, 16, 16, 32])
        w = rng.normal(size=(1, 3, 3, 32)).astype(np.float32)
        attrs = {"padding": "SAME", "depth_multiplier": 1}
    else:  # a grouped conv with stride: two problems, padding taps
        x = g.add_input("x", [1, 16, 16, 32])
        w = rng.normal(size=(24, 3, 3, 16 if op == "GROUPED" else 32)).astype(np.float32)
        attrs = {"padding": "SAME", "stride": (2, 2) if op == "GROUPED" else (1, 1)}
        op = "CONV_2D"
    g.outputs = [g.add_node(op, [x, g.const(w, "w")], attrs, name="op", outputs=["y"]).output]
    return g


def _data(g: qatir.Graph, n: int, seed: int) -> list[dict]:
    """Correlated inputs, as real activations are: smooth fields mixed across channels
    (convs), or a low-rank signal plus noise (FULLY_CONNECTED)."""
    rng = np.random.default_rng(seed)
    shape = g.inputs[0].shape
    out = []
    for _ in range(n):
        if len(shape) == 2:
            z = rng.normal(size=(shape[0], 16)) @ LOW_RANK * 0.3
            z = z + 0.1 * rng.normal(size=shape)
        else:
            z = rng.normal(size=(1, shape[1] // 4, shape[2] // 4, shape[3]))
            z = np.kron(z, np.ones((1, 4, 4, 1))) + 0.3 * rng.normal(size=shape)
            z = z @ (np.eye(shape[3]) + MIX)
        out.append({"x": z.astype(np.float32)})
    return out


def _weight_only_db(node, w: np.ndarray, data: list[dict]) -> float:
    """Output SQNR of the layer's int8 weights alone, in float64, on ``data``."""
    x = np.concatenate([weight_rounding.patches(node, f["x"]) for f in data])
    _, wq = weights(node)
    if node.op == "DEPTHWISE_CONV_2D":
        c = w.shape[3]
        xs = x.reshape(len(x), -1, c)
        ref = np.einsum("npc,pc->nc", xs, w.reshape(-1, c))
        err = np.einsum("npc,pc->nc", xs, (wq - w).reshape(-1, c))
    elif node.op == "CONV_2D" and w.shape[3] != node.inputs[0].shape[3]:
        groups = node.inputs[0].shape[3] // w.shape[3]
        xs = x.reshape(len(x), -1, groups, w.shape[3])
        per = w.shape[0] // groups
        wg = w.reshape(groups, per, -1, w.shape[3])
        dg = (wq - w).reshape(groups, per, -1, w.shape[3])
        ref = np.einsum("npgc,gopc->ngo", xs, wg)
        err = np.einsum("npgc,gopc->ngo", xs, dg)
    else:
        ref, err = x @ w.reshape(len(w), -1).T, x @ (wq - w).reshape(len(w), -1).T
    return float(10 * np.log10((ref ** 2).sum() / (err ** 2).sum()))


def _weight(q: qatir.Graph):
    """The weight constant of node "op"."""
    return weight_rounding._weight_fq(next(n for n in q.nodes if n.name == "op")).inputs[0]


def _calibrated(g: qatir.Graph, rounding: str, calib) -> qatir.Graph:
    q = qatir.quantize(g, table=_table(rounding))
    qatir.calibrate(q, calib, progress=False)
    return q


@pytest.mark.parametrize("op", ["CONV_2D", "GROUPED", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"])
def test_gptq_lowers_the_layer_error_on_held_out_data_and_keeps_the_grid(op):
    g = _layer(op)
    w = np.asarray(g.tensors["w"].data, np.float64)
    calib, held_out = _data(g, 16, 1), _data(g, 8, 2)
    got = {}
    for rounding in ("nearest", "gptq"):
        q = _calibrated(g, rounding, calib)
        node = next(n for n in q.nodes if n.name == "op")
        assert q.metadata.get("weight_rounding_done", []) == (["op"] if rounding == "gptq" else [])
        got[rounding] = (_weight_only_db(node, w, held_out), weights(node)[1],
                         [np.array(t.data) for t in weight_rounding._weight_fq(node).inputs[1:]])
    gain = got["gptq"][0] - got["nearest"][0]
    assert gain > (1.0 if op == "DEPTHWISE_CONV_2D" else 2.0), got
    # the same ranges (so the same scales in the file), every weight on the grid, and
    # no weight more than a few steps from its nearest value
    for a, b in zip(got["gptq"][2], got["nearest"][2]):
        np.testing.assert_array_equal(a, b)
    scale = (got["nearest"][2][1] / 127).reshape(-1)
    axis = 3 if op == "DEPTHWISE_CONV_2D" else 0
    steps = np.moveaxis(got["gptq"][1] - got["nearest"][1], axis, -1) / scale
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    assert np.abs(steps).max() <= 8


def test_gptq_file_is_bit_exact_on_both_resolvers():
    g = _layer("CONV_2D")
    q = _calibrated(g, "gptq", _data(g, 6, 3))
    assert q.metadata["weight_rounding_done"] == ["op"]
    assert compare_all(q, seeds=(1, 2)) == {"reference": 0, "xnnpack": 0}


def test_the_weights_that_set_a_range_keep_their_nearest_value():
    """The check can fail: without pinning, the updates move some channel's largest
    weight off ±127, and the range recomputed from the rounded weights would shrink."""
    moved = 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        w = rng.normal(size=(16, 40))
        x = rng.normal(size=(200, 8)) @ rng.normal(size=(8, 40))  # correlated: big updates
        h = x.T @ x
        m = np.abs(w).max(axis=1, keepdims=True)
        grid = weight_rounding.Grid(np.broadcast_to(-m, w.shape)[None],
                                    np.broadcast_to(m, w.shape)[None], 8, True)
        top = np.abs(grid(w[None])[0]).max(axis=1)
        pinned = np.abs(w) == m
        q = weight_rounding.gptq(w[None], h[None], grid, pinned[None])[0]
        np.testing.assert_array_equal(np.abs(q).max(axis=1), top)
        np.testing.assert_array_equal(q[pinned], grid(w[None])[0][pinned])
        free = weight_rounding.gptq(w[None], h[None], grid, np.zeros_like(pinned)[None])[0]
        moved += int(np.any(np.abs(free[pinned]) < top))
    assert moved  # the pin is what kept them


def test_calibrating_again_rounds_nothing_more():
    g = _layer("CONV_2D")
    calib = _data(g, 6, 5)
    q = _calibrated(g, "gptq", calib)
    first = np.array(_weight(q).data)
    qatir.calibrate(q, calib, progress=False)
    assert q.metadata["weight_rounding_done"] == ["op"]
    np.testing.assert_array_equal(_weight(q).data, first)


def test_too_few_rows_keep_nearest_rounding():
    """A classifier head seen on a few samples: 2 x 64 rows for 128 columns."""
    g = _layer("FULLY_CONNECTED")
    q = _calibrated(g, "gptq", _data(g, 2, 6))
    assert q.metadata["weight_rounding_done"] == []
    np.testing.assert_array_equal(_weight(q).data, g.tensors["w"].data)


def test_a_one_shot_iterator_is_refused_up_front():
    g = _layer("CONV_2D")
    q = qatir.quantize(g, table=_table("gptq"))
    with pytest.raises(QatirError, match=r"weight_rounding.*one-shot generator"):
        qatir.calibrate(q, (f for f in _data(g, 2, 7)), progress=False)


def test_an_unknown_rounding_names_the_table_entry(tmp_path):
    text = open(builtin_tables()["int8_default"]).read()
    text = re.sub(r"(\[calibration\]\n)", r'\1weight_rounding = "stochastic"\n', text, count=1)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(TableError, match=r"bad\.toml: calibration\.weight_rounding"):
        load_table(path)


def test_the_grid_is_tf_per_channel_fake_quant_bit_for_bit():
    from qatir.numerics import fake_quant

    rng = np.random.default_rng(8)
    x = rng.normal(size=(5, 300)).astype(np.float32) * 3
    hi = np.abs(rng.normal(size=5)).astype(np.float32) * 4
    hi[0] = 0.0  # an all-zero channel
    lo = -hi
    want = fake_quant(x, lo, hi, 8, True, axis=0)
    grid = weight_rounding.Grid(np.broadcast_to(lo[:, None], x.shape),
                                np.broadcast_to(hi[:, None], x.shape), 8, True)
    np.testing.assert_array_equal(grid(x), want)
    np.testing.assert_array_equal(grid(x[:, 7], 7), want[:, 7])

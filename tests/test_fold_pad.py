"""fold_pad_into_window: a PAD equal to SAME padding becomes the conv's / max-pool's own
SAME padding (Keras' ZeroPadding2D + strided VALID conv), exactly, in float and int8."""

from __future__ import annotations

import numpy as np
import pytest

import qatir
from qatir.ir import Graph
from qatir.pipeline import float_pipeline
from tests.helpers import compare_all

MIN = float(np.finfo(np.float32).min)


def _graph(op: str, pads, value: float = 0.0, size: int = 8, stride: int = 2) -> Graph:
    rng = np.random.default_rng(0)
    g = Graph("pad_window")
    x = g.add_input("x", [None, size, size, 4])
    p = g.add_node("PAD", [x], {"paddings": [[0, 0], list(pads[0]), list(pads[1]), [0, 0]],
                                "constant_value": value}).output
    attrs = {"padding": "VALID", "stride": [stride, stride]}
    if op == "CONV_2D":
        w = g.const(rng.normal(0, 0.3, (6, 3, 3, 4)).astype(np.float32))
        y = g.add_node(op, [p, w, g.const(np.zeros(6, np.float32))], attrs).output
    elif op == "DEPTHWISE_CONV_2D":
        w = g.const(rng.normal(0, 0.3, (1, 3, 3, 4)).astype(np.float32))
        y = g.add_node(op, [p, w, g.const(np.zeros(4, np.float32))],
                       {**attrs, "depth_multiplier": 1}).output
    else:
        y = g.add_node(op, [p], {**attrs, "filter": [3, 3]}).output
    g.outputs = [g.add_node("RELU", [y]).output]
    return g


def _run(g: Graph, x: np.ndarray) -> np.ndarray:
    return next(iter(qatir.run(g, {"x": x}).values()))


@pytest.mark.parametrize("op,value", [("CONV_2D", 0.0), ("DEPTHWISE_CONV_2D", 0.0),
                                      ("MAX_POOL_2D", MIN)])
def test_same_pads_fold_into_the_op_exactly(op, value):
    g = _graph(op, [(0, 1), (0, 1)], value)   # SAME for k=3, s=2 on an even size
    f = float_pipeline(g)
    assert [n.op for n in f.nodes] == [op] and f.nodes[0].attrs["padding"] == "SAME"
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(f, x), _run(g, x), rtol=1e-6, atol=1e-6)
    q = qatir.quantize(g)
    qatir.calibrate(q, [{"x": x}], progress=False)
    assert compare_all(q, seeds=(1, 2)) == {"reference": 0, "xnnpack": 0}


@pytest.mark.parametrize("op,pads,value,why", [
    ("CONV_2D", [(1, 1), (1, 1)], 0.0, "not SAME"),          # SAME would be (0, 1)
    ("CONV_2D", [(0, 1), (0, 1)], 1.0, "not zero padding"),
    ("MAX_POOL_2D", [(0, 1), (0, 1)], 0.0, "not -inf padding"),
    ("AVERAGE_POOL_2D", [(0, 1), (0, 1)], 0.0, "SAME averages valid cells only"),
])
def test_other_pads_stay(op, pads, value, why):
    f = float_pipeline(_graph(op, pads, value))
    assert [n.op for n in f.nodes][0] == "PAD", why


# ------------------------------------------------ constant input scaling (Keras Rescaling)
def _prep_graph(op: str, c: np.ndarray, zero_add: bool = True) -> Graph:
    rng = np.random.default_rng(2)
    g = Graph("prep")
    x = g.add_input("x", [None, 8, 8, 3])
    h = g.add_node("MUL", [x, g.const(np.float32(1 / 255))]).output
    if zero_add:
        h = g.add_node("ADD", [h, g.const(np.zeros((1, 1, 1, 3), np.float32))]).output
    h = g.add_node("MUL", [h, g.const(c)]).output
    if op == "CONV_2D":
        w = g.const(rng.normal(0, 0.3, (5, 3, 3, 3)).astype(np.float32))
        y = g.add_node(op, [h, w, g.const(np.zeros(5, np.float32))],
                       {"padding": "SAME", "stride": [2, 2]}).output
    else:
        w = g.const(rng.normal(0, 0.3, (1, 3, 3, 6)).astype(np.float32))
        y = g.add_node(op, [h, w, g.const(np.zeros(6, np.float32))],
                       {"padding": "SAME", "stride": [1, 1], "depth_multiplier": 2}).output
    g.outputs = [y]
    return g


@pytest.mark.parametrize("op", ["CONV_2D", "DEPTHWISE_CONV_2D"])
def test_input_scaling_and_zero_add_fold_into_the_conv(op):
    c = np.array([[[[0.5, 2.0, 1.5]]]], np.float32)
    g = _prep_graph(op, c)
    f = float_pipeline(g)
    assert [n.op for n in f.nodes] == [op]
    x = np.random.default_rng(3).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(_run(f, x), _run(g, x), rtol=1e-5, atol=1e-5)
    q = qatir.quantize(g)
    qatir.calibrate(q, [{"x": x}], progress=False)
    assert compare_all(q, seeds=(1, 2)) == {"reference": 0, "xnnpack": 0}


def test_a_scale_along_another_axis_is_not_folded():
    g = _prep_graph("CONV_2D", np.linspace(0.5, 1.5, 8).astype(np.float32).reshape(1, 1, 8, 1),
                    zero_add=False)
    assert "MUL" in [n.op for n in float_pipeline(g).nodes]

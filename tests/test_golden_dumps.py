"""Golden text dumps: the exact ``str(graph)`` after each built-in pass on small graphs.

A change to a pass's output, to the printer or to naming shows up here as a readable
diff. When a change is intended, print the new dump (``print(after(name, passes))``)
and paste it over the golden below after reading the diff.
"""

from __future__ import annotations

import numpy as np
import pytest

from qatir.ir import Graph
from qatir.pipeline import run_pipeline


def _bn(g: Graph, x, values: dict[str, list[float]], name: str):
    consts = [g.const(np.array(values[k], np.float32), k) for k in ("gamma", "beta", "mean", "var")]
    return g.add_node("BATCH_NORM", [x, *consts], {"epsilon": 0.0}, name=name).output


def conv_bn_relu6() -> Graph:
    """CONV_2D -> BATCH_NORM -> RELU6: folds, then fuses into one conv."""
    g = Graph("conv_bn_relu6")
    x = g.add_input("x", [1, 4, 4, 2])
    w = g.const(np.arange(54, dtype=np.float32).reshape(3, 3, 3, 2) / 54, "w")
    b = g.const(np.array([0.5, -0.5, 0.0], np.float32), "b")
    y = g.add_node("CONV_2D", [x, w, b], {"padding": "SAME"}, name="conv").output
    y = _bn(g, y, {"gamma": [2.0, 1.0, 0.5], "beta": [0.0, 1.0, -1.0],
                   "mean": [0.25, 0.0, -0.25], "var": [1.0, 4.0, 0.25]}, "bn")
    g.outputs = [g.add_node("RELU6", [y], name="relu6").output]
    return g


def branches() -> Graph:
    """A conv read twice (its RELU must not fuse), LOGISTIC and TANH (fixed output ranges),
    MAX_POOL_2D and RESHAPE (inherit their input's grid), FULLY_CONNECTED -> BATCH_NORM."""
    g = Graph("branches")
    x = g.add_input("x", [1, 4, 4, 2])
    w = g.const(np.array([[[[1.0, -1.0]]], [[[0.5, 0.25]]]], np.float32), "w")
    c = g.add_node("CONV_2D", [x, w], {"padding": "VALID"}, name="conv").output
    r = g.add_node("RELU", [c], name="relu").output
    s = g.add_node("ADD", [c, r], name="add").output
    s = g.add_node("LOGISTIC", [s], name="sigmoid").output
    m = g.add_node("MAX_POOL_2D", [s], {"filter": [2, 2], "stride": [2, 2]}, name="pool").output
    f = g.add_node("RESHAPE", [m], {"new_shape": [1, 8]}, name="flat").output
    y = g.add_node("FULLY_CONNECTED", [f, g.const(np.eye(3, 8, dtype=np.float32), "wf"),
                                       g.const(np.zeros(3, np.float32), "bf")], name="fc").output
    y = _bn(g, y, {"gamma": [1.0, 2.0, 4.0], "beta": [0.5, 0.0, 0.0], "mean": [0.0, 0.0, 1.0],
                   "var": [1.0, 1.0, 1.0]}, "bn")
    g.outputs = [g.add_node("TANH", [y], name="tanh").output]
    return g


GRAPHS = {"conv_bn_relu6": conv_bn_relu6, "branches": branches}
PASSES = ("fold_batch_norm", "fuse_activations", "insert_fake_quant")


def after(name: str, passes: tuple[str, ...]) -> str:
    """The dump of graph ``name`` after running ``passes`` in order (verified after each)."""
    g = GRAPHS[name]()
    run_pipeline(g, list(passes))
    return str(g)


GOLDEN: dict[tuple[str, str], str] = {
    ("conv_bn_relu6", "fold_batch_norm"): """\
graph conv_bn_relu6(%x: f32[1,4,4,2]) -> (%relu6) {
  %w_bn: f32[3,3,3,2] = const range[0, 0.9815]
  %b_bn: f32[3] = const [0.5,0.75,-0.75]
  %conv: f32[1,4,4,3] = CONV_2D(%x, %w_bn, %b_bn) {dilation=[1,1], padding=SAME, stride=[1,1]}  # conv
  %relu6: f32[1,4,4,3] = RELU6(%conv)  # relu6
}""",
    ("conv_bn_relu6", "fuse_activations"): """\
graph conv_bn_relu6(%x: f32[1,4,4,2]) -> (%relu6) {
  %w_bn: f32[3,3,3,2] = const range[0, 0.9815]
  %b_bn: f32[3] = const [0.5,0.75,-0.75]
  %relu6: f32[1,4,4,3] = CONV_2D(%x, %w_bn, %b_bn) {dilation=[1,1], act=RELU6, padding=SAME, stride=[1,1]}  # conv
}""",
    ("conv_bn_relu6", "insert_fake_quant"): """\
graph conv_bn_relu6(%x: f32[1,4,4,2]) -> (%relu6) {
  %x_min: f32[] = const [-6]
  %x_max: f32[] = const [6]
  %w_bn: f32[3,3,3,2] = const range[0, 0.9815]
  %w_bn_wmin: f32[3] = const [-0.62963,-0.324074,-0.981481]
  %w_bn_wmax: f32[3] = const [0.62963,0.324074,0.981481]
  %b_bn: f32[3] = const [0.5,0.75,-0.75]
  %relu6_min: f32[] = const [-6]
  %relu6_max: f32[] = const [6]
  %x_fq: f32[1,4,4,2] q(0.0470588, 0) = FAKE_QUANT(%x, %x_min, %x_max) {axis=none, bits=8, kind=activation, narrow_range=False, quantizer=minmax, symmetric=False}  # x_fq
  %w_bn_fq: f32[3,3,3,2] q[axis=0, n=3](0.002552..0.007728) = FAKE_QUANT(%w_bn, %w_bn_wmin, %w_bn_wmax) {axis=0, bits=8, kind=weight, narrow_range=True, quantizer=minmax, symmetric=True}  # w_bn_fq
  %relu6_fq: f32[1,4,4,3] = CONV_2D(%x_fq, %w_bn_fq, %b_bn) {dilation=[1,1], act=RELU6, padding=SAME, stride=[1,1]}  # conv
  %relu6: f32[1,4,4,3] q(0.0470588, 0) = FAKE_QUANT(%relu6_fq, %relu6_min, %relu6_max) {axis=none, bits=8, kind=activation, narrow_range=False, quantizer=minmax, symmetric=False}  # relu6_fq
}""",
    ("branches", "fold_batch_norm"): """\
graph branches(%x: f32[1,4,4,2]) -> (%tanh) {
  %w: f32[2,1,1,2] = const [1,-1,0.5,0.25]
  %wf_bn: f32[3,8] = const range[0, 4]
  %bf_bn: f32[3] = const [0.5,0,-4]
  %conv: f32[1,4,4,2] = CONV_2D(%x, %w) {dilation=[1,1], padding=VALID, stride=[1,1]}  # conv
  %relu: f32[1,4,4,2] = RELU(%conv)  # relu
  %add: f32[1,4,4,2] = ADD(%conv, %relu)  # add
  %sigmoid: f32[1,4,4,2] = LOGISTIC(%add)  # sigmoid
  %pool: f32[1,2,2,2] = MAX_POOL_2D(%sigmoid) {filter=[2,2], padding=VALID, stride=[2,2]}  # pool
  %flat: f32[1,8] = RESHAPE(%pool) {new_shape=[1,8]}  # flat
  %fc: f32[1,3] = FULLY_CONNECTED(%flat, %wf_bn, %bf_bn) {keep_num_dims=False}  # fc
  %tanh: f32[1,3] = TANH(%fc)  # tanh
}""",
    ("branches", "fuse_activations"): """\
graph branches(%x: f32[1,4,4,2]) -> (%tanh) {
  %w: f32[2,1,1,2] = const [1,-1,0.5,0.25]
  %wf_bn: f32[3,8] = const range[0, 4]
  %bf_bn: f32[3] = const [0.5,0,-4]
  %conv: f32[1,4,4,2] = CONV_2D(%x, %w) {dilation=[1,1], padding=VALID, stride=[1,1]}  # conv
  %relu: f32[1,4,4,2] = RELU(%conv)  # relu
  %add: f32[1,4,4,2] = ADD(%conv, %relu)  # add
  %sigmoid: f32[1,4,4,2] = LOGISTIC(%add)  # sigmoid
  %pool: f32[1,2,2,2] = MAX_POOL_2D(%sigmoid) {filter=[2,2], padding=VALID, stride=[2,2]}  # pool
  %flat: f32[1,8] = RESHAPE(%pool) {new_shape=[1,8]}  # flat
  %fc: f32[1,3] = FULLY_CONNECTED(%flat, %wf_bn, %bf_bn) {keep_num_dims=False}  # fc
  %tanh: f32[1,3] = TANH(%fc)  # tanh
}""",
    ("branches", "insert_fake_quant"): """\
graph branches(%x: f32[1,4,4,2]) -> (%tanh) {
  %x_min: f32[] = const [-6]
  %x_max: f32[] = const [6]
  %w: f32[2,1,1,2] = const [1,-1,0.5,0.25]
  %w_wmin: f32[2] = const [-1,-0.5]
  %w_wmax: f32[2] = const [1,0.5]
  %conv_min: f32[] = const [-6]
  %conv_max: f32[] = const [6]
  %relu_min: f32[] = const [-6]
  %relu_max: f32[] = const [6]
  %add_min: f32[] = const [-6]
  %add_max: f32[] = const [6]
  %sigmoid_min: f32[] = const [0]
  %sigmoid_max: f32[] = const [0.996094]
  %wf_bn: f32[3,8] = const range[0, 4]
  %wf_bn_wmin: f32[3] = const [-1,-2,-4]
  %wf_bn_wmax: f32[3] = const [1,2,4]
  %bf_bn: f32[3] = const [0.5,0,-4]
  %fc_min: f32[] = const [-6]
  %fc_max: f32[] = const [6]
  %tanh_min: f32[] = const [-1]
  %tanh_max: f32[] = const [0.992188]
  %x_fq: f32[1,4,4,2] q(0.0470588, 0) = FAKE_QUANT(%x, %x_min, %x_max) {axis=none, bits=8, kind=activation, narrow_range=False, quantizer=minmax, symmetric=False}  # x_fq
  %w_fq: f32[2,1,1,2] q[axis=0, n=2](0.003937..0.007874) = FAKE_QUANT(%w, %w_wmin, %w_wmax) {axis=0, bits=8, kind=weight, narrow_range=True, quantizer=minmax, symmetric=True}  # w_fq
  %conv: f32[1,4,4,2] = CONV_2D(%x_fq, %w_fq) {dilation=[1,1], padding=VALID, stride=[1,1]}  # conv
  %conv_fq: f32[1,4,4,2] q(0.0470588, 0) = FAKE_QUANT(%conv, %conv_min, %conv_max) {axis=none, bits=8, kind=activation, narrow_range=False, quantizer=minmax, symmetric=False}  # conv_fq
  %relu: f32[1,4,4,2] = RELU(%conv_fq)  # relu
  %relu_fq: f32[1,4,4,2] q(0.0470588, 0) = FAKE_QUANT(%relu, %relu_min, %relu_max) {axis=none, bits=8, kind=activation, narrow_range=False, quantizer=minmax, symmetric=False}  # relu_fq
  %add: f32[1,4,4,2] = ADD(%conv_fq, %relu_fq)  # add
  %add_fq: f32[1,4,4,2] q(0.0470588, 0) = FAKE_QUANT(%add, %add_min, %add_max) {axis=none, bits=8, kind=activation, narrow_range=False, quantizer=minmax, symmetric=False}  # add_fq
  %sigmoid: f32[1,4,4,2] = LOGISTIC(%add_fq)  # sigmoid
  %sigmoid_fq: f32[1,4,4,2] q(0.00390625, -128) = FAKE_QUANT(%sigmoid, %sigmoid_min, %sigmoid_max) {axis=none, bits=8, kind=activation, narrow_range=False, quantizer=fixed, symmetric=False}  # sigmoid_fq
  %pool: f32[1,2,2,2] = MAX_POOL_2D(%sigmoid_fq) {filter=[2,2], padding=VALID, stride=[2,2]}  # pool
  %flat: f32[1,8] = RESHAPE(%pool) {new_shape=[1,8]}  # flat
  %wf_bn_fq: f32[3,8] q[axis=0, n=3](0.007874..0.0315) = FAKE_QUANT(%wf_bn, %wf_bn_wmin, %wf_bn_wmax) {axis=0, bits=8, kind=weight, narrow_range=True, quantizer=minmax, symmetric=True}  # wf_bn_fq
  %fc: f32[1,3] = FULLY_CONNECTED(%flat, %wf_bn_fq, %bf_bn) {keep_num_dims=False}  # fc
  %fc_fq: f32[1,3] q(0.0470588, 0) = FAKE_QUANT(%fc, %fc_min, %fc_max) {axis=none, bits=8, kind=activation, narrow_range=False, quantizer=minmax, symmetric=False}  # fc_fq
  %tanh_fq: f32[1,3] = TANH(%fc_fq)  # tanh
  %tanh: f32[1,3] q(0.0078125, 0) = FAKE_QUANT(%tanh_fq, %tanh_min, %tanh_max) {axis=none, bits=8, kind=activation, narrow_range=False, quantizer=fixed, symmetric=False}  # tanh_fq
}""",
}


@pytest.mark.parametrize("name,upto", sorted(GOLDEN))
def test_dump_after_pass_matches_golden(name, upto):
    passes = PASSES[:PASSES.index(upto) + 1]
    assert after(name, passes) == GOLDEN[name, upto]


def test_goldens_cover_every_graph_and_pass():
    assert set(GOLDEN) == {(g, p) for g in GRAPHS for p in PASSES}


def test_dump_is_deterministic_across_builds_and_clones():
    for name in GRAPHS:
        g = GRAPHS[name]()
        run_pipeline(g, list(PASSES))
        assert str(g) == after(name, PASSES) == str(g.clone())

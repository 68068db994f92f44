"""The pattern matcher: op alternatives, attribute predicates, single use, constants,
captures, commutative inputs, rule tables, the trace, and linear sweeps."""

from __future__ import annotations

import time

import numpy as np

from qatir.ir import Graph
from qatir.patterns import (
    AnyValue,
    Const,
    Op,
    Pred,
    Rule,
    RuleTable,
    Trace,
    apply_rules,
    close_to,
    match,
)


def _conv_relu_graph(extra_use: bool = False) -> Graph:
    g = Graph()
    x = g.add_input("x", [1, 4, 4, 2])
    w = g.const(np.ones((2, 1, 1, 2), np.float32), "w")
    c = g.add_node("CONV_2D", [x, w], name="conv").output
    r = g.add_node("RELU", [c], name="relu").output
    outs = [r]
    if extra_use:
        outs.append(g.add_node("NEG", [c], name="neg").output)
    g.outputs = outs
    return g


CONV_RELU = Op("RELU", inputs=(Op(("CONV_2D", "DEPTHWISE_CONV_2D"), inputs=(AnyValue("x"), Const("w")),
                                  attrs={"fused_activation": "NONE"}, single_use=True,
                                  capture="conv"),))


def test_match_captures_and_alternatives():
    g = _conv_relu_graph()
    relu = g.nodes[1]
    m = match(g, CONV_RELU, relu)
    assert not isinstance(m, str)
    assert m["conv"] is g.nodes[0]
    assert m["x"] is g.inputs[0]
    assert m["w"].name == "w"


def test_match_failure_reasons_name_the_first_failing_constraint():
    g = _conv_relu_graph(extra_use=True)
    reason = match(g, CONV_RELU, g.nodes[1])
    assert isinstance(reason, str)
    assert "root.input[0]" in reason and "2 uses" in reason and "'conv'" in reason

    g = _conv_relu_graph()
    g.nodes[0].attrs["fused_activation"] = "RELU6"
    reason = match(g, CONV_RELU, g.nodes[1])
    assert "fused_activation" in reason and "RELU6" in reason

    reason = match(g, Op("ADD"), g.nodes[1])
    assert "op RELU" in reason and "['ADD']" in reason

    not_const = Op("CONV_2D", inputs=(Const("x"),))
    assert "is not a constant" in match(g, not_const, g.nodes[0])


def test_single_use_refuses_graph_outputs():
    g = _conv_relu_graph()
    g.outputs = [g.nodes[0].output, g.nodes[1].output]
    reason = match(g, CONV_RELU, g.nodes[1])
    assert "graph output" in reason


def test_same_capture_must_bind_same_value_and_commutative_inputs():
    g = Graph()
    x = g.add_input("x", [4])
    y = g.add_input("y", [4])
    hs = g.add_node("HARD_SIGMOID", [x], {"alpha": 1 / 6, "beta": 0.5}, name="hs").output
    ok = g.add_node("MUL", [hs, x], name="ok").output     # operands swapped
    bad = g.add_node("MUL", [y, hs], name="bad").output   # different x
    g.outputs = [ok, bad]
    pat = Op("MUL", inputs=(AnyValue("x"), Op("HARD_SIGMOID", inputs=(AnyValue("x"),),
                                             attrs={"alpha": close_to(1 / 6)})),
             commutative=True)
    m = match(g, pat, g.nodes[1])
    assert not isinstance(m, str) and m["x"] is x
    reason = match(g, pat, g.nodes[2])
    assert isinstance(reason, str) and "capture 'x'" in reason


def test_attribute_predicates():
    g = _conv_relu_graph()
    big_stride = Pred(lambda s: s[0] > 1, "stride > 1")
    reason = match(g, Op("CONV_2D", attrs={"stride": big_stride}), g.nodes[0])
    assert "needs stride > 1" in reason
    assert not isinstance(match(g, Op("CONV_2D", attrs={"stride": [1, 1]}), g.nodes[0]), str)


def _fuse(rw, m):
    m["conv"].attrs["fused_activation"] = m.root.op
    rw.replace(m.root.output, m["conv"].output)
    rw.remove(m.root)


def test_apply_rules_rewrites_traces_and_keeps_output_names():
    g = _conv_relu_graph()
    trace = Trace()
    rules = RuleTable([Rule("fuse_relu", CONV_RELU, None, _fuse, "relu(conv(x)) = conv(x){act}")])
    assert apply_rules(g, rules, trace, "t")
    g.verify()
    assert [n.op for n in g.nodes] == ["CONV_2D"]
    assert g.nodes[0].attrs["fused_activation"] == "RELU"
    assert g.outputs[0].name == "relu"  # the graph output keeps its name
    assert [e.rule for e in trace.fired()] == ["fuse_relu"]
    assert "fuse_relu @ relu: fired" in trace.format()


def test_check_reason_is_traced_and_blocks_rewrite():
    g = _conv_relu_graph()
    rules = RuleTable([Rule("never", CONV_RELU, lambda m: "weights too large", _fuse)])
    trace = Trace()
    assert not apply_rules(g, rules, trace)
    assert trace.not_fired("never")[0].reason == "check: weights too large"
    assert len(g.nodes) == 2


def test_rule_tables_concatenate():
    a = RuleTable([Rule("a", Op("RELU"), None, _fuse)])
    b = RuleTable([Rule("b", Op("ADD"), None, _fuse)])
    both = a + b + [Rule("c", Op("MUL"), None, _fuse)]
    assert isinstance(both, RuleTable)
    assert [r.name for r in both] == ["a", "b", "c"]


def _relu_chain(n: int) -> Graph:
    g = Graph()
    y = g.add_input("x", [1, 4, 4, 2])
    w = g.const(np.ones((2, 1, 1, 2), np.float32), "w")
    for i in range(n):
        y = g.add_node("CONV_2D", [y, w], name=f"c{i}").output
        y = g.add_node("RELU", [y], name=f"r{i}").output
    g.outputs = [y]
    return g


def test_sweep_is_linear_in_graph_size():
    rules = RuleTable([Rule("fuse_relu", CONV_RELU, None, _fuse)])
    times = {}
    for n in (500, 4000):
        g = _relu_chain(n)
        t0 = time.perf_counter()
        apply_rules(g, rules)
        times[n] = time.perf_counter() - t0
        assert len(g.nodes) == n
        g.verify()
    # 8x the nodes: a quadratic sweep would take ~64x; allow generous noise
    assert times[4000] < 25 * max(times[500], 1e-3)

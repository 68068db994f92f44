"""fuse_hard_swish: MUL(x, HARD_SIGMOID(x)) → HARD_SWISH(x); lower a leftover HARD_SIGMOID."""

from __future__ import annotations

import numpy as np

from qatir.ir import Graph
from qatir.patterns import AnyValue, Match, Op, Rewriter, Rule, RuleTable, apply_rules, close_to
from qatir.pipeline import PassContext, register_pass
from qatir.table import Table


def _hard_swish(rw: Rewriter, m: Match) -> None:
    node = rw.add_node("HARD_SWISH", [m["x"]], name=m.root.name)
    rw.replace(m.root.output, node.output)
    rw.remove(m.root)
    rw.remove(m["hs"])


def _lower_hard_sigmoid(rw: Rewriter, m: Match) -> None:
    hs, x = m.root, m["x"]
    # clip(αx + β, 0, 1) = RELU6(6αx + 6β) / 6: every op here has an int8 TFLite kernel
    # (RELU_0_TO_1 has none), so the lowered form exports bit-exact.
    # With α = 1/6 (PyTorch's and Keras' hard sigmoid) 6α is 1 and the MUL is left out:
    # a MUL by one would requantize x, and its output grid would then have to meet both
    # the MUL's and the ADD's XNNPACK scale limits.
    alpha6 = np.float32(6.0 * hs.attrs["alpha"])
    b = rw.const(np.asarray(6.0 * hs.attrs["beta"], x.dtype), name=hs.name + "_beta6")
    sixth = rw.const(np.asarray(1.0 / 6.0, x.dtype), name=hs.name + "_sixth")
    if alpha6 != np.float32(1.0):
        a = rw.const(np.asarray(alpha6, x.dtype), name=hs.name + "_alpha6")
        x = rw.add_node("MUL", [x, a], name=hs.name + "_mul").output
    add = rw.add_node("ADD", [x, b], attrs={"fused_activation": "RELU6"},
                      name=hs.name + "_add")
    out = rw.add_node("MUL", [add.output, sixth], name=hs.name)
    rw.replace(hs.output, out.output)
    rw.remove(hs)


def rules_from_table(table: Table) -> RuleTable:
    rules = []
    for _, f in table.fusions("hard_swish"):
        tol = float(f.get("tolerance", 1e-4))
        hs = Op("HARD_SIGMOID", inputs=(AnyValue("x"),), single_use=True, capture="hs",
                attrs={"alpha": close_to(f["alpha"], tol), "beta": close_to(f["beta"], tol)})
        pat = Op("MUL", inputs=(AnyValue("x"), hs), attrs={"fused_activation": "NONE"},
                 commutative=True)
        rules.append(Rule(f["name"], pat, None, _hard_swish, f.get("note", "")))
    for _, f in table.fusions("hard_sigmoid"):
        rules.append(Rule(f["name"], Op("HARD_SIGMOID", inputs=(AnyValue("x"),)), None,
                          _lower_hard_sigmoid, f.get("note", "")))
    return RuleTable(rules)


@register_pass("fuse_hard_swish")
def fuse_hard_swish(graph: Graph, ctx: PassContext) -> bool:
    """x·HARD_SIGMOID(x) with α=1/6, β=1/2 → HARD_SWISH; other HARD_SIGMOID → MUL (none when 6α = 1), ADD+RELU6, MUL by 1/6."""
    return apply_rules(graph, rules_from_table(ctx.table), ctx.trace, ctx.pass_name)

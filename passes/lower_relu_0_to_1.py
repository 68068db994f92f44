"""lower_relu_0_to_1: RELU_0_TO_1 (no int8 kernel in LiteRT) → RELU_N1_TO_1(RELU(x)).

clip(x, 0, 1) = clip(max(x, 0), −1, 1): RELU keeps its input's grid (and can fuse into
the op before it), RELU_N1_TO_1 gets its own range, calibrated on [0, 1].
"""

from __future__ import annotations

from qatir.ir import Graph
from qatir.patterns import AnyValue, Match, Op, Rewriter, Rule, RuleTable, apply_rules
from qatir.pipeline import PassContext, register_pass
from qatir.table import Table


def _rewrite(rw: Rewriter, m: Match) -> None:
    node = m.root
    relu = rw.add_node("RELU", [m["x"]], name=f"{node.name}_relu")
    clip = rw.add_node("RELU_N1_TO_1", [relu.output], name=node.name)
    rw.replace(node.output, clip.output)
    rw.remove(node)


def rules_from_table(table: Table) -> RuleTable:
    return RuleTable(Rule(f["name"], Op("RELU_0_TO_1", inputs=(AnyValue("x"),)), None, _rewrite,
                          f.get("note", ""))
                     for _, f in table.fusions("relu_0_to_1"))


@register_pass("lower_relu_0_to_1")
def lower_relu_0_to_1(graph: Graph, ctx: PassContext) -> bool:
    """RELU_0_TO_1(x) → RELU_N1_TO_1(RELU(x)), both int8 in LiteRT."""
    return apply_rules(graph, rules_from_table(ctx.table), ctx.trace, ctx.pass_name)

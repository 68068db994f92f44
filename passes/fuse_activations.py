"""fuse_activations: fold a RELU/RELU6/RELU_N1_TO_1/TANH into the op that produces its input."""

from __future__ import annotations

from qatir.ir import Graph
from qatir.patterns import Match, Op, Rewriter, Rule, RuleTable, apply_rules
from qatir.pipeline import PassContext, register_pass
from qatir.table import Table


def _fuse(rw: Rewriter, m: Match) -> None:
    prod, act = m["prod"], m.root
    prod.attrs["fused_activation"] = act.op
    rw.replace(act.output, prod.output)
    rw.remove(act)


def rules_from_table(table: Table) -> RuleTable:
    rules = []
    for _, f in table.fusions("activation"):
        prod = Op(tuple(f["ops"]), attrs={"fused_activation": "NONE"}, single_use=True, capture="prod")
        rules.append(Rule(f["name"], Op(tuple(f["activations"]), inputs=(prod,)), None, _fuse,
                          f.get("note", "")))
    return RuleTable(rules)


@register_pass("fuse_activations")
def fuse_activations(graph: Graph, ctx: PassContext) -> bool:
    """act(op(x)) → op(x){fused_activation=act} when op's output feeds only the activation."""
    return apply_rules(graph, rules_from_table(ctx.table), ctx.trace, ctx.pass_name)

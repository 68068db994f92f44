"""div_to_mul: DIV by a constant becomes MUL by its reciprocal (MUL has an int8 kernel, DIV none)."""

from __future__ import annotations

import numpy as np

from qatir.ir import Graph
from qatir.patterns import AnyValue, Const, Match, Op, Rewriter, Rule, RuleTable, apply_rules
from qatir.pipeline import PassContext, register_pass
from qatir.table import Table


def _check(m: Match) -> str | None:
    c = m["c"].data
    if c.dtype.kind != "f":
        return f"divisor %{m['c'].name} is {c.dtype}, not float"
    if not np.all(np.isfinite(c)) or np.any(c == 0):
        return f"divisor %{m['c'].name} holds a zero or a non-finite value"
    return None


def _rewrite(rw: Rewriter, m: Match) -> None:
    div, c = m.root, m["c"]
    inv = rw.const((np.float32(1.0) / c.data.astype(np.float32)).astype(c.data.dtype),
                   name=f"{c.name}_reciprocal")
    mul = rw.add_node("MUL", [m["x"], inv], dict(div.attrs), name=div.name)
    rw.replace(div.output, mul.output)
    rw.remove(div)


def rules_from_table(table: Table) -> RuleTable:
    return RuleTable(Rule(f["name"], Op("DIV", inputs=(AnyValue("x"), Const("c"))), _check,
                          _rewrite, f.get("note", ""))
                     for _, f in table.fusions("div_by_constant"))


@register_pass("div_to_mul")
def div_to_mul(graph: Graph, ctx: PassContext) -> bool:
    """x / c → x · (1/c) for a constant, finite, non-zero c (fused activation kept)."""
    return apply_rules(graph, rules_from_table(ctx.table), ctx.trace, ctx.pass_name)

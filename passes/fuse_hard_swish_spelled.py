"""fuse_hard_swish_spelled: the exporters' spellings of hard-swish become HARD_SWISH.

paddle2onnx (PP-LCNet) and torch.onnx before opset 14 write ``x · clip(x + 3, 0, 6) / 6``;
after ``lower_clip`` and ``div_to_mul`` that is ``MUL(MUL(x, RELU6(ADD(x, 3))), 1/6)`` or
``MUL(x, MUL(RELU6(ADD(x, 3)), 1/6))`` (the RELU6 may already be fused into the ADD).
``x · HARD_SIGMOID(x)`` is ``fuse_hard_swish``'s. One HARD_SWISH has an int8 kernel and
one output range; the spelled form would be four ops and three requantizations.
"""

from __future__ import annotations

import numpy as np

from qatir.ir import Graph
from qatir.patterns import AnyValue, Const, Match, Op, Rewriter, Rule, RuleTable, apply_rules
from qatir.pipeline import PassContext, register_pass
from qatir.table import Table

_NONE = {"fused_activation": "NONE"}


def _relu6_of_x_plus_3() -> list[Op]:
    add = Op("ADD", inputs=(AnyValue("x"), Const("three")), attrs=_NONE, commutative=True,
             single_use=True, capture="add")
    relu6 = Op("RELU6", inputs=(add,), single_use=True, capture="relu6")
    fused = Op("ADD", inputs=(AnyValue("x"), Const("three")), attrs={"fused_activation": "RELU6"},
               commutative=True, single_use=True, capture="add")
    return [relu6, fused]


def _patterns() -> list[Op]:
    pats = []
    for r in _relu6_of_x_plus_3():
        inner = Op("MUL", inputs=(AnyValue("x"), r), attrs=_NONE, commutative=True,
                   single_use=True, capture="mul")
        pats.append(Op("MUL", inputs=(inner, Const("sixth")), attrs=_NONE, commutative=True))
        scaled = Op("MUL", inputs=(r, Const("sixth")), attrs=_NONE, commutative=True,
                    single_use=True, capture="mul")
        pats.append(Op("MUL", inputs=(AnyValue("x"), scaled), attrs=_NONE, commutative=True))
    return pats


def _checker(tol: float):
    def check(m: Match) -> str | None:
        for key, want in (("three", 3.0), ("sixth", 1.0 / 6.0)):
            c = m[key].data
            if c.dtype.kind != "f" or c.size == 0 or np.any(np.abs(c - want) > tol * want):
                return f"%{m[key].name} is not {want:.6g} everywhere"
        x, y = m["x"], m.root.output
        if x.shape != y.shape or x.dtype != y.dtype:
            return "the constants broadcast x to another shape"
        return None
    return check


def _rewrite(rw: Rewriter, m: Match) -> None:
    hs = rw.add_node("HARD_SWISH", [m["x"]], name=m.root.name)
    rw.replace(m.root.output, hs.output)
    for key in ("mul", "relu6", "add"):
        if m.get(key) is not None:
            rw.remove(m[key])
    rw.remove(m.root)


def rules_from_table(table: Table) -> RuleTable:
    rules = []
    for _, f in table.fusions("hard_swish_spelled"):
        check = _checker(float(f.get("tolerance", 1e-4)))
        rules += [Rule(f"{f['name']}[{i}]", pat, check, _rewrite, f.get("note", ""))
                  for i, pat in enumerate(_patterns())]
    return RuleTable(rules)


@register_pass("fuse_hard_swish_spelled")
def fuse_hard_swish_spelled(graph: Graph, ctx: PassContext) -> bool:
    """x·relu6(x+3)·(1/6) in any association → HARD_SWISH(x)."""
    return apply_rules(graph, rules_from_table(ctx.table), ctx.trace, ctx.pass_name)

"""lower_clip: rewrite CLIP (IR-only) as the TFLite activation it equals, else MAXIMUM/MINIMUM."""

from __future__ import annotations

import math

import numpy as np

from qatir.ir import Graph
from qatir.patterns import AnyValue, Match, Op, Pred, Rewriter, Rule, RuleTable, apply_rules
from qatir.pipeline import PassContext, register_pass
from qatir.table import Table


def _bound(v: float | None, default: float) -> float:
    return default if v is None else float(np.float32(v))


def _bounds(node) -> tuple[float, float]:
    return _bound(node.attrs["min"], -math.inf), _bound(node.attrs["max"], math.inf)


def _exact(lo: float, hi: float) -> tuple[Pred, Pred]:
    want_lo, want_hi = float(np.float32(lo)), float(np.float32(hi))
    return (Pred(lambda v: _bound(v, -math.inf) == want_lo, f"== {lo}"),
            Pred(lambda v: _bound(v, math.inf) == want_hi, f"== {hi}"))


def _to_op(op: str):
    def rewrite(rw: Rewriter, m: Match) -> None:
        new = rw.add_node(op, [m["x"]], name=m.root.name)
        rw.replace(m.root.output, new.output)
        rw.remove(m.root)
    return rewrite


def _generic(rw: Rewriter, m: Match) -> None:
    clip, y = m.root, m["x"]
    lo, hi = _bounds(clip)
    if math.isfinite(lo):
        y = rw.add_node("MAXIMUM", [y, rw.const(np.asarray(lo, y.dtype), name=clip.name + "_min")],
                        name=clip.name + "_max").output
    if math.isfinite(hi):
        y = rw.add_node("MINIMUM", [y, rw.const(np.asarray(hi, y.dtype), name=clip.name + "_max")],
                        name=clip.name + "_min").output
    rw.replace(clip.output, y)
    rw.remove(clip)


def _check_generic(m: Match) -> str | None:
    lo, hi = _bounds(m.root)
    if not (math.isfinite(lo) or math.isfinite(hi)):
        out = m.root.output
        if any(o is out for o in m.root.graph.outputs) and m["x"].producer is None:
            return "unbounded clip between a graph input and a graph output"
    return None


def rules_from_table(table: Table) -> RuleTable:
    rules = []
    for _, f in table.fusions("clip"):
        lo, hi = _exact(f["min"], f["max"])
        pat = Op("CLIP", inputs=(AnyValue("x"),), attrs={"min": lo, "max": hi})
        rules.append(Rule(f["name"], pat, None, _to_op(f["to"]), f.get("note", "")))
    for _, f in table.fusions("clip_generic"):
        rules.append(Rule(f["name"], Op("CLIP", inputs=(AnyValue("x"),)), _check_generic, _generic,
                          f.get("note", "")))
    return RuleTable(rules)


@register_pass("lower_clip")
def lower_clip(graph: Graph, ctx: PassContext) -> bool:
    """CLIP(0,6) → RELU6, (0,∞) → RELU, (−1,1) → RELU_N1_TO_1, (0,1) → RELU_0_TO_1, else MAX/MIN."""
    return apply_rules(graph, rules_from_table(ctx.table), ctx.trace, ctx.pass_name)

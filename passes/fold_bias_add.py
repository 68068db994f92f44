"""fold_bias_add: ADD of a constant vector after a FULLY_CONNECTED becomes its bias.

ONNX exporters write a linear layer on a 3-D activation (every transformer projection) as
``MatMul`` then ``Add(bias)``: a FULLY_CONNECTED without bias and a separate ADD, which in
int8 is a second requantization (and, with a bias tiny next to the activations, an ADD
scale ratio XNNPACK refuses). ``fc(x) + c = fc(x; b + c)`` when ``c`` broadcasts along the
output channels only (shape ``[N]`` or ``[1, ..., 1, N]``) and the FC output feeds only
the ADD; the ADD's fused activation moves onto the FC.
"""

from __future__ import annotations

import numpy as np

from qatir.ir import Graph
from qatir.patterns import Const, Match, Op, Rewriter, Rule, RuleTable, apply_rules
from qatir.pipeline import PassContext, register_pass
from qatir.table import Table


def _check(m: Match) -> str | None:
    fc, c = m["fc"], m["c"]
    n = fc.outputs[0].shape[-1]
    data = c.data
    if data.dtype.kind != "f" or not np.all(np.isfinite(data)):
        return f"%{c.name} is not a finite float constant"
    if data.size != n or any(d != 1 for d in data.shape[:-1]) or (data.ndim and data.shape[-1] != n):
        return f"%{c.name} of shape {list(data.shape)} is not one value per output channel ({n})"
    if data.ndim > fc.outputs[0].rank:
        return f"%{c.name} has a higher rank than the FC output"
    b = fc.inputs[2] if len(fc.inputs) > 2 else None
    if b is not None and not b.is_const:
        return "the FC bias is not a constant"
    return None


def _rewrite(rw: Rewriter, m: Match) -> None:
    add, fc, c = m.root, m["fc"], m["c"]
    vec = c.data.astype(np.float32).reshape(-1)
    b = fc.inputs[2] if len(fc.inputs) > 2 else None
    if b is not None:
        vec = (b.data.astype(np.float32) + vec).astype(np.float32)
    bias = rw.const(vec, name=f"{fc.name}_bias")
    if len(fc.inputs) > 2:
        fc.set_input(2, bias)
    else:
        fc.add_input(bias)
    fc.attrs["fused_activation"] = add.attrs.get("fused_activation", "NONE")
    rw.replace(add.output, fc.output)
    rw.remove(add)


def rules_from_table(table: Table) -> RuleTable:
    rules = []
    for _, f in table.fusions("bias_add"):
        fc = Op(tuple(f["ops"]), attrs={"fused_activation": "NONE"}, single_use=True,
                capture="fc")
        rules.append(Rule(f["name"], Op("ADD", inputs=(fc, Const("c")), commutative=True),
                          _check, _rewrite, f.get("note", "")))
    return RuleTable(rules)


@register_pass("fold_bias_add")
def fold_bias_add(graph: Graph, ctx: PassContext) -> bool:
    """fc(x) + c → fc(x) with bias b + c, for c one value per output channel."""
    return apply_rules(graph, rules_from_table(ctx.table), ctx.trace, ctx.pass_name)


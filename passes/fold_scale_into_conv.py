"""fold_scale_into_conv: a constant per-channel MUL feeding a conv-like op folds into its weights.

Keras' input preprocessing (``Rescaling(1/255)``, ``Normalization``'s 1/σ) and exporters'
normalization write ``conv(x · c)``; with ``c`` a scalar or one value per input channel,
``conv(x · c) = conv'(x)`` with ``w'`` = ``w`` scaled along its input-channel axis (zero
padding stays zero: 0 · c = 0), exact in float. In int8 it removes a full-resolution
elementwise op and its requantization. CONV_2D (OHWI: axis 3), DEPTHWISE_CONV_2D (1HWO,
channel ``k`` reads input ``k // depth_multiplier``) and FULLY_CONNECTED ([N, K]: axis 1).
Repeated until no MUL is left to fold (a chain of two MULs folds in two steps).
"""

from __future__ import annotations

import numpy as np

from qatir.ir import Graph
from qatir.patterns import AnyValue, Const, Match, Op, Rewriter, Rule, RuleTable, apply_rules
from qatir.pipeline import PassContext, register_pass
from qatir.table import Table


def _channels(m: Match) -> int:
    op = m.root
    return int(op.inputs[1].shape[1] if op.op == "FULLY_CONNECTED" else m["x"].shape[-1])


def _check(m: Match) -> str | None:
    op, mul, x, c = m.root, m["mul"], m["x"], m["c"]
    if mul.attrs.get("fused_activation", "NONE") != "NONE":
        return f"the MUL has a fused {mul.attrs['fused_activation']}"
    if not op.inputs[1].is_const:
        return "the weight is not a constant"
    data = c.data
    if data.dtype.kind != "f" or not np.all(np.isfinite(data)):
        return f"%{c.name} is not a finite float constant"
    if x.shape != mul.output.shape or None in x.shape[1:]:
        return f"the MUL broadcasts %{x.name} {list(x.shape)} to {list(mul.output.shape)}"
    n = _channels(m)
    if not (data.size == 1 or (data.size == n and data.shape[-1] == n)):
        return f"%{c.name} of shape {list(data.shape)} is not one value per input channel ({n})"
    return None


def _rewrite(rw: Rewriter, m: Match) -> None:
    op, x, c = m.root, m["x"], m["c"]
    w = op.inputs[1].data.astype(np.float32)
    scale = np.broadcast_to(c.data.astype(np.float32).reshape(-1), (_channels(m),))
    if op.op == "CONV_2D":
        w = w * scale[None, None, None, :]
    elif op.op == "DEPTHWISE_CONV_2D":
        mult = int(op.attrs.get("depth_multiplier", 1))
        w = w * np.repeat(scale, mult)[None, None, None, :]
    else:
        w = w * scale[None, :]
    op.set_input(1, rw.const(w.astype(np.float32), name=f"{op.name}_scaled_weight"))
    op.set_input(0, x)
    rw.remove(m["mul"])


def rules_from_table(table: Table) -> RuleTable:
    rules = []
    for _, f in table.fusions("scale_into_conv"):
        mul = Op("MUL", inputs=(AnyValue("x"), Const("c")), commutative=True, single_use=True,
                 capture="mul")
        rules.append(Rule(f["name"], Op(tuple(f["ops"]), inputs=(mul,)), _check, _rewrite,
                          f.get("note", "")))
    return RuleTable(rules)


@register_pass("fold_scale_into_conv")
def fold_scale_into_conv(graph: Graph, ctx: PassContext) -> bool:
    """conv(x · c) → conv'(x) for a constant c per input channel (or scalar)."""
    rules, changed = rules_from_table(ctx.table), False
    for _ in range(8):  # chains of constant MULs: one per sweep
        if not apply_rules(graph, rules, ctx.trace, ctx.pass_name):
            break
        changed = True
    return changed

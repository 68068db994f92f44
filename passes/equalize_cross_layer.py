"""equalize_cross_layer: balance the weight ranges of consecutive layers (cross-layer
equalization, Nagel et al. 2019), exact in float.

For a producer P (a table entry's ``ops``: DEPTHWISE_CONV_2D, CONV_2D) with a fused
activation that commutes with a positive scale (NONE or RELU), whose output feeds only
a CONV_2D C, every output channel c of P can be divided by s_c > 0 and C's input
channel c multiplied by it without changing C's output:
``C(relu(P(x) / s), W_C · s) = C(relu(P(x)), W_C)``. With r1_c = max |W_P[.., c]| and
r2_c = max |W_C[.., c]|, s_c = √(r1_c / r2_c) gives both the range √(r1_c · r2_c), and
P's output channels ranges closer to one another (its activation is per-tensor in int8).

Runs only when the table has a ``kind = "cross_layer_equalization"`` fusion entry; it
sits in the quantization pipeline (after the float passes, before fake-quant), so the
float pipeline and what ``fit`` trains in float stay as imported. New constants are
created (weights shared with another node are never edited); a pair already balanced
(every s_c within 1e-3 of 1) is left alone, so a second run changes nothing.
"""

from __future__ import annotations

import numpy as np

from qatir.ir import Graph, Node
from qatir.ops import get_op
from qatir.patterns import Match, Op, Rewriter, Rule, RuleTable, apply_rules
from qatir.pipeline import PassContext, register_pass
from qatir.table import Table

#: fused activations f with f(x / s) = f(x) / s for every s > 0
SCALE_COMMUTING = ("NONE", "RELU")
#: scales this close to 1 are not worth a rewrite (and make the pass idempotent)
BALANCED = 1e-3


def _const_operand(node: Node, i: int) -> bool:
    t = node.inputs[i] if len(node.inputs) > i else None
    return t is None or (t.is_const and t.dtype.kind == "f" and t.quant is None
                         and len(t.uses) == 1)


def _scales(m: Match) -> np.ndarray | str:
    """s_c per channel of the producer's output, or why the pair is not equalized."""
    prod, cons = m["prod"], m.root
    if any(o is prod.outputs[0] for o in cons.graph.outputs):
        return f"the output of {prod.name!r} is a graph output"
    if prod.attrs.get("fused_activation", "NONE") not in SCALE_COMMUTING:
        return f"{prod.name!r} has fused {prod.attrs['fused_activation']} (no positive scale commutes)"
    if not (_const_operand(prod, 1) and _const_operand(prod, 2) and _const_operand(cons, 1)):
        return "weights or bias are not float constants used once"
    w1, w2 = prod.inputs[1].data, cons.inputs[1].data
    axis = get_op(prod.op).channel_axis
    channels = w1.shape[axis]
    if w2.shape[3] != channels:
        return f"{cons.name!r} is grouped ({w2.shape[3]} input channels, {channels} produced)"
    r1 = np.abs(np.moveaxis(w1, axis, -1)).reshape(-1, channels).max(axis=0).astype(np.float64)
    r2 = np.abs(w2).reshape(-1, channels).max(axis=0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sqrt(r1 / r2)
    s = np.where(np.isfinite(s) & (s > 0), s, 1.0)
    if np.all(np.abs(s - 1.0) <= BALANCED):
        return "already balanced"
    return s


def _check(m: Match) -> str | None:
    s = _scales(m)
    return s if isinstance(s, str) else None


def _make_rewrite(changed: list[bool]):
    def rewrite(rw: Rewriter, m: Match) -> None:
        prod, cons = m["prod"], m.root
        s = _scales(m)
        axis = get_op(prod.op).channel_axis
        shape = [1] * prod.inputs[1].rank
        shape[axis] = -1
        w1 = prod.inputs[1]
        prod.set_input(1, rw.const((w1.data / s.reshape(shape)).astype(np.float32),
                                   name=w1.name + "_cle"))
        bias = prod.inputs[2] if len(prod.inputs) > 2 else None
        if bias is not None:
            prod.set_input(2, rw.const((bias.data / s).astype(np.float32), name=bias.name + "_cle"))
        w2 = cons.inputs[1]
        cons.set_input(1, rw.const((w2.data * s.reshape(1, 1, 1, -1)).astype(np.float32),
                                   name=w2.name + "_cle"))
        changed.append(True)

    return rewrite


def rules_from_table(table: Table, changed: list[bool]) -> RuleTable:
    rules = []
    for _, f in table.fusions("cross_layer_equalization"):
        prod = Op(tuple(f["ops"]), single_use=True, capture="prod")
        rules.append(Rule(f["name"], Op("CONV_2D", inputs=(prod,)), _check,
                          _make_rewrite(changed), f.get("note", "")))
    return RuleTable(rules)


@register_pass("equalize_cross_layer")
def equalize_cross_layer(graph: Graph, ctx: PassContext) -> bool:
    """P → CONV_2D pairs: P's output channel c scaled by 1/s_c, the conv's input channel by s_c."""
    changed: list[bool] = []
    modified = apply_rules(graph, rules_from_table(ctx.table, changed), ctx.trace, ctx.pass_name)
    if changed:
        graph.prune_tensors()
    return modified or bool(changed)

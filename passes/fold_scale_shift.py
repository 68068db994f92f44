"""fold_scale_shift: fold a constant MUL / ADD on a conv's output into its weights and bias.

``MUL(op(x), s) = op'(x)`` with w' = w·s along the output-channel axis and b' = b·s;
``ADD(op(x), t) = op''(x)`` with b'' = b + t, for a conv-like ``op`` (the entry's
``ops``) with no fused activation whose output feeds only that MUL/ADD, and a constant
that is a scalar or one value per output channel (shape ``[..., C]``, other dims 1).
Exporters write such affine steps after convolutions (paddle2onnx's PP-LCNet "learnable
affine blocks", a batch norm already split into MUL + ADD); left unfolded, each becomes
an int8 requantization and the conv's per-tensor output grid must cover the channels'
ranges before the MUL rescales them (PP-OCRv4's detector: 6.7 dB after its third
depthwise conv). Exact in float. New constants are created (shared weights are never
edited).
"""

from __future__ import annotations

import numpy as np

from qatir.ir import Graph
from qatir.patterns import Const, Match, Op, Rewriter, Rule, RuleTable, apply_rules, one_of
from qatir.pipeline import PassContext, register_pass
from qatir.table import BN_FOLD_AXES, Table


def _per_channel(m: Match) -> np.ndarray | str:
    """The constant as one float64 value per output channel, or why it is not foldable."""
    prod, c = m["prod"], m["c"]
    w = prod.inputs[1] if len(prod.inputs) > 1 else None
    if w is None or not w.is_const or w.dtype.kind != "f" or w.quant is not None:
        return f"weights of {prod.name!r} are not float constants"
    bias = prod.inputs[2] if len(prod.inputs) > 2 else None
    if bias is not None and not bias.is_const:
        return f"bias of {prod.name!r} is not constant"
    channels = w.shape[BN_FOLD_AXES[prod.op]]
    data = np.asarray(c.data, np.float64)
    if data.dtype.kind != "f" and data.size != 1:
        return f"%{c.name} is not a float constant"
    if data.size == 1 and data.ndim <= prod.outputs[0].rank:
        return np.full(channels, float(data.ravel()[0]))
    if data.ndim > prod.outputs[0].rank or data.shape[-1] != channels \
            or any(d != 1 for d in data.shape[:-1]):
        return f"%{c.name} {list(data.shape)} is not a scalar or one value per channel"
    values = data.reshape(-1)
    if not np.all(np.isfinite(values)):
        return f"%{c.name} holds NaN or Inf"
    return values


def _check(m: Match) -> str | None:
    v = _per_channel(m)
    return v if isinstance(v, str) else None


def _bias(rw: Rewriter, m: Match, values: np.ndarray) -> None:
    prod = m["prod"]
    old = prod.inputs[2] if len(prod.inputs) > 2 else None
    new = rw.const(values.astype(np.float32),
                   name=(old.name if old is not None else prod.name + "_bias") + "_fold")
    if len(prod.inputs) > 2:
        prod.set_input(2, new)
    else:
        prod.add_input(new)


def _old_bias(m: Match, channels: int) -> np.ndarray:
    prod = m["prod"]
    old = prod.inputs[2] if len(prod.inputs) > 2 else None
    return np.zeros(channels) if old is None else np.asarray(old.data, np.float64)


def _fold_mul(rw: Rewriter, m: Match) -> None:
    prod, s = m["prod"], _per_channel(m)
    w = prod.inputs[1]
    shape = [1] * w.rank
    shape[BN_FOLD_AXES[prod.op]] = -1
    prod.set_input(1, rw.const((w.data.astype(np.float64) * s.reshape(shape)).astype(w.dtype),
                               name=w.name + "_fold"))
    _bias(rw, m, _old_bias(m, s.size) * s)
    rw.replace(m.root.output, prod.output)
    rw.remove(m.root)


def _fold_add(rw: Rewriter, m: Match) -> None:
    prod, t = m["prod"], _per_channel(m)
    _bias(rw, m, _old_bias(m, t.size) + t)
    rw.replace(m.root.output, prod.output)
    rw.remove(m.root)


def rules_from_table(table: Table) -> RuleTable:
    rules = []
    for _, f in table.fusions("scale_shift"):
        prod = Op(tuple(f["ops"]), attrs={"fused_activation": "NONE"}, single_use=True,
                  capture="prod")
        for op, rewrite in (("MUL", _fold_mul), ("ADD", _fold_add)):
            rules.append(Rule(f"{f['name']}.{op.lower()}",
                              Op(op, inputs=(prod, Const("c")), commutative=True,
                                 attrs={"fused_activation": one_of("NONE", None)}),
                              _check, rewrite, f.get("note", "")))
    return RuleTable(rules)


@register_pass("fold_scale_shift")
def fold_scale_shift(graph: Graph, ctx: PassContext) -> bool:
    """op(x)·s → op'(x) and op(x) + t → op''(x) for a constant per-channel s / t."""
    changed = False
    while apply_rules(graph, rules_from_table(ctx.table), ctx.trace, ctx.pass_name):
        changed = True  # a MUL then an ADD (or a chain) fold one per sweep
    return changed

"""fold_batch_norm: fold BATCH_NORM into the producing conv / depthwise / FC / transpose conv.

With s = γ/√(σ²+ε): w' = w·s along the weight's output-channel axis (OHWI axis 0,
depthwise 1HWO axis 3, FULLY_CONNECTED [N, K] axis 0, TRANSPOSE_CONV OHWI axis 0)
and b' = (b − μ)·s + β. Folding needs the producer's output to feed only the batch
norm. A batch norm with no such producer becomes MUL(x, s) then ADD(·, β − μ·s).
New constants are created (weights shared with another node are never edited).
"""

from __future__ import annotations

import numpy as np

from qatir.errors import NumericsError
from qatir.ir import Graph
from qatir.patterns import AnyValue, Const, Match, Op, Rewriter, Rule, RuleTable, apply_rules
from qatir.pipeline import PassContext, register_pass
from qatir.table import BN_FOLD_AXES, Table

_BN_INPUTS = (Const("gamma"), Const("beta"), Const("mean"), Const("var"))


def bn_scale_shift(m: Match) -> tuple[np.ndarray, np.ndarray]:
    """(s, t) in float64 with BN(x) = x·s + t."""
    gamma, beta, mean, var = (m[k].data.astype(np.float64) for k in ("gamma", "beta", "mean", "var"))
    with np.errstate(all="ignore"):
        s = gamma / np.sqrt(var + float(m.root.attrs["epsilon"]))
        t = beta - mean * s
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(t))):
        raise NumericsError(f"batch norm {m.root.name!r}: {_non_finite_reason(m)}")
    return s, t


def _non_finite_reason(m: Match) -> str:
    """Which parameter makes the folded scale/shift NaN or Inf."""
    bad = [f"%{m[k].name}" for k in ("gamma", "beta", "mean", "var")
           if not np.all(np.isfinite(m[k].data))]
    if bad:
        return f"{', '.join(bad)} hold(s) NaN or Inf"
    return (f"%{m['var'].name} + epsilon is not positive everywhere, or the folded scale "
            "overflows; the scale/shift would be NaN or Inf")


def _check_fold(m: Match) -> str | None:
    prod = m["prod"]
    if len(prod.inputs) < 2 or prod.inputs[1] is None or not prod.inputs[1].is_const:
        return f"weights of {prod.name!r} are not constant"
    bias = prod.inputs[2] if len(prod.inputs) > 2 else None
    if bias is not None and not bias.is_const:
        return f"bias of {prod.name!r} is not constant"
    w = prod.inputs[1]
    if w.dtype.kind != "f" or w.quant is not None:
        return f"weights of {prod.name!r} are quantized ({w.dtype})"
    axis = BN_FOLD_AXES[prod.op]
    channels = m["gamma"].data.size
    if w.shape[axis] != channels:
        return f"weight axis {axis} of {prod.name!r} has {w.shape[axis]} channels, BN has {channels}"
    if any(m[k].data.size != channels for k in ("beta", "mean", "var")):
        return "batch norm parameters differ in length"
    return None


def _fold(rw: Rewriter, m: Match) -> None:
    prod, bn = m["prod"], m.root
    s, t = bn_scale_shift(m)
    w = prod.inputs[1]
    axis = BN_FOLD_AXES[prod.op]
    shape = [1] * w.rank
    shape[axis] = -1
    new_w = (w.data.astype(np.float64) * s.reshape(shape)).astype(w.dtype)
    prod.set_input(1, rw.const(new_w, name=w.name + "_bn"))
    bias = prod.inputs[2] if len(prod.inputs) > 2 else None
    b = bias.data.astype(np.float64) if bias is not None else np.zeros_like(s)
    new_b = rw.const((b * s + t).astype(np.float32), name=(bias.name if bias is not None
                                                           else prod.name + "_bias") + "_bn")
    if len(prod.inputs) > 2:
        prod.set_input(2, new_b)
    else:
        prod.add_input(new_b)
    rw.replace(bn.output, prod.output)
    rw.remove(bn)


def _affine(rw: Rewriter, m: Match) -> None:
    bn = m.root
    s, t = bn_scale_shift(m)
    mul = rw.add_node("MUL", [m["x"], rw.const(s.astype(np.float32), name=bn.name + "_scale")],
                      name=bn.name + "_mul")
    add = rw.add_node("ADD", [mul.output, rw.const(t.astype(np.float32), name=bn.name + "_shift")],
                      name=bn.name + "_add")
    rw.replace(bn.output, add.output)
    rw.remove(bn)


def _check_affine(m: Match) -> str | None:
    x = m["x"]
    c = m["gamma"].data.size
    if x.rank == 0 or x.shape[-1] not in (None, c):
        return f"last axis of %{x.name} ({list(x.shape)}) does not have {c} channels"
    return None


def rules_from_table(table: Table) -> RuleTable:
    rules = []
    for _, f in table.fusions("batch_norm"):
        prod = Op(tuple(f["ops"]), attrs={"fused_activation": "NONE"}, single_use=True, capture="prod")
        rules.append(Rule(f["name"], Op("BATCH_NORM", inputs=(prod,) + _BN_INPUTS), _check_fold,
                          _fold, f.get("note", "")))
    for _, f in table.fusions("batch_norm_affine"):
        rules.append(Rule(f["name"], Op("BATCH_NORM", inputs=(AnyValue("x"),) + _BN_INPUTS),
                          _check_affine, _affine, f.get("note", "")))
    return RuleTable(rules)


@register_pass("fold_batch_norm")
def fold_batch_norm(graph: Graph, ctx: PassContext) -> bool:
    """Fold BATCH_NORM into the preceding conv/depthwise/FC/transpose-conv, else MUL+ADD."""
    return apply_rules(graph, rules_from_table(ctx.table), ctx.trace, ctx.pass_name)

"""Step ``xnn_add_ratios``: an int8 ADD/SUB operand on a grid too fine for XNNPACK gets a
coarser one, so that XNNPACK takes the node.

XNNPACK takes an int8 ADD/SUB only when every input scale / output scale is in
[2^-10, 2^8) (``xnn_delegate.cc`` VisitBinaryNode, CheckTensorsInputOutputScale; the
same bounds are asserted in XNNPACK's ``microparams-init.c``); otherwise the node runs on
LiteRT's builtin kernel, and every such node splits the delegate's partition. Below the
bound the operand is nearly irrelevant to the sum: its whole grid step is under 1/1024 of
the output's. Here it goes onto the scale ``output scale · 2^-10`` (a wider range, never a
narrower one), which changes the sum by at most 1/2048 of an output step before the output
rounds:

- a constant operand (hard sigmoid's ``+3``) is requantized in place;
- an activation whose only user is this node and whose producer sets its own output grid
  (a conv-like op, or an ADD/SUB/MUL that stays within its own XNNPACK limits) gets the
  wider params directly;
- otherwise a requantizing ``QUANTIZE`` (which XNNPACK takes for ratios in [1/256, 128])
  is put before the operand's use.

An operand where none of these keeps every node delegated is left as it is (the ``checks``
step then names it). The integer reference reads the new params, so it predicts the file
bit for bit on both resolvers. Ratios at or above 2^8 (an output grid far narrower than an
input's) are left: widening the output costs output precision, not operand precision.
"""

from __future__ import annotations

import numpy as np

from qatir.ir import Graph, Node, QuantParams, Tensor
from qatir.lowering.common import WEIGHT_OPS, act_params, requantize
from qatir.target import XNN_CVT_RATIO, XNN_RATIO, xnn_ratios_ok, xnn_scale_ratios

_OPS = ("ADD", "SUB")


def per_tensor_int8(t: Tensor | None) -> bool:
    """``t`` is an int8 tensor with per-tensor params (activation or constant)."""
    return t is not None and t.quant is not None and t.dtype == np.int8 \
        and not t.quant.per_channel


def _ratio(s_in: float, s_out: float) -> float:
    """The ratio as the delegate computes it (float32 division)."""
    return xnn_scale_ratios("ADD", [s_in], s_out)[0]


def _wider(p: QuantParams, scale: float) -> QuantParams:
    """``p``'s range on the coarser ``scale``: the real zero keeps its relative place."""
    z = int(np.clip(np.round(p.zero_point[0] * p.scale[0] / scale), -128, 127))
    return act_params(scale, z)


def _in_bounds(node: Node, out_scale: float | None = None) -> bool:
    """Whether an ADD/SUB/MUL meets XNNPACK's scale limits (with ``out_scale`` for its output)."""
    so = out_scale if out_scale is not None else node.outputs[0].quant.scale[0]
    ins = [t.quant.scale[0] for t in node.inputs if per_tensor_int8(t)]
    if node.op == "MUL" and len(ins) != 2:
        return False
    return xnn_ratios_ok(node.op, ins, so)


def _free_output(g: Graph, t: Tensor, node: Node, scale: float) -> bool:
    """``t`` can simply take the coarser grid: only ``node`` reads it, and its producer
    computes its output grid itself and stays delegable with it."""
    prod = t.producer
    if prod is None or t in g.outputs or any(u is not node for u in t.users) \
            or sum(x is t for x in node.inputs) != 1 or len(prod.outputs) != 1:
        return False
    if prod.op in WEIGHT_OPS:
        return True
    if prod.op in (*_OPS, "MUL") and prod.outputs[0].dtype == np.int8:
        return _in_bounds(prod, scale) or not _in_bounds(prod)
    return False


def _fix_operand(g: Graph, node: Node, i: int, scale: float) -> bool:
    t = node.inputs[i]
    new = _wider(t.quant, scale)
    if t.is_const:
        real = (t.data.astype(np.float64) - t.quant.zero_point[0]) * t.quant.scale[0]
        data = np.clip(np.round(real / new.scale[0]) + new.zero_point[0], -128, 127)
        node.set_input(i, g.const(data.astype(np.int8), name=g.unique_name(f"{t.name}_xnn"),
                                  quant=new))
        return True
    if _free_output(g, t, node, scale):
        t.quant = new
        return True
    if XNN_CVT_RATIO[0] <= _ratio(t.quant.scale[0], scale) <= XNN_CVT_RATIO[1]:
        node.set_input(i, requantize(g, t, new, g.unique_name(f"{node.name}_xnn{i}"),
                                     f"{t.name}_xnn"))
        return True
    return False


def widen_fine_operands(g: Graph) -> None:
    """Every int8 ADD/SUB operand below XNNPACK's lower ratio bound goes onto
    ``output scale · 2^-10`` (see the module docstring)."""
    lo = XNN_RATIO["ADD"][0]
    changed = False
    for node in list(g.nodes):
        if node.op not in _OPS or len(node.inputs) != 2 or not per_tensor_int8(node.outputs[0]) \
                or not all(per_tensor_int8(t) for t in node.inputs):
            continue
        so = node.outputs[0].quant.scale[0]
        scale = float(np.float32(so) * np.float32(lo))  # exact: a power-of-two factor
        if not np.isfinite(scale) or scale < np.finfo(np.float32).tiny:
            continue
        for i, t in enumerate(node.inputs):
            if _ratio(t.quant.scale[0], so) < lo:
                changed |= _fix_operand(g, node, i, scale)
    if changed:
        g.toposort()

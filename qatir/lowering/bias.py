"""Step ``bias``: every int8 conv-like op gets an int32 bias.

scale = float32(in_scale · w_scale[i]) (per-channel on axis 0 when the weight is),
zero point 0, values round_half_away(b / scale); zeros are inserted where the float
graph had none. All-zero weight channels get a scale that keeps their bias in int32.
"""

from __future__ import annotations

import warnings

import numpy as np

from qatir.errors import ExportError
from qatir.ir import Graph, Node, QuantParams, Tensor
from qatir.lowering.common import MIN_SCALE, WEIGHT_OPS, channels
from qatir.reference_math import round_half_away
from qatir.target import INT32_MAX


def lower_biases(g: Graph) -> None:
    for node in list(g.nodes):
        if node.op in WEIGHT_OPS:
            _lower_weight_op(g, node)


def _lower_weight_op(g: Graph, node: Node) -> None:
    x, w = node.inputs[0], node.inputs[1]
    if x.quant is None:
        return  # float region; reported by the checks step
    if not w.is_const or w.dtype != np.int8 or w.quant is None:
        raise ExportError(f"node {node.name!r} ({node.op}): weight %{w.name} is not a "
                          "fake-quantized constant")
    b = node.inputs[2] if len(node.inputs) > 2 else None
    bias = np.zeros(channels(node), np.float32) if b is None else b.data
    if b is not None and (not b.is_const or b.dtype != np.float32):
        if b.is_const and b.dtype == np.int32 and b.quant is not None:
            return  # already lowered
        raise ExportError(f"node {node.name!r}: bias %{b.name} must be a float constant")
    in_s = np.float32(x.quant.scale[0])
    w_s = np.asarray(w.quant.scale, np.float32)
    w_s = _fix_zero_channels(node, w, w_s, bias, in_s)
    b_s = (in_s * w_s).astype(np.float32)
    if np.any(b_s < MIN_SCALE):
        warnings.warn(f"node {node.name!r}: bias scale of %{w.name} below {MIN_SCALE}; clamped",
                      stacklevel=5)
        b_s = np.maximum(b_s, np.float32(MIN_SCALE))
    out_q = node.outputs[0].quant
    if out_q is not None:  # LiteRT's prepare check (kernel_util.cc GetQuantizedConvolutionMultipler)
        gap = np.abs(b_s.astype(np.float64) - np.float64(in_s) * w_s.astype(np.float64))
        if np.any(gap > 0.02 * np.float64(out_q.scale[0])):
            raise ExportError(
                f"node {node.name!r} ({node.op}): bias scale differs from input x weight scale "
                f"by {gap.max():.3g}, over 2% of the output scale {out_q.scale[0]:.3g} that "
                "LiteRT accepts (weights far too large for the output range; calibrate first)")
    qb = round_half_away(bias.astype(np.float64) / b_s.astype(np.float64))
    if np.any(np.abs(qb) > INT32_MAX):
        warnings.warn(f"node {node.name!r}: bias %{'zeros' if b is None else b.name} "
                      "overflows int32; clipped", stacklevel=5)
        qb = np.clip(qb, -INT32_MAX, INT32_MAX)
    per_ch = w.quant.axis is not None
    qp = QuantParams(tuple(b_s.tolist()), (0,) * b_s.size, 0 if per_ch else None, 32, False,
                     "int32")
    name = f"{node.name}_bias" if b is None else b.name
    new = g.const(qb.astype(np.int32), name=name, quant=qp)
    if len(node.inputs) < 3:
        node.add_input(new)
    else:  # fills an absent (None) bias slot as well as replacing a float bias
        node.set_input(2, new)


def _fix_zero_channels(node: Node, w: Tensor, w_s: np.ndarray, bias: np.ndarray,
                       in_s: np.float32) -> np.ndarray:
    """All-zero weight channels get a scale that keeps their bias inside int32."""
    axis = w.quant.axis
    if axis is None:
        return w_s
    red = tuple(i for i in range(w.data.ndim) if i != axis)
    zero = ~np.any(w.data != 0, axis=red)
    if not np.any(zero):
        return w_s
    need = (np.abs(bias.astype(np.float64)) / (float(in_s) * (2**30))).astype(np.float32)
    fixed = np.where(zero, np.maximum(np.maximum(w_s, need), np.float32(1e-8)), w_s)
    fixed = fixed.astype(np.float32)
    if not np.array_equal(fixed, w_s):
        warnings.warn(f"node {node.name!r}: weight %{w.name} has all-zero channels; their "
                      "scales were raised", stacklevel=6)
        w.quant = QuantParams(tuple(fixed.tolist()), w.quant.zero_point, axis, w.quant.bits,
                              w.quant.narrow_range, w.quant.dtype)
    return fixed

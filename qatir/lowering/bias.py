"""Step ``bias``: every int8 conv-like op gets an int32 bias.

scale = float32(in_scale · w_scale[i]) (per-channel on axis 0 when the weight is),
zero point 0, values round_half_away(b / scale); zeros are inserted where the float
graph had none. All-zero weight channels get a scale that keeps their bias in int32.
A channel whose bias would overflow int32 at ``in_scale · w_scale`` gets a wider weight
scale and its int8 weights are requantized onto it (symmetric, [-127, 127]), as TFLite's
converter does (``AdjustWeightsForBiasScale`` in
``tensorflow/lite/tools/optimize/quantization_utils.cc``, aiming at 2^31 - 1); qatir aims at
``|b| / (in_scale · 2^30) · (1 + margin)``, leaving half of int32 to the accumulator.
Per-tensor weights widen their one scale. The widening stops short of XNNPACK's
requantization limit (in·w/out below 256, checked by the ``litert`` step): past it the
bias is clipped instead, which still saturates the output as the float bias does. A bias
that fits is clipped only where the int32 sum it starts could wrap: bias plus the largest
accumulator the channel's int8 weights can reach (:func:`accumulator_bound`), times
LiteRT's requantization left shift. (It was clipped at 2^30 before: one RepVGG-A0 channel
at 1.2e9 lost 0.65 dB of output SQNR, ``tools/compare_peers.py``.)
"""

from __future__ import annotations

import warnings

import numpy as np

from qatir.errors import ExportError
from qatir.ir import Graph, Node, QuantParams, Tensor
from qatir.lowering.common import MIN_SCALE, WEIGHT_OPS, channels
from qatir.ops import get_op
from qatir.reference_math import round_half_away
from qatir.target import INT32_MAX, XNN_MAX_REQUANT

#: relative head-room on a widened weight scale (covers float32 rounding of the scales)
BIAS_FIT_MARGIN = 2.0**-16
#: a widened channel's |int32 bias| stays below this, leaving the other half of int32 to
#: the accumulator that LiteRT adds it to (an int32 sum that would otherwise wrap)
BIAS_FIT_LIMIT = 2**30
#: bound on the |input term| an int8 weight multiplies: |x_q − zp| <= 255, doubled for the
#: zero-point and sign offsets kernels fold into the int32 bias (XNNPACK's packed bias)
ACC_INPUT_BOUND = 512


def lower_biases(g: Graph) -> None:
    for node in list(g.nodes):
        if node.op in WEIGHT_OPS:
            _lower_weight_op(g, node)


def _lower_weight_op(g: Graph, node: Node) -> None:
    x, w = node.inputs[0], node.inputs[1]
    if x.quant is None:
        return  # float region; reported by the checks step
    if x.dtype == np.int16:
        from qatir.lowering.int16 import lower_bias64

        return lower_bias64(g, node)
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
    w_s = _widen_for_bias(g, node, w, w_s, bias, in_s, "zeros" if b is None else b.name)
    w = node.inputs[1]
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
    bad, lim = _clip_limits(qb, b_s, out_q, accumulator_bound(node, w.data))
    if np.any(bad):
        warnings.warn(f"node {node.name!r}: bias %{'zeros' if b is None else b.name} "
                      "overflows int32 (or LiteRT's requantization shift); clipped", stacklevel=5)
        qb = np.where(bad, np.sign(qb) * lim, qb)
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


def _widen_for_bias(g: Graph, node: Node, w: Tensor, w_s: np.ndarray, bias: np.ndarray,
                    in_s: np.float32, b_name: str) -> np.ndarray:
    """Widen weight scales whose bias overflows int32; requantize those channels' weights."""
    b64 = np.abs(bias.astype(np.float64))
    per_ch = w.quant.axis is not None
    if not per_ch:
        b64 = np.asarray([b64.max()]) if b64.size else np.zeros(1)
    cur = (in_s * w_s).astype(np.float32).astype(np.float64)
    over = b64 / np.maximum(cur, MIN_SCALE) > INT32_MAX
    if not np.any(over):
        return w_s
    need = b64 / (float(in_s) * BIAS_FIT_LIMIT) * (1 + BIAS_FIT_MARGIN)
    out_q = node.outputs[0].quant
    if out_q is not None:  # stay inside the limit the litert step checks after us
        cap = XNN_MAX_REQUANT * float(out_q.scale[0]) / float(in_s) * (1 - BIAS_FIT_MARGIN)
        need = np.minimum(need, cap)
    new = np.where(over, np.maximum(w_s.astype(np.float64), need), w_s).astype(np.float32)
    new = np.where(np.isfinite(new), new, w_s).astype(np.float32)
    changed = new != w_s
    if not np.any(changed):
        return w_s
    idx = np.flatnonzero(changed)
    shown = ", ".join(map(str, idx[:8].tolist())) + (", ..." if idx.size > 8 else "")
    warnings.warn(f"node {node.name!r}: weight scale of channel(s) {shown} of %{w.name} "
                  f"widened so the bias %{b_name} fits int32", stacklevel=6)
    if len(w.users) > 1:  # shared weight: this node gets its own copy
        w = g.const(w.data.copy(), name=f"{w.name}_{node.name}", quant=w.quant)
        node.set_input(1, w)
    ratio = w_s.astype(np.float64) / new.astype(np.float64)  # <= 1 on widened channels
    if per_ch:
        shape = [1] * w.data.ndim
        shape[w.quant.axis] = -1
        ratio = ratio.reshape(shape)
    q = round_half_away(w.data.astype(np.float64) * ratio)
    w.data = np.clip(q, -127, 127).astype(np.int8)
    w.quant = QuantParams(tuple(new.tolist()), w.quant.zero_point, w.quant.axis, w.quant.bits,
                          w.quant.narrow_range, w.quant.dtype)
    return new


def accumulator_bound(node: Node, wq: np.ndarray) -> np.ndarray:
    """Per output channel, a bound on the |int32 sum of weight x input terms| the kernel
    adds to the bias: ``ACC_INPUT_BOUND · Σ|w_q|`` over the channel's int8 weights."""
    axis = get_op(node.op).channel_axis
    red = tuple(i for i in range(wq.ndim) if i != axis)
    return ACC_INPUT_BOUND * np.abs(wq.astype(np.int64)).sum(axis=red).astype(np.float64)


def _clip_limits(qb: np.ndarray, b_s: np.ndarray, out_q: QuantParams | None,
                 acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Channels whose int32 bias must be clipped, and the magnitude they are clipped to.

    Clipped: a bias whose sum with the channel's largest accumulator ``acc`` could leave
    int32, before or after LiteRT's requantization shifts that sum left by the
    multiplier's exponent (in int32, before the high multiply). The clipped value keeps
    the bias at 2^24 output steps (still far past saturation) within int32 head-room, so
    the output saturates as the float one does.
    """
    a = np.abs(qb)
    if out_q is None:
        return a + acc > INT32_MAX, np.floor(np.minimum(float(BIAS_FIT_LIMIT), INT32_MAX - acc))
    ratio = b_s.astype(np.float64) / float(out_q.scale[0])
    left = np.maximum(np.frexp(ratio)[1], 0).astype(np.float64)
    bad = (a + acc) * 2.0**left > INT32_MAX
    lim = np.minimum(np.minimum(float(BIAS_FIT_LIMIT), 2.0**24 / ratio), INT32_MAX / 2.0**left - acc)
    return bad, np.floor(np.maximum(lim, 0))

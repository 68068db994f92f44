"""TF kernels, one per IR op, filled by the ``@tf_kernel("OP")`` decorator.

A kernel is ``fn(ctx, node, inputs) -> tf.Tensor | Sequence[tf.Tensor]`` where
``inputs`` holds one TF value per node input (None for a missing optional
input) and ``ctx`` is the :class:`KernelContext` of the current execution. The
registry is public: register a kernel for a custom op (see
:func:`qatir.register_op`) and the executor runs it. Semantics are those of
``qatir/ops/defs.py`` (NHWC, TFLite conventions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from qatir.errors import QatirError
from qatir.ir import Node, Tensor
from qatir.numerics import normalize_axes, normalize_axis
from qatir.tf.env import import_tensorflow

tf = import_tensorflow()

Kernel = Callable[["KernelContext", Node, list[Any]], Any]
_KERNELS: dict[str, Kernel] = {}


def tf_kernel(op: str, replace: bool = False):
    """Decorator registering the TF kernel of ``op``."""

    def deco(fn: Kernel) -> Kernel:
        if op in _KERNELS and not replace:
            raise QatirError(f"TF kernel for op {op!r} is already registered (replace=True overrides)")
        _KERNELS[op] = fn
        return fn

    return deco


def get_kernel(node: Node) -> Kernel:
    """The kernel for ``node.op``; QatirError naming the op and node when there is none."""
    try:
        return _KERNELS[node.op]
    except KeyError:
        raise QatirError(f"no TF kernel for op {node.op!r} (node {node.name!r}); "
                         "register one with @qatir.tf.kernels.tf_kernel") from None


def has_kernel(op: str) -> bool:
    return op in _KERNELS


class KernelContext:
    """What a kernel may know about the execution it runs in.

    ``training``: batch norm uses batch statistics and updates moving ones;
    ranges follow their quantizer's training rule. ``fake_quant``: False runs
    FAKE_QUANT nodes as identities (float calibration). ``variable(t)`` is the
    ``tf.Variable`` holding the IR constant ``t`` (None when it is a plain
    constant). ``scales`` maps ``id(tensor)`` of a FAKE_QUANT output to its
    scale, so consumers can quantize their bias the way int32 export will.
    ``captured`` collects values requested by calibration. ``fast_fake_quant``:
    per-tensor FAKE_QUANTs whose range is not learned run as XLA-fused kernels
    (same values and input gradients, no range gradients; used by ``fit``).
    ``live_weight_ranges``: outside training too, weight FAKE_QUANT ranges follow the
    current weights (what ``fit`` stores at the end; used for its validation loss).
    """

    def __init__(self, variables: dict[str, tf.Variable], training: bool = False,
                 fake_quant: bool = True, capture: frozenset[str] = frozenset(),
                 fast_fake_quant: bool = False, live_weight_ranges: bool = False):
        self._variables = variables
        self.training = training
        self.live_weight_ranges = live_weight_ranges
        self.fake_quant = fake_quant
        self.fast_fake_quant = fast_fake_quant
        self.capture = capture
        self.captured: dict[str, tf.Tensor] = {}
        self.scales: dict[int, tf.Tensor] = {}

    def variable(self, t: Tensor | None) -> tf.Variable | None:
        return None if t is None else self._variables.get(t.name)


# ------------------------------------------------------------------ helpers
def apply_activation(x: tf.Tensor, act: str, node: Node | None = None) -> tf.Tensor:
    """A TFLite fused activation."""
    if act in (None, "NONE"):
        return x
    if act == "RELU":
        return tf.nn.relu(x)
    if act == "RELU6":
        return tf.nn.relu6(x)
    if act == "RELU_N1_TO_1":
        return tf.clip_by_value(x, -1.0, 1.0)
    if act == "TANH":
        return tf.tanh(x)
    where = f" (node {node.name!r})" if node is not None else ""
    raise QatirError(f"unknown fused_activation {act!r}{where}")


def _act(node: Node, x: tf.Tensor) -> tf.Tensor:
    return apply_activation(x, node.attrs.get("fused_activation", "NONE"), node)


def _hw(v: Sequence[int]) -> list[int]:
    return [1, int(v[0]), int(v[1]), 1]


def quantized_bias(ctx: KernelContext, node: Node, bias: tf.Tensor | None) -> tf.Tensor | None:
    """Round the bias to the int32 grid of scale in_scale * w_scale (straight-through);
    int64 (clipped at 2^46, :data:`qatir.lowering.int16.BIAS64_LIMIT`) for a 16-bit input.

    Only when both the input and the weight come from FAKE_QUANT nodes, as in a
    quantized graph; otherwise the bias is returned unchanged.
    """
    if bias is None or not ctx.fake_quant:
        return bias
    s_in = ctx.scales.get(id(node.inputs[0]))
    s_w = ctx.scales.get(id(node.inputs[1]))
    if s_in is None or s_w is None:
        return bias
    scale = s_in * s_w
    # as the exporter does (qatir.lower): the quotient in float64, rounded half away from
    # zero, clipped to +-(2^31 - 1); then back on the float32 grid the model trains on
    q64 = round_half_away(tf.cast(bias, tf.float64) / tf.cast(scale, tf.float64))
    src = node.inputs[0].producer
    # a 16x8 node (16-bit input) gets an int64 bias at export (qatir.lowering.int16)
    wide = src is not None and src.op == "FAKE_QUANT" and int(src.attrs.get("bits", 8)) == 16
    lim = float(2**46) if wide else float(INT32_MAX)
    q = tf.cast(tf.clip_by_value(q64, -lim, lim), bias.dtype) * scale
    return bias + tf.stop_gradient(q - bias)


INT32_MAX = float(2**31 - 1)


def round_half_away(x: tf.Tensor) -> tf.Tensor:
    """C ``round()``: ties away from zero; the TF twin of ``qatir.reference_math.round_half_away``.

    Exact for every finite value: the fraction ``x - trunc(x)`` is computed
    without rounding, so neither 0.49999997 nor odd float32 values above 2^23
    are pushed to the next integer, which ``floor(|x| + 0.5)`` would do.
    """
    whole = tf.where(x < 0, tf.math.ceil(x), tf.math.floor(x))
    return tf.where(tf.abs(x - whole) >= 0.5, whole + tf.sign(x), whole)


def _add_bias(ctx: KernelContext, node: Node, y: tf.Tensor, b: tf.Tensor | None) -> tf.Tensor:
    b = quantized_bias(ctx, node, b)
    return y if b is None else tf.nn.bias_add(y, b)


# -------------------------------------------------------------- conv family
@tf_kernel("CONV_2D")
def _conv2d(ctx, node, ins):
    x, w = ins[0], ins[1]
    a = node.attrs
    y = tf.nn.conv2d(x, tf.transpose(w, [1, 2, 3, 0]), strides=_hw(a["stride"]),
                     padding=a["padding"], dilations=_hw(a["dilation"]))
    return _act(node, _add_bias(ctx, node, y, ins[2] if len(ins) > 2 else None))


@tf_kernel("DEPTHWISE_CONV_2D")
def _dwconv(ctx, node, ins):
    x, w = ins[0], ins[1]
    a = node.attrs
    kh, kw, out_c = node.inputs[1].shape[1:]
    m = int(a["depth_multiplier"])
    filt = tf.reshape(w, [kh, kw, out_c // m, m])
    (sh, sw), (dh, dw) = a["stride"], a["dilation"]
    if (max(sh, sw) > 1 and max(dh, dw) > 1) or sh != sw:
        y = _strided_dwconv(x, filt, node, (sh, sw), (dh, dw), (kh, kw))
    else:
        y = tf.nn.depthwise_conv2d(x, filt, strides=_hw(a["stride"]), padding=a["padding"],
                                   dilations=[int(dh), int(dw)])
    return _act(node, _add_bias(ctx, node, y, ins[2] if len(ins) > 2 else None))


def _strided_dwconv(x, filt, node, stride, dilation, kernel):
    """TF's CPU depthwise conv can neither stride and dilate at once nor take unequal
    strides: pad as TFLite's SAME would for this stride, run a stride-1 VALID (dilated)
    conv, then keep every stride-th output."""
    if node.attrs["padding"] == "SAME":
        pads = [[0, 0]]
        for size, s, d, k in zip(node.inputs[0].shape[1:3], stride, dilation, kernel):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append([total // 2, total - total // 2])
        x = tf.pad(x, pads + [[0, 0]])
    y = tf.nn.depthwise_conv2d(x, filt, strides=[1, 1, 1, 1], padding="VALID",
                               dilations=[int(d) for d in dilation])
    return y[:, ::stride[0], ::stride[1], :]


@tf_kernel("FULLY_CONNECTED")
def _fc(ctx, node, ins):
    x, w = ins[0], ins[1]
    k = node.inputs[1].shape[1]
    flat = tf.reshape(x, [-1, k])
    y = _add_bias(ctx, node, tf.matmul(flat, w, transpose_b=True), ins[2] if len(ins) > 2 else None)
    if node.attrs["keep_num_dims"]:
        y = tf.reshape(y, tf.concat([tf.shape(x)[:-1], [node.inputs[1].shape[0]]], 0))
    return _act(node, y)


@tf_kernel("TRANSPOSE_CONV")
def _tconv(ctx, node, ins):
    x, w = ins[0], ins[1]
    a = node.attrs
    sh, sw = (int(s) for s in a["stride"])
    out_c, kh, kw, _ = node.inputs[1].shape
    shape = tf.shape(x)
    if a["padding"] == "SAME":
        oh, ow = shape[1] * sh, shape[2] * sw
    else:
        oh, ow = (shape[1] - 1) * sh + kh, (shape[2] - 1) * sw + kw
    y = tf.nn.conv2d_transpose(x, tf.transpose(w, [1, 2, 0, 3]),
                               tf.stack([shape[0], oh, ow, out_c]),
                               strides=[1, sh, sw, 1], padding=a["padding"])
    return _act(node, _add_bias(ctx, node, y, ins[2] if len(ins) > 2 else None))


# ------------------------------------------------------------- elementwise
_BINARY = {"ADD": tf.add, "SUB": tf.subtract, "MUL": tf.multiply, "DIV": tf.divide,
           "MAXIMUM": tf.maximum, "MINIMUM": tf.minimum, "POW": tf.pow,
           "SQUARED_DIFFERENCE": tf.math.squared_difference}
for _name, _fn in _BINARY.items():
    tf_kernel(_name)(lambda ctx, node, ins, _fn=_fn: _act(node, _fn(ins[0], ins[1])))

_UNARY = {
    "RELU": tf.nn.relu,
    "RELU6": tf.nn.relu6,
    "RELU_N1_TO_1": lambda x: tf.clip_by_value(x, -1.0, 1.0),
    "RELU_0_TO_1": lambda x: tf.clip_by_value(x, 0.0, 1.0),
    "LOGISTIC": tf.sigmoid,
    "TANH": tf.tanh,
    "HARD_SWISH": lambda x: x * tf.nn.relu6(x + 3.0) / 6.0,
    "IDENTITY": tf.identity,
    "EXP": tf.exp,
    "ABS": tf.abs,
    "NEG": tf.negative,
    "SQRT": tf.sqrt,
    "RSQRT": tf.math.rsqrt,
}
for _name, _fn in _UNARY.items():
    tf_kernel(_name)(lambda ctx, node, ins, _fn=_fn: _fn(ins[0]))


@tf_kernel("GELU")
def _gelu(ctx, node, ins):
    return tf.nn.gelu(ins[0], approximate=bool(node.attrs["approximate"]))


@tf_kernel("LOCAL_RESPONSE_NORMALIZATION")
def _lrn(ctx, node, ins):
    a = node.attrs
    return tf.nn.local_response_normalization(ins[0], depth_radius=int(a["radius"]),
                                              bias=float(a["bias"]), alpha=float(a["alpha"]),
                                              beta=float(a["beta"]))


@tf_kernel("LEAKY_RELU")
def _leaky(ctx, node, ins):
    x = ins[0]
    return tf.where(x >= 0, x, x * float(node.attrs["alpha"]))


@tf_kernel("PRELU")
def _prelu(ctx, node, ins):
    x, alpha = ins
    return tf.where(x >= 0, x, x * alpha)


@tf_kernel("SOFTMAX")
def _softmax(ctx, node, ins):
    return tf.nn.softmax(ins[0] * float(node.attrs["beta"]), axis=-1)


@tf_kernel("LOG_SOFTMAX")
def _log_softmax(ctx, node, ins):
    return tf.nn.log_softmax(ins[0], axis=-1)


@tf_kernel("CLIP")
def _clip(ctx, node, ins):
    x = ins[0]
    lo, hi = node.attrs["min"], node.attrs["max"]
    if lo is not None:
        x = tf.maximum(x, float(lo))
    if hi is not None:
        x = tf.minimum(x, float(hi))
    return x


@tf_kernel("HARD_SIGMOID")
def _hard_sigmoid(ctx, node, ins):
    a = node.attrs
    return tf.clip_by_value(ins[0] * float(a["alpha"]) + float(a["beta"]), 0.0, 1.0)


# ----------------------------------------------------------------- pooling
@tf_kernel("MAX_POOL_2D")
def _maxpool(ctx, node, ins):
    a = node.attrs
    return _act(node, tf.nn.max_pool2d(ins[0], _hw(a["filter"]), _hw(a["stride"]), a["padding"]))


@tf_kernel("AVERAGE_POOL_2D")
def _avgpool(ctx, node, ins):
    a = node.attrs
    return _act(node, tf.nn.avg_pool2d(ins[0], _hw(a["filter"]), _hw(a["stride"]), a["padding"]))


def _reduce_axes(node: Node) -> list[int]:
    axes = node.attrs["axis"]
    axes = [axes] if isinstance(axes, int) else list(axes)
    rank = node.inputs[0].rank
    return normalize_axes(axes, rank)


_REDUCE = {"MEAN": tf.reduce_mean, "SUM": tf.reduce_sum, "REDUCE_MAX": tf.reduce_max}
for _name, _fn in _REDUCE.items():
    tf_kernel(_name)(lambda ctx, node, ins, _fn=_fn: _fn(
        ins[0], axis=_reduce_axes(node), keepdims=bool(node.attrs["keep_dims"])))


# ------------------------------------------------------- quantize/dequant
def _qparams(t: Tensor, node: Node, rank: int) -> tuple[tf.Tensor, tf.Tensor]:
    q = t.quant
    if q is None:
        raise QatirError(f"node {node.name!r} ({node.op}): tensor %{t.name} has no quant params")
    shape = [1] * rank
    if q.axis is not None:
        shape[normalize_axis(q.axis, rank)] = len(q.scale)
    scale = tf.constant(np.reshape(np.asarray(q.scale, np.float32), shape))
    zp = tf.constant(np.reshape(np.asarray(q.zero_point, np.float32), shape))
    return scale, zp


@tf_kernel("DEQUANTIZE")
def _dequantize(ctx, node, ins):
    scale, zp = _qparams(node.inputs[0], node, node.inputs[0].rank)
    return (tf.cast(ins[0], tf.float32) - zp) * scale


@tf_kernel("QUANTIZE")
def _quantize(ctx, node, ins):
    src, out = node.inputs[0], node.outputs[0]
    x = ins[0]
    if src.dtype.kind in "iu":
        x = _dequantize(ctx, node, ins)
    scale, zp = _qparams(out, node, out.rank)
    info = np.iinfo(out.dtype)
    lo, hi = out.quant.qrange() if out.quant.dtype == out.dtype.name else (info.min, info.max)
    q = tf.clip_by_value(round_half_away(x / scale) + zp, float(lo), float(hi))
    return tf.cast(q, tf.as_dtype(out.dtype))


# --------------------------------------------------------------- batch norm
@tf_kernel("BATCH_NORM")
def _batch_norm(ctx, node, ins):
    x, gamma, beta, mean, var = ins
    eps = float(node.attrs["epsilon"])
    if ctx.training:
        axes = list(range(node.inputs[0].rank - 1))
        bmean, bvar = tf.nn.moments(x, axes)
        m = float(node.attrs["momentum"])
        for t, batch in ((node.inputs[3], bmean), (node.inputs[4], bvar)):
            v = ctx.variable(t)
            if v is not None:
                v.assign(v * m + tf.stop_gradient(batch) * (1.0 - m))
        mean, var = bmean, bvar
    return tf.nn.batch_normalization(x, mean, var, beta, gamma, eps)


# The data-movement kernels live beside this module; importing it registers them.
import qatir.tf.kernels_shape  # noqa: E402,F401

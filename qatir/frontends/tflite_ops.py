"""TFLite builtin operators -> IR ops (attributes per qatir/ops/defs.py).

TFLite is already NHWC with OHWI / 1HWO weights, so most ops map one to one:
options become attributes, and inputs that TFLite passes as constant tensors
(axes, sizes, permutations, paddings, slice bounds) become attributes too.

``CONVERTERS[name](ctx, op) -> Emit`` describes the IR node for one operator;
``FOLDERS[name](ctx, op, values) -> [array]`` computes an operator whose inputs
are all constant (the converter's plumbing: DEQUANTIZE of fp16/int8 weights,
DENSIFY, SHAPE/PACK/STRIDED_SLICE on shape vectors, ...). ``ctx`` is the
importer (see ``qatir.frontends.tflite``). This module holds both tables, the option
helpers and the arithmetic converters; the data-movement converters are in
:mod:`qatir.frontends.tflite_shape_ops`, the folders in :mod:`qatir.frontends.tflite_fold`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from qatir.errors import ShapeError
from qatir.frontends.tflite_reader import TOp
from qatir.numerics import normalize_axis

ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH"}
PADDINGS = {0: "SAME", 1: "VALID"}


@dataclass
class Emit:
    """One IR node: op name, TFLite input tensor indices (-1: absent), attributes."""

    op: str
    inputs: list[int]
    attrs: dict[str, Any]


Converter = Callable[[Any, TOp], Emit]
Folder = Callable[[Any, TOp, list[Any]], list[np.ndarray]]
CONVERTERS: dict[str, Converter] = {}
FOLDERS: dict[str, Folder] = {}


def converter(*names: str) -> Callable[[Converter], Converter]:
    def deco(fn: Converter) -> Converter:
        for n in names:
            CONVERTERS[n] = fn
        return fn
    return deco


def folder(*names: str) -> Callable[[Folder], Folder]:
    def deco(fn: Folder) -> Folder:
        for n in names:
            FOLDERS[n] = fn
        return fn
    return deco


# ------------------------------------------------------------------ helpers
def act(ctx: Any, op: TOp, o: Any) -> str:
    code = 0 if o is None else int(o.FusedActivationFunction())
    if code == 4:
        # LiteRT's kernels clamp only for RELU/RELU6/RELU_N1_TO_1 (CalculateActivationRange)
        # and ignore a fused TANH; import what the runtime computes.
        warnings.warn(f"{ctx.path}: operator {op.index} ({op.name}): fused TANH is ignored by "
                      "LiteRT's kernels; imported as NONE", stacklevel=2)
        return "NONE"
    if code not in ACTIVATIONS:
        raise ctx.unsupported(op, f"fused activation {code} (only NONE, RELU, RELU_N1_TO_1, "
                                  "RELU6, TANH)")
    return ACTIVATIONS[code]


def f32(v: float) -> float:
    """A float32 option as the shortest decimal that reads back to the same float32."""
    return float(str(np.float32(v)))


def padding(ctx: Any, op: TOp, o: Any) -> str:
    code = 0 if o is None else int(o.Padding())
    if code not in PADDINGS:
        raise ctx.fail(op, f"padding code {code} is neither SAME nor VALID")
    return PADDINGS[code]


def positive(ctx: Any, op: TOp, what: str, *values: int) -> list[int]:
    vals = [int(v) for v in values]
    if any(v < 1 or v > 1 << 20 for v in vals):
        raise ctx.fail(op, f"{what} {vals} must be positive")
    return vals


def axis_in(ctx: Any, op: TOp, axis: int, rank: int) -> int:
    """:func:`qatir.numerics.normalize_axis` (a scalar counts as rank 1), the error naming ``op``."""
    try:
        return normalize_axis(axis, max(rank, 1))
    except ShapeError:
        raise ctx.fail(op, f"axis {axis} out of range for rank {rank}") from None


def int_list(ctx: Any, op: TOp, k: int, what: str) -> list[int]:
    arr = ctx.const(op, k, what)
    if arr.dtype.kind not in "iu":
        raise ctx.fail(op, f"{what} must be an integer tensor, got {arr.dtype}")
    return [int(v) for v in arr.reshape(-1)]


def present(op: TOp, k: int) -> bool:
    return len(op.inputs) > k and op.inputs[k] >= 0


def need_inputs(ctx: Any, op: TOp, lo: int, hi: int | None = None) -> None:
    n = len(op.inputs)
    if n < lo or (hi is not None and n > hi) or any(i < 0 for i in op.inputs[:lo]):
        raise ctx.fail(op, f"has {n} inputs, expects {lo}..{hi if hi is not None else 'n'}")
    if not op.outputs:
        raise ctx.fail(op, "has no outputs")


# ---------------------------------------------------------- conv and dense
@converter("CONV_2D")
def _conv(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 2, 3)
    o = ctx.opts(op, "Conv2DOptions")
    stride = positive(ctx, op, "stride", *((o.StrideH(), o.StrideW()) if o else (0, 0)))
    dil = positive(ctx, op, "dilation", *((o.DilationHFactor(), o.DilationWFactor()) if o else (1, 1)))
    attrs = {"stride": stride, "dilation": dil, "padding": padding(ctx, op, o),
             "fused_activation": act(ctx, op, o)}
    c_in, w = ctx.shape(op.inputs[0])[-1:] or (None,), ctx.shape(op.inputs[1])
    if len(w) == 4 and c_in[0] is not None and w[3] != c_in[0]:
        return _grouped_conv(ctx, op, c_in[0], w, attrs)
    return Emit("CONV_2D", list(op.inputs), attrs)


def _grouped_conv(ctx: Any, op: TOp, c_in: int, w: tuple, attrs: dict) -> Emit:
    """A grouped CONV_2D (v6) with one input channel per group and as many outputs as
    inputs (the converter's spelling of Keras ``DepthwiseConv2D`` via ``groups``) is a
    DEPTHWISE_CONV_2D whose OHWI weight [C, kh, kw, 1] is read as 1HWO [1, kh, kw, C]."""
    weight = op.inputs[1]
    float_weight = weight in ctx.consts and ctx.consts[weight].dtype.kind == "f"
    if w[3] != 1 or w[0] != c_in or not float_weight:
        raise ctx.unsupported(op, f"grouped CONV_2D ({c_in} input channels, weight "
                                  f"{list(w)}): only the depthwise form with float weights")
    return Emit("DEPTHWISE_CONV_2D", list(op.inputs),
                {**attrs, "depth_multiplier": 1, "_weight_perm": (3, 1, 2, 0)})


@converter("DEPTHWISE_CONV_2D")
def _dwconv(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 2, 3)
    o = ctx.opts(op, "DepthwiseConv2DOptions")
    stride = positive(ctx, op, "stride", *((o.StrideH(), o.StrideW()) if o else (0, 0)))
    dil = positive(ctx, op, "dilation", *((o.DilationHFactor(), o.DilationWFactor()) if o else (1, 1)))
    mult = int(o.DepthMultiplier()) if o else 1
    c_in = ctx.shape(op.inputs[0])[-1:] or (None,)
    w = ctx.shape(op.inputs[1])
    if c_in[0] and len(w) == 4 and w[3] is not None and w[3] % c_in[0] == 0:
        mult = w[3] // c_in[0]  # kernels derive it from the shapes; old converters wrote 0
    return Emit("DEPTHWISE_CONV_2D", list(op.inputs),
                {"stride": stride, "dilation": dil, "padding": padding(ctx, op, o),
                 "depth_multiplier": positive(ctx, op, "depth_multiplier", mult)[0],
                 "fused_activation": act(ctx, op, o)})


@converter("FULLY_CONNECTED")
def _fc(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 2, 3)
    o = ctx.opts(op, "FullyConnectedOptions")
    if o is not None and int(o.WeightsFormat()) != 0:
        raise ctx.unsupported(op, f"weights_format {int(o.WeightsFormat())} (only DEFAULT)")
    return Emit("FULLY_CONNECTED", list(op.inputs),
                {"keep_num_dims": bool(o.KeepNumDims()) if o else False,
                 "fused_activation": act(ctx, op, o)})


@converter("TRANSPOSE_CONV")
def _tconv(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 3, 4)
    o = ctx.opts(op, "TransposeConvOptions")
    stride = positive(ctx, op, "stride", *((o.StrideH(), o.StrideW()) if o else (0, 0)))
    out_shape = int_list(ctx, op, 0, "output_shape")
    inputs = [op.inputs[2], op.inputs[1]] + ([op.inputs[3]] if present(op, 3) else [])
    emit = Emit("TRANSPOSE_CONV", inputs, {"stride": stride, "padding": padding(ctx, op, o),
                                           "fused_activation": act(ctx, op, o)})
    emit.attrs["_expect_shape"] = out_shape  # checked against IR inference by the importer
    return emit


# -------------------------------------------------------------- elementwise
@converter("ADD", "SUB", "MUL", "DIV")
def _binary_act(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 2, 2)
    cls = {"ADD": "AddOptions", "SUB": "SubOptions", "MUL": "MulOptions", "DIV": "DivOptions"}
    o = ctx.opts(op, cls[op.name])
    return Emit(op.name, list(op.inputs), {"fused_activation": act(ctx, op, o)})


@converter("MAXIMUM", "MINIMUM", "PRELU", "SQUARED_DIFFERENCE")
def _binary(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 2, 2)
    return Emit(op.name, list(op.inputs), {})


@converter("RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1", "LOGISTIC", "TANH", "HARD_SWISH",
           "EXP", "ABS", "NEG", "SQRT", "RSQRT")
def _unary(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 1, 1)
    return Emit(op.name, list(op.inputs), {})


@converter("LEAKY_RELU")
def _leaky(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 1, 1)
    o = ctx.opts(op, "LeakyReluOptions")
    return Emit("LEAKY_RELU", list(op.inputs), {"alpha": f32(o.Alpha()) if o else 0.0})


@converter("POW")
def _pow(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 2, 2)
    return Emit("POW", list(op.inputs), {})


@converter("LOCAL_RESPONSE_NORMALIZATION")
def _lrn(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 1, 1)
    o = ctx.opts(op, "LocalResponseNormalizationOptions")
    if o is None:
        return Emit(op.name, list(op.inputs), {})
    return Emit(op.name, list(op.inputs), {"radius": int(o.Radius()), "bias": f32(o.Bias()),
                                           "alpha": f32(o.Alpha()), "beta": f32(o.Beta())})


@converter("GELU")
def _gelu(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 1, 1)
    o = ctx.opts(op, "GeluOptions")
    return Emit("GELU", list(op.inputs), {"approximate": bool(o.Approximate()) if o else False})


@converter("SOFTMAX")
def _softmax(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 1, 1)
    o = ctx.opts(op, "SoftmaxOptions")
    attrs: dict[str, Any] = {"beta": f32(o.Beta()) if o else 0.0}
    if ctx.tensor(op.outputs[0]).dtype == np.int16:  # qatir's wide head (lowering/softmax.py)
        attrs["dtype"] = "int16"
    return Emit("SOFTMAX", list(op.inputs), attrs)


@converter("LOG_SOFTMAX")
def _log_softmax(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 1, 1)
    return Emit("LOG_SOFTMAX", list(op.inputs), {})


@converter("QUANTIZE", "DEQUANTIZE", "CAST")
def _typed(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 1, 1)
    return Emit(op.name, list(op.inputs), {"dtype": ctx.tensor(op.outputs[0]).dtype.name})


# ------------------------------------------------------------------ pooling
@converter("MAX_POOL_2D", "AVERAGE_POOL_2D")
def _pool(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 1, 1)
    o = ctx.opts(op, "Pool2DOptions")
    stride = positive(ctx, op, "stride", *((o.StrideH(), o.StrideW()) if o else (0, 0)))
    filt = positive(ctx, op, "filter", *((o.FilterHeight(), o.FilterWidth()) if o else (0, 0)))
    return Emit(op.name, list(op.inputs), {"filter": filt, "stride": stride,
                                           "padding": padding(ctx, op, o),
                                           "fused_activation": act(ctx, op, o)})


@converter("MEAN", "SUM", "REDUCE_MAX")
def _reduce(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 2, 2)
    o = ctx.opts(op, "ReducerOptions")
    rank = len(ctx.shape(op.inputs[0]))
    axes = sorted({axis_in(ctx, op, a, rank) for a in int_list(ctx, op, 1, "axis")})
    return Emit(op.name, [op.inputs[0]], {"axis": axes, "keep_dims": bool(o.KeepDims()) if o else False})

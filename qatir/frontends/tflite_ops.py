"""TFLite builtin operators -> IR ops (attributes per qatir/ops/defs.py).

TFLite is already NHWC with OHWI / 1HWO weights, so most ops map one to one:
options become attributes, and inputs that TFLite passes as constant tensors
(axes, sizes, permutations, paddings, slice bounds) become attributes too.

``CONVERTERS[name](ctx, op) -> Emit`` describes the IR node for one operator;
``FOLDERS[name](ctx, op, values) -> [array]`` computes an operator whose inputs
are all constant (the converter's plumbing: DEQUANTIZE of fp16/int8 weights,
DENSIFY, SHAPE/PACK/STRIDED_SLICE on shape vectors, ...). ``ctx`` is the
importer (see ``qatir.frontends.tflite``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from qatir.errors import ShapeError
from qatir.frontends.slice_bounds import INT32_MAX, clamp_bounds
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
    return Emit("CONV_2D", list(op.inputs), {"stride": stride, "dilation": dil,
                                             "padding": padding(ctx, op, o),
                                             "fused_activation": act(ctx, op, o)})


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


@converter("MAXIMUM", "MINIMUM", "PRELU")
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


@converter("GELU")
def _gelu(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 1, 1)
    o = ctx.opts(op, "GeluOptions")
    return Emit("GELU", list(op.inputs), {"approximate": bool(o.Approximate()) if o else False})


@converter("SOFTMAX")
def _softmax(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 1, 1)
    o = ctx.opts(op, "SoftmaxOptions")
    return Emit("SOFTMAX", list(op.inputs), {"beta": f32(o.Beta()) if o else 0.0})


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


# ------------------------------------------------------------ data movement
def reshape_target(ctx: Any, op: TOp) -> list[int]:
    if present(op, 1):
        new = int_list(ctx, op, 1, "shape")
    else:
        o = ctx.opts(op, "ReshapeOptions")
        if o is None:
            raise ctx.fail(op, "has neither a shape input nor ReshapeOptions")
        new = ctx.ints(o.NewShapeAsNumpy(), o.NewShapeLength(), "new_shape")
    if len(new) > 16 or any(d < -1 for d in new) or new.count(-1) > 1:
        raise ctx.fail(op, f"bad target shape {new}")
    return new


@converter("RESHAPE")
def _reshape(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 1, 2)
    return Emit("RESHAPE", [op.inputs[0]], {"new_shape": reshape_target(ctx, op)})


def squeeze_dims(ctx: Any, op: TOp) -> list[int]:
    o = ctx.opts(op, "SqueezeOptions")
    if o is None:
        return []
    rank = len(ctx.shape(op.inputs[0]))
    dims = ctx.ints(o.SqueezeDimsAsNumpy(), o.SqueezeDimsLength(), "squeeze_dims")
    return sorted({axis_in(ctx, op, d, rank) for d in dims})


@converter("SQUEEZE")
def _squeeze(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 1, 1)
    return Emit("SQUEEZE", list(op.inputs), {"squeeze_dims": squeeze_dims(ctx, op)})


def perm_of(ctx: Any, op: TOp) -> list[int]:
    perm = int_list(ctx, op, 1, "perm")
    rank = len(ctx.shape(op.inputs[0]))
    if sorted(perm) != list(range(rank)):
        raise ctx.fail(op, f"perm {perm} is not a permutation of rank {rank}")
    return perm


@converter("TRANSPOSE")
def _transpose(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 2, 2)
    return Emit("TRANSPOSE", [op.inputs[0]], {"perm": perm_of(ctx, op)})


@converter("TILE")
def _tile(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 2, 2)
    reps = int_list(ctx, op, 1, "multiples")
    rank = len(ctx.shape(op.inputs[0]))
    if len(reps) != rank or any(r < 1 or r > 1 << 24 for r in reps):
        raise ctx.fail(op, f"multiples {reps} must be {rank} counts in [1, 2^24]")
    return Emit("TILE", [op.inputs[0]], {"multiples": reps})


def concat_axis(ctx: Any, op: TOp) -> int:
    o = ctx.opts(op, "ConcatenationOptions")
    return axis_in(ctx, op, int(o.Axis()) if o else 0, len(ctx.shape(op.inputs[0])))


@converter("CONCATENATION")
def _concat(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 1)
    o = ctx.opts(op, "ConcatenationOptions")
    return Emit("CONCATENATION", list(op.inputs), {"axis": concat_axis(ctx, op),
                                                   "fused_activation": act(ctx, op, o)})


def paddings_of(ctx: Any, op: TOp) -> list[list[int]]:
    flat = int_list(ctx, op, 1, "paddings")
    rank = len(ctx.shape(op.inputs[0]))
    if len(flat) != 2 * rank or any(p < 0 or p > 1 << 24 for p in flat):
        raise ctx.fail(op, f"paddings {flat} do not fit rank {rank}")
    return [[flat[2 * i], flat[2 * i + 1]] for i in range(rank)]


@converter("PAD", "PADV2")
def _pad(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 2, 3)
    value = 0.0
    if present(op, 2):
        arr = ctx.const(op, 2, "constant_values")
        if arr.size != 1:
            raise ctx.fail(op, f"constant_values has {arr.size} elements, expected 1")
        value = ctx.real_value(op.inputs[2], arr)
    return Emit("PAD", [op.inputs[0]], {"paddings": paddings_of(ctx, op), "constant_value": value})


@converter("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR")
def _resize(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 2, 2)
    size = int_list(ctx, op, 1, "size")
    if len(size) != 2 or any(s < 1 or s > 1 << 20 for s in size):
        raise ctx.fail(op, f"size {size} must be two positive ints")
    cls = "ResizeBilinearOptions" if op.name == "RESIZE_BILINEAR" else "ResizeNearestNeighborOptions"
    o = ctx.opts(op, cls)
    return Emit(op.name, [op.inputs[0]], {
        "size": size, "align_corners": bool(o.AlignCorners()) if o else False,
        "half_pixel_centers": bool(o.HalfPixelCenters()) if o else False})


@converter("DEPTH_TO_SPACE", "SPACE_TO_DEPTH")
def _d2s(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 1, 1)
    o = ctx.opts(op, "DepthToSpaceOptions" if op.name == "DEPTH_TO_SPACE" else "SpaceToDepthOptions")
    block = positive(ctx, op, "block_size", int(o.BlockSize()) if o else 0)[0]
    return Emit(op.name, list(op.inputs), {"block_size": block})


@converter("GATHER")
def _gather(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 2, 2)
    o = ctx.opts(op, "GatherOptions")
    if o is not None and int(o.BatchDims()) != 0:
        raise ctx.unsupported(op, "batch_dims != 0")
    axis = axis_in(ctx, op, int(o.Axis()) if o else 0, len(ctx.shape(op.inputs[0])))
    return Emit("GATHER", list(op.inputs), {"axis": axis})


@converter("BATCH_MATMUL")
def _bmm(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 2, 2)
    o = ctx.opts(op, "BatchMatMulOptions")
    return Emit("BATCH_MATMUL", list(op.inputs), {"adj_x": bool(o.AdjX()) if o else False,
                                                  "adj_y": bool(o.AdjY()) if o else False})


@converter("SHAPE")
def _shape(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 1, 1)
    return Emit("SHAPE", list(op.inputs), {})


# ------------------------------------------------------------ strided slice
def slice_params(ctx: Any, op: TOp) -> dict[str, list[int]]:
    """Explicit per-dim begin/end/strides (python slice semantics) and shrink axes."""
    shape = ctx.shape(op.inputs[0])
    rank = len(shape)
    begin = int_list(ctx, op, 1, "begin")
    end = int_list(ctx, op, 2, "end")
    strides = int_list(ctx, op, 3, "strides") if present(op, 3) else [1] * len(begin)
    o = ctx.opts(op, "StridedSliceOptions")
    bm, em, sm = ((int(o.BeginMask()), int(o.EndMask()), int(o.ShrinkAxisMask())) if o
                  else (0, 0, 0))
    if o is not None and (int(o.EllipsisMask()) or int(o.NewAxisMask())):
        raise ctx.unsupported(op, "ellipsis_mask / new_axis_mask")
    offset = bool(o.Offset()) if o is not None else False
    if not (len(begin) == len(end) == len(strides)) or len(begin) > rank:
        raise ctx.fail(op, f"begin/end/strides lengths {len(begin)}/{len(end)}/{len(strides)} "
                           f"do not fit rank {rank}")
    big = INT32_MAX  # "to the end" of a dynamic dim
    out_b, out_e, out_s, shrink = [], [], [], []
    for i in range(rank):
        if i >= len(begin):
            out_b.append(0)
            out_e.append(shape[i] if shape[i] is not None else big)
            out_s.append(1)
            continue
        b, e, s = begin[i], end[i], strides[i]
        if s == 0:
            raise ctx.fail(op, f"stride 0 in dim {i}")
        if offset:
            e = b + e
        if sm >> i & 1:
            d = shape[i]
            if d is not None and not -d <= b < d:
                raise ctx.fail(op, f"shrink index {b} out of range for dim {i} of size {d}")
            if d is not None:
                b %= d
            out_b.append(b)
            out_e.append(b + 1 if b != -1 else big)
            out_s.append(1)
            shrink.append(i)
            continue
        d = shape[i]
        if bm >> i & 1:
            b = 0 if s > 0 else (d - 1 if d is not None else big - 1)
        if em >> i & 1:
            e = (d if d is not None else big) if s > 0 else -(d + 1 if d is not None else big)
        b, e = clamp_bounds(b, e, s, d)  # the converter's "to the end" sentinels, e.g. 2^31
        out_b.append(b)
        out_e.append(e)
        out_s.append(s)
    return {"begin": out_b, "end": out_e, "strides": out_s, "shrink_axis": shrink}


@converter("STRIDED_SLICE")
def _strided_slice(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 3, 4)
    return Emit("STRIDED_SLICE", [op.inputs[0]], slice_params(ctx, op))


# ------------------------------------------------------------------ folders
@folder("DEQUANTIZE")
def _fold_dequantize(ctx: Any, op: TOp, vals: list[Any]) -> list[np.ndarray]:
    return [ctx.dequantized(op.inputs[0], vals[0])]


@folder("DENSIFY")
def _fold_densify(ctx: Any, op: TOp, vals: list[Any]) -> list[np.ndarray]:
    return [ctx.densified(op, op.inputs[0])]


@folder("RESHAPE")
def _fold_reshape(ctx: Any, op: TOp, vals: list[Any]) -> list[np.ndarray]:
    return [vals[0].reshape(reshape_target(ctx, op))]


@folder("SQUEEZE")
def _fold_squeeze(ctx: Any, op: TOp, vals: list[Any]) -> list[np.ndarray]:
    dims = squeeze_dims(ctx, op)
    return [np.squeeze(vals[0], axis=tuple(dims)) if dims else np.squeeze(vals[0])]


@folder("EXPAND_DIMS")
def _fold_expand(ctx: Any, op: TOp, vals: list[Any]) -> list[np.ndarray]:
    need_inputs(ctx, op, 2, 2)
    axis = int_list(ctx, op, 1, "axis")
    if len(axis) != 1:
        raise ctx.fail(op, f"axis {axis} must be one int")
    return [np.expand_dims(vals[0], axis_in(ctx, op, axis[0], vals[0].ndim + 1))]


@folder("TRANSPOSE")
def _fold_transpose(ctx: Any, op: TOp, vals: list[Any]) -> list[np.ndarray]:
    return [np.array(vals[0].transpose(perm_of(ctx, op)), order="C")]


@folder("CONCATENATION")
def _fold_concat(ctx: Any, op: TOp, vals: list[Any]) -> list[np.ndarray]:
    if act(ctx, op, ctx.opts(op, "ConcatenationOptions")) != "NONE":
        raise ctx.unsupported(op, "constant CONCATENATION with a fused activation")
    return [np.concatenate(vals, axis=concat_axis(ctx, op))]


@folder("PACK")
def _fold_pack(ctx: Any, op: TOp, vals: list[Any]) -> list[np.ndarray]:
    need_inputs(ctx, op, 1)
    o = ctx.opts(op, "PackOptions")
    axis = axis_in(ctx, op, int(o.Axis()) if o else 0, vals[0].ndim + 1)
    return [np.stack(vals, axis=axis)]


@folder("STRIDED_SLICE")
def _fold_strided_slice(ctx: Any, op: TOp, vals: list[Any]) -> list[np.ndarray]:
    p = slice_params(ctx, op)
    out = vals[0][tuple(slice(b, e, s) for b, e, s in zip(p["begin"], p["end"], p["strides"]))]
    keep = [d for i, d in enumerate(out.shape) if i not in p["shrink_axis"]]
    return [np.ascontiguousarray(out).reshape(keep)]


@folder("GATHER")
def _fold_gather(ctx: Any, op: TOp, vals: list[Any]) -> list[np.ndarray]:
    emit = _gather(ctx, op)
    x, idx = vals
    if idx.dtype.kind not in "iu" or (idx.size and (idx.min() < 0 or idx.max() >= x.shape[emit.attrs["axis"]])):
        raise ctx.fail(op, "gather indices out of range")
    if idx.size * x.size > (1 << 26) * max(x.shape[emit.attrs["axis"]], 1):
        raise ctx.fail(op, "constant GATHER result is implausibly large")
    return [np.take(x, idx, axis=emit.attrs["axis"])]


@folder("CAST")
def _fold_cast(ctx: Any, op: TOp, vals: list[Any]) -> list[np.ndarray]:
    return [vals[0].astype(ctx.tensor(op.outputs[0]).dtype)]


FOLD_ANY_INPUT = {"SHAPE"}  # folded whatever the input (dynamic dims become -1)
# Folders through which a symbolic shape vector (from SHAPE of a dynamic tensor) may flow.
SYMBOLIC_OK = {"SHAPE", "STRIDED_SLICE", "PACK", "CONCATENATION", "GATHER", "RESHAPE", "SQUEEZE",
               "EXPAND_DIMS", "CAST"}


@folder("SHAPE")
def _fold_shape(ctx: Any, op: TOp, vals: list[Any]) -> list[np.ndarray]:
    shape = ctx.shape(op.inputs[0])
    # A dynamic dim folds to -1; the importer marks the result symbolic, so that it may
    # only reach a RESHAPE target (where -1 means "the rest") through data movement.
    return [np.array([-1 if d is None else d for d in shape],
                     dtype=ctx.tensor(op.outputs[0]).dtype)]


# Ops that exist only as converter plumbing: there is no IR op to fall back on.
FOLD_ONLY = {"DENSIFY", "PACK", "EXPAND_DIMS"}

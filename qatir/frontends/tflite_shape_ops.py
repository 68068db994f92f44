"""TFLite data-movement operators -> IR ops: reshape, squeeze, transpose, tile, concat,
pad, resize, depth/space, gather, batch matmul, shape and strided slice.

Registered in :data:`qatir.frontends.tflite_ops.CONVERTERS`; the parsers of their
constant operands (``reshape_target``, ``slice_params``, ...) are shared with the
folders of :mod:`qatir.frontends.tflite_fold`.
"""

from __future__ import annotations

from typing import Any

from qatir.frontends.slice_bounds import INT32_MAX, clamp_bounds
from qatir.frontends.tflite_ops import (
    Emit,
    act,
    axis_in,
    converter,
    int_list,
    need_inputs,
    positive,
    present,
)
from qatir.frontends.tflite_reader import TOp


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

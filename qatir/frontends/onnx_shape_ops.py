"""Converters for the shape and layout ONNX ops: Reshape, Flatten, Squeeze, Unsqueeze,
Transpose, Concat, Tile, Pad, Slice, Gather, Split, DepthToSpace/SpaceToDepth.

Axes are mapped through the value's permutation (see :mod:`qatir.frontends.onnx_ctx`)
so no TRANSPOSE is needed in the common cases.
"""

from __future__ import annotations

import numpy as np

from qatir.frontends.onnx_ctx import (
    MAX_RANK,
    Ctx,
    Dim,
    Val,
    channel_last,
    converter,
    ident,
    onnx_attrs,
    prod_known,
)
from qatir.frontends.onnx_fold import resolve_reshape, slice_params
from qatir.frontends.onnx_ops import aligned, layout_for
from qatir.frontends.slice_bounds import INT32_MAX, clamp_bounds


# ------------------------------------------------------------------ shapes
@converter("Reshape")
def _reshape(ctx: Ctx) -> None:
    x = ctx.need(0)
    target = ctx.need(1)
    if not target.is_const:
        raise ctx.unsupported("the target shape must be constant (or foldable)")
    a = onnx_attrs(ctx.node)
    shape = resolve_reshape(ctx, x.shape, np.asarray(target.const), int(a.get("allowzero", 0)))
    ctx.set_out(ctx.act(ctx.reshape(ctx.as_tensor(x, ident(x.rank)), _static_target(ctx, x, shape),
                                    name=ctx.out_name())))


def _static_target(ctx: Ctx, x: Val, shape: list) -> list[int]:
    """A RESHAPE new_shape (one -1 at most) for an ONNX target that may hold symbolic dims."""
    unknown = [i for i, d in enumerate(shape) if isinstance(d, Dim) or d == -1]
    if len(unknown) <= 1:
        return [-1 if i in unknown else int(d) for i, d in enumerate(shape)]
    in_shape = x.shape
    if (len(unknown) == 2 and shape[0] == Dim("batch") and in_shape and in_shape[0] is None
            and None not in in_shape[1:]):
        total = prod_known(in_shape[1:])
        rest = [int(d) for d in shape[1:] if not isinstance(d, Dim) and d != -1]
        known = prod_known(rest) or 1
        if total is not None and known and total % known == 0:
            return [-1] + [total // known if (isinstance(d, Dim) or d == -1) else int(d)
                           for d in shape[1:]]
    raise ctx.shape_error(f"Reshape target {[str(d) for d in shape]} has several unknown "
                          "dims; fix them with input_shapes=")


@converter("Flatten")
def _flatten(ctx: Ctx) -> None:
    x = ctx.need(0)
    axis = int(onnx_attrs(ctx.node).get("axis", 1))
    axis = ctx.axis(axis, x.rank, "Flatten axis", allow_end=True)
    shape = x.shape
    new = [prod_known(shape[:axis]), prod_known(shape[axis:])]
    t = ctx.reshape(ctx.as_tensor(x, ident(x.rank)), new, name=ctx.out_name())
    ctx.set_out(ctx.act(t))


def _axes_in(ctx: Ctx) -> list[int] | None:
    a = onnx_attrs(ctx.node)
    if "axes" in a:
        return [int(v) for v in a["axes"]]
    arr = ctx.const_in(1, "axes", optional=True)
    return None if arr is None else [int(v) for v in np.asarray(arr).reshape(-1)]


@converter("Squeeze")
def _squeeze(ctx: Ctx) -> None:
    x = ctx.need(0)
    axes = _axes_in(ctx)
    shape = x.shape
    if axes is None:
        if None in shape:
            raise ctx.shape_error("Squeeze without axes on a tensor with dynamic dims")
        axes = [i for i, d in enumerate(shape) if d == 1]
    axes = ctx.axes(axes, x.rank, "Squeeze axis")
    ir_dims = sorted(x.perm.index(a) for a in axes)
    t = ctx.emit("SQUEEZE", [x.tensor], {"squeeze_dims": ir_dims})
    remaining = [p for p in x.perm if p not in axes]
    order = sorted(remaining)
    ctx.set_out(ctx.act(t, tuple(order.index(p) for p in remaining)))


@converter("Unsqueeze")
def _unsqueeze(ctx: Ctx) -> None:
    x = ctx.need(0)
    axes = _axes_in(ctx) or []
    rank = x.rank + len(axes)
    if rank > MAX_RANK:
        raise ctx.shape_error(f"Unsqueeze to rank {rank} (more than {MAX_RANK})")
    new = ctx.axes(axes, rank, "Unsqueeze axis", unique=True)
    old_pos = [k for k in range(rank) if k not in new]  # output position of each input dim
    perm, ir_shape, it = [], [], iter(x.perm)
    for k in range(rank):
        if k in new:
            perm.append(k)
            ir_shape.append(1)
        else:
            src = next(it)
            perm.append(old_pos[src])
            ir_shape.append(x.tensor.shape[x.perm.index(src)])
    t = ctx.reshape(x.tensor, ir_shape, name=ctx.out_name())
    ctx.set_out(ctx.act(t, tuple(perm)))


@converter("Transpose")
def _transpose(ctx: Ctx) -> None:
    x = ctx.need(0)
    perm = [int(p) for p in onnx_attrs(ctx.node).get("perm", list(reversed(range(x.rank))))]
    if sorted(perm) != list(range(x.rank)):
        raise ctx.shape_error(f"perm {perm} does not fit rank {x.rank}")
    ctx.set_out(Val(tensor=x.tensor, perm=tuple(perm.index(p) for p in x.perm)))


@converter("Concat")
def _concat(ctx: Ctx) -> None:
    vals = [ctx.need(i) for i in range(len(ctx.node.input))]
    rank, perm = layout_for(vals)
    if any(v.rank != rank for v in vals):
        raise ctx.shape_error("Concat inputs differ in rank")
    axis = int(onnx_attrs(ctx.node)["axis"])
    axis = ctx.axis(axis, rank, "Concat axis")
    dtype = next(v.tensor.dtype for v in vals if not v.is_const)
    ins = [aligned(ctx, v, rank, perm, dtype) for v in vals if v.shape[axis] != 0]
    t = ctx.emit("CONCATENATION", ins, {"axis": perm.index(axis)})
    ctx.set_out(ctx.act(t, perm))


@converter("Tile")
def _tile(ctx: Ctx) -> None:
    x = ctx.need(0)
    reps = [int(v) for v in np.asarray(ctx.const_in(1, "repeats")).reshape(-1)]
    if len(reps) != x.rank or any(r < 1 for r in reps):
        raise ctx.shape_error(f"repeats {reps} must be {x.rank} positive counts")
    if all(r == 1 for r in reps):
        ctx.set_out(x)
        return
    t = ctx.emit("TILE", [x.tensor], {"multiples": [reps[p] for p in x.perm]})
    ctx.set_out(ctx.act(t, x.perm))


@converter("Expand")
def _expand(ctx: Ctx) -> None:
    """Expand of an activation: leading 1s by a RESHAPE, then a TILE of the size-1 dims
    (a constant input is folded instead). Dims that would shrink are refused."""
    x = ctx.need(0)
    shape = [int(v) for v in np.asarray(ctx.const_in(1, "shape")).reshape(-1)]
    rank = max(x.rank, len(shape))
    src = (1,) * (rank - x.rank) + tuple(x.shape)
    want = (1,) * (rank - len(shape)) + tuple(shape)
    out = []
    for d, w in zip(src, want):
        if d is not None and d != 1 and w not in (1, d):
            raise ctx.shape_error(f"cannot expand shape {list(x.shape)} to {shape}")
        out.append(d if w == 1 else w)
    t = ctx.as_tensor(x, tuple(range(x.rank)))
    if rank > x.rank:
        t = ctx.reshape(t, list(src), suffix="__rank")
    reps = [1 if d == o else int(o) for d, o in zip(src, out)]
    if any(r != 1 for r in reps):
        t = ctx.emit("TILE", [t], {"multiples": reps})
    ctx.set_out(ctx.act(t))


@converter("Pad")
def _pad(ctx: Ctx) -> None:
    x = ctx.need(0)
    a = onnx_attrs(ctx.node)
    mode = a.get("mode", "constant")
    if mode != "constant":
        raise ctx.unsupported(f"Pad mode {mode!r} (only 'constant')")
    if ctx.opset < 11:
        pads, value = list(a.get("pads", a.get("paddings", []))), float(a.get("value", 0.0))
    else:
        pads = [int(v) for v in np.asarray(ctx.const_in(1, "pads")).reshape(-1)]
        v = ctx.const_in(2, "constant_value", optional=True)
        value = 0.0 if v is None or np.size(v) == 0 else float(np.asarray(v).reshape(-1)[0])
    axes = list(range(x.rank))
    if ctx.opset >= 18 and ctx.inp(3) is not None:
        axes = [ctx.axis(int(v), x.rank, "Pad axis")
                for v in np.asarray(ctx.const_in(3, "axes")).reshape(-1)]
    if len(pads) != 2 * len(axes):
        raise ctx.shape_error(f"pads {pads} do not fit {len(axes)} axes")
    per_axis = {ax: (int(pads[i]), int(pads[i + len(axes)])) for i, ax in enumerate(axes)}
    if any(b < 0 or e < 0 for b, e in per_axis.values()):
        raise ctx.unsupported("negative pads")
    if all(b == 0 and e == 0 for b, e in per_axis.values()):
        ctx.set_out(x)
        return
    paddings = [list(per_axis.get(p, (0, 0))) for p in x.perm]
    t = ctx.emit("PAD", [x.tensor], {"paddings": paddings, "constant_value": value})
    ctx.set_out(ctx.act(t, x.perm))


@converter("Slice")
def _slice(ctx: Ctx) -> None:
    x = ctx.need(0)
    if ctx.opset < 10:
        ins = [None]
    else:
        ins = [None] + [ctx.const_in(i, "slice bound", optional=i > 2) for i in range(1, 5)]
    params = slice_params(ctx, x.shape, ins, onnx_attrs(ctx.node))
    ir_shape = x.tensor.shape
    begin, end, strides = [0] * x.rank, [], [1] * x.rank
    end = [d if d is not None else INT_END for d in ir_shape]
    for axis, s, e, st in params:
        i = x.perm.index(axis)
        s, e = clamp_bounds(s, e, st, ir_shape[i])  # INT64_MAX / INT64_MIN sentinels
        begin[i], end[i], strides[i] = s, e, _clamp32(st)
    t = ctx.emit("STRIDED_SLICE", [x.tensor], {"begin": begin, "end": end, "strides": strides})
    ctx.set_out(ctx.act(t, x.perm))


INT_END = INT32_MAX


def _clamp32(v: int) -> int:
    return max(-INT_END, min(INT_END, v))


def _gather_is_reshape(x, idx: np.ndarray, axis: int) -> bool:
    """Indices 0, 1, ..., n-1 in order over the whole gathered axis."""
    n = x.shape[axis]
    return n is not None and idx.size == n and bool(np.all(idx.reshape(-1) == np.arange(n)))


@converter("Gather")
def _gather(ctx: Ctx) -> None:
    x = ctx.need(0)
    idx = np.asarray(ctx.const_in(1, "indices"))
    axis = int(onnx_attrs(ctx.node).get("axis", 0))
    axis = ctx.axis(axis, x.rank, "Gather axis")
    if idx.ndim > 1 and _gather_is_reshape(x, idx, axis):
        # torch's as_strided on a flat vector: every element once, in order (a reshape)
        shape = [*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]]
        flat = ctx.as_tensor(x, tuple(range(x.rank)))
        ctx.set_out(ctx.act(ctx.reshape(flat, shape, name=ctx.out_name())))
        return
    if idx.ndim > 1:
        raise ctx.unsupported("Gather with multi-dimensional indices on an activation")
    n = x.shape[axis]
    if n is not None:
        if np.any(idx < -n) or np.any(idx >= n):
            raise ctx.shape_error(f"Gather index out of range for dim {n}")
        idx = np.where(idx < 0, idx + n, idx)
    elif np.any(idx < 0):
        raise ctx.shape_error("negative Gather index on a dynamic dimension")
    i = x.perm.index(axis)
    t = ctx.emit("GATHER", [x.tensor, ctx.const_tensor(idx.astype(np.int32), ctx.out_name()
                                                        + "__indices")], {"axis": i})
    if idx.ndim == 1:
        ctx.set_out(ctx.act(t, x.perm))
        return
    remaining = [p for p in x.perm if p != axis]
    order = sorted(remaining)
    ctx.set_out(ctx.act(t, tuple(order.index(p) for p in remaining)))


@converter("Split")
def _split(ctx: Ctx) -> None:
    x = ctx.need(0)
    a = onnx_attrs(ctx.node)
    axis = int(a.get("axis", 0))
    axis = ctx.axis(axis, x.rank, "Split axis")
    n_out = len(ctx.node.output)
    size = x.shape[axis]
    if "split" in a:
        parts = [int(v) for v in a["split"]]
    elif ctx.opset >= 13 and ctx.inp(1) is not None:
        parts = [int(v) for v in np.asarray(ctx.const_in(1, "split")).reshape(-1)]
    else:
        if size is None:
            raise ctx.shape_error("Split of a dynamic dimension")
        n = int(a.get("num_outputs", n_out))
        chunk = -(-size // max(n, 1))
        parts = [min(chunk, size - i * chunk) for i in range(n)]
    if len(parts) != n_out or any(p < 0 for p in parts) or (size is not None
                                                             and sum(parts) != size):
        raise ctx.shape_error(f"Split sizes {parts} do not fit dim {size} and {n_out} outputs")
    i = x.perm.index(axis)
    start = 0
    for k, p in enumerate(parts):
        begin = [0] * x.rank
        end = [INT_END] * x.rank
        begin[i], end[i] = start, start + p
        t = ctx.emit("STRIDED_SLICE", [x.tensor], {"begin": begin, "end": end,
                                                   "strides": [1] * x.rank},
                     name=ctx.out_name(k), suffix=f"__{k}")
        ctx.set_out(ctx.act(t, x.perm), k)
        start += p


@converter("DepthToSpace", "SpaceToDepth")
def _depth_space(ctx: Ctx) -> None:
    x = ctx.need(0)
    a = onnx_attrs(ctx.node)
    if x.rank != 4:
        raise ctx.shape_error(f"{ctx.node.op_type} needs a 4-D input")
    if a.get("mode", "DCR") != "DCR":
        raise ctx.unsupported("DepthToSpace mode CRD")
    block = int(a.get("blocksize", 0))
    if block < 1:
        raise ctx.shape_error(f"bad blocksize {block}")
    op = "DEPTH_TO_SPACE" if ctx.node.op_type == "DepthToSpace" else "SPACE_TO_DEPTH"
    t = ctx.emit(op, [ctx.as_tensor(x, channel_last(4))], {"block_size": block})
    ctx.set_out(ctx.act(t, channel_last(4)))

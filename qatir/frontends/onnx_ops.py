"""Converters for elementwise, activation, softmax and reduction ONNX ops.

The shape and layout ops (Reshape, Flatten, Squeeze, Transpose, Concat, Pad, Slice,
Gather, Split, DepthToSpace, ...) are in :mod:`qatir.frontends.onnx_shape_ops`.

Each converter reads ``ctx.node`` and records its outputs as :class:`Val` s.
Elementwise ops keep their input's layout; layout-sensitive ops map ONNX axes
through the value's permutation so no TRANSPOSE is needed in the common cases.
"""

from __future__ import annotations

import numpy as np

from qatir.frontends.onnx_ctx import (
    Ctx,
    Val,
    broadcast_const,
    channel_last,
    converter,
    ident,
    onnx_attrs,
    prod_known,
)

_UNARY = {"Relu": "RELU", "Sigmoid": "LOGISTIC", "Tanh": "TANH", "HardSwish": "HARD_SWISH",
          "Exp": "EXP", "Abs": "ABS", "Neg": "NEG", "Sqrt": "SQRT"}
_BINARY = {"Add": "ADD", "Sub": "SUB", "Mul": "MUL", "Div": "DIV", "Max": "MAXIMUM",
           "Min": "MINIMUM", "Sum": "ADD"}


def _unary_out(ctx: Ctx, op: str, attrs: dict | None = None) -> None:
    x = ctx.need(0)
    t = ctx.emit(op, [ctx.as_tensor(x, x.perm if not x.is_const else None)], attrs)
    ctx.set_out(ctx.act(t, x.perm if not x.is_const else None))


@converter(*_UNARY)
def _unary(ctx: Ctx) -> None:
    _unary_out(ctx, _UNARY[ctx.node.op_type])


@converter("LeakyRelu")
def _leaky_relu(ctx: Ctx) -> None:
    _unary_out(ctx, "LEAKY_RELU", {"alpha": float(onnx_attrs(ctx.node).get("alpha", 0.01))})


@converter("Gelu")
def _gelu(ctx: Ctx) -> None:
    # opset 20's Gelu, and the exporters' erf/tanh spellings (qatir/frontends/onnx_gelu.py)
    approximate = str(onnx_attrs(ctx.node).get("approximate", "none"))
    if approximate not in ("none", "tanh"):
        raise ctx.unsupported(f"approximate={approximate!r} (only 'none' and 'tanh')")
    _unary_out(ctx, "GELU", {"approximate": approximate == "tanh"})


@converter("HardSigmoid")
def _hard_sigmoid(ctx: Ctx) -> None:
    a = onnx_attrs(ctx.node)
    _unary_out(ctx, "HARD_SIGMOID", {"alpha": float(a.get("alpha", 0.2)),
                                     "beta": float(a.get("beta", 0.5))})


@converter("Clip")
def _clip(ctx: Ctx) -> None:
    if ctx.opset < 11:
        a = onnx_attrs(ctx.node)
        lo, hi = a.get("min"), a.get("max")
    else:
        lo_arr = ctx.const_in(1, "min", optional=True)
        hi_arr = ctx.const_in(2, "max", optional=True)
        lo = None if lo_arr is None else float(np.asarray(lo_arr).reshape(-1)[0])
        hi = None if hi_arr is None else float(np.asarray(hi_arr).reshape(-1)[0])
    big = float(np.finfo(np.float32).max)
    lo = None if lo is None or lo <= -big else float(lo)
    hi = None if hi is None or hi >= big else float(hi)
    _unary_out(ctx, "CLIP", {"min": lo, "max": hi})


@converter("Identity")
def _identity(ctx: Ctx) -> None:
    ctx.set_out(ctx.need(0))


@converter("Cast")
def _cast(ctx: Ctx) -> None:
    from onnx import helper

    x = ctx.need(0)
    to = np.dtype(helper.tensor_dtype_to_np_dtype(int(onnx_attrs(ctx.node)["to"])))
    if x.tensor.dtype == to:
        ctx.set_out(x)
        return
    t = ctx.emit("CAST", [x.tensor], {"dtype": to.name})
    ctx.set_out(ctx.act(t, x.perm))


# ------------------------------------------------------------------ binary
def layout_for(vals: list[Val]) -> tuple[int, tuple[int, ...]]:
    rank = max(v.rank for v in vals)
    for v in vals:
        if not v.is_const and v.rank == rank:
            return rank, v.perm
    return rank, ident(rank)


def aligned(ctx: Ctx, v: Val, rank: int, perm: tuple[int, ...], dtype) -> object:
    """``v`` broadcast-aligned to ``rank`` dims and laid out as ``perm`` (an IR tensor)."""
    if v.is_const:
        arr = broadcast_const(v.const, rank, perm).astype(dtype)
        return ctx.const_tensor(arr, ctx.out_name() + "__const")
    if v.rank == rank:
        return ctx.as_tensor(v, perm)
    lifted = ctx.reshape(ctx.as_tensor(v, ident(v.rank)), [1] * (rank - v.rank) + list(v.shape),
                         suffix="__bcast")
    return ctx.as_tensor(ctx.act(lifted), perm)


@converter(*_BINARY)
def _binary(ctx: Ctx) -> None:
    vals = [ctx.need(i) for i in range(len(ctx.node.input))]
    rank, perm = layout_for(vals)
    dtype = next(v.tensor.dtype for v in vals if not v.is_const)
    op = _BINARY[ctx.node.op_type]
    acc = aligned(ctx, vals[0], rank, perm, dtype)
    if len(vals) == 1:
        acc = ctx.emit("IDENTITY", [acc])
    for k, v in enumerate(vals[1:], start=1):
        last = k == len(vals) - 1
        acc = ctx.emit(op, [acc, aligned(ctx, v, rank, perm, dtype)],
                       suffix="" if last else f"__{k}")
    ctx.set_out(ctx.act(acc, perm))


@converter("PRelu")
def _prelu(ctx: Ctx) -> None:
    x, slope = ctx.need(0), ctx.need(1)
    xt = ctx.as_tensor(x, x.perm)
    st = aligned(ctx, slope, x.rank, x.perm, xt.dtype)
    ctx.set_out(ctx.act(ctx.emit("PRELU", [xt, st]), x.perm))


# ----------------------------------------------------------------- softmax
@converter("Softmax", "LogSoftmax")
def _softmax(ctx: Ctx) -> None:
    """SOFTMAX / LOG_SOFTMAX over the last IR axis: another axis is moved there (a layout
    permutation, so a TRANSPOSE only where the next op needs it); opset < 13 flattens."""
    op = "SOFTMAX" if ctx.node.op_type == "Softmax" else "LOG_SOFTMAX"
    x = ctx.need(0)
    rank = x.rank
    axis = int(onnx_attrs(ctx.node).get("axis", 1 if ctx.opset < 13 else -1))
    axis = ctx.axis(axis, rank, f"{ctx.node.op_type} axis")
    if ctx.opset < 13 and axis != rank - 1:
        shape = x.shape
        flat = ctx.reshape(ctx.as_tensor(x, ident(rank)),
                           [prod_known(shape[:axis]), prod_known(shape[axis:])], suffix="__2d")
        y = ctx.emit(op, [flat], suffix="__sm")
        ctx.set_out(ctx.act(ctx.reshape(y, list(shape), name=ctx.out_name())))
        return
    if x.perm[-1] == axis:
        ctx.set_out(ctx.act(ctx.emit(op, [x.tensor]), x.perm))
        return
    perm = tuple(p for p in x.perm if p != axis) + (axis,)
    ctx.set_out(ctx.act(ctx.emit(op, [ctx.as_tensor(x, perm)]), perm))


# -------------------------------------------------------------- reductions
def _reduce_axes(ctx: Ctx, rank: int) -> list[int]:
    a = onnx_attrs(ctx.node)
    if "axes" in a:
        axes = list(a["axes"])
    else:
        arr = ctx.const_in(1, "axes", optional=True)
        axes = [] if arr is None else [int(v) for v in np.asarray(arr).reshape(-1)]
    if not axes:
        return [] if a.get("noop_with_empty_axes", 0) else list(range(rank))
    return ctx.axes(axes, rank, "reduction axis")


def reduce_to(ctx: Ctx, x: Val, op: str, axes: list[int], keep: bool) -> None:
    ir_axes = sorted(x.perm.index(a) for a in axes)
    t = ctx.emit(op, [x.tensor], {"axis": ir_axes, "keep_dims": keep})
    if keep:
        ctx.set_out(ctx.act(t, x.perm))
        return
    remaining = [p for p in x.perm if p not in axes]
    order = sorted(remaining)
    ctx.set_out(ctx.act(t, tuple(order.index(p) for p in remaining)))


@converter("ReduceMean", "ReduceMax", "ReduceSum")
def _reduce(ctx: Ctx) -> None:
    x = ctx.need(0)
    axes = _reduce_axes(ctx, x.rank)
    if not axes:
        ctx.set_out(x)
        return
    op = {"ReduceMean": "MEAN", "ReduceMax": "REDUCE_MAX", "ReduceSum": "SUM"}[ctx.node.op_type]
    reduce_to(ctx, x, op, axes, bool(onnx_attrs(ctx.node).get("keepdims", 1)))


@converter("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(ctx: Ctx) -> None:
    x = ctx.need(0)
    if x.rank < 3:
        raise ctx.shape_error(f"global pooling needs rank >= 3, got {x.rank}")
    x = ctx.act(ctx.as_tensor(x, channel_last(x.rank)), channel_last(x.rank))
    op = "MEAN" if ctx.node.op_type == "GlobalAveragePool" else "REDUCE_MAX"
    reduce_to(ctx, x, op, list(range(2, x.rank)), True)

"""Constant folding at import: ONNX nodes whose inputs are all constants become constants.

This is what turns exporter shape plumbing (``Shape -> Gather -> Unsqueeze ->
Concat -> Reshape``, ``Cast``, ``Slice``, arithmetic on shapes) into static
attributes. Shape values may hold symbolic :class:`Dim` entries (a dynamic
batch); only the ops in ``SYMBOLIC_OK`` accept those. Every fold that could
allocate checks the output size first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from qatir.frontends.onnx_ctx import (
    Ctx,
    Dim,
    check_size,
    has_dims,
    onnx_attrs,
)
from qatir.frontends.onnx_misc import dropout_mask

Fold = Callable[[Ctx, list[Any], dict[str, Any]], list[np.ndarray]]
FOLDERS: dict[str, Fold] = {}
SYMBOLIC_OK = {"Shape", "Identity", "Cast", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice",
               "Reshape", "Add", "Sub", "Mul", "Div", "Neg", "ReduceProd", "Flatten"}


def folder(*ops: str) -> Callable[[Fold], Fold]:
    def deco(fn: Fold) -> Fold:
        for op in ops:
            FOLDERS[op] = fn
        return fn
    return deco


def _np_dtype(onnx_type: int) -> np.dtype:
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(onnx_type))


def _axes(ctx: Ctx, ins: list[Any], attrs: dict[str, Any], idx: int) -> list[int] | None:
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    if len(ins) > idx and ins[idx] is not None:
        return [int(a) for a in np.asarray(ins[idx]).reshape(-1)]
    return None


def _norm_axis(a: int, rank: int, ctx: Ctx) -> int:
    return ctx.axis(a, max(rank, 1))


@folder("Identity")
def _identity(ctx, ins, attrs):
    return [ins[0]]


@folder("Dropout")
def _dropout(ctx, ins, attrs):
    mask = dropout_mask(ctx, np.shape(ins[0]))
    return [ins[0]] if mask is None else [ins[0], mask]


@folder("Cast")
def _cast(ctx, ins, attrs):
    x = ins[0]
    to = _np_dtype(int(attrs["to"]))
    if x.dtype == object:
        if to.kind in "iu":
            return [x]
        raise ctx.shape_error("cannot cast a dynamic shape value to a non-integer type; "
                              "fix the dims with input_shapes=")
    return [x.astype(to)]


@folder("Shape")
def _shape(ctx, ins, attrs):
    return [ins[0]]  # the driver passes the (symbolic) shape itself


@folder("Size")
def _size(ctx, ins, attrs):
    return [np.asarray(int(np.prod(ins[0])), dtype=np.int64)]


@folder("Gather")
def _gather(ctx, ins, attrs):
    x, idx = ins[0], np.asarray(ins[1])
    if idx.dtype.kind not in "iu":
        raise ctx.shape_error("Gather indices must be integers")
    axis = _norm_axis(int(attrs.get("axis", 0)), x.ndim, ctx)
    n = x.shape[axis]
    if np.any(idx < -n) or np.any(idx >= n):
        raise ctx.shape_error(f"Gather index out of range for dim {n}")
    check_size(x.shape[:axis] + idx.shape + x.shape[axis + 1:], ctx.where())
    return [np.take(x, np.where(idx < 0, idx + n, idx), axis=axis)]


@folder("Unsqueeze")
def _unsqueeze(ctx, ins, attrs):
    x = ins[0]
    axes = _axes(ctx, ins, attrs, 1) or []
    rank = x.ndim + len(axes)
    check_size([1] * rank, ctx.where())
    axes = ctx.axes(axes, rank, "Unsqueeze axis", unique=True)
    shape = list(x.shape)
    for a in axes:
        shape.insert(a, 1)
    return [x.reshape(shape)]


@folder("Squeeze")
def _squeeze(ctx, ins, attrs):
    x = ins[0]
    axes = _axes(ctx, ins, attrs, 1)
    if axes is None:
        return [x.reshape([d for d in x.shape if d != 1])]
    axes = {_norm_axis(a, x.ndim, ctx) for a in axes}
    if any(x.shape[a] != 1 for a in axes):
        raise ctx.shape_error(f"cannot squeeze axes {sorted(axes)} of shape {list(x.shape)}")
    return [x.reshape([d for i, d in enumerate(x.shape) if i not in axes])]


@folder("Concat")
def _concat(ctx, ins, attrs):
    xs = [x for x in ins if x is not None]
    if not xs:
        raise ctx.shape_error("Concat has no inputs")
    axis = _norm_axis(int(attrs["axis"]), xs[0].ndim, ctx)
    if any(x.dtype == object for x in xs):
        xs = [x.astype(object) for x in xs]
    return [np.concatenate(xs, axis=axis)]


def slice_params(ctx: Ctx, shape: tuple, ins: list[Any], attrs: dict[str, Any]):
    """Per-axis (axis, start, end, step) of an ONNX Slice (attribute or input form)."""
    if ctx.opset < 10:
        starts, ends = attrs["starts"], attrs["ends"]
        axes = attrs.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = [int(v) for v in np.asarray(ins[1]).reshape(-1)]
        ends = [int(v) for v in np.asarray(ins[2]).reshape(-1)]
        axes = (list(range(len(starts))) if len(ins) < 4 or ins[3] is None
                else [int(v) for v in np.asarray(ins[3]).reshape(-1)])
        steps = ([1] * len(starts) if len(ins) < 5 or ins[4] is None
                 else [int(v) for v in np.asarray(ins[4]).reshape(-1)])
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ctx.shape_error("Slice starts/ends/axes/steps differ in length")
    rank = len(shape)
    out = []
    for a, s, e, st in zip(axes, starts, ends, steps):
        if st == 0:
            raise ctx.shape_error("Slice step 0")
        out.append((_norm_axis(int(a), rank, ctx), int(s), int(e), int(st)))
    if len({a for a, *_ in out}) != len(out):
        raise ctx.shape_error("duplicate Slice axes")
    return out


@folder("Slice")
def _slice(ctx, ins, attrs):
    x = ins[0]
    index = [slice(None)] * x.ndim
    for a, s, e, st in slice_params(ctx, x.shape, ins, attrs):
        index[a] = slice(s, e, st)  # ONNX clamping equals Python slice clamping
    return [x[tuple(index)]]


def resolve_reshape(ctx: Ctx, in_shape: tuple, target: np.ndarray, allowzero: int) -> list:
    """The ONNX Reshape target with 0 copied from the input; entries may stay symbolic."""
    out: list[Any] = []
    for i, d in enumerate(target.reshape(-1).tolist()):
        if not isinstance(d, Dim) and d == 0 and not allowzero:
            if i >= len(in_shape):
                raise ctx.shape_error(f"Reshape copies dim {i} of a rank-{len(in_shape)} input")
            d = in_shape[i]
            if d is None:
                d = Dim("batch") if i == 0 else Dim((ctx.node_name, i))
        elif not isinstance(d, Dim) and d < -1:
            raise ctx.shape_error(f"Reshape target {target.tolist()} has a negative size")
        out.append(d)
    return out


@folder("Reshape")
def _reshape(ctx, ins, attrs):
    x = ins[0]
    shape = resolve_reshape(ctx, x.shape, np.asarray(ins[1]), int(attrs.get("allowzero", 0)))
    if any(isinstance(d, Dim) for d in shape):
        raise ctx.shape_error("Reshape of a constant to a dynamic shape")
    if shape.count(-1) > 1:
        raise ctx.shape_error(f"Reshape target {shape} has more than one -1")
    return [x.reshape(shape)]


@folder("Flatten")
def _flatten(ctx, ins, attrs):
    x = ins[0]
    axis = int(attrs.get("axis", 1))
    axis = ctx.axis(axis, x.ndim, "Flatten axis", allow_end=True)
    return [x.reshape(int(np.prod(x.shape[:axis])), -1)]


@folder("Transpose")
def _transpose(ctx, ins, attrs):
    x = ins[0]
    perm = attrs.get("perm", list(reversed(range(x.ndim))))
    if sorted(perm) != list(range(x.ndim)):
        raise ctx.shape_error(f"perm {perm} does not fit rank {x.ndim}")
    return [np.transpose(x, perm)]


def _int_div(a, b):
    if isinstance(a, Dim) or isinstance(b, Dim):
        return a // b
    if b == 0:
        raise ZeroDivisionError("integer division by zero")
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _arith(fn):
    def fold(ctx, ins, attrs):
        a, b = np.asarray(ins[0]), np.asarray(ins[1])
        check_size(np.broadcast_shapes(a.shape, b.shape), ctx.where())
        if a.dtype == object or b.dtype == object:
            return [np.frompyfunc(fn, 2, 1)(a.astype(object), b.astype(object))]
        with np.errstate(all="ignore"):
            return [np.asarray(fn(a, b)).astype(a.dtype)]
    return fold


folder("Add")(_arith(lambda a, b: a + b))
folder("Sub")(_arith(lambda a, b: a - b))
folder("Mul")(_arith(lambda a, b: a * b))
@folder("Div")
def _div(ctx, ins, attrs):
    a, b = np.asarray(ins[0]), np.asarray(ins[1])
    check_size(np.broadcast_shapes(a.shape, b.shape), ctx.where())
    if a.dtype == object or b.dtype == object or a.dtype.kind in "iu":
        out = np.frompyfunc(_int_div, 2, 1)(a.astype(object), b.astype(object))
        return [out if a.dtype == object or b.dtype == object else out.astype(a.dtype)]
    with np.errstate(all="ignore"):
        return [(a / b).astype(a.dtype)]


def _unary(fn):
    def fold(ctx, ins, attrs):
        with np.errstate(all="ignore"):
            return [np.asarray(fn(ins[0])).astype(ins[0].dtype)]
    return fold


# ONNX Round rounds half to even, as np.round does (not numerics.round_half_away).
for _op, _fn in {"Floor": np.floor, "Ceil": np.ceil, "Sqrt": np.sqrt,
                 "Abs": np.abs, "Relu": lambda x: np.maximum(x, 0), "Exp": np.exp,
                 "Reciprocal": lambda x: 1 / x, "Round": np.round}.items():
    folder(_op)(_unary(_fn))


@folder("Neg")
def _neg(ctx, ins, attrs):
    x = ins[0]
    if x.dtype == object:
        return [np.frompyfunc(lambda v: -v, 1, 1)(x)]
    return [np.negative(x)]


def _compare(fn):
    def fold(ctx, ins, attrs):
        check_size(np.broadcast_shapes(np.shape(ins[0]), np.shape(ins[1])), ctx.where())
        return [np.asarray(fn(ins[0], ins[1]))]
    return fold


folder("Equal")(_compare(np.equal))
folder("Less")(_compare(np.less))
folder("Greater")(_compare(np.greater))
folder("Not")(lambda ctx, ins, attrs: [np.logical_not(ins[0])])


@folder("Where")
def _where(ctx, ins, attrs):
    shape = np.broadcast_shapes(*(np.shape(x) for x in ins[:3]))
    check_size(shape, ctx.where())
    return [np.where(ins[0], ins[1], ins[2])]


@folder("Mod")
def _mod(ctx, ins, attrs):
    """fmod=0: the remainder takes the divisor's sign (integers); fmod=1: the dividend's."""
    a, b = ins[0], ins[1]
    check_size(np.broadcast_shapes(np.shape(a), np.shape(b)), ctx.where())
    if np.any(np.asarray(b) == 0) and np.asarray(b).dtype.kind in "iu":
        raise ctx.shape_error("Mod by zero")
    fmod = int(attrs.get("fmod", 0))
    if not fmod and np.asarray(a).dtype.kind == "f":
        raise ctx.unsupported("Mod of floats needs fmod=1 (ONNX)")
    with np.errstate(all="ignore"):
        return [(np.fmod(a, b) if fmod else np.mod(a, b)).astype(np.asarray(a).dtype)]


@folder("ScatterND")
def _scatter_nd(ctx, ins, attrs):
    """data[indices[..., :]] = updates (reduction none/add/mul/max/min), on a copy."""
    data, idx, upd = np.array(ins[0]), np.asarray(ins[1]).astype(np.int64), np.asarray(ins[2])
    q = idx.shape[-1] if idx.ndim else 0
    if idx.ndim < 1 or q > data.ndim or upd.shape != idx.shape[:-1] + data.shape[q:]:
        raise ctx.shape_error(f"ScatterND shapes: data {list(data.shape)}, indices "
                              f"{list(idx.shape)}, updates {list(upd.shape)}")
    dims = np.asarray(data.shape[:q], np.int64)
    flat = idx.reshape(-1, q)
    if np.any((flat < -dims) | (flat >= dims)):
        raise ctx.shape_error("ScatterND index out of range")
    flat = np.where(flat < 0, flat + dims, flat)
    red = attrs.get("reduction", b"none")
    red = red.decode() if isinstance(red, bytes) else str(red)
    fns = {"none": None, "add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}
    if red not in fns:
        raise ctx.unsupported(f"ScatterND reduction {red!r}")
    updates = upd.reshape((-1,) + data.shape[q:])
    for row, u in zip(flat, updates):
        key = tuple(int(v) for v in row)
        data[key] = u if fns[red] is None else fns[red](data[key], u)
    return [data]


@folder("Min", "Max", "Sum")
def _minmax(ctx, ins, attrs):
    xs = [x for x in ins if x is not None]
    shape = np.broadcast_shapes(*(x.shape for x in xs))
    check_size(shape, ctx.where())
    fn = {"Min": np.minimum, "Max": np.maximum, "Sum": np.add}[ctx.node.op_type]
    out = xs[0]
    for x in xs[1:]:
        out = fn(out, x)
    return [out]


@folder("Pow")
def _pow(ctx, ins, attrs):
    check_size(np.broadcast_shapes(np.shape(ins[0]), np.shape(ins[1])), ctx.where())
    with np.errstate(all="ignore"):
        return [np.power(ins[0], ins[1]).astype(ins[0].dtype)]


@folder("ReduceProd")
def _reduce_prod(ctx, ins, attrs):
    x = ins[0]
    axes = _axes(ctx, ins, attrs, 1)
    keep = bool(attrs.get("keepdims", 1))
    axes_t = None if axes is None else tuple(_norm_axis(a, x.ndim, ctx) for a in axes)
    if x.dtype == object:
        return [np.multiply.reduce(x, axis=axes_t, keepdims=keep)]
    return [np.prod(x, axis=axes_t, keepdims=keep).astype(x.dtype)]


@folder("Range")
def _range(ctx, ins, attrs):
    start, limit, delta = (np.asarray(v).reshape(()) for v in ins[:3])
    if delta == 0:
        raise ctx.shape_error("Range delta 0")
    n = max(int(np.ceil((float(limit) - float(start)) / float(delta))), 0)
    check_size([n], ctx.where())
    return [(start + np.arange(n) * delta).astype(start.dtype)]


@folder("Expand")
def _expand(ctx, ins, attrs):
    x, shape = ins[0], [int(v) for v in np.asarray(ins[1]).reshape(-1)]
    out = np.broadcast_shapes(x.shape, tuple(shape))
    check_size(out, ctx.where())
    return [np.broadcast_to(x, out).copy()]


@folder("Tile")
def _tile(ctx, ins, attrs):
    x, reps = ins[0], [int(v) for v in np.asarray(ins[1]).reshape(-1)]
    if len(reps) != x.ndim:
        raise ctx.shape_error("Tile repeats do not match the rank")
    check_size([d * r for d, r in zip(x.shape, reps)], ctx.where())
    return [np.tile(x, reps)]


@folder("ConstantOfShape")
def _constant_of_shape(ctx, ins, attrs):
    shape = [int(v) for v in np.asarray(ins[0]).reshape(-1)]
    check_size(shape, ctx.where())
    value = attrs.get("value")
    fill = np.zeros((1,), np.float32) if value is None else _tensor_array(value, ctx)
    if fill.size != 1:
        raise ctx.shape_error("ConstantOfShape value must hold one element")
    return [np.full(shape, fill.reshape(-1)[0], dtype=fill.dtype)]


def _tensor_array(proto: Any, ctx: Ctx) -> np.ndarray:
    from qatir.frontends.onnx_io import tensor_to_array

    return tensor_to_array(proto, f"{ctx.where()} attribute")


@folder("Constant")
def _constant(ctx, ins, attrs):
    if "value" in attrs:
        return [_tensor_array(attrs["value"], ctx)]
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return [np.asarray(attrs[key], dtype=dtype)]
    raise ctx.unsupported("only value/value_float(s)/value_int(s) Constant attributes")


def fold_node(ctx: Ctx, ins: list[Any]) -> bool:
    """Fold the current node if it has a folder and all its inputs are constant arrays."""
    fn = FOLDERS.get(ctx.node.op_type)
    if fn is None:
        return False
    symbolic = any(x is not None and has_dims(x) for x in ins)
    if symbolic and ctx.node.op_type not in SYMBOLIC_OK:
        raise ctx.shape_error("shape arithmetic on a dynamic dimension is not foldable; "
                              "fix the dims with input_shapes=")
    outs = fn(ctx, ins, onnx_attrs(ctx.node))
    for i, arr in enumerate(outs):
        arr = np.asarray(arr)
        check_size(arr.shape, ctx.where())
        ctx.set_const(arr, i)
    return True

"""Constant folding of TFLite operators: ``FOLDERS[name](ctx, op, values) -> [array]``.

The converter's plumbing (DEQUANTIZE of fp16/int8 weights, DENSIFY, SHAPE/PACK/
STRIDED_SLICE on shape vectors, ...) is computed at import when its inputs are
constant; registered in :data:`qatir.frontends.tflite_ops.FOLDERS`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qatir.frontends.tflite_ops import act, axis_in, folder, int_list, need_inputs
from qatir.frontends.tflite_reader import TOp
from qatir.frontends.tflite_shape_ops import (
    _gather,
    concat_axis,
    perm_of,
    reshape_target,
    slice_params,
    squeeze_dims,
)


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


@folder("REDUCE_PROD")
def _fold_reduce_prod(ctx: Any, op: TOp, vals: list[Any]) -> list[np.ndarray]:
    # The converter's shape plumbing (Keras ConvNeXt: the product of a SHAPE's dims)
    need_inputs(ctx, op, 2, 2)
    o = ctx.opts(op, "ReducerOptions")
    axes = tuple(sorted({axis_in(ctx, op, a, vals[0].ndim) for a in int_list(ctx, op, 1, "axis")}))
    keep = bool(o.KeepDims()) if o else False
    out = np.prod(vals[0], axis=axes, keepdims=keep)
    if op.inputs[0] in ctx.symbolic:
        # A dynamic dim is -1 in a symbolic shape vector; a product holding one of them is
        # unknown too (-1, still symbolic: it may only become "the rest" of a RESHAPE).
        dynamic = np.sum(vals[0] == -1, axis=axes, keepdims=keep)
        if np.any(dynamic > 1):
            raise ctx.unsupported(op, "multiplies two dynamic dimensions")
        out = np.where(dynamic == 1, -1, out)
    return [np.asarray(out, dtype=ctx.tensor(op.outputs[0]).dtype)]


@folder("CAST")
def _fold_cast(ctx: Any, op: TOp, vals: list[Any]) -> list[np.ndarray]:
    return [vals[0].astype(ctx.tensor(op.outputs[0]).dtype)]


FOLD_ANY_INPUT = {"SHAPE"}  # folded whatever the input (dynamic dims become -1)
# Folders through which a symbolic shape vector (from SHAPE of a dynamic tensor) may flow.
SYMBOLIC_OK = {"SHAPE", "STRIDED_SLICE", "PACK", "CONCATENATION", "GATHER", "RESHAPE", "SQUEEZE",
               "EXPAND_DIMS", "CAST", "REDUCE_PROD"}


@folder("SHAPE")
def _fold_shape(ctx: Any, op: TOp, vals: list[Any]) -> list[np.ndarray]:
    shape = ctx.shape(op.inputs[0])
    # A dynamic dim folds to -1; the importer marks the result symbolic, so that it may
    # only reach a RESHAPE target (where -1 means "the rest") through data movement.
    return [np.array([-1 if d is None else d for d in shape],
                     dtype=ctx.tensor(op.outputs[0]).dtype)]


# Ops that exist only as converter plumbing: there is no IR op to fall back on.
FOLD_ONLY = {"DENSIFY", "PACK", "EXPAND_DIMS", "REDUCE_PROD"}

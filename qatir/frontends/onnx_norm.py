"""ONNX LayerNormalization (opset 17) and InstanceNormalization -> the int8-runnable chain
of :mod:`qatir.frontends.norm_chain` (MEAN, SQUARED_DIFFERENCE, MEAN, ADD, RSQRT, SUB, MUL,
MUL, ADD), over the IR axes that hold the normalized ONNX axes (no TRANSPOSE: the
reductions follow the value's layout permutation)."""

from __future__ import annotations

import numpy as np

from qatir.frontends.norm_chain import normalize
from qatir.frontends.onnx_ctx import Ctx, Val, broadcast_const, converter, onnx_attrs


def _param(ctx: Ctx, i: int, what: str, shape: tuple, x: Val) -> np.ndarray | None:
    """Input ``i`` (γ or β) broadcast to ``shape`` (ONNX layout), then to ``x``'s IR layout."""
    arr = ctx.const_in(i, what, optional=True)
    if arr is None:
        return None
    arr = np.asarray(arr, np.float32)
    try:
        full = np.broadcast_to(arr.reshape((1,) * (len(shape) - arr.ndim) + arr.shape)
                               if arr.ndim <= len(shape) else arr, shape)
    except ValueError:
        raise ctx.shape_error(f"{what} of shape {list(arr.shape)} does not broadcast to the "
                              f"normalized shape {list(shape)}") from None
    return broadcast_const(full, x.rank, x.perm)


def _chain(ctx: Ctx, x: Val, onnx_axes: list[int], eps: float, gamma, beta) -> None:
    def emit(op: str, ins: list, attrs: dict, suffix: str):
        return ctx.emit(op, ins, attrs, suffix=suffix)

    def const(arr: np.ndarray, suffix: str):
        return ctx.const_tensor(arr, ctx.out_name() + suffix)

    ir_axes = [x.perm.index(a) for a in onnx_axes]
    y = normalize(emit, const, x.tensor, ir_axes, eps, gamma, beta)
    ctx.set_out(ctx.act(y, x.perm))


@converter("LayerNormalization")
def _layer_norm(ctx: Ctx) -> None:
    # y = (x - mean) / sqrt(var + eps) * scale + bias over axes [axis, rank)
    x = ctx.need(0)
    if x.is_const:
        raise ctx.unsupported("a constant input")
    if any(o for o in ctx.node.output[1:]):
        raise ctx.unsupported("the Mean / InvStdDev outputs (training only)")
    a = onnx_attrs(ctx.node)
    axis = ctx.axis(int(a.get("axis", -1)), x.rank, "LayerNormalization axis")
    axes = list(range(axis, x.rank))
    # the normalized shape, with 1 for the outer (broadcast) dims
    norm_shape = tuple(1 if i < axis else (x.shape[i] or 1) for i in range(x.rank))
    if any(x.shape[i] is None for i in axes):
        raise ctx.shape_error("the normalized dimensions must be known; fix them with "
                              "input_shapes=")
    gamma = _param(ctx, 1, "scale", norm_shape, x)
    beta = _param(ctx, 2, "bias", norm_shape, x)
    _chain(ctx, x, axes, float(a.get("epsilon", 1e-5)), gamma, beta)


@converter("InstanceNormalization")
def _instance_norm(ctx: Ctx) -> None:
    # y = scale[c] * (x - mean) / sqrt(var + eps) + bias[c], mean/var over the spatial axes
    x = ctx.need(0)
    if x.is_const:
        raise ctx.unsupported("a constant input")
    if x.rank < 3:
        raise ctx.shape_error(f"InstanceNormalization needs rank >= 3, got {x.rank}")
    c = x.shape[1]
    chan_shape = tuple(c or 1 if i == 1 else 1 for i in range(x.rank))
    params = []
    for i, what in ((1, "scale"), (2, "B")):
        arr = np.asarray(ctx.const_in(i, what), np.float32).reshape(-1)
        if c is None or arr.size != c:
            raise ctx.shape_error(f"{what} has {arr.size} values for {c} channels")
        params.append(broadcast_const(arr.reshape(chan_shape), x.rank, x.perm))
    eps = float(onnx_attrs(ctx.node).get("epsilon", 1e-5))
    _chain(ctx, x, list(range(2, x.rank)), eps, *params)

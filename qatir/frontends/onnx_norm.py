"""ONNX LayerNormalization (opset 17), InstanceNormalization, GroupNormalization (1 or C
groups) and the fused GroupNorm(1)
spelling (:mod:`qatir.frontends.onnx_groupnorm`) -> the int8-runnable chain
of :mod:`qatir.frontends.norm_chain` (MEAN, SQUARED_DIFFERENCE, MEAN, ADD, RSQRT, SUB, MUL,
MUL, ADD), over the IR axes that hold the normalized ONNX axes (no TRANSPOSE: the
reductions follow the value's layout permutation)."""

from __future__ import annotations

import numpy as np

from qatir.frontends.norm_chain import normalize
from qatir.frontends.onnx_ctx import Ctx, Val, broadcast_const, converter, onnx_attrs
from qatir.ir import Tensor


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


def _chain(ctx: Ctx, x: Val, onnx_axes: list[int], eps: float, gamma, beta,
           last_suffix: str = "") -> Tensor:
    """The normalization of ``x`` over ``onnx_axes``; the result is also the node's output
    when ``last_suffix`` is empty."""
    def emit(op: str, ins: list, attrs: dict, suffix: str):
        return ctx.emit(op, ins, attrs, suffix=suffix)

    def const(arr: np.ndarray, suffix: str):
        return ctx.const_tensor(arr, ctx.out_name() + suffix)

    ir_axes = [x.perm.index(a) for a in onnx_axes]
    y = normalize(emit, const, x.tensor, ir_axes, eps, gamma, beta, last_suffix)
    if not last_suffix:
        ctx.set_out(ctx.act(y, x.perm))
    return y


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


def _resolve(target: np.ndarray, shape: tuple) -> list[int] | None:
    """An ONNX Reshape target (0 copies a dim, one -1 is the rest) applied to ``shape``."""
    dims = [int(d) for d in np.asarray(target).reshape(-1)]
    out = [shape[i] if d == 0 and i < len(shape) else d for i, d in enumerate(dims)]
    if any(d is None for d in out) or None in shape or out.count(-1) > 1:
        return None
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        total = int(np.prod(shape))
        if known == 0 or total % known:
            return None
        out[out.index(-1)] = total // known
    return out


@converter("GroupNorm1")
def _group_norm1(ctx: Ctx) -> None:
    # qatir/frontends/onnx_groupnorm.py: Reshape(x, [N, 1, -1]) -> InstanceNormalization with
    # one scale/bias -> Reshape back, i.e. a normalization over every non-batch axis of x
    x = ctx.need(0)
    shape_in, shape_out = (ctx.const_in(i, what) for i, what in ((3, "shape"), (4, "shape")))
    flat = _resolve(shape_in, x.shape)
    out = None if flat is None else _resolve(shape_out, tuple(flat))
    if x.is_const or flat is None or out is None or len(flat) != 3 or flat[1] != 1:
        raise ctx.unsupported(f"Reshape -> InstanceNormalization -> Reshape of {list(x.shape)} "
                              "with dynamic or non-[N, 1, -1] shapes")
    params = [np.asarray(ctx.const_in(i, what), np.float32).reshape(-1)
              for i, what in ((1, "scale"), (2, "B"))]
    eps = float(onnx_attrs(ctx.node).get("epsilon", 1e-5))
    if flat[0] == x.shape[0] and out == list(x.shape):  # GroupNorm(1): over every non-batch axis
        _chain(ctx, x, list(range(1, x.rank)), eps, *(p.reshape((1,) * x.rank) for p in params))
        return
    # any other reshape pair: as written (flatten in ONNX order, normalize, reshape)
    t = ctx.reshape(ctx.as_tensor(x, tuple(range(x.rank))), flat, suffix="__flat")
    flat_val = ctx.act(t)
    y = _chain(ctx, flat_val, [2], eps, *(p.reshape(1, 1, 1) for p in params), "__normed_flat")
    ctx.set_out(ctx.act(ctx.reshape(y, out, name=ctx.out_name())))


@converter("GroupNormalization")
def _group_norm(ctx: Ctx) -> None:
    # opset 18/21: groups of C/G channels normalized over (C/G, spatial), then scale and bias
    # per channel (opset 21; opset 18's are per group). num_groups = 1 (a LayerNorm over C and
    # the spatial axes) and = C (an InstanceNorm) are the chain; other counts need a rank-5
    # reshape and are refused.
    x = ctx.need(0)
    if x.is_const:
        raise ctx.unsupported("a constant input")
    a = onnx_attrs(ctx.node)
    groups, c = int(a["num_groups"]), x.shape[1] if x.rank >= 3 else None
    if c is None or groups not in (1, c):
        raise ctx.unsupported(f"num_groups={groups} with {c} channels (only 1 or the channel "
                              "count)")
    chan_shape = tuple(c if i == 1 else 1 for i in range(x.rank))
    params = []
    for i, what in ((1, "scale"), (2, "bias")):
        arr = np.asarray(ctx.const_in(i, what), np.float32).reshape(-1)
        if arr.size not in (c, groups):
            raise ctx.shape_error(f"{what} has {arr.size} values for {c} channels in {groups} "
                                  "groups")
        arr = np.repeat(arr, c // arr.size)  # per group (opset 18) -> per channel
        params.append(broadcast_const(arr.reshape(chan_shape), x.rank, x.perm))
    axes = list(range(1 if groups == 1 else 2, x.rank))
    _chain(ctx, x, axes, float(a.get("epsilon", 1e-5)), *params)

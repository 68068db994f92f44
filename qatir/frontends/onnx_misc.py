"""Converters for ONNX ops real files use around the CNN core: Dropout with its mask,
Pow (any exponent) and LRN.

Dropout is the identity at inference. From opset 12 its optional ``mask`` output is
then all true (the spec: "if training_mode is false ... mask is all ones"), so a consumed
mask becomes a boolean constant when its shape is static. Before opset 12 the spec leaves
the inference mask undefined (onnxruntime returns all false at opsets 10-11, and opsets
7-9 type it as float), so a consumed mask there is refused; an unused one is dropped
everywhere. Random (training-mode) dropout is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qatir.frontends.onnx_ctx import (
    Ctx,
    Val,
    channel_last,
    check_size,
    converter,
    has_dims,
    onnx_attrs,
)
from qatir.frontends.onnx_ops import _unary_out, aligned, layout_for


def _training_mode(ctx: Ctx) -> bool:
    """Dropout's ``training_mode`` input (opset 12+); it must be a constant."""
    if ctx.opset < 12:
        return False
    v = ctx.inp(2)
    if v is None:
        return False
    if not v.is_const:
        raise ctx.unsupported("training_mode must be a constant (false: inference)")
    return bool(np.asarray(v.const).reshape(-1)[0]) if v.const.size else False


def dropout_mask(ctx: Ctx, shape: Sequence[int | None]) -> np.ndarray | None:
    """The inference-time mask (all true) when the node asks for it, else None.

    Raises when the node runs in training mode (random output), or when a consumed
    mask has a dynamic shape (no constant can stand for it).
    """
    if _training_mode(ctx):
        raise ctx.unsupported("training_mode=true (random dropout); export the model in "
                              "eval mode")
    outs = ctx.node.output
    if len(outs) < 2 or not outs[1]:
        return None
    if ctx.opset < 12 and outs[1] in ctx.consumed:
        raise ctx.unsupported(f"the mask output {outs[1]!r} is used; before opset 12 its "
                              "inference value is undefined (onnxruntime: all false)")
    if ctx.opset < 12:
        return None
    if any(d is None for d in shape):
        if outs[1] in ctx.consumed:
            raise ctx.shape_error(f"the mask output {outs[1]!r} is used but its shape "
                                  f"{list(shape)} is dynamic; fix it with input_shapes=")
        return None
    check_size(shape, ctx.where())
    return np.ones(tuple(int(d) for d in shape), dtype=bool)


@converter("Dropout")
def _dropout(ctx: Ctx) -> None:
    x = ctx.need(0)
    mask = dropout_mask(ctx, x.shape)
    ctx.set_out(x)
    if mask is not None:
        ctx.set_out(Val(const=mask), 1)


# --------------------------------------------------------------------- Pow
_POW = {0.5: "SQRT", -0.5: "RSQRT"}


def _scalar_exponent(ctx: Ctx) -> float | None:
    """The exponent when it is one constant number, else None."""
    e = ctx.inp(1)
    if e is None or not e.is_const or has_dims(e.const) or np.size(e.const) != 1:
        return None
    return float(np.asarray(e.const, np.float64).reshape(-1)[0])


@converter("Pow")
def _pow(ctx: Ctx) -> None:
    """x^p by a scalar constant p in (1, 2, 3, 0.5, -0.5) becomes x, MUL, SQRT or RSQRT (int8
    kernels or cheap float ones); any other exponent, a tensor exponent or a constant base
    becomes TFLite's POW, which LiteRT runs in float (a float island in an int8 graph)."""
    x, p = ctx.need(0), _scalar_exponent(ctx)
    if not x.is_const and p in _POW:
        _unary_out(ctx, _POW[p])
    elif not x.is_const and p == 1.0:
        ctx.set_out(x)
    elif not x.is_const and p in (2.0, 3.0):
        t = ctx.as_tensor(x, x.perm)
        y = ctx.emit("MUL", [t, t], suffix="__square" if p == 3.0 else "")
        if p == 3.0:
            y = ctx.emit("MUL", [y, t])
        ctx.set_out(ctx.act(y, x.perm))
    else:
        _general_pow(ctx, x, ctx.need(1))


def _general_pow(ctx: Ctx, x: Val, e: Val) -> None:
    """POW(x, e) broadcast like Add; the exponent is cast to the base's float type (ONNX
    lets them differ, TFLite's POW wants one type)."""
    if x.is_const and e.is_const:  # only a dynamic-shape constant gets here
        raise ctx.shape_error("Pow of values that depend on a dynamic dimension")
    rank, perm = layout_for([x, e])
    dtype = np.dtype(np.float32) if x.is_const else x.tensor.dtype
    if dtype.kind != "f":
        raise ctx.unsupported(f"Pow of a {dtype} base (only float)")
    base = aligned(ctx, x, rank, perm, dtype)
    if not e.is_const and e.tensor.dtype != dtype:
        e = ctx.act(ctx.emit("CAST", [e.tensor], {"dtype": dtype.name}, suffix="__cast"), e.perm)
    ctx.set_out(ctx.act(ctx.emit("POW", [base, aligned(ctx, e, rank, perm, dtype)]), perm))


# --------------------------------------------------------------------- LRN
@converter("LRN")
def _lrn(ctx: Ctx) -> None:
    """ONNX LRN -> LOCAL_RESPONSE_NORMALIZATION over the channel (last IR) axis.

    ONNX sums the squares of ``size`` channels around c and scales by ``alpha / size``;
    TFLite sums channels [c - radius, c + radius] and scales by ``alpha``. An odd size
    is radius (size - 1) / 2 with alpha / size; an even size centres its window off c
    (ONNX: [c - size/2 + 1, c + size/2]), which TFLite's window cannot express.
    """
    x = ctx.need(0)
    a = onnx_attrs(ctx.node)
    size = int(a.get("size", 0))
    if size < 1 or size % 2 == 0:
        raise ctx.unsupported(f"size={size} (only odd sizes: TFLite's window is symmetric)")
    if x.rank != 4 or x.is_const:
        raise ctx.unsupported(f"a rank-{x.rank} {'constant' if x.is_const else 'input'} "
                              "(TFLite's LOCAL_RESPONSE_NORMALIZATION takes 4-D activations)")
    attrs = {"radius": (size - 1) // 2, "bias": float(a.get("bias", 1.0)),
             "alpha": float(a.get("alpha", 1e-4)) / size, "beta": float(a.get("beta", 0.75))}
    perm = channel_last(4)
    t = ctx.emit("LOCAL_RESPONSE_NORMALIZATION", [ctx.as_tensor(x, perm)], attrs)
    ctx.set_out(ctx.act(t, perm))

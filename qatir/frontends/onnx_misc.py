"""Converters for ONNX ops real files use around the CNN core: Dropout with its mask,
LRN, and Pow with a computed exponent.

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

from qatir.frontends.onnx_ctx import Ctx, Val, converter


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
    return np.ones(tuple(int(d) for d in shape), dtype=bool)


@converter("Dropout")
def _dropout(ctx: Ctx) -> None:
    x = ctx.need(0)
    mask = dropout_mask(ctx, x.shape)
    ctx.set_out(x)
    if mask is not None:
        ctx.set_out(Val(const=mask), 1)

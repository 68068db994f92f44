"""The ``keras.ops`` operations a functional model may call on KerasTensors
(``x + 1``, ``ops.relu(x)``, ``x[:, 2:]``, ...). Python numbers and numpy arrays
among the arguments become float constants.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qatir.frontends.keras_act import SIMPLE, softmax
from qatir.frontends.keras_ctx import Ctx, converter
from qatir.frontends.keras_layers import fully_connected
from qatir.frontends.keras_misc import BIG
from qatir.ir import Tensor
from qatir.numerics import normalize_axes, normalize_axis

BINARY = {"Add": "ADD", "Subtract": "SUB", "Multiply": "MUL", "TrueDivide": "DIV",
          "Divide": "DIV", "Maximum": "MAXIMUM", "Minimum": "MINIMUM"}
UNARY = {"Relu": "relu", "Relu6": "relu6", "Sigmoid": "sigmoid", "Tanh": "tanh",
         "HardSilu": "hard_silu", "HardSwish": "hard_silu", "HardSigmoid": "hard_sigmoid",
         "Exp": "exponential"}
ELEMENTWISE = {"Sqrt": "SQRT", "Absolute": "ABS", "Abs": "ABS", "Negative": "NEG"}


def _operand(ctx: Ctx, v: Any, what: str) -> Tensor:
    if isinstance(v, Tensor):
        return v
    return ctx.const(np.asarray(v, np.float32), what)


@converter(*BINARY, op=True)
def _binary(ctx: Ctx, op: Any, args: list, kwargs: dict) -> Tensor:
    a, b = args[0], args[1]
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        raise ctx.unsupported(op, "both operands are constants")
    return ctx.node(BINARY[type(op).__name__], [_operand(ctx, a, "x"), _operand(ctx, b, "y")])


@converter(*UNARY, op=True)
def _unary(ctx: Ctx, op: Any, args: list, kwargs: dict) -> Tensor:
    name, attrs = SIMPLE[UNARY[type(op).__name__]]
    return ctx.node(name, [args[0]], dict(attrs))


@converter(*ELEMENTWISE, op=True)
def _elementwise(ctx: Ctx, op: Any, args: list, kwargs: dict) -> Tensor:
    return ctx.node(ELEMENTWISE[type(op).__name__], [args[0]])


@converter("Square", op=True)
def _square(ctx: Ctx, op: Any, args: list, kwargs: dict) -> Tensor:
    return ctx.node("MUL", [args[0], args[0]])


@converter("Silu", "Swish", op=True)
def _silu(ctx: Ctx, op: Any, args: list, kwargs: dict) -> Tensor:
    return ctx.node("MUL", [args[0], ctx.node("LOGISTIC", [args[0]])])


@converter("LeakyRelu", op=True)
def _leaky(ctx: Ctx, op: Any, args: list, kwargs: dict) -> Tensor:
    return ctx.node("LEAKY_RELU", [args[0]], {"alpha": float(op.negative_slope)})


@converter("Softmax", op=True)
def _softmax(ctx: Ctx, op: Any, args: list, kwargs: dict) -> Tensor:
    axis = op.axis
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            raise ctx.unsupported(op, f"softmax over axes {list(axis)}")
        axis = axis[0]
    return softmax(ctx, args[0], -1 if axis is None else int(axis))


@converter("Clip", op=True)
def _clip(ctx: Ctx, op: Any, args: list, kwargs: dict) -> Tensor:
    lo, hi = float(op.x_min), float(op.x_max)
    if lo == 0.0 and hi == 6.0:
        return ctx.node("RELU6", [args[0]])
    return ctx.node("CLIP", [args[0]], {"min": lo, "max": hi})


@converter("Reshape", op=True)
def _reshape(ctx: Ctx, op: Any, args: list, kwargs: dict) -> Tensor:
    shape = [-1 if d is None else int(d) for d in op.newshape]
    return ctx.node("RESHAPE", [args[0]], {"new_shape": shape})


@converter("Transpose", op=True)
def _transpose(ctx: Ctx, op: Any, args: list, kwargs: dict) -> Tensor:
    x = args[0]
    perm = list(range(x.rank))[::-1] if op.axes is None else [normalize_axis(a, x.rank) for a in op.axes]
    return ctx.node("TRANSPOSE", [x], {"perm": perm})


@converter("Concatenate", op=True)
def _concat(ctx: Ctx, op: Any, args: list, kwargs: dict) -> Tensor:
    xs = [_operand(ctx, v, "x") for v in args[0]]
    return ctx.node("CONCATENATION", xs, {"axis": int(op.axis)})


@converter("ExpandDims", op=True)
def _expand_dims(ctx: Ctx, op: Any, args: list, kwargs: dict) -> Tensor:
    x = args[0]
    axes = op.axis if isinstance(op.axis, (list, tuple)) else [op.axis]
    shape: list[int | None] = list(x.shape)
    for a in sorted(int(a) % (x.rank + len(axes)) for a in axes):
        shape.insert(a, 1)
    return _static_reshape(ctx, op, x, shape)


def _static_reshape(ctx: Ctx, op: Any, x: Tensor, shape: list[int | None]) -> Tensor:
    if sum(d is None for d in shape) > 1:
        raise ctx.unsupported(op, f"a reshape to {shape} with more than one dynamic dim")
    return ctx.node("RESHAPE", [x], {"new_shape": [-1 if d is None else int(d) for d in shape]})


@converter("Squeeze", op=True)
def _squeeze(ctx: Ctx, op: Any, args: list, kwargs: dict) -> Tensor:
    axes = [] if op.axis is None else list(op.axis if isinstance(op.axis, (list, tuple))
                                            else [op.axis])
    return ctx.node("SQUEEZE", [args[0]], {"squeeze_dims": [int(a) for a in axes]})


@converter("Mean", "Max", "Sum", op=True)
def _reduce(ctx: Ctx, op: Any, args: list, kwargs: dict) -> Tensor:
    x = args[0]
    if getattr(op, "initial", None) is not None:
        raise ctx.unsupported(op, "max with an initial value")
    axis = list(range(x.rank)) if op.axis is None else (
        list(op.axis) if isinstance(op.axis, (list, tuple)) else [op.axis])
    name = {"Mean": "MEAN", "Max": "REDUCE_MAX", "Sum": "SUM"}[type(op).__name__]
    return ctx.node(name, [x], {"axis": normalize_axes(axis, x.rank),
                                "keep_dims": bool(op.keepdims)})


@converter("Matmul", op=True)
def _matmul(ctx: Ctx, op: Any, args: list, kwargs: dict) -> Tensor:
    x, w = args[0], args[1]
    if not isinstance(x, Tensor) or isinstance(w, Tensor) or np.ndim(w) != 2:
        raise ctx.unsupported(op, "matmul other than tensor @ constant 2-D matrix")
    return fully_connected(ctx, x, np.asarray(w, np.float32), None)


@converter("GetItem", op=True)
def _getitem(ctx: Ctx, op: Any, args: list, kwargs: dict) -> Tensor:
    """``x[...]`` with ints, slices and one Ellipsis (no new axes, no tensor indices)."""
    x, key = args[0], args[1]
    key = list(key) if isinstance(key, tuple) else [key]
    if any(k is None or isinstance(k, Tensor) or not isinstance(k, (int, slice, type(Ellipsis)))
           for k in key) or sum(k is Ellipsis for k in key) > 1:
        raise ctx.unsupported(op, f"indexing with {key} (only ints, slices and one ...)")
    if Ellipsis in key:
        i = key.index(Ellipsis)
        key = key[:i] + [slice(None)] * (x.rank - len(key) + 1) + key[i + 1:]
    key += [slice(None)] * (x.rank - len(key))
    begin, end, strides, shrink = [], [], [], []
    for i, (k, d) in enumerate(zip(key, x.shape)):
        if isinstance(k, int):
            if k < 0 and d is None:
                raise ctx.unsupported(op, f"negative index on dynamic dim {i}")
            k = k % d if d is not None else k
            begin.append(k)
            end.append(k + 1)
            strides.append(1)
            shrink.append(i)
            continue
        step = 1 if k.step is None else int(k.step)
        if step < 0 or ((k.start or 0) < 0 or (k.stop or 0) < 0) and d is None:
            raise ctx.unsupported(op, f"slice {k} on dim {i} of {list(x.shape)}")
        b, e, _ = k.indices(d) if d is not None else (k.start or 0, BIG if k.stop is None
                                                      else k.stop, step)
        begin.append(int(b))
        end.append(int(e))
        strides.append(step)
    return ctx.node("STRIDED_SLICE", [x], {"begin": begin, "end": end, "strides": strides,
                                           "shrink_axis": shrink})


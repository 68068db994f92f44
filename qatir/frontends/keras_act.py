"""Keras activations (functions and layers) as IR ops.

Keras 3 defines ``hard_sigmoid(x) = relu6(x + 3) / 6`` and ``hard_silu(x) =
x * hard_sigmoid(x)``, the same as TFLite's HARD_SWISH; ``silu``/``swish`` is
``x * sigmoid(x)`` (LOGISTIC then MUL).
"""

from __future__ import annotations

from typing import Any

from qatir.frontends.keras_ctx import Ctx, converter
from qatir.ir import Tensor

# activation name -> (op, attrs); None means the identity.
SIMPLE: dict[str, tuple[str, dict[str, Any]] | None] = {
    "linear": None,
    "relu": ("RELU", {}),
    "relu6": ("RELU6", {}),
    "sigmoid": ("LOGISTIC", {}),
    "tanh": ("TANH", {}),
    "hard_silu": ("HARD_SWISH", {}),
    "hard_swish": ("HARD_SWISH", {}),
    "hard_sigmoid": ("HARD_SIGMOID", {"alpha": 1.0 / 6.0, "beta": 0.5}),
    "leaky_relu": ("LEAKY_RELU", {"alpha": 0.2}),
    "exponential": ("EXP", {}),
    "gelu": ("GELU", {"approximate": False}),  # keras.activations.gelu's default (erf form)
}
COMPOSED = {"silu", "swish", "softmax"}


def activation_name(fn: Any) -> str | None:
    """The Keras name of a built-in activation function, or None for a foreign callable."""
    if fn is None:
        return "linear"
    name = getattr(fn, "__name__", None)
    mod = getattr(fn, "__module__", "") or ""
    if name is None or not mod.startswith("keras."):
        return None
    return name


def activation_refusal(fn: Any) -> str | None:
    name = activation_name(fn)
    if name is None:
        return f"activation {getattr(fn, '__name__', fn)!r} is not one of Keras's"
    if name not in SIMPLE and name not in COMPOSED:
        return f"activation {name!r} has no qatir op"
    return None


def activate(ctx: Ctx, x: Tensor, fn: Any, axis: int = -1) -> Tensor:
    """Apply the built-in activation ``fn`` (checked by :func:`activation_refusal`)."""
    name = activation_name(fn) or "linear"
    if name in SIMPLE:
        spec = SIMPLE[name]
        return x if spec is None else ctx.node(spec[0], [x], dict(spec[1]))
    if name in ("silu", "swish"):
        return ctx.node("MUL", [x, ctx.node("LOGISTIC", [x])])
    return softmax(ctx, x, axis)


def softmax(ctx: Ctx, x: Tensor, axis: int) -> Tensor:
    """SOFTMAX runs over the last axis; another axis is moved there and back."""
    axis %= x.rank
    if axis == x.rank - 1:
        return ctx.node("SOFTMAX", [x], {"beta": 1.0})
    perm = list(range(x.rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    t = ctx.node("TRANSPOSE", [x], {"perm": perm})
    return ctx.node("TRANSPOSE", [ctx.node("SOFTMAX", [t], {"beta": 1.0})], {"perm": perm})


def _check_activation_layer(layer: Any) -> str | None:
    return activation_refusal(layer.activation)


@converter("Activation", check=_check_activation_layer)
def _activation(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    x = args[0]
    out = activate(ctx, x, layer.activation)
    return ctx.node("IDENTITY", [x]) if out is x else out


def _check_relu(layer: Any) -> str | None:
    slope = float(layer.negative_slope)
    mx = None if layer.max_value is None else float(layer.max_value)
    if float(layer.threshold) != 0.0:
        return f"threshold={layer.threshold}"
    if slope != 0.0 and mx is not None:
        return f"negative_slope={slope} together with max_value={mx}"
    if slope < 0.0:
        return f"negative_slope={slope}"
    return None


@converter("ReLU", check=_check_relu)
def _relu(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    x = args[0]
    slope = float(layer.negative_slope)
    mx = None if layer.max_value is None else float(layer.max_value)
    if slope:
        return ctx.node("LEAKY_RELU", [x], {"alpha": slope})
    if mx is None:
        return ctx.node("RELU", [x])
    if mx == 6.0:
        return ctx.node("RELU6", [x])
    return ctx.node("CLIP", [x], {"min": 0.0, "max": mx})


@converter("LeakyReLU")
def _leaky(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    return ctx.node("LEAKY_RELU", [args[0]], {"alpha": float(layer.negative_slope)})


@converter("PReLU")
def _prelu(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    from qatir.frontends.keras_ctx import to_numpy

    alpha = to_numpy(layer.alpha)  # shape input.shape[1:], 1 on shared axes: broadcasts
    return ctx.node("PRELU", [args[0], ctx.const(alpha, "alpha")])


@converter("Softmax")
def _softmax(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    if kwargs.get("mask") is not None or (len(args) > 1 and args[1] is not None):
        raise ctx.unsupported(layer, "a softmax mask")
    axis = layer.axis
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            raise ctx.unsupported(layer, f"softmax over axes {list(axis)}")
        axis = axis[0]
    return softmax(ctx, args[0], int(axis))

"""Keras layers without weights to learn: merging, reshaping, padding and cropping,
resizing, preprocessing (Rescaling, Normalization) and the identity layers.

Resizing and bilinear UpSampling2D use ``tf.image.resize`` in Keras (half-pixel
centres, no corner alignment); nearest UpSampling2D repeats rows and columns,
which is the same sampling for an integer factor.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from qatir.frontends.keras_ctx import Ctx, converter, to_numpy
from qatir.ir import Tensor

BIG = 1 << 31   # STRIDED_SLICE end meaning "to the end of the dim"


def batch_dim(x: Tensor) -> int:
    return -1 if x.shape[0] is None else int(x.shape[0])


def static_tail(ctx: Ctx, layer: Any, x: Tensor, what: str) -> list[int]:
    tail = list(x.shape[1:])
    if any(d is None for d in tail):
        raise ctx.unsupported(layer, f"{what} of an input with dynamic dims {list(x.shape)}")
    return [int(d) for d in tail]


def reshape(ctx: Ctx, layer: Any, x: Tensor, target: list[int]) -> Tensor:
    """RESHAPE to ``[batch, *target]``; a -1 in ``target`` is resolved so the batch may be
    the one dynamic dim."""
    target = [int(d) for d in target]
    if -1 in target:
        total = math.prod(static_tail(ctx, layer, x, "a reshape with -1"))
        rest = math.prod(d for d in target if d != -1)
        target = [total // rest if d == -1 else d for d in target]
    return ctx.node("RESHAPE", [x], {"new_shape": [batch_dim(x), *target]})


# ------------------------------------------------------------------ identity layers
@converter("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
           "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
           "Identity")
def _identity(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    return args[0]   # inference behaviour: the input, unchanged


@converter("InputLayer")
def _input_layer(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    return args[0]   # inside a Sequential: the tensor it is fed


# ------------------------------------------------------------------ merging
def _chain(ctx: Ctx, op: str, xs: list[Tensor]) -> Tensor:
    y = xs[0]
    for x in xs[1:]:
        y = ctx.node(op, [y, x])
    return y


@converter("Add", "Subtract", "Multiply", "Maximum", "Minimum", "Average")
def _merge(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    xs = list(args[0])
    name = type(layer).__name__
    if name == "Subtract":
        return ctx.node("SUB", xs)
    op = {"Add": "ADD", "Multiply": "MUL", "Maximum": "MAXIMUM", "Minimum": "MINIMUM",
          "Average": "ADD"}[name]
    y = _chain(ctx, op, xs)
    if name == "Average":
        y = ctx.node("MUL", [y, ctx.const(np.float32(1.0 / len(xs)), "one_over_n")])
    return y


@converter("Concatenate")
def _concat(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    return ctx.node("CONCATENATION", list(args[0]), {"axis": int(layer.axis)})


# ------------------------------------------------------------------ reshaping
@converter("Reshape")
def _reshape(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    return reshape(ctx, layer, args[0], list(layer.target_shape))


def _check_flatten(layer: Any) -> str | None:
    fmt = getattr(layer, "data_format", "channels_last")
    return None if fmt in (None, "channels_last") else f"data_format={fmt!r}"


@converter("Flatten", check=_check_flatten)
def _flatten(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    return reshape(ctx, layer, args[0], [-1])


@converter("Permute")
def _permute(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    return ctx.node("TRANSPOSE", [args[0]], {"perm": [0, *(int(d) for d in layer.dims)]})


@converter("RepeatVector")
def _repeat_vector(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    x = args[0]   # [N, C] -> [N, n, C]
    y = ctx.node("RESHAPE", [x], {"new_shape": [batch_dim(x), 1, int(x.shape[1])]})
    return ctx.node("TILE", [y], {"multiples": [1, int(layer.n), 1]})


# ------------------------------------------------------------------ padding, cropping
def _check_spatial(layer: Any) -> str | None:
    fmt = getattr(layer, "data_format", "channels_last")
    return None if fmt in (None, "channels_last") else f"data_format={fmt!r} (only channels_last)"


def _pairs(v: Any, n: int) -> list[list[int]]:
    """Keras's normalised padding/cropping (``(a, b)`` for 1-D, ``((a, b), ...)`` else)."""
    if isinstance(v, int):
        return [[v, v]] * n
    if n == 1 and all(isinstance(a, int) for a in v):
        return [[int(v[0]), int(v[1])]]
    return [[int(a), int(b)] for a, b in v]


@converter("ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", check=_check_spatial)
def _zero_pad(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    x = args[0]
    pads = _pairs(layer.padding, x.rank - 2)
    return ctx.node("PAD", [x], {"paddings": [[0, 0], *pads, [0, 0]]})


@converter("Cropping1D", "Cropping2D", "Cropping3D", check=_check_spatial)
def _crop(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    x = args[0]
    crops = _pairs(layer.cropping, x.rank - 2)
    begin, end = [0], [BIG]
    for (a, b), d in zip(crops, x.shape[1:-1]):
        if b and d is None:
            raise ctx.unsupported(layer, f"cropping the end of a dynamic dim {list(x.shape)}")
        begin.append(a)
        end.append(BIG if b == 0 else int(d) - b)
    return ctx.node("STRIDED_SLICE", [x], {"begin": begin + [0], "end": end + [BIG],
                                           "strides": [1] * x.rank, "shrink_axis": []})


# ------------------------------------------------------------------ resizing
def _check_upsampling(layer: Any) -> str | None:
    why = _check_spatial(layer)
    interp = getattr(layer, "interpolation", "nearest")
    return why or (None if interp in ("nearest", "bilinear") else f"interpolation={interp!r}")


def _resize(ctx: Ctx, layer: Any, x: Tensor, size: list[int], interp: str) -> Tensor:
    op = "RESIZE_NEAREST_NEIGHBOR" if interp == "nearest" else "RESIZE_BILINEAR"
    return ctx.node(op, [x], {"size": size, "align_corners": False, "half_pixel_centers": True})


@converter("UpSampling1D")
def _upsample_1d(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    x = args[0]
    length, c = static_tail(ctx, layer, x, "UpSampling1D")
    y = ctx.node("RESHAPE", [x], {"new_shape": [batch_dim(x), length, 1, c]})
    y = _resize(ctx, layer, y, [length * int(layer.size), 1], "nearest")
    return ctx.node("RESHAPE", [y], {"new_shape": [batch_dim(x), length * int(layer.size), c]})


@converter("UpSampling2D", check=_check_upsampling)
def _upsample_2d(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    x = args[0]
    h, w, _ = static_tail(ctx, layer, x, "UpSampling2D")
    sh, sw = (int(s) for s in layer.size)
    return _resize(ctx, layer, x, [h * sh, w * sw], layer.interpolation)


def _check_resizing(layer: Any) -> str | None:
    why = _check_upsampling(layer)
    if why:
        return why
    if layer.crop_to_aspect_ratio or getattr(layer, "pad_to_aspect_ratio", False):
        return "crop_to_aspect_ratio / pad_to_aspect_ratio"
    if getattr(layer, "antialias", False):
        return "antialias=True"
    return None


@converter("Resizing", check=_check_resizing)
def _resizing(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    x = args[0]
    if x.rank != 4:
        raise ctx.unsupported(layer, f"a rank-{x.rank} input (only batched NHWC images)")
    return _resize(ctx, layer, x, [int(layer.height), int(layer.width)], layer.interpolation)


# ------------------------------------------------------------------ preprocessing
@converter("Rescaling")
def _rescaling(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    y = args[0]
    scale, offset = np.float32(0) + to_numpy(layer.scale), np.float32(0) + to_numpy(layer.offset)
    if not np.all(scale == 1):
        y = ctx.node("MUL", [y, ctx.const(scale, "scale")])
    if not np.all(offset == 0):
        y = ctx.node("ADD", [y, ctx.const(offset, "offset")])
    return ctx.node("IDENTITY", [y]) if y is args[0] else y


def _check_layer_scale(layer: Any) -> str | None:
    if not type(layer).__module__.startswith("keras.src.applications"):
        return "a custom layer named LayerScale (only keras.applications' is known)"
    if getattr(layer, "gamma", None) is None:
        return "LayerScale without its gamma weight"
    return None


@converter("LayerScale", check=_check_layer_scale)
def _layer_scale(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    """keras.applications' ConvNeXt LayerScale: ``x · γ``, γ one value per channel."""
    return ctx.node("MUL", [args[0], ctx.const(to_numpy(layer.gamma), "gamma")])


def _check_normalization(layer: Any) -> str | None:
    if getattr(layer, "invert", False):
        return "invert=True"
    if not getattr(layer, "built", False) or getattr(layer, "mean", None) is None:
        return "not adapted or built (no mean/variance)"
    return None


@converter("Normalization", check=_check_normalization)
def _normalization(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    import keras

    mean, var = to_numpy(layer.mean), to_numpy(layer.variance)
    eps = np.float32(keras.backend.epsilon())
    inv = (np.float32(1) / np.maximum(np.sqrt(var), eps)).astype(np.float32)
    y = ctx.node("ADD", [args[0], ctx.const(-mean, "neg_mean")])
    return ctx.node("MUL", [y, ctx.const(inv, "inv_std")])

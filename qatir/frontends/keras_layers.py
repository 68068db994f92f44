"""Keras weight layers and pooling: Conv, DepthwiseConv, SeparableConv, ConvTranspose,
Dense, BatchNormalization, LayerNormalization, pooling and global pooling.

Keras stores kernels HWIO (conv), HW-I-M (depthwise), HW-O-I (transposed conv) and
[K, N] (dense); the IR wants OHWI, 1HWO, OHWI and [N, K]. 1-D layers run as their
2-D form on ``[N, 1, L, C]`` between two RESHAPEs. ``padding="same"`` is TFLite's
SAME (both pad ``total // 2`` before, the rest after, for any stride/dilation);
``"causal"`` becomes a PAD of ``(k - 1) * dilation`` on the left, then VALID.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qatir.frontends.keras_act import activate, activation_refusal
from qatir.frontends.keras_ctx import Ctx, converter, to_numpy
from qatir.frontends.norm_chain import normalize
from qatir.ir import Tensor
from qatir.numerics import normalize_axis

CONV_1D = {"Conv1D", "DepthwiseConv1D", "SeparableConv1D", "Conv1DTranspose",
           "MaxPooling1D", "AveragePooling1D"}


def _channels_last(layer: Any) -> str | None:
    fmt = getattr(layer, "data_format", "channels_last")
    return None if fmt in (None, "channels_last") else f"data_format={fmt!r} (only channels_last)"


def _check_conv(layer: Any) -> str | None:
    why = _channels_last(layer) or activation_refusal(getattr(layer, "activation", None))
    if why:
        return why
    name = type(layer).__name__
    pad = layer.padding
    if pad not in ("same", "valid") and not (pad == "causal" and name == "Conv1D"):
        return f"padding={pad!r}"
    if "Transpose" in name:
        if layer.output_padding is not None:
            return f"output_padding={layer.output_padding}"
        if any(d != 1 for d in layer.dilation_rate):
            return f"dilation_rate={layer.dilation_rate}"
        if pad == "valid" and any(k < s for k, s in zip(layer.kernel_size, layer.strides)):
            return f"padding='valid' with kernel {layer.kernel_size} smaller than strides"
    return None


def _pair(v: Any, one_d: bool) -> list[int]:
    v = [int(a) for a in (v if isinstance(v, (list, tuple)) else (v,))]
    return [1, v[0]] if one_d else (v * 2 if len(v) == 1 else v)


def _as_4d(ctx: Ctx, x: Tensor) -> Tensor:
    n, length, c = x.shape
    return ctx.node("RESHAPE", [x], {"new_shape": [-1 if n is None else n, 1,
                                                   -1 if n is not None and length is None
                                                   else length, c]})


def _as_3d(ctx: Ctx, y: Tensor) -> Tensor:
    n, _, length, c = y.shape
    return ctx.node("RESHAPE", [y], {"new_shape": [-1 if n is None else n,
                                                   -1 if n is not None and length is None
                                                   else length, c]})


def _bias(ctx: Ctx, layer: Any) -> Tensor | None:
    if not getattr(layer, "use_bias", False) or layer.bias is None:
        return None
    return ctx.const(to_numpy(layer.bias), "bias")


def _window_attrs(layer: Any, one_d: bool, padding: str | None = None) -> dict[str, Any]:
    return {"stride": _pair(layer.strides, one_d),
            "dilation": _pair(getattr(layer, "dilation_rate", 1), one_d),
            "padding": (padding or layer.padding).upper()}


@converter("Conv1D", "Conv2D", check=_check_conv)
def _conv(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    one_d = type(layer).__name__ in CONV_1D
    x = args[0]
    w = to_numpy(layer.kernel)
    if one_d:
        x, w = _as_4d(ctx, x), w[None]
    attrs = _window_attrs(layer, one_d)
    if layer.padding == "causal":
        left = (w.shape[1] - 1) * attrs["dilation"][1]
        x = ctx.node("PAD", [x], {"paddings": [[0, 0], [0, 0], [left, 0], [0, 0]]})
        attrs["padding"] = "VALID"
    bias = _bias(ctx, layer)
    if w.shape[2] == 1 and layer.groups > 1:  # one input channel per group: depthwise
        mult = w.shape[3] // layer.groups
        y = ctx.node("DEPTHWISE_CONV_2D", [x, ctx.const(w.reshape(1, *w.shape[:2], -1), "kernel"),
                                           bias], {**attrs, "depth_multiplier": mult})
    else:
        y = ctx.node("CONV_2D", [x, ctx.const(w.transpose(3, 0, 1, 2), "kernel"), bias], attrs)
    y = activate(ctx, y, layer.activation)
    return _as_3d(ctx, y) if one_d else y


def _depthwise(ctx: Ctx, x: Tensor, dw: np.ndarray, attrs: dict, bias: Tensor | None,
               what: str = "kernel") -> Tensor:
    kh, kw, c, m = dw.shape
    w = ctx.const(dw.reshape(1, kh, kw, c * m), what)
    return ctx.node("DEPTHWISE_CONV_2D", [x, w, bias], {**attrs, "depth_multiplier": m})


@converter("DepthwiseConv1D", "DepthwiseConv2D", check=_check_conv)
def _dwconv(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    one_d = type(layer).__name__ in CONV_1D
    x, dw = args[0], to_numpy(layer.kernel)
    if one_d:
        x, dw = _as_4d(ctx, x), dw[None]
    y = _depthwise(ctx, x, dw, _window_attrs(layer, one_d), _bias(ctx, layer))
    y = activate(ctx, y, layer.activation)
    return _as_3d(ctx, y) if one_d else y


@converter("SeparableConv1D", "SeparableConv2D", check=_check_conv)
def _sepconv(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    one_d = type(layer).__name__ in CONV_1D
    x, dw, pw = args[0], to_numpy(layer.depthwise_kernel), to_numpy(layer.pointwise_kernel)
    if one_d:
        x, dw, pw = _as_4d(ctx, x), dw[None], pw[None]
    d = _depthwise(ctx, x, dw, _window_attrs(layer, one_d), None, "depthwise_kernel")
    y = ctx.node("CONV_2D", [d, ctx.const(pw.transpose(3, 0, 1, 2), "pointwise_kernel"),
                             _bias(ctx, layer)], {"padding": "VALID"})
    y = activate(ctx, y, layer.activation)
    return _as_3d(ctx, y) if one_d else y


@converter("Conv1DTranspose", "Conv2DTranspose", check=_check_conv)
def _tconv(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    one_d = type(layer).__name__ in CONV_1D
    x, w = args[0], to_numpy(layer.kernel)       # [kh, kw, out, in]
    if one_d:
        x, w = _as_4d(ctx, x), w[None]
    attrs = {"stride": _pair(layer.strides, one_d), "padding": layer.padding.upper()}
    y = ctx.node("TRANSPOSE_CONV", [x, ctx.const(w.transpose(2, 0, 1, 3), "kernel"),
                                    _bias(ctx, layer)], attrs)
    y = activate(ctx, y, layer.activation)
    return _as_3d(ctx, y) if one_d else y


def check_dense(layer: Any) -> str | None:
    """Why a Dense (or EinsumDense) layer's weights cannot be read as a float FC, or None."""
    if getattr(layer, "lora_enabled", False):
        return "LoRA weights"
    if getattr(layer, "quantization_mode", None):
        return f"quantization_mode={layer.quantization_mode!r} (load the float model)"
    return activation_refusal(layer.activation)


def fully_connected(ctx: Ctx, x: Tensor, kernel: np.ndarray, bias: np.ndarray | None) -> Tensor:
    """FULLY_CONNECTED of ``x [..., K]`` by a Keras kernel ``[K, N]`` (the IR weight is
    ``[N, K]``) and an optional bias ``[N]``; leading dims are kept."""
    w = ctx.const(kernel.T, "kernel")
    b = None if bias is None else ctx.const(bias, "bias")
    return ctx.node("FULLY_CONNECTED", [x, w, b], {"keep_num_dims": x.rank > 2})


@converter("Dense", check=check_dense)
def _dense(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    bias = to_numpy(layer.bias) if layer.use_bias and layer.bias is not None else None
    y = fully_connected(ctx, args[0], to_numpy(layer.kernel), bias)
    return activate(ctx, y, layer.activation)


def _check_bn(layer: Any) -> str | None:
    axis = layer.axis
    if isinstance(axis, (list, tuple)) and len(axis) != 1:
        return f"axis={axis} (only the last axis, channels_last)"
    if getattr(layer, "renorm", False):
        return "renorm=True"
    return None


@converter("BatchNormalization", check=_check_bn)
def _batch_norm(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    x = args[0]
    axis = layer.axis[0] if isinstance(layer.axis, (list, tuple)) else layer.axis
    if normalize_axis(axis, x.rank) != x.rank - 1:
        raise ctx.unsupported(layer, f"axis={layer.axis} on a rank-{x.rank} input (only the "
                                     "last axis, channels_last)")
    mean, var = to_numpy(layer.moving_mean), to_numpy(layer.moving_variance)
    gamma = to_numpy(layer.gamma) if layer.scale else np.ones_like(mean)
    beta = to_numpy(layer.beta) if layer.center else np.zeros_like(mean)
    ins = [x, ctx.const(gamma, "gamma"), ctx.const(beta, "beta"),
           ctx.const(mean, "moving_mean"), ctx.const(var, "moving_variance")]
    return ctx.node("BATCH_NORM", ins, {"epsilon": float(layer.epsilon),
                                        "momentum": float(layer.momentum)})


def _check_ln(layer: Any) -> str | None:
    if getattr(layer, "rms_scaling", False):
        return "rms_scaling=True"
    return None


@converter("LayerNormalization", check=_check_ln)
def _layer_norm(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    """The chain of :mod:`qatir.frontends.norm_chain` over ``layer.axis``; γ and β have
    the normalized dims' shape and broadcast over the others."""
    x = args[0]
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    axes = sorted(normalize_axis(int(a), x.rank) for a in axes)
    if any(x.shape[a] is None for a in axes):
        raise ctx.unsupported(layer, "a normalized dimension of unknown size")
    shape = [x.shape[a] if a in axes else 1 for a in range(x.rank)]
    gamma = to_numpy(layer.gamma).reshape(shape) if layer.scale else None
    beta = to_numpy(layer.beta).reshape(shape) if layer.center else None

    def emit(op: str, ins: list, attrs: dict, suffix: str) -> Tensor:
        return ctx.node(op, ins, attrs, name=ctx.g.unique_name(ctx.layer + suffix))

    def const(arr: np.ndarray, suffix: str) -> Tensor:
        return ctx.const(arr, suffix.strip("_"))

    return normalize(emit, const, x, axes, float(layer.epsilon), gamma, beta)


def _check_pool(layer: Any) -> str | None:
    return _channels_last(layer) or (None if layer.padding in ("same", "valid")
                                     else f"padding={layer.padding!r}")


@converter("MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D",
           check=_check_pool)
def _pool(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    name = type(layer).__name__
    one_d = name in CONV_1D
    x = _as_4d(ctx, args[0]) if one_d else args[0]
    strides = layer.strides if layer.strides is not None else layer.pool_size
    attrs = {"filter": _pair(layer.pool_size, one_d), "stride": _pair(strides, one_d),
             "padding": layer.padding.upper()}
    y = ctx.node("MAX_POOL_2D" if name.startswith("Max") else "AVERAGE_POOL_2D", [x], attrs)
    return _as_3d(ctx, y) if one_d else y


@converter("GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D",
           "GlobalMaxPooling2D", check=_channels_last)
def _global_pool(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    if kwargs.get("mask") is not None:
        raise ctx.unsupported(layer, "a mask")
    x = args[0]
    op = "MEAN" if "Average" in type(layer).__name__ else "REDUCE_MAX"
    return ctx.node(op, [x], {"axis": list(range(1, x.rank - 1)),
                              "keep_dims": bool(layer.keepdims)})

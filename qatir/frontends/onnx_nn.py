"""Converters for ONNX Conv, ConvTranspose, BatchNormalization, Gemm and MatMul.

Convolutions run in NHWC: weights are transposed once to OHWI (CONV_2D) or
1HWO (DEPTHWISE_CONV_2D); 1-D convolutions are 2-D ones with H = 1. Explicit
ONNX pads become SAME when they equal TFLite's SAME padding, else PAD + VALID.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qatir.frontends.onnx_ctx import (
    INT32_MAX,
    Ctx,
    Val,
    channel_last,
    converter,
    ident,
    onnx_attrs,
)
from qatir.ir import Tensor
from qatir.numerics import same_padding


def same_pads(size: int | None, k: int, s: int, d: int) -> tuple[int, int] | None:
    """TFLite SAME padding (before, after) along one axis (extra pad goes after).

    :func:`qatir.numerics.same_padding`; None when it depends on an unknown
    ``size`` (only stride 1 makes it size-independent).
    """
    if size is None:
        if s != 1:
            return None
        size = (k - 1) * d + 1
    _, before, after = same_padding(size, k, s, d)
    return before, after


@dataclass
class Window:
    """2-D window parameters in NHWC terms (1-D ops get H = 1)."""

    kernel: list[int]
    stride: list[int]
    dilation: list[int]
    pads: list[tuple[int, int]]  # per spatial axis (before, after)
    auto_pad: str


def read_window(ctx: Ctx, rank: int, kernel: list[int] | None = None) -> Window:
    """Kernel/strides/dilations/pads of a conv or pool node, lifted to two spatial axes."""
    a = onnx_attrs(ctx.node)
    nsp = rank - 2
    kernel = [int(k) for k in (kernel if kernel is not None else a.get("kernel_shape", []))]
    strides = [int(s) for s in a.get("strides", [1] * nsp)]
    dil = [int(d) for d in a.get("dilations", [1] * nsp)]
    pads = [int(p) for p in a.get("pads", [0] * (2 * nsp))]
    if not (len(kernel) == len(strides) == len(dil) == nsp and len(pads) == 2 * nsp):
        raise ctx.shape_error(f"kernel/strides/dilations/pads do not fit {nsp} spatial dims")
    if any(v < 1 for v in kernel + strides + dil) or any(p < 0 for p in pads):
        raise ctx.shape_error("kernel, strides and dilations must be >= 1 and pads >= 0")
    pairs = [(pads[i], pads[i + nsp]) for i in range(nsp)]
    dil = [1 if k == 1 else d for k, d in zip(kernel, dil)]  # a 1-tap axis has no dilation
    if nsp == 1:
        kernel, strides, dil, pairs = [1, *kernel], [1, *strides], [1, *dil], [(0, 0), *pairs]
    return Window(kernel, strides, dil, pairs, str(a.get("auto_pad", "NOTSET")))


def to_nhwc(ctx: Ctx, x: Val) -> tuple[Tensor, Callable[[Tensor], Val]]:
    """``x`` as a 4-D NHWC IR tensor, and a function mapping a 4-D result back to ``x``'s rank."""
    if x.is_const:
        raise ctx.unsupported("a constant data input")
    if x.rank == 4:
        return ctx.as_tensor(x, channel_last(4)), lambda t: ctx.act(t, channel_last(4))
    if x.rank != 3:
        raise ctx.unsupported(f"only 1-D and 2-D spatial inputs (got rank {x.rank})")
    nlc = ctx.as_tensor(x, channel_last(3))
    n, length, c = nlc.shape
    t4 = ctx.reshape(nlc, [n, 1, length, c], suffix="__to2d")

    def back(t: Tensor) -> Val:
        n2, _, l2, c2 = t.shape
        return ctx.act(ctx.reshape(t, [n2, l2, c2], name=ctx.out_name()), channel_last(3))

    return t4, back


def resolve_padding(ctx: Ctx, w: Window, hw: tuple[int | None, int | None]) -> tuple[str, list]:
    """("SAME" | "VALID", explicit [(before, after)] per spatial axis to PAD first, or [])."""
    if w.auto_pad == "VALID":
        return "VALID", []
    if w.auto_pad == "SAME_UPPER":
        return "SAME", []
    if w.auto_pad not in ("NOTSET", "SAME_LOWER"):
        raise ctx.shape_error(f"unknown auto_pad {w.auto_pad!r}")
    if w.auto_pad == "NOTSET" and all(p == (0, 0) for p in w.pads):
        return "VALID", []
    same = [same_pads(hw[i], w.kernel[i], w.stride[i], w.dilation[i]) for i in range(2)]
    pads = w.pads
    if w.auto_pad == "SAME_LOWER":
        if None in same:
            raise ctx.shape_error("auto_pad SAME_LOWER with stride > 1 needs static spatial "
                                  "dims; fix them with input_shapes=")
        pads = [(b + e - (b + e) // 2, (b + e) // 2) for b, e in same]
    if pads == same:
        return "SAME", []
    return "VALID", pads


def pad_nhwc(ctx: Ctx, t: Tensor, pads: list, value: float = 0.0) -> Tensor:
    if not pads or all(p == (0, 0) for p in pads):
        return t
    paddings = [[0, 0], list(pads[0]), list(pads[1]), [0, 0]]
    return ctx.emit("PAD", [t], {"paddings": paddings, "constant_value": value}, suffix="__pad")


def _bias(ctx: Ctx, n: int, idx: int = 2) -> np.ndarray | None:
    b = ctx.const_in(idx, "bias", optional=True)
    if b is None:
        return None
    b = np.asarray(b, np.float32).reshape(-1)
    if b.size != n:
        raise ctx.shape_error(f"bias has {b.size} values, expected {n}")
    return b


@converter("Conv")
def _conv(ctx: Ctx) -> None:
    x = ctx.need(0)
    w = np.asarray(ctx.const_in(1, "weight"), np.float32)
    if w.ndim != x.rank or w.ndim not in (3, 4):
        raise ctx.unsupported(f"only 1-D and 2-D convolutions (weight rank {w.ndim})")
    if w.ndim == 3:
        w = w[:, :, None, :]
    default_kernel = list(w.shape[2:]) if x.rank == 4 else [w.shape[3]]
    win = read_window(ctx, x.rank, onnx_attrs(ctx.node).get("kernel_shape", default_kernel))
    if win.kernel != list(w.shape[2:]):
        raise ctx.shape_error(f"kernel_shape {win.kernel} != weight shape {list(w.shape)}")
    group = int(onnx_attrs(ctx.node).get("group", 1))
    cin = x.shape[1]
    o, cg = w.shape[0], w.shape[1]
    if group < 1 or o % group or cin is None or cin != cg * group:
        raise ctx.shape_error(f"input channels {cin}, weight {list(w.shape)} and group {group} "
                              "do not fit")
    bias = _bias(ctx, o)
    t, back = to_nhwc(ctx, x)
    padding, pads = resolve_padding(ctx, win, t.shape[1:3])
    t = pad_nhwc(ctx, t, pads)
    attrs = {"stride": win.stride, "dilation": win.dilation, "padding": padding}
    name = ctx.out_name()
    if cg == 1 and group > 1:
        y = ctx.emit("DEPTHWISE_CONV_2D",
                     [t, ctx.const_tensor(w.transpose(1, 2, 3, 0), name + "__weight"),
                      None if bias is None else ctx.const_tensor(bias, name + "__bias")],
                     {**attrs, "depth_multiplier": o // cin},
                     name=name + ("__conv" if x.rank == 3 else ""))
    else:  # grouped (group > 1) is one CONV_2D too: its weight holds a group's input channels
        y = _conv2d(ctx, t, w, bias, attrs, name + ("__conv" if x.rank == 3 else ""))
    ctx.set_out(back(y))


def _conv2d(ctx: Ctx, t: Tensor, w: np.ndarray, bias, attrs: dict, name: str,
            suffix: str = "") -> Tensor:
    inputs = [t, ctx.const_tensor(w.transpose(0, 2, 3, 1), name + suffix + "__weight"),
              None if bias is None else ctx.const_tensor(bias, name + suffix + "__bias")]
    return ctx.emit("CONV_2D", inputs, attrs, name=name + suffix, suffix=suffix)


@converter("ConvTranspose")
def _conv_transpose(ctx: Ctx) -> None:
    x = ctx.need(0)
    w = np.asarray(ctx.const_in(1, "weight"), np.float32)
    a = onnx_attrs(ctx.node)
    if w.ndim != x.rank or w.ndim not in (3, 4):
        raise ctx.unsupported(f"only 1-D and 2-D transposed convolutions (weight rank {w.ndim})")
    if int(a.get("group", 1)) != 1:
        raise ctx.unsupported("grouped ConvTranspose")
    if w.ndim == 3:
        w = w[:, :, None, :]
    default_kernel = list(w.shape[2:]) if x.rank == 4 else [w.shape[3]]
    win = read_window(ctx, x.rank, a.get("kernel_shape", default_kernel))
    if win.kernel != list(w.shape[2:]) or win.dilation != [1, 1]:
        raise ctx.unsupported("dilated ConvTranspose or kernel_shape not matching the weight")
    if "output_shape" in a:
        raise ctx.unsupported("the output_shape attribute (use pads/output_padding)")
    nsp = x.rank - 2
    out_pad = [int(v) for v in a.get("output_padding", [0] * nsp)]
    if len(out_pad) != nsp or any(v < 0 for v in out_pad):
        raise ctx.shape_error(f"bad output_padding {out_pad}")
    if nsp == 1:
        out_pad = [0, *out_pad]
    t, back = to_nhwc(ctx, x)
    hw = t.shape[1:3]
    pads = win.pads
    if win.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if None in hw:
            raise ctx.shape_error("auto_pad SAME needs static spatial dims")
        pads = []
        for i in range(2):
            total = max(win.stride[i] * (hw[i] - 1) + out_pad[i] + win.kernel[i]
                        - hw[i] * win.stride[i], 0)
            small, big = total // 2, total - total // 2
            pads.append((small, big) if win.auto_pad == "SAME_UPPER" else (big, small))
    elif win.auto_pad == "VALID":
        pads = [(0, 0), (0, 0)]
    bias = _bias(ctx, w.shape[1])
    name = ctx.out_name()
    wt = ctx.const_tensor(w.transpose(1, 2, 3, 0), name + "__weight")
    crop_end = [pads[i][1] - out_pad[i] for i in range(2)]
    for i in range(2):
        if hw[i] is not None and (hw[i] - 1) * win.stride[i] + win.kernel[i] - pads[i][0] \
                - crop_end[i] <= 0:
            raise ctx.shape_error(f"output size along spatial axis {i} would be <= 0")
    trailing = any(c < 0 for c in crop_end)
    full = ctx.emit("TRANSPOSE_CONV", [t, wt, None if bias is None or trailing else
                                       ctx.const_tensor(bias, name + "__bias")],
                    {"stride": win.stride, "padding": "VALID"}, suffix="__full")
    y = full
    if any(p[0] > 0 for p in pads) or any(c > 0 for c in crop_end):
        y = ctx.emit("STRIDED_SLICE", [y], {
            "begin": [0, pads[0][0], pads[1][0], 0],
            "end": [INT32_MAX] + [(full.shape[1 + i] - max(crop_end[i], 0))
                                  if full.shape[1 + i] is not None else INT32_MAX
                                  for i in range(2)] + [INT32_MAX],
            "strides": [1, 1, 1, 1]}, suffix="__crop")
    if trailing:
        y = pad_nhwc(ctx, y, [(0, max(-c, 0)) for c in crop_end])
        if bias is not None:
            y = ctx.emit("ADD", [y, ctx.const_tensor(bias, name + "__bias")], suffix="__biased")
    ctx.set_out(back(y))


@converter("BatchNormalization")
def _batch_norm(ctx: Ctx) -> None:
    x = ctx.need(0)
    a = onnx_attrs(ctx.node)
    if int(a.get("training_mode", 0)):
        raise ctx.unsupported("training_mode=1")
    params = [np.asarray(ctx.const_in(i, n), np.float32).reshape(-1)
              for i, n in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "var"))]
    c = x.shape[1] if x.rank >= 2 else None
    if c is None or any(p.size != c for p in params):
        raise ctx.shape_error(f"BatchNormalization parameters do not match {c} channels")
    perm = channel_last(x.rank)
    t = ctx.as_tensor(x, perm)
    name = ctx.out_name()
    consts = [ctx.const_tensor(p, f"{name}__{n}")
              for p, n in zip(params, ("gamma", "beta", "mean", "var"))]
    y = ctx.emit("BATCH_NORM", [t, *consts], {"epsilon": float(a.get("epsilon", 1e-5)),
                                             "momentum": float(a.get("momentum", 0.9))})
    ctx.set_out(ctx.act(y, perm))


@converter("Gemm")
def _gemm(ctx: Ctx) -> None:
    a = onnx_attrs(ctx.node)
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    ta, tb = int(a.get("transA", 0)), int(a.get("transB", 0))
    A, B = ctx.need(0), ctx.need(1)
    if A.rank != 2 or B.rank != 2:
        raise ctx.shape_error(f"Gemm needs 2-D inputs, got ranks {A.rank} and {B.rank}")
    at = ctx.as_tensor(A, ident(2))
    if ta:
        at = ctx.transpose(at, [1, 0])
    if not B.is_const:
        _gemm_activations(ctx, at, B, alpha, beta, tb)
        return
    w = np.asarray(B.const, np.float32)
    w = (w if tb else w.T) * np.float32(alpha)
    n = w.shape[0]
    c = ctx.const_in(2, "C", optional=True)
    bias = None
    if c is not None:
        c = np.asarray(c, np.float32) * np.float32(beta)
        if c.size == n and (c.ndim == 1 or c.shape == (1, n)):
            bias, c = c.reshape(-1), None
        elif c.size == 1:
            bias, c = np.full(n, c.reshape(-1)[0], np.float32), None
    name = ctx.out_name()
    y = ctx.emit("FULLY_CONNECTED",
                 [at, ctx.const_tensor(w, name + "__weight"),
                  None if bias is None else ctx.const_tensor(bias, name + "__bias")],
                 suffix="" if c is None else "__fc")
    if c is not None:
        y = ctx.emit("ADD", [y, ctx.const_tensor(c, name + "__c")])
    ctx.set_out(ctx.act(y))


def _gemm_activations(ctx: Ctx, at: Tensor, B: Val, alpha: float, beta: float,
                      tb: int) -> None:
    """Gemm whose B is an activation: BATCH_MATMUL, then MUL by alpha and ADD beta * C."""
    name = ctx.out_name()
    c = ctx.const_in(2, "C", optional=True)
    y = ctx.emit("BATCH_MATMUL", [at, ctx.as_tensor(B, ident(2))], {"adj_y": bool(tb)},
                 suffix="__mm" if alpha != 1 or c is not None else "")
    if alpha != 1:
        y = ctx.emit("MUL", [y, ctx.const_tensor(np.float32(alpha), name + "__alpha")],
                     suffix="__alpha" if c is not None else "")
    if c is not None:
        y = ctx.emit("ADD", [y, ctx.const_tensor(np.asarray(c, np.float32) * np.float32(beta),
                                                 name + "__c")])
    ctx.set_out(ctx.act(y))


@converter("MatMul")
def _matmul(ctx: Ctx) -> None:
    A, B = ctx.need(0), ctx.need(1)
    if A.rank < 2 or B.rank < 2:
        raise ctx.unsupported("MatMul with a 1-D operand")
    if B.is_const and B.rank == 2 and not A.is_const:
        w = np.asarray(B.const, np.float32).T
        y = ctx.emit("FULLY_CONNECTED",
                     [ctx.as_tensor(A, ident(A.rank)),
                      ctx.const_tensor(w, ctx.out_name() + "__weight"), None],
                     {"keep_num_dims": A.rank > 2})
        ctx.set_out(ctx.act(y))
        return
    y = ctx.emit("BATCH_MATMUL", [ctx.as_tensor(A, ident(A.rank)),
                                  ctx.as_tensor(B, ident(B.rank))])
    ctx.set_out(ctx.act(y))

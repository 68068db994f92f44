"""Hybrid (dynamic-range) kernels: float input, int8 constant weight, float output.

LiteRT's hybrid kernels quantize their float input on the fly, accumulate in int32 and
scale the accumulator back to float. This module follows them
(``tflite/kernels/{conv,depthwise_conv,fully_connected,batch_matmul}.cc``, the
portable ``tensor_utils``), as the installed runtime (ai_edge_litert 2.3.0) behaves:

- the input is quantized per batch image (CONV_2D, DEPTHWISE_CONV_2D) or per row of the
  last axis (FULLY_CONNECTED, BATCH_MATMUL), asymmetric (``AsymmetricQuantizeFloats``:
  range extended to 0, scale ``float32(max - min) / 255``, zero point from the side with
  the smaller error, then ``round(x · (1/scale)) + zp``). A CONV_2D whose weight scales
  are all equal runs LiteRT's other hybrid path, symmetric per image
  (``SymmetricQuantizeFloats``: scale max|x|/127);
- int32 accumulation of ``w · (q - zp)`` (padding taps contribute nothing);
- the float result, in the order each kernel computes it (:func:`_scale_back`), then
  the fused activation.

``mode="reference"`` follows BUILTIN_REF, ``mode="xnnpack"`` the default resolver:
XNNPACK takes hybrid CONV_2D, FULLY_CONNECTED and BATCH_MATMUL itself with its own
dynamic quantization (qd8: float32 parameters, round to nearest even), modelled by
:func:`xnn_quantize_rows`; DEPTHWISE_CONV_2D stays on LiteRT's optimized kernel. What is
bit-exact and what within a tolerance is measured in ``tests/test_modes.py`` and
written in ``docs/modes.md``.
"""

from __future__ import annotations

import numpy as np

from qatir.ir import Node
from qatir.numerics import round_half_away
from qatir.reference_kernels import patches
from qatir.target import XNN_HYBRID_OPS

_F = np.float32


def asymmetric_quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LiteRT's ``AsymmetricQuantizeFloats`` on each row of ``x`` [rows, n]:
    (int8 values, float32 scales, int32 zero points).

    The installed runtime (ai_edge_litert 2.3.0) takes the range ``max - min`` in float32
    before dividing by 255, and rounds ``x·(1/scale)`` before adding the zero point (the
    source snapshot's all-double scale is 1 ulp off on some rows, and its
    ``round(zp + x·(1/scale))`` differs at ties: measured on MobileNetV2)."""
    x = x.astype(np.float32)
    rmin = np.minimum(x.min(axis=1), _F(0))
    rmax = np.maximum(x.max(axis=1), _F(0))
    flat = rmin == rmax
    scale = np.where(flat, 1.0, (rmax - rmin).astype(np.float32).astype(np.float64) / 255.0)
    s32 = np.where(flat, _F(1), scale.astype(np.float32)).astype(np.float32)
    r_lo, r_hi, sd = rmin.astype(np.float64), rmax.astype(np.float64), s32.astype(np.float64)
    zp_min, zp_max = -128.0 - r_lo / sd, 127.0 - r_hi / sd
    err_min, err_max = 128.0 + np.abs(r_lo / sd), 127.0 + np.abs(r_hi / sd)
    zp = np.where(err_min < err_max, zp_min, zp_max)
    zp = np.where(zp <= -128, -128, np.where(zp >= 127, 127, round_half_away(zp)))
    zp = np.where(flat, 0, zp).astype(np.int32)
    inv = (_F(1) / s32).astype(np.float32)
    q = np.clip(round_half_away((x * inv[:, None]).astype(np.float32)) + zp[:, None], -128, 127)
    q = np.where(flat[:, None], 0, q).astype(np.int8)
    return q, s32, zp


def symmetric_quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LiteRT's ``SymmetricQuantizeFloats`` on each row: (int8 values, float32 scales)."""
    x = x.astype(np.float32)
    rng = np.maximum(np.abs(x.min(axis=1)), np.abs(x.max(axis=1))).astype(np.float32)
    flat = rng == 0
    safe = np.where(flat, _F(1), rng)
    scale = np.where(flat, _F(1), (safe / _F(127)).astype(np.float32)).astype(np.float32)
    inv = (_F(127) / safe).astype(np.float32)
    q = np.clip(round_half_away((x * inv[:, None]).astype(np.float32)), -127, 127)
    return np.where(flat[:, None], 0, q).astype(np.int8), scale


def xnn_quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """XNNPACK's qd8 dynamic quantization of each row (``xnn_f32_qd8_asymmetric_
    quantization_params`` in float32, values rounded to nearest even):
    (int8 values, float32 scales, int32 zero points)."""
    x = x.astype(np.float32)
    rmin = np.minimum(x.min(axis=1), _F(0))
    rmax = np.maximum(x.max(axis=1), _F(0))
    flat = rmin == rmax
    span = np.where(flat, _F(1), (rmax - rmin).astype(np.float32))
    inv = np.where(flat, _F(1), (_F(255) / span).astype(np.float32)).astype(np.float32)
    lo, hi = (rmin * inv).astype(np.float32), (rmax * inv).astype(np.float32)
    zp = np.where((_F(-128) + lo) + (_F(127) + hi) > 0, _F(-128) - lo, _F(127) - hi)
    zp = np.rint(np.clip(zp.astype(np.float32), -128, 127)).astype(np.int32)
    q = np.clip(np.rint((x * inv[:, None]).astype(np.float32)) + zp[:, None], -128, 127)
    return q.astype(np.int8), (_F(1) / inv).astype(np.float32), zp


def _act(node: Node, y: np.ndarray) -> np.ndarray:
    act = node.attrs.get("fused_activation", "NONE")
    lo, hi = {"NONE": (-np.inf, np.inf), "RELU": (0, np.inf), "RELU6": (0, 6),
              "RELU_N1_TO_1": (-1, 1)}.get(act, (-np.inf, np.inf))
    y = np.clip(y, _F(lo), _F(hi)) if act != "TANH" else np.tanh(y.astype(np.float64))
    return np.asarray(y).astype(np.float32)


def _weight_scales(node: Node, n: int) -> np.ndarray:
    s = np.asarray(node.inputs[1].quant.scale, np.float32)
    return np.full(n, s[0], np.float32) if s.size == 1 else s


def _bias(xs: list, n: int) -> np.ndarray:
    b = xs[2] if len(xs) > 2 and xs[2] is not None else None
    return np.zeros(n, np.float32) if b is None else np.asarray(b, np.float32)


def _xnn_pointwise(node: Node) -> bool:
    """XNNPACK runs a 1x1, stride-1 CONV_2D as a matrix product whose dynamic quantization
    is per pixel, not per image (measured)."""
    w = node.inputs[1]
    return (node.op == "CONV_2D" and w.shape[1:3] == (1, 1)
            and tuple(node.attrs["stride"]) == (1, 1))


def _quantize_images(node: Node, x: np.ndarray, mode: str, symmetric: bool
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantized input, per-image scales and zero points broadcastable to NHWC."""
    rows = x.reshape(x.shape[0], -1)
    if mode == "xnnpack" and _xnn_pointwise(node):
        q, s, z = xnn_quantize_rows(x.reshape(-1, x.shape[-1]))
        return q.reshape(x.shape), s.reshape(x.shape[:3] + (1,)), z.reshape(x.shape[:3] + (1,))
    if mode == "xnnpack" and node.op in XNN_HYBRID_OPS:
        q, s, z = xnn_quantize_rows(rows)
    elif symmetric:
        q, s = symmetric_quantize_rows(rows)
        z = np.zeros(len(s), np.int32)
    else:
        q, s, z = asymmetric_quantize_rows(rows)
    return q.reshape(x.shape), s[:, None, None, None], z[:, None, None, None]


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 fused multiply-add: the float64 product of two float32 is exact, the sum is
    rounded to float64 and then to float32 (a true fma rounds once; the two can differ only
    when the float64 sum is itself a float32 tie, not seen in any measurement)."""
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)


def _scale_back(node: Node, acc: np.ndarray, s: np.ndarray, ws: np.ndarray, bias: np.ndarray,
                mode: str, symmetric: bool = False) -> np.ndarray:
    """The float result of an int32 accumulator, in the order the kernel computes it
    (measured bit-exact, tests/test_modes.py): XNNPACK ``fma(acc·in_scale, w_scale, b)``;
    BUILTIN_REF's per-channel CONV_2D ``(acc·w_scale)·in_scale + b``; LiteRT's optimized
    DEPTHWISE_CONV_2D the same on groups of 4 channels (its NEON path, on x86 through
    NEON_2_SSE) and ``(acc·in_scale)·w_scale + b`` on the last C mod 4; the others
    ``acc·(w_scale·in_scale) + b``."""
    a = acc.astype(np.float32)
    if mode == "xnnpack" and node.op in XNN_HYBRID_OPS:
        return _fma((a * s).astype(np.float32), ws, bias)
    if mode == "xnnpack" and node.op == "DEPTHWISE_CONV_2D":
        vec = (a * ws).astype(np.float32) * s
        tail = (a * s).astype(np.float32) * ws
        grouped = np.arange(a.shape[-1]) < a.shape[-1] // 4 * 4
        return (np.where(grouped, vec, tail).astype(np.float32) + bias).astype(np.float32)
    if mode == "reference" and node.op == "CONV_2D" and not symmetric:
        y = ((a * ws).astype(np.float32) * s).astype(np.float32)
    else:
        y = (a * (ws * s).astype(np.float32)).astype(np.float32)
    return (y + bias).astype(np.float32)


def hybrid_conv(node: Node, xs: list, mode: str) -> np.ndarray:
    """CONV_2D / DEPTHWISE_CONV_2D with an int8 weight on a float input."""
    x, w = np.asarray(xs[0], np.float32), xs[1].astype(np.int64)
    depthwise = node.op == "DEPTHWISE_CONV_2D"
    n_out = w.shape[3] if depthwise else w.shape[0]
    ws = _weight_scales(node, n_out)
    symmetric = not depthwise and bool(np.all(ws == ws[0])) and mode != "xnnpack"
    q, s, z = _quantize_images(node, x, mode, symmetric)
    centred = q.astype(np.int64) - z
    p, _ = patches(centred, w.shape[1], w.shape[2], node.attrs, 0)
    if depthwise:
        mult = int(node.attrs.get("depth_multiplier", 1))
        p = np.repeat(p, mult, axis=-1) if mult > 1 else p
        acc = np.einsum("nhiwjc,ijc->nhwc", p, w[0], optimize=True)
    else:
        acc = np.einsum("nhiwjc,oijc->nhwo", p, w, optimize=True)
    return _act(node, _scale_back(node, acc, s, ws, _bias(xs, n_out), mode, symmetric))


def hybrid_fc(node: Node, xs: list, mode: str) -> np.ndarray:
    """FULLY_CONNECTED with an int8 weight [N, K] on a float input."""
    w = xs[1].astype(np.int64)
    k = w.shape[1]
    rows = np.asarray(xs[0], np.float32).reshape(-1, k)
    if mode == "xnnpack":
        q, s, z = xnn_quantize_rows(rows)
    else:
        q, s, z = asymmetric_quantize_rows(rows)
    acc = (q.astype(np.int64) - z[:, None]) @ w.T
    ws = _weight_scales(node, w.shape[0])
    y = _scale_back(node, acc, s[:, None], ws, _bias(xs, w.shape[0]), mode)
    return _act(node, y).reshape(node.outputs[0].shape)


def hybrid_batch_matmul(node: Node, xs: list, mode: str) -> np.ndarray:
    """BATCH_MATMUL of a float left-hand side by an int8 constant right-hand side."""
    a = np.asarray(xs[0], np.float32)
    b = xs[1].astype(np.int64)
    if node.attrs.get("adj_y"):
        b = np.swapaxes(b, -1, -2)
    k, n = b.shape[-2], b.shape[-1]
    rows = a.reshape(-1, k)
    if mode == "xnnpack":
        q, s, z = xnn_quantize_rows(rows)
    else:
        q, s, z = asymmetric_quantize_rows(rows)
    q = q.reshape(a.shape).astype(np.int64)
    raw = q @ b  # [..., M, N]
    ws = _weight_scales(node, n)
    zf = z.reshape(a.shape[:-1] + (1,)).astype(np.float32)
    if mode == "xnnpack":
        total = (q - z.reshape(a.shape[:-1] + (1,))) @ b
    else:
        row_sum = b.sum(axis=-2, keepdims=True).astype(np.float32)
        total = (raw.astype(np.float32) - (row_sum * zf).astype(np.float32)).astype(np.float32)
        total = np.trunc(total).astype(np.int64)
    y = _scale_back(node, total, s.reshape(a.shape[:-1] + (1,)), ws, np.zeros(n, np.float32),
                    mode)
    return y.reshape(node.outputs[0].shape)


HYBRID_KERNELS = {"CONV_2D": hybrid_conv, "DEPTHWISE_CONV_2D": hybrid_conv,
                  "FULLY_CONNECTED": hybrid_fc, "BATCH_MATMUL": hybrid_batch_matmul}


def is_hybrid(node: Node) -> bool:
    """A float node whose weight (input 1) is an int8 constant."""
    return (node.op in HYBRID_KERNELS and len(node.inputs) > 1 and node.inputs[1] is not None
            and node.inputs[1].dtype == np.int8 and node.inputs[1].quant is not None)

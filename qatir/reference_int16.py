"""Integer kernels of the 16x8 ops (int16 activations, int8 weights, int64 bias).

Each matches LiteRT's int16 kernel bit for bit. XNNPACK delegates no int16 op, and
LiteRT's builtin kernels take the same path under both resolvers for the forms qatir
writes (an int64 bias sends CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED to their
reference kernels), so ``mode`` does not change the result. The rules, from LiteRT's
sources:

- CONV_2D / DEPTHWISE_CONV_2D (``reference/integer_ops/conv.h``, ``depthwise_conv.h``):
  an int64 accumulator plus the int64 bias, then the int64 ``MultiplyByQuantizedMultiplier``
  of ``internal/common.cc``: the multiplier reduced to 16 bits,
  ``(qm + 2^15) >> 16`` (0x7FFF from 0x7FFF0000 up), and one rounding shift by
  ``15 - shift``; no output offset (zero point 0).
- FULLY_CONNECTED (``reference/integer_ops/fully_connected.h``, the overload given the
  scales): ``round(double(acc) * (double(in_s) * double(w_s) / double(out_s)))``.
- ADD, SUB (``add.cc``, ``sub.cc``, ``pot_scale_int16`` false): the int8 rescale with
  ``left_shift`` 15; SUB subtracts the rescaled inputs (``reference_ops::Sub``,
  ``optimized_integer_ops::Sub`` outside AVX2 builds).
- MUL (``reference/integer_ops/mul.h``): the int8 formula, int32 product.
- pools, data movement: the int8 formulas on int16 values.
- QUANTIZE int8/int16 -> int8/int16 (``quantize.cc`` Requantize): MBQM of ``x - zp_in``
  by in/out, plus ``zp_out``.
- LOGISTIC, TANH, SOFTMAX, MEAN: :mod:`qatir.reference_int16_act` (LiteRT's sigmoid table,
  its 513-entry exp / reciprocal tables, QuantizedMeanOrSum).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from qatir import reference_int16_act as A
from qatir import reference_kernels as K
from qatir.int16 import I16_MAX, I16_MIN, touches_int16
from qatir.ir import Node
from qatir.reference_math import (
    act_range,
    mbqm,
    quantize_multiplier,
    quantize_multipliers,
    round_half_away,
)

Kernel = Callable[[Node, list, str], np.ndarray]


def is_int16(node: Node) -> bool:
    """``node`` reads or writes an int16 activation (:func:`qatir.int16.touches_int16`)."""
    return touches_int16(node)


def _act16(node: Node) -> tuple[int, int]:
    q = node.outputs[0].quant
    return act_range(node.attrs.get("fused_activation", "NONE"), q.scale[0], q.zero_point[0],
                     I16_MIN, I16_MAX)


def mbqm64(x: np.ndarray, qm: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """LiteRT's ``MultiplyByQuantizedMultiplier(int64_t x, ...)`` (double-rounding build)."""
    qm = np.asarray(qm, np.int64)
    reduced = np.where(qm < 0x7FFF0000, (qm + (1 << 15)) >> 16, 0x7FFF)
    total = 15 - np.asarray(shift, np.int64)
    return (np.asarray(x, np.int64) * reduced + (np.int64(1) << (total - 1))) >> total


def _conv_requant(node: Node, acc: np.ndarray) -> np.ndarray:
    """int64 accumulator (channel last, bias added) -> int16 output."""
    s_in = np.float64(node.inputs[0].quant.scale[0])
    s_out = np.float64(node.outputs[0].quant.scale[0])
    eff = s_in * np.asarray(node.inputs[1].quant.scale, np.float64) / s_out
    qm, sh = quantize_multipliers(eff)
    lo, hi = _act16(node)
    return np.clip(mbqm64(acc, qm, sh), lo, hi).astype(np.int16)


def _int64_bias(xs: list, n: int) -> np.ndarray:
    b = xs[2] if len(xs) > 2 else None
    return np.zeros(n, np.int64) if b is None else b.astype(np.int64)


def conv2d(node: Node, xs: list, mode: str) -> np.ndarray:
    x, w = xs[0], xs[1]
    o, kh, kw, c = w.shape
    cols, oh, ow = K._taps(x, kh, kw, node.attrs, 0, np.float64)  # exact: < 2^53
    acc = cols.reshape(-1, kh * kw * c) @ w.reshape(o, -1).astype(np.float64).T
    acc = np.rint(acc).astype(np.int64).reshape(x.shape[0], oh, ow, o) + _int64_bias(xs, o)
    return _conv_requant(node, acc)


def depthwise_conv2d(node: Node, xs: list, mode: str) -> np.ndarray:
    x, w = xs[0], xs[1]
    m = int(node.attrs["depth_multiplier"])
    _, kh, kw, o = w.shape
    cols, _, _ = K._taps(x, kh, kw, node.attrs, 0, np.int64)
    if m > 1:
        cols = np.repeat(cols, m, axis=-1)
    acc = np.einsum("nhwtc,tc->nhwc", cols, w[0].reshape(kh * kw, o).astype(np.int64))
    return _conv_requant(node, acc + _int64_bias(xs, o))


def fully_connected(node: Node, xs: list, mode: str) -> np.ndarray:
    x, w = xs[0], xs[1]
    flat = x.reshape(-1, w.shape[1]).astype(np.float64)
    acc = np.rint(flat @ w.astype(np.float64).T).astype(np.int64) + _int64_bias(xs, w.shape[0])
    s_in = np.float64(np.float32(node.inputs[0].quant.scale[0]))
    s_out = np.float64(np.float32(node.outputs[0].quant.scale[0]))
    s_w = np.asarray(node.inputs[1].quant.scale, np.float32).astype(np.float64)  # 1 or per row
    y = round_half_away(acc.astype(np.float64) * (s_in * s_w / s_out)).astype(np.int64)
    lo, hi = _act16(node)
    return np.clip(y, lo, hi).astype(np.int16).reshape(node.outputs[0].shape)


def add_sub(node: Node, xs: list, mode: str) -> np.ndarray:
    s1, s2, so = (float(t.quant.scale[0]) for t in (*node.inputs, node.outputs[0]))
    tw = 2.0 * max(s1, s2)
    (m1, e1), (m2, e2), (mo, eo) = (quantize_multiplier(s1 / tw), quantize_multiplier(s2 / tw),
                                    quantize_multiplier(tw / ((1 << 15) * so)))
    a = mbqm(xs[0].astype(np.int64) << 15, m1, e1)
    b = mbqm(xs[1].astype(np.int64) << 15, m2, e2)
    lo, hi = _act16(node)
    raw = a - b if node.op == "SUB" else a + b
    return np.clip(mbqm(raw, mo, eo), lo, hi).astype(np.int16)


def mul(node: Node, xs: list, mode: str) -> np.ndarray:
    s1, s2, so = (np.float32(t.quant.scale[0]) for t in (*node.inputs, node.outputs[0]))
    qm, sh = quantize_multiplier(float(np.float32(s1 * s2) / so))
    prod = xs[0].astype(np.int64) * xs[1].astype(np.int64)
    lo, hi = _act16(node)
    return np.clip(mbqm(prod, qm, sh), lo, hi).astype(np.int16)


def max_pool(node: Node, xs: list, mode: str) -> np.ndarray:
    kh, kw = node.attrs["filter"]
    p, _ = K.patches(xs[0], kh, kw, node.attrs, I16_MIN)
    lo, hi = _act16(node)
    return np.clip(p.max(axis=(2, 4)), lo, hi).astype(np.int16)


def avg_pool(node: Node, xs: list, mode: str) -> np.ndarray:
    kh, kw = node.attrs["filter"]
    p, mask = K.patches(xs[0].astype(np.int64), kh, kw, node.attrs, 0)
    total = p.sum(axis=(2, 4))
    cnt = mask.sum(axis=(1, 3))[None, :, :, None].astype(np.int64)
    half = cnt // 2
    num = np.where(total > 0, total + half, total - half)
    avg = np.where(num >= 0, num // cnt, -((-num) // cnt))
    lo, hi = _act16(node)
    return np.clip(avg, lo, hi).astype(np.int16)


def quantize(node: Node, xs: list, mode: str) -> np.ndarray:
    """QUANTIZE into or out of int16: LiteRT's builtin kernel under both resolvers."""
    return K.quantize(node, xs, "reference")


KERNELS: dict[str, Kernel] = {
    "CONV_2D": conv2d, "DEPTHWISE_CONV_2D": depthwise_conv2d, "FULLY_CONNECTED": fully_connected,
    "ADD": add_sub, "SUB": add_sub, "MUL": mul, "MAX_POOL_2D": max_pool, "AVERAGE_POOL_2D": avg_pool,
    "QUANTIZE": quantize, "LOGISTIC": A.logistic, "TANH": A.tanh, "SOFTMAX": A.softmax,
    "MEAN": A.mean,
}
#: ops whose int8 kernel in :mod:`qatir.reference` moves values without arithmetic, so it
#: runs int16 values as they are.
DATA_MOVEMENT = frozenset({"RESHAPE", "SQUEEZE", "TRANSPOSE", "CONCATENATION", "PAD",
                           "STRIDED_SLICE", "RESIZE_NEAREST_NEIGHBOR", "DEQUANTIZE"})


def kernel_for(node: Node, int8_table: dict[str, Kernel]) -> Kernel | None:
    """The int16 kernel of ``node`` (None: qatir has none)."""
    if node.op in KERNELS:
        return KERNELS[node.op]
    return int8_table.get(node.op) if node.op in DATA_MOVEMENT else None

"""Integer kernels with their own fixed-point algorithms: SOFTMAX, MEAN, HARD_SWISH, RESIZE_BILINEAR.

SOFTMAX under ``BUILTIN_REF`` is the gemmlowp fixed-point algorithm
(PreprocessSoftmaxScaling with 5 integer bits for the scaled difference, 12
accumulation bits, exp_on_negative_values, one_over_one_plus_x); the
optimized kernel the default resolver runs uses a 256-entry float ``expf``
table instead.
"""

from __future__ import annotations

import math

import numpy as np

from qatir.errors import ExportError
from qatir.ir import Node
from qatir.reference_math import (
    INT32_MAX,
    libm,
    mbqm,
    quantize_multiplier,
    rdbpot,
    round_half_away,
    sat_shift_left,
    srdhm,
)

_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
               (2, 39332535), (3, 720401), (4, 242))


def _exp_quarter(a: np.ndarray) -> np.ndarray:
    """exp on [-1/4, 0), Q0.31 in and out (gemmlowp)."""
    x = a + (1 << 28)
    x2 = srdhm(x, x)
    x3 = srdhm(x2, x)
    x4 = srdhm(x2, x2)
    x4_over_4 = rdbpot(x4, 2)
    poly = rdbpot(srdhm(x4_over_4 + x3, 715827883) + x2, 1)
    return 1895147668 + srdhm(1895147668, x + poly)


def exp_on_negative_values(a: np.ndarray, integer_bits: int = 5) -> np.ndarray:
    """gemmlowp exp_on_negative_values for Q(integer_bits).(31 - integer_bits) input."""
    frac = 31 - integer_bits
    quarter = 1 << (frac - 2)
    a_mod = (a & (quarter - 1)) - quarter
    result = _exp_quarter(sat_shift_left(a_mod, integer_bits))
    remainder = a_mod - a
    for exponent, mult in _EXP_BARREL:
        if integer_bits > exponent:
            bit = 1 << (frac + exponent)
            result = np.where((remainder & bit) != 0, srdhm(result, mult), result)
    return np.where(a == 0, INT32_MAX, result)


def _one_over_one_plus_x(a: np.ndarray) -> np.ndarray:
    """gemmlowp one_over_one_plus_x_for_x_in_0_1, Q0.31 in and out."""
    s = a + INT32_MAX
    half_den = np.where(s >= 0, (s + 1) // 2, -((-(s - 1)) // 2))
    x = 1515870810 + srdhm(half_den, -1010580540)
    for _ in range(3):
        hdx = srdhm(half_den, x)
        one_minus = (1 << 29) - hdx
        x = x + sat_shift_left(srdhm(x, one_minus), 2)
    return sat_shift_left(x, 1)


def _clz32(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.int64) & 0xFFFFFFFF
    out = np.full(x.shape, 32, np.int64)
    nz = x > 0
    out[nz] = 31 - np.floor(np.log2(x[nz].astype(np.float64))).astype(np.int64)
    return out


def softmax_ref(x: np.ndarray, in_scale: float, beta: float) -> np.ndarray:
    """reference_ops::Softmax for int8 in/out (output scale 1/256, zero point -128)."""
    real = min(float(beta) * float(in_scale) * (1 << 26), float(2**31 - 1))
    qm, shift = quantize_multiplier(real)
    radius = math.floor(((1 << 5) - 1) * (1 << 26) / (1 << shift))
    diff_min = -radius
    v = x.astype(np.int64)
    diff = v - v.max(axis=-1, keepdims=True)
    ok = diff >= diff_min
    rescaled = srdhm(diff << shift, qm)
    exps = exp_on_negative_values(rescaled)
    sums = np.where(ok, rdbpot(exps, 12), 0).sum(axis=-1, keepdims=True)
    headroom = _clz32(sums)
    bits_over = 12 - headroom
    shifted = ((sums << headroom) & 0xFFFFFFFF) - (1 << 31)
    scale = _one_over_one_plus_x(shifted)
    out = rdbpot(srdhm(scale, exps), bits_over + 31 - 8) - 128
    return np.where(ok, np.clip(out, -128, 127), -128).astype(np.int8)


def softmax_lut(x: np.ndarray, in_scale: float, beta: float, out_scale: float, out_zp: int
                ) -> np.ndarray:
    """optimized_ops::Softmax int8: a float expf table over the distance to the row max."""
    m = libm()
    scale = np.float32(-np.float32(in_scale) * np.float32(beta))
    table = np.asarray([m.expf(float(np.float32(scale * np.float32(d)))) for d in range(256)],
                       np.float32)
    v = x.astype(np.int64)
    dist = v.max(axis=-1, keepdims=True) - v
    e = table[dist]
    total = e.astype(np.float32).sum(axis=-1, keepdims=True, dtype=np.float32)
    inv = np.float32(1.0) / (total * np.float32(out_scale))
    y = round_half_away((e * inv).astype(np.float32)).astype(np.int64) + out_zp
    return np.clip(y, -128, 127).astype(np.int8)


def softmax(node: Node, xs: list, mode: str) -> np.ndarray:
    s_in = node.inputs[0].quant.scale[0]
    beta = float(np.float32(node.attrs["beta"]))
    if mode == "reference":
        return softmax_ref(xs[0], s_in, beta)
    q = node.outputs[0].quant
    return softmax_lut(xs[0], s_in, beta, q.scale[0], q.zero_point[0])


def mean(node: Node, xs: list, mode: str) -> np.ndarray:
    """MEAN over axes: sum, then rescale by in_s / (out_s * count) with double rounding."""
    x = xs[0].astype(np.int64)
    axes = node.attrs["axis"]
    axes = tuple(sorted({int(a) % x.ndim for a in ([axes] if isinstance(axes, int) else axes)}))
    (si, zi), (so, zo) = ((t.quant.scale[0], t.quant.zero_point[0])
                          for t in (node.inputs[0], node.outputs[0]))
    cnt = int(np.prod([x.shape[a] for a in axes]))
    total = (x - zi).sum(axis=axes, keepdims=bool(node.attrs["keep_dims"]))
    qm, sh = quantize_multiplier(float(si) / float(so))
    shift = sh
    num = mbqm(total, qm, shift)
    y = np.where(num >= 0, (num + cnt // 2) // cnt, -((-num + cnt // 2) // cnt)) + zo
    return np.clip(y, -128, 127).astype(np.int8)


def hard_swish(node: Node, xs: list, mode: str) -> np.ndarray:
    raise ExportError(f"node {node.name!r}: HARD_SWISH has no integer reference kernel yet")


def resize_bilinear(node: Node, xs: list, mode: str) -> np.ndarray:
    raise ExportError(f"node {node.name!r}: RESIZE_BILINEAR has no integer reference kernel yet")

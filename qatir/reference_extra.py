"""Integer kernels with their own fixed-point algorithms: SOFTMAX, MEAN, SUM, REDUCE_MAX,
HARD_SWISH, RESIZE_BILINEAR, SQUARED_DIFFERENCE, RSQRT.

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
from qatir.numerics import normalize_axes
from qatir.reference_math import (
    INT32_MAX,
    libm,
    mbqm,
    quantize_multiplier,
    rdbpot,
    round_half_away,
    sat_shift_left,
    srdhm,
    wrap32,
)
from qatir.target import SQUARED_DIFFERENCE_SHIFT, squared_difference_multiplier

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


def softmax_ref(x: np.ndarray, in_scale: float, beta: float, out_bits: int = 8) -> np.ndarray:
    """reference_ops::Softmax for int8 in, int8 or int16 out (output scale 2^-out_bits,
    zero point -2^(out_bits-1): the kernel's fixed output grid)."""
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
    lo, hi = -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1
    out = rdbpot(srdhm(scale, exps), bits_over + 31 - out_bits) + lo
    return np.where(ok, np.clip(out, lo, hi), lo).astype(np.int8 if out_bits == 8 else np.int16)


def softmax_lut(x: np.ndarray, in_scale: float, beta: float, out_scale: float, out_zp: int,
                out_dtype: type = np.int8) -> np.ndarray:
    """optimized_ops::Softmax, int8 in: a float expf table over the distance to the row
    max, summed in order in float32."""
    m = libm()
    scale = np.float32(-np.float32(in_scale) * np.float32(beta))
    table = np.asarray([m.expf(float(np.float32(scale * np.float32(d)))) for d in range(256)],
                       np.float32)
    v = x.astype(np.int64)
    dist = v.max(axis=-1, keepdims=True) - v
    e = table[dist]
    total = np.cumsum(e.astype(np.float32), axis=-1, dtype=np.float32)[..., -1:]
    inv = np.float32(1.0) / (total * np.float32(out_scale))
    y = round_half_away((e * inv).astype(np.float32)).astype(np.int64) + out_zp
    info = np.iinfo(out_dtype)
    return np.clip(y, info.min, info.max).astype(out_dtype)


def softmax(node: Node, xs: list, mode: str) -> np.ndarray:
    s_in = node.inputs[0].quant.scale[0]
    beta = float(np.float32(node.attrs["beta"]))
    out = node.outputs[0]
    if mode == "reference":
        return softmax_ref(xs[0], s_in, beta, out.dtype.itemsize * 8)
    q = out.quant
    return softmax_lut(xs[0], s_in, beta, q.scale[0], q.zero_point[0], out.dtype.type)


def mean(node: Node, xs: list, mode: str) -> np.ndarray:
    """MEAN: reference_ops::QuantizedMeanOrSum (REF) or XNNPACK's fp32 mean."""
    x = xs[0].astype(np.int64)
    axes = node.attrs["axis"]
    axes = tuple(normalize_axes([axes] if isinstance(axes, int) else axes, x.ndim))
    keep = bool(node.attrs["keep_dims"])
    (si, zi), (so, zo) = ((t.quant.scale[0], t.quant.zero_point[0])
                          for t in (node.inputs[0], node.outputs[0]))
    cnt = int(np.prod([x.shape[a] for a in axes]))
    if mode == "xnnpack":
        scale = np.float32(np.float32(si) / np.float32(so)) / np.float32(cnt)
        total = (x - zi).sum(axis=axes, keepdims=keep)
        y = np.rint(total.astype(np.float32) * np.float32(scale)).astype(np.int64) + zo
        return np.clip(y, -128, 127).astype(np.int8)
    total = x.sum(axis=axes, keepdims=keep) - zi * cnt
    qm, sh = quantize_multiplier(float(si) / float(so))
    shift = min(cnt.bit_length() - 1, 32, 31 + sh)
    qm = (qm << shift) // cnt
    y = mbqm(total, qm, sh - shift) + zo
    return np.clip(y, -128, 127).astype(np.int8)


def reduce_sum_max(node: Node, xs: list, mode: str) -> np.ndarray:
    """SUM (QuantizedMeanOrSum with compute_sum) and REDUCE_MAX (same params in and out)."""
    x = xs[0].astype(np.int64)
    axes = node.attrs["axis"]
    axes = tuple(normalize_axes([axes] if isinstance(axes, int) else axes, x.ndim))
    keep = bool(node.attrs["keep_dims"])
    if node.op == "REDUCE_MAX":
        return x.max(axis=axes, keepdims=keep).astype(np.int8)
    (si, zi), (so, zo) = ((t.quant.scale[0], t.quant.zero_point[0])
                          for t in (node.inputs[0], node.outputs[0]))
    cnt = int(np.prod([x.shape[a] for a in axes]))
    raw = x.sum(axis=axes, keepdims=keep)
    scale = np.float32(np.float32(si) / np.float32(so))
    if mode == "xnnpack":
        y = np.rint((raw - zi * cnt).astype(np.float32) * scale).astype(np.int64) + zo
        return np.clip(y, -128, 127).astype(np.int8)
    # LiteRT's BUILTIN_REF SUM reads int8 data through a uint8 pointer (reduce.cc passes
    # GetTensorData<uint8_t> to QuantizedMeanOrSum): reproduce that, clamp included.
    raw_u8 = (x & 0xFF).sum(axis=axes, keepdims=keep)
    qm, sh = quantize_multiplier(float(si) / float(so))
    y = np.clip(mbqm(raw_u8 - zi * cnt, qm, sh) + zo, 0, 255)
    return y.astype(np.uint8).view(np.int8)


def _srdhm16(a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul on int16."""
    a = np.asarray(a, np.int64)
    ab = a * np.int64(b)
    nudge = np.where(ab >= 0, 1 << 14, 1 - (1 << 14))
    r = ab + nudge
    res = np.where(r >= 0, r >> 15, -((-r) >> 15))
    return np.where((a == -32768) & (np.int64(b) == -32768), 32767, res)


def _sdhm16(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """TFLite SaturatingDoublingHighMul (int16, truncating)."""
    ab = np.asarray(a, np.int64) * np.asarray(b, np.int64)
    res = np.where(ab >= 0, ab >> 15, -((-ab) >> 15))
    return np.where((a == -32768) & (b == -32768), 32767, res)


def _sat_left16(x: np.ndarray, e: int) -> np.ndarray:
    return np.clip(np.asarray(x, np.int64) * (1 << e), -32768, 32767)


def _int16_multiplier(m: float) -> tuple[int, int]:
    q, e = quantize_multiplier(m)
    q16 = 32767 if q >= INT32_MAX - (1 << 15) else (q + (1 << 15)) >> 16
    return q16, e


def hard_swish(node: Node, xs: list, mode: str) -> np.ndarray:
    """reference_ops::HardSwish for int8 (int16 fixed point, TFLite's HardSwishPrepare)."""
    (si, zi), (so, zo) = ((t.quant.scale[0], t.quant.zero_point[0])
                          for t in (node.inputs[0], node.outputs[0]))
    hires = np.float32(np.float32(1.0 / 128.0) * np.float32(si))
    out_m, out_e = _int16_multiplier(float(np.float32(hires / np.float32(so))))
    rel_m, rel_e = _int16_multiplier(float(np.float32(hires / np.float32(3.0 / 32768.0))))
    v = xs[0].astype(np.int64) - zi
    hi_in = v * 128
    pre_out = _srdhm16(hi_in, out_m)
    rel = hi_in
    if rel_e > 0:
        rel = _sat_left16(rel, rel_e - 1)
    rel = _srdhm16(rel, rel_m)
    if rel_e > 0:
        rel = _sat_left16(rel, 1)
    if rel_e < 0:
        rel = rdbpot(rel, -rel_e)
    rel = (rel + (1 << 15)) >> 1
    out = rdbpot(_sdhm16(rel, pre_out), -out_e) + zo
    return np.clip(out, -128, 127).astype(np.int8)


def _interp(n_out: int, n_in: int, align: bool, half: bool) -> tuple[np.ndarray, ...]:
    if align and n_out > 1:
        scale = ((1 << 10) * (n_in - 1) + (n_out - 1) // 2) // (n_out - 1)
    else:
        scale = ((1 << 10) * n_in + n_out // 2) // n_out
    v = np.arange(n_out, dtype=np.int64)
    pos = v * scale + scale // 2 - (1 << 9) if half else v * scale
    lo = np.maximum(np.where(pos >= 0, pos >> 10, -((-pos) >> 10)), 0)
    up_num = pos + (1 << 10) - 1
    up = np.minimum(np.where(up_num >= 0, up_num >> 10, -((-up_num) >> 10)), n_in - 1)
    frac = pos - (1 << 10) * lo
    return lo, up, frac


def _xnn_interp(n_out: int, n_in: int, align: bool, half: bool) -> tuple[np.ndarray, ...]:
    adj = 1 if align else 0
    scale = np.float32(n_in - adj) / np.float32(n_out - adj) if n_out - adj > 0 else np.float32(0)
    v = np.arange(n_out, dtype=np.float32)
    if half and not align:
        offset = np.float32(np.float32(0.5) * scale - np.float32(0.5))
        pos = np.clip((v * scale + offset).astype(np.float32), np.float32(0), np.float32(n_in - 1))
    else:
        pos = (v * scale).astype(np.float32)
    lo = pos.astype(np.int64)
    up = np.minimum(lo + 1, n_in - 1)
    alpha = np.rint((pos - lo.astype(np.float32)) * np.float32(2048.0)).astype(np.int64)
    return lo, up, alpha


def _xnn_resize(x: np.ndarray, oh: int, ow: int, align: bool, half: bool) -> np.ndarray:
    """XNNPACK qs8 ibilinear: 11-bit weights, horizontal then vertical, round half up."""
    _, h, w, _ = x.shape
    y0, y1, av = _xnn_interp(oh, h, align, half)
    x0, x1, ah = _xnn_interp(ow, w, align, half)
    ah = ah[None, None, :, None]
    av = av[None, :, None, None]
    tl, tr = x[:, y0][:, :, x0], x[:, y0][:, :, x1]
    bl, br = x[:, y1][:, :, x0], x[:, y1][:, :, x1]
    t = (tl << 11) + (tr - tl) * ah
    b = (bl << 11) + (br - bl) * ah
    acc = (t << 11) + (b - t) * av
    return np.clip((acc + (1 << 21)) >> 22, -128, 127).astype(np.int8)


def resize_bilinear(node: Node, xs: list, mode: str) -> np.ndarray:
    """reference_ops::ResizeBilinearInteger (10-bit weights, rounding half away)."""
    x = xs[0].astype(np.int64)
    _, h, w, _ = x.shape
    oh, ow = node.attrs["size"]
    align, half = bool(node.attrs["align_corners"]), bool(node.attrs["half_pixel_centers"])
    if mode == "xnnpack":
        return _xnn_resize(x, oh, ow, align, half)
    y0, y1, fy = _interp(oh, h, align, half)
    x0, x1, fx = _interp(ow, w, align, half)
    fy = fy[None, :, None, None]
    fx = fx[None, None, :, None]
    one = 1 << 10
    acc = (x[:, y0][:, :, x0] * (one - fy) * (one - fx) + x[:, y1][:, :, x0] * fy * (one - fx)
           + x[:, y0][:, :, x1] * (one - fy) * fx + x[:, y1][:, :, x1] * fy * fx)
    rnd = np.where(acc > 0, 1 << 19, -(1 << 19))
    num = acc + rnd
    y = np.where(num >= 0, num >> 20, -((-num) >> 20))
    return np.clip(y, -128, 127).astype(np.int8)


# ------------------------------------------------------- SQUARED_DIFFERENCE, RSQRT
def squared_difference(node: Node, xs: list, mode: str) -> np.ndarray:
    """int8 SQUARED_DIFFERENCE (``squared_difference.cc``): both inputs, shifted left by 7,
    are rescaled onto ``2·max(s1, s2)``, the difference is squared in int32 and requantized
    with ``(2·max)² / (2^14·s_out)``; every multiplier is below one (double rounding)."""
    (s1, z1), (s2, z2), (so, zo) = ((t.quant.scale[0], t.quant.zero_point[0])
                                    for t in (*node.inputs, node.outputs[0]))
    tw = 2.0 * max(float(np.float32(s1)), float(np.float32(s2)))
    (m1, e1), (m2, e2), (mo, eo) = (quantize_multiplier(m) for m in (
        float(np.float32(s1)) / tw, float(np.float32(s2)) / tw,
        squared_difference_multiplier(s1, s2, so)))
    a = mbqm((xs[0].astype(np.int64) - z1) << SQUARED_DIFFERENCE_SHIFT, m1, e1)
    b = mbqm((xs[1].astype(np.int64) - z2) << SQUARED_DIFFERENCE_SHIFT, m2, e2)
    diff = a - b
    return np.clip(mbqm(diff * diff, mo, eo) + zo, -128, 127).astype(np.int8)


_F3_ONE = 1 << 28
_HALF_THREE_F3 = (1 << 28) + (1 << 27)
_HALF_SQRT2_F0 = 1518500250


def inv_sqrt_multiplier(value: int) -> tuple[int, int]:
    """GetInvSqrtQuantizedMultiplierExp(value, kReverseShift = -1) (``common.h``):
    1/√value as (multiplier, left shift), five Newton-Raphson steps in gemmlowp F3."""
    if value <= 1:
        return INT32_MAX, 0
    shift = 11
    while value >= (1 << 29):
        value //= 4
        shift += 1
    pairs = ((32 - value.bit_length()) - 1) // 2 - 1
    shift -= pairs
    value <<= 2 * pairs
    half_input = int(rdbpot(np.int64(value >> 1), 1))
    x = _F3_ONE
    for _ in range(5):
        x3 = int(sat_shift_left(srdhm(srdhm(x, x), x), 6))
        step = int(srdhm(_HALF_THREE_F3, x)) - int(srdhm(half_input, x3))
        x = int(sat_shift_left(wrap32(np.int64(step)), 3))
    inv = int(srdhm(x, _HALF_SQRT2_F0))
    if shift < 0:
        inv <<= -shift
        shift = 0
    return inv, -shift


def rsqrt(node: Node, xs: list, mode: str) -> np.ndarray:
    """int8 RSQRT (``elementwise.cc`` RsqrtEvalQuantizedInt8, on both resolvers: XNNPACK
    takes RSQRT only in float): per input value v = q - zp_in, 1/√v in fixed point
    (:func:`inv_sqrt_multiplier`) shifted up by 20, then times
    ``1/(sqrtf(s_in)·s_out)``; v = 0 gives 127. Values below the zero point make
    LiteRT's Invoke fail ("Rsqrt is only defined for positive values")."""
    (si, zi), (so, zo) = ((t.quant.scale[0], t.quant.zero_point[0])
                          for t in (node.inputs[0], node.outputs[0]))
    denom = np.float32(np.sqrt(np.float32(si)) * np.float32(so))
    qm, sh = quantize_multiplier(1.0 / float(denom))
    table = np.full(256, 127, np.int64)
    for q in range(max(zi, -128) + 1, 128):
        inv, inv_shift = inv_sqrt_multiplier(q - zi)
        data = int(mbqm(np.int64(1), inv, inv_shift + 20))
        table[q + 128] = int(np.clip(int(mbqm(np.int64(data), qm, sh - 20)) + zo, -128, 127))
    v = xs[0].astype(np.int64)
    if np.any(v < zi):
        raise ExportError(f"node {node.name!r} (RSQRT): an input below its zero point {zi} "
                          "(a negative value); LiteRT's int8 RSQRT fails Invoke on it")
    return table[v + 128].astype(np.int8)

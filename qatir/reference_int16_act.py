"""int16 LOGISTIC, TANH, SOFTMAX and MEAN: LiteRT's 16-bit kernels, bit for bit.

From LiteRT's sources (``tflite/kernels/activations.cc``, ``reduce.cc``; the builtin kernels
run under every resolver, XNNPACK delegates no int16 op):

- LOGISTIC / TANH (``reference/integer_ops/logistic.h``, ``tanh.h``): the input is rescaled
  by an integer multiplier and right shift onto the grid of a 256-entry sigmoid table
  (``sigmoid_table_uint16`` of ``internal/common.h``, sigmoid(i/24) in Q0.16; tanh(x) =
  2·sigmoid(2x) - 1), interpolated on 9 (LOGISTIC) or 8 (TANH) fractional bits. Prepare
  (``SigmoidPrepare``/``TanhPrepare``) picks the multiplier: ``3 << left_shift`` when the
  input scale is a power of two with ``12 + log2(scale)`` = 0 (TANH: 0 or 1, CheckedLog2's
  tolerance 1e-3), else ``int(scale·3·4096·2^k)`` with k the doublings that bring it above
  16383.5 (0 when it truncates there: a scale below ~3.8e-14, which the lowering's floor
  :data:`qatir.int16.INT16_MIN_SCALE` keeps away). A multiplier of 0 (:func:`pot_case`) is
  the one place the resolvers differ:
  there the optimized kernel (default resolver) runs gemmlowp's int16 fixed-point logistic /
  tanh on the raw input instead (:func:`gemmlowp_logistic16`), up to 12 LSB away from the
  table. The output is (1/32768, 0), checked by LiteRT exactly.
- SOFTMAX (``reference_ops::SoftmaxInt16``, every resolver): exp of the distance to the
  row max through a 513-entry table over [-10, 0] (``LUTPopulate<int16_t>`` in double,
  interpolated by ``LUTLookup``), summed in int32, the reciprocal through a second table of
  1/(1 + x); output (1/32768, 0).
- MEAN (``reference_ops::QuantizedMeanOrSum``, every resolver: the optimized Mean is int8 and
  uint8 only): the int32 sum times a multiplier folded with 1/count.
"""

from __future__ import annotations

import math

import numpy as np

from qatir.ir import Node
from qatir.numerics import normalize_axes
from qatir.reference_math import mbqm, quantize_multiplier, round_half_away, wrap32

I16_MIN, I16_MAX = -32768, 32767

#: ``sigmoid_table_uint16`` (LiteRT ``tflite/kernels/internal/common.h``): sigmoid(i/24) in
#: Q0.16 for i in [0, 256), shared by the int16 LOGISTIC and TANH kernels.
SIGMOID_TABLE = np.array([
    32768, 33451, 34133, 34813, 35493, 36169, 36843, 37513, 38180, 38841, 39498, 40149,
    40794, 41432, 42064, 42688, 43304, 43912, 44511, 45102, 45683, 46255, 46817, 47369,
    47911, 48443, 48964, 49475, 49975, 50464, 50942, 51409, 51865, 52311, 52745, 53169,
    53581, 53983, 54374, 54755, 55125, 55485, 55834, 56174, 56503, 56823, 57133, 57433,
    57724, 58007, 58280, 58544, 58800, 59048, 59288, 59519, 59743, 59959, 60168, 60370,
    60565, 60753, 60935, 61110, 61279, 61441, 61599, 61750, 61896, 62036, 62172, 62302,
    62428, 62549, 62666, 62778, 62886, 62990, 63090, 63186, 63279, 63368, 63454, 63536,
    63615, 63691, 63765, 63835, 63903, 63968, 64030, 64090, 64148, 64204, 64257, 64308,
    64357, 64405, 64450, 64494, 64536, 64576, 64614, 64652, 64687, 64721, 64754, 64786,
    64816, 64845, 64873, 64900, 64926, 64950, 64974, 64997, 65019, 65039, 65060, 65079,
    65097, 65115, 65132, 65149, 65164, 65179, 65194, 65208, 65221, 65234, 65246, 65258,
    65269, 65280, 65291, 65301, 65310, 65319, 65328, 65337, 65345, 65352, 65360, 65367,
    65374, 65381, 65387, 65393, 65399, 65404, 65410, 65415, 65420, 65425, 65429, 65433,
    65438, 65442, 65445, 65449, 65453, 65456, 65459, 65462, 65465, 65468, 65471, 65474,
    65476, 65479, 65481, 65483, 65485, 65488, 65489, 65491, 65493, 65495, 65497, 65498,
    65500, 65501, 65503, 65504, 65505, 65507, 65508, 65509, 65510, 65511, 65512, 65513,
    65514, 65515, 65516, 65517, 65517, 65518, 65519, 65520, 65520, 65521, 65522, 65522,
    65523, 65523, 65524, 65524, 65525, 65525, 65526, 65526, 65526, 65527, 65527, 65528,
    65528, 65528, 65529, 65529, 65529, 65529, 65530, 65530, 65530, 65530, 65531, 65531,
    65531, 65531, 65531, 65532, 65532, 65532, 65532, 65532, 65532, 65533, 65533, 65533,
    65533, 65533, 65533, 65533, 65533, 65534, 65534, 65534, 65534, 65534, 65534, 65534,
    65534, 65534, 65534, 65535], np.int64)

#: the integer bits of the int16 LOGISTIC / TANH input grid (``kInputIntegerBits``)
_INPUT_INTEGER_BITS = 3


def checked_log2(x: float) -> tuple[bool, int]:
    """LiteRT's ``CheckedLog2`` (``quantization_util.cc``): in float32, log2 rounded half
    away, and whether ``x`` is within 1e-3 of that power of two in the log domain."""
    f = np.float32
    x_log2 = f(f(math.log(f(x))) * f(f(1.0) / f(math.log(f(2.0)))))
    rounded = f(round_half_away(np.float64(x_log2)))
    return bool(abs(f(x_log2 - rounded)) < f(1e-3)), int(rounded)


def prepare_params(op: str, in_scale: float) -> tuple[int, int]:
    """(input_multiplier, input_left_shift) as SigmoidPrepare / TanhPrepare leave them for an
    int16 input: multiplier 0 in the power-of-two case (and when the scale is so small that
    the multiplier truncates to 0)."""
    pot, log2 = checked_log2(in_scale)
    shift = 15 - _INPUT_INTEGER_BITS + log2
    if pot and (shift == 0 or (op == "TANH" and shift == 1)):
        return 0, shift
    m = float(np.float32(in_scale)) * 4096.0 * 3.0
    shift = 0
    while m <= 32767.0 / 2.0 and shift <= 30:
        shift += 1
        m *= 2.0
    return int(m), shift


def pot_case(op: str, in_scale: float) -> bool:
    """Prepare left the multiplier 0: the default resolver runs gemmlowp's fixed point."""
    return prepare_params(op, in_scale)[0] == 0


def lut_params(op: str, in_scale: float) -> tuple[int, int]:
    """The reference kernel's (multiplier, right shift): a multiplier of 0 becomes
    ``3 << left_shift`` with no shift (int32 arithmetic: it wraps past 2^31)."""
    mult, shift = prepare_params(op, in_scale)
    if mult == 0:
        return int(wrap32(np.int64(3) << shift)), 0
    return mult, shift


def _rescale(x: np.ndarray, mult: int, shift: int) -> np.ndarray:
    rnd = 1 << (shift - 1) if shift > 0 else 0
    return wrap32(x.astype(np.int64) * mult + rnd) >> shift


def _table_interp(a: np.ndarray, frac: int, saturated: int) -> np.ndarray:
    """The sigmoid table at ``|v|``: entry ``a >> frac``, linear in the ``frac`` low bits,
    ``saturated`` past the last entry (the two kernels differ only in ``frac``)."""
    uh = a >> frac
    i = np.minimum(uh, 254)
    ua, ub = SIGMOID_TABLE[i], SIGMOID_TABLE[i + 1]
    return np.where(uh >= 255, saturated, (ua << frac) + (a & ((1 << frac) - 1)) * (ub - ua))


def logistic16(x: np.ndarray, in_scale: float) -> np.ndarray:
    """reference_integer_ops::Logistic, int16 in and out (output (1/32768, 0))."""
    v = _rescale(x, *lut_params("LOGISTIC", in_scale))
    r = _table_interp(np.abs(v), 9, 0x7FFF << 10)
    r = np.where(v >= 0, r + (1 << 9), (1 << 25) - r + (1 << 9) - 1)
    return (r >> 10).astype(np.int16)


def tanh16(x: np.ndarray, in_scale: float) -> np.ndarray:
    """reference_integer_ops::Tanh, int16 in and out (output (1/32768, 0))."""
    v = _rescale(x, *lut_params("TANH", in_scale))
    r = _table_interp(np.abs(v), 8, 0xFFFF << 8)
    r = np.where(v >= 0, r - (1 << 23) + (1 << 7), -r + (1 << 23) + (1 << 7) - 1)
    return (r >> 8).astype(np.int16)


def lut_populate16(in_scale: float, in_zp: int, out_scale: float, out_zp: int,
                   fn) -> np.ndarray:
    """``detail::LUTPopulateInt16<double>`` (``internal/common.h``): 512 samples of ``fn``
    over the int16 input range, each biased by half the interpolation error at its
    midpoint, plus the end value; 513 int16 entries."""
    input_min = in_scale * (I16_MIN - in_zp)
    input_max = in_scale * (I16_MAX - in_zp)
    output_min = out_scale * (I16_MIN - out_zp)
    output_max = out_scale * (I16_MAX - out_zp)
    steps = 512
    step = (input_max - input_min) / steps
    half = step / 2
    inv = float(I16_MAX - I16_MIN + 1) / (output_max - output_min)

    def rnd(v: float) -> float:
        return float(math.copysign(math.floor(abs(v) + 0.5), v))

    lut = np.empty(steps + 1, np.int64)
    for i in range(steps):
        val = fn(input_min + i * step)
        mid = fn(input_min + i * step + half)
        nxt = fn(input_min + (i + 1) * step)
        sample = rnd(val * inv)
        interp = rnd((nxt * inv + rnd(val * inv)) / 2)
        err = interp - rnd(mid * inv)
        bias = rnd(err / 2)
        lut[i] = int(min(max(sample - bias, I16_MIN), I16_MAX))
    lut[steps] = int(min(max(rnd(fn(input_max) * inv), I16_MIN), I16_MAX))
    return lut


def lut_lookup16(v: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``LUTLookup(int16_t, const int16_t*)``: 9 index bits, 7 interpolation bits."""
    v = v.astype(np.int64)
    idx = 256 + (v >> 7)
    base = lut[idx]
    slope = ((lut[idx + 1] - base + 32768) & 0xFFFF) - 32768  # int16 difference
    out = base + ((slope * (v & 0x7F) + 64) >> 7)
    return ((out + 32768) & 0xFFFF) - 32768


_RANGE = I16_MAX - I16_MIN
#: SoftmaxPrepare's two tables: exp on [-10, 0] and 1/(1 + x) on [0, 1], output [-1, 1]
_EXP_LUT = lut_populate16(10.0 / _RANGE, I16_MAX, 2.0 / _RANGE, 0, math.exp)
_RECIP_LUT = lut_populate16(1.0 / _RANGE, I16_MIN, 2.0 / _RANGE, 0, lambda v: 1.0 / (1.0 + v))


def _clz32(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.int64) & 0xFFFFFFFF
    out = np.full(x.shape, 32, np.int64)
    nz = x > 0
    out[nz] = 32 - np.array([int(v).bit_length() for v in x[nz].ravel()]).reshape(x[nz].shape)
    return out


def softmax16(x: np.ndarray, in_scale: float, beta: float) -> np.ndarray:
    """reference_ops::SoftmaxInt16 over the last axis (output (1/32768, 0))."""
    real = float(np.float32(np.float32(in_scale) * np.float32(beta))) / (10.0 / 65535.0)
    qm, sh = quantize_multiplier(real)
    v = x.astype(np.int64)
    diff = v - v.max(axis=-1, keepdims=True)
    scaled = mbqm(diff, qm, sh) + 32767
    exps = lut_lookup16(np.clip(scaled, I16_MIN, I16_MAX), _EXP_LUT)
    total = wrap32(exps.sum(axis=-1, keepdims=True))
    hp1 = _clz32(total)
    shifted = ((total << (hp1 - 1)) + (1 << 13)) >> 14
    sym = np.clip(shifted - ((1 << 15) + (1 << 16)), I16_MIN, I16_MAX)
    recip = lut_lookup16(sym, _RECIP_LUT)
    right = 31 - hp1
    out = (exps * recip + (np.int64(1) << (right - 1))) >> right
    return np.clip(out, 0, I16_MAX).astype(np.int16)


def logistic(node: Node, xs: list, mode: str) -> np.ndarray:
    s = float(node.inputs[0].quant.scale[0])
    if mode != "reference" and pot_case("LOGISTIC", s):
        return gemmlowp_logistic16(xs[0].astype(np.int64)).astype(np.int16)
    return logistic16(xs[0], s)


def tanh(node: Node, xs: list, mode: str) -> np.ndarray:
    s = float(node.inputs[0].quant.scale[0])
    mult, shift = prepare_params("TANH", s)
    if mode != "reference" and mult == 0:
        x = xs[0].astype(np.int64)
        if shift != 0:
            x = _sat_shl(x, 1)  # SaturatingRoundingMultiplyByPOT<1>
        return gemmlowp_tanh16(x).astype(np.int16)
    return tanh16(xs[0], s)


# ---------------------------------------------------------------- gemmlowp, int16 raw
# optimized_ops::Logistic / Tanh for int16 (the default resolver's kernel in the
# power-of-two case): gemmlowp's fixed-point logistic / tanh on FixedPoint<int16_t, 3>
# (``fixedpoint/fixedpoint.h``, the scalar forms; the SSE4 forms round two ties differently,
# which measured the same on all 65536 inputs). int16 arithmetic wraps, as C's does.

def _w16(x: np.ndarray) -> np.ndarray:
    return ((np.asarray(x, np.int64) + 32768) & 0xFFFF) - 32768


def _tdiv(a: np.ndarray, b: int) -> np.ndarray:
    return np.where(a >= 0, a // b, -((-a) // b))


def _srdhm16(a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    ab = a * b
    r = _tdiv(ab + np.where(ab >= 0, 1 << 14, 1 - (1 << 14)), 1 << 15)
    return np.where((a == b) & (a == -32768), I16_MAX, _w16(r))


def _rdbpot(x: np.ndarray, e: int) -> np.ndarray:
    mask = (1 << e) - 1
    return (x >> e) + ((x & mask) > ((mask >> 1) + (x < 0)))


def _sat_shl(x: np.ndarray, e: int) -> np.ndarray:
    thr = (1 << (15 - e)) - 1
    return np.where(x > thr, I16_MAX, np.where(x < -thr, I16_MIN, _w16(x << e)))


def _c16(v: int) -> int:
    """GEMMLOWP_CHECKED_FIXEDPOINT_CONSTANT for int16: the int32 constant rounded >> 16."""
    return int(_w16(_rdbpot(np.int64(v), 16)))


def _exp_quarter16(a: np.ndarray) -> np.ndarray:
    ct, third = _c16(1895147668), _c16(715827883)
    x = _w16(a + (1 << 12))
    x2 = _srdhm16(x, x)
    x3 = _srdhm16(x2, x)
    x4 = _srdhm16(x2, x2)
    t = _rdbpot(_w16(_srdhm16(_w16(_rdbpot(x4, 2) + x3), third) + x2), 1)
    return np.clip(ct + _srdhm16(ct, _w16(x + t)), I16_MIN, I16_MAX)  # saturating add


_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
           (2, 39332535), (3, 720401), (4, 242))


def _exp_on_negative16(a: np.ndarray, ibits: int) -> np.ndarray:
    frac = 15 - ibits
    quarter = 1 << (frac - 2)
    a_mod = _w16((a & (quarter - 1)) - quarter)
    res = _exp_quarter16(_sat_shl(a_mod, ibits))
    rem = _w16(a_mod - a)
    for e, m in _BARREL:
        if ibits > e:
            res = np.where((rem & (1 << (frac + e))) != 0, _srdhm16(res, _c16(m)), res)
    return np.where(a == 0, I16_MAX, res)


def _newton16(a: np.ndarray) -> np.ndarray:
    """The 3-step Newton loop of one_over_one_plus_x / one_minus_x_over_one_plus_x (F2)."""
    s = a + I16_MAX
    half = _w16(_tdiv(s + np.where(s >= 0, 1, -1), 2))  # RoundingHalfSum
    x = _w16(_c16(1515870810) + _srdhm16(half, _c16(-1010580540)))
    for _ in range(3):
        x = _w16(x + _sat_shl(_srdhm16(x, _w16(8192 - _srdhm16(half, x))), 2))
    return x


def gemmlowp_logistic16(a: np.ndarray) -> np.ndarray:
    """gemmlowp::logistic(FixedPoint<int16_t, 3>) -> Q0.15."""
    pos = a > 0
    ab = np.where(pos, a, _w16(-a))
    rp = _sat_shl(_newton16(_exp_on_negative16(_w16(-ab), 3)), 1)
    return np.where(a == 0, _c16(1 << 30), np.where(pos, rp, _w16(I16_MAX - rp)))


def gemmlowp_tanh16(a: np.ndarray) -> np.ndarray:
    """gemmlowp::tanh(FixedPoint<int16_t, 3>) -> Q0.15."""
    neg = a < 0
    n = np.where(neg, a, _w16(-a))
    t = _sat_shl(_w16(_newton16(_exp_on_negative16(n, 4)) - 8192), 2)
    return np.where(a == 0, 0, np.where(neg, _w16(-t), t))


def softmax(node: Node, xs: list, mode: str) -> np.ndarray:
    return softmax16(xs[0], float(node.inputs[0].quant.scale[0]),
                     float(np.float32(node.attrs["beta"])))


def mean(node: Node, xs: list, mode: str) -> np.ndarray:
    """MEAN int16 (zero points 0): QuantizedMeanOrSum with an int32 sum."""
    x = xs[0].astype(np.int64)
    axes = node.attrs["axis"]
    axes = tuple(normalize_axes([axes] if isinstance(axes, int) else axes, x.ndim))
    cnt = int(np.prod([x.shape[a] for a in axes]))
    total = wrap32(x.sum(axis=axes, keepdims=bool(node.attrs["keep_dims"])))
    qm, sh = quantize_multiplier(float(node.inputs[0].quant.scale[0])
                                 / float(node.outputs[0].quant.scale[0]))
    shift = min(cnt.bit_length() - 1, 32, 31 + sh)
    qm = (qm << shift) // cnt
    return np.clip(mbqm(total, qm, sh - shift), I16_MIN, I16_MAX).astype(np.int16)

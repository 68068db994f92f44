"""Integer requantization primitives of LiteRT's kernels, vectorized in numpy (int64).

Sources of the rules: ``shared/TFLITE_INT8.md`` section 4 (QuantizeMultiplier,
gemmlowp SaturatingRoundingDoublingHighMul / RoundingDivideByPOT, the
double-rounding MultiplyByQuantizedMultiplier, XNNPACK's fp32 requantization,
the fused-activation clamp). ``round_half_away`` is :mod:`qatir.numerics`'s,
re-exported here for the kernels that import it from this module.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math

import numpy as np

from qatir.numerics import round_half_away

__all__ = ["INT32_MAX", "INT32_MIN", "act_range", "fp32_requant", "libm", "mbqm",
           "quantize_multiplier", "quantize_multipliers", "rdbpot", "round_half_away",
           "sat_shift_left", "srdhm", "wrap32"]

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def quantize_multiplier(m: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplier: (q in [2^30, 2^31), shift) with m = q * 2^(shift - 31)."""
    if m == 0.0:
        return 0, 0
    q, shift = math.frexp(m)
    q_fixed = int(round_half_away(np.float64(q) * (1 << 31)))
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return q_fixed, shift


def quantize_multipliers(ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`quantize_multiplier` of each value (flattened), vectorized."""
    ms = np.ravel(np.asarray(ms, np.float64))
    q, shift = np.frexp(ms)
    q_fixed = round_half_away(q * float(1 << 31)).astype(np.int64)
    carry = q_fixed == (1 << 31)
    q_fixed = np.where(carry, q_fixed // 2, q_fixed)
    shift = np.where(carry, shift + 1, shift).astype(np.int64)
    zero = (ms == 0.0) | (shift < -31)
    return np.where(zero, 0, q_fixed), np.where(zero, 0, shift)


def wrap32(x: np.ndarray) -> np.ndarray:
    """Two's-complement int32 wrap of int64 values (what C int32 arithmetic does)."""
    return np.asarray(x, np.int64).astype(np.int32).astype(np.int64)  # numpy casts wrap


def srdhm(a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul on int32 values held in int64.

    gemmlowp's ``(ab + (ab >= 0 ? 2^30 : 1 - 2^30)) / 2^31`` (C division, toward
    zero) equals ``floor((ab + 2^30) / 2^31)`` for every integer ``ab``: for
    ``ab < 0`` truncation adds ``2^31 - 1`` before flooring. One shift, no branch.
    """
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    res = (a * b + (1 << 30)) >> 31
    if np.any(a == INT32_MIN) and np.any(b == INT32_MIN):
        res = np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, res)
    return res


def rdbpot(x: np.ndarray, e: np.ndarray | int) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT (rounds half away from zero)."""
    x = np.asarray(x, np.int64)
    e = np.asarray(e, np.int64)
    mask = (np.int64(1) << e) - 1
    rem = x & mask
    thr = (mask >> 1) + (x < 0)
    return (x >> e) + (rem > thr)


def mbqm(x: np.ndarray, qm: np.ndarray | int, shift: np.ndarray | int) -> np.ndarray:
    """MultiplyByQuantizedMultiplier, double rounding (the default TFLite build)."""
    shift = np.asarray(shift, np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    return rdbpot(srdhm(wrap32(np.asarray(x, np.int64) << left), qm), right)


def sat_shift_left(x: np.ndarray, e: int) -> np.ndarray:
    """gemmlowp SaturatingRoundingMultiplyByPOT for a positive exponent."""
    x = np.asarray(x, np.int64)
    return np.clip(x << e, INT32_MIN, INT32_MAX)


def fp32_requant(acc: np.ndarray, scale: np.ndarray, zp: int, lo: int, hi: int) -> np.ndarray:
    """XNNPACK fp32 requantization: rint(float32(acc) * float32(scale)) + zp, clamped."""
    y = np.rint(np.asarray(acc, np.int64).astype(np.float32) * np.asarray(scale, np.float32))
    return np.clip(y.astype(np.int64) + zp, lo, hi)


def act_range(act: str, scale: float, zp: int, qmin: int = -128, qmax: int = 127
              ) -> tuple[int, int]:
    """CalculateActivationRangeQuantized: q(f) = zp + round_half_away(float(f) / scale)."""
    s = np.float32(scale)

    def q(f: float) -> int:
        return int(zp + int(round_half_away(np.float32(f) / s)))

    if act == "NONE":
        return qmin, qmax
    if act == "RELU":
        return max(qmin, q(0.0)), qmax
    if act == "RELU6":
        return max(qmin, q(0.0)), min(qmax, q(6.0))
    if act == "RELU_N1_TO_1":
        return max(qmin, q(-1.0)), min(qmax, q(1.0))
    raise ValueError(f"fused activation {act} has no int8 kernel")


_LIBM = None


def libm():
    """The C math library, so LUTs use the same ``expf``/``tanhf`` as LiteRT."""
    global _LIBM
    if _LIBM is None:
        lib = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
        for name in ("expf", "tanhf"):
            fn = getattr(lib, name)
            fn.restype = ctypes.c_float
            fn.argtypes = [ctypes.c_float]
        _LIBM = lib
    return _LIBM

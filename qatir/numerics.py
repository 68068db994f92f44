"""The numeric rules every other module shares: rounding, range nudging, numpy
fake-quant, SAME padding, axis normalisation.

A leaf module (numpy and :mod:`qatir.errors` only), so the IR, the frontends,
the quantizers, lowering and the integer reference can all import it. Where
TensorFlow needs the same rule there is one TF twin beside the kernel that uses
it; ``tests/test_numerics.py`` checks each twin against the function here at the
ties (``k + 0.5``) and at the floats next to them.

- :func:`round_half_away` is C ``round()`` (``std::round``/``TfLiteRound``): what
  LiteRT uses to quantize and to compute activation ranges, what TF's ``Nudge()``
  uses for the zero point, and what the exporter uses for int32 biases. It is
  exact: ``floor(|x| + 0.5)`` is not (it rounds 0.49999997 to 1 and, in float32,
  odd integers above 2^23 up by one).
- :func:`fake_quant` is TF's ``FakeQuantWithMinMaxVars`` forward pass, whose own
  rounding is ``floor(v + 0.5)`` on the non-negative grid offset (not
  :func:`round_half_away`; the two differ only in the float just below a tie).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from qatir.errors import NumericsError, ShapeError


# ------------------------------------------------------------------ rounding
def round_half_away(x: np.ndarray) -> np.ndarray:
    """C ``round()``: to nearest, ties away from zero; keeps a float array's dtype.

    Exact for every float: ``|x| - floor(|x|)`` is computed without rounding, so
    only a true tie rounds up. NaN and +-Inf pass through.
    """
    x = np.asarray(x)
    if x.dtype.kind in "iub":
        return x.copy()
    a = np.abs(x)
    f = np.floor(a)
    with np.errstate(invalid="ignore"):  # inf - inf
        up = (a - f) >= np.asarray(0.5, x.dtype)
    return (np.sign(x) * (f + up.astype(x.dtype))).astype(x.dtype, copy=False)


# ------------------------------------------------------------- range nudging

def quantized_fill(value: float, scale: float, zero_point: int, dtype) -> int:
    """The integer a quantized PAD/PADV2 fills with for the real ``value``: LiteRT's
    constant operand as the writer quantizes it, ``round(value / scale) + zp``, clamped."""
    info = np.iinfo(dtype)
    return int(np.clip(round_half_away(np.float64(value) / scale) + zero_point,
                       info.min, info.max))

def nudged_params(lo: np.ndarray, hi: np.ndarray, bits: int = 8, narrow_range: bool = False,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """TF's ``Nudge()``: (scale, int8-domain zero point, nudged_min, nudged_max).

    Computed in float32 like ``tf.quantization.fake_quant_with_min_max_vars``
    (a range that excludes 0 is shifted, not widened, exactly as TF does; the
    calibrators widen ranges to contain 0). An empty range gets a tiny width.
    The zero point is ``zp_uint - 2^(bits-1)``, the signed storage domain.
    TF twin: ``qatir/tf/fake_quant.py:_nudged_bounds``.
    """
    lo = np.asarray(lo, np.float32)
    hi = np.asarray(hi, np.float32)
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise NumericsError("range is not finite")
    qmin = np.float32(1 if narrow_range else 0)
    qmax = np.float32((1 << bits) - 1)
    width = hi - lo
    hi = np.where(width > 0, hi, lo + np.float32(1e-6) * (qmax - qmin)).astype(np.float32)
    scale = ((hi - lo) / (qmax - qmin)).astype(np.float32)
    zp_from_min = (qmin - lo / scale).astype(np.float32)
    nudged_zp = np.where(zp_from_min < qmin, qmin,
                         np.where(zp_from_min > qmax, qmax, round_half_away(zp_from_min)))
    nudged_min = ((qmin - nudged_zp) * scale).astype(np.float32)
    nudged_max = ((qmax - nudged_zp) * scale).astype(np.float32)
    zero_point = (nudged_zp - np.float32(1 << (bits - 1))).astype(np.int64)
    return scale, zero_point, nudged_min, nudged_max

#: Narrowest range quantized on its own grid: below it the inverse step (qmax - qmin) /
#: (hi - lo) overflows float32 and TF's fake-quant (and its numpy twin) give NaN steps.
#: A weight channel narrower than this (all its |w| < 5e-31) gets the widest channel's
#: range instead, on which its weights quantize to zero.
MIN_RANGE = 1e-30


def fake_quant_steps(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int = 8,
                     narrow_range: bool = False, axis: int | None = None) -> np.ndarray:
    """The integer ``k`` (int64) such that TF's fake-quant of ``x`` is ``k * scale``: the
    step from the zero point. An exporter that stores ``k + zero_point`` deploys exactly
    what training computed (:func:`fake_quant` is ``k * scale``).

    TF's kernels, bit for bit (float32, TF 2.x): clamp to the nudged range, then
    ``floor(shifted / scale - qz + 0.5)`` per tensor (``fake_quant_with_min_max_vars``)
    or ``floor(shifted * inv - qz + 0.5)`` per channel (``..._per_channel``, ``inv =
    (qmax - qmin) / (hi - lo)``), with ``qz = floor(-nudged_min * inv + 0.5)``. The two
    ops round differently next to a tie, so ``axis`` (None: per tensor) picks the op.
    ``lo == hi == 0`` gives 0, as TF gives zeros.
    """
    x = np.asarray(x, np.float32)
    lo = np.asarray(lo, np.float32)
    hi = np.asarray(hi, np.float32)
    scale, _, nmin, nmax = nudged_params(lo, hi, bits, narrow_range)
    steps = np.float32((1 << bits) - 1 - (1 if narrow_range else 0))
    width = np.where(hi > lo, hi - lo, scale * steps).astype(np.float32)
    inv = (steps / width).astype(np.float32)
    qz = np.floor(-nmin * inv + np.float32(0.5)).astype(np.float32)
    zero = (lo == 0) & (hi == 0)
    if axis is not None:
        shape = [1] * x.ndim
        shape[normalize_axis(axis, x.ndim)] = -1
        scale, nmin, nmax, inv, qz, zero = (np.reshape(v, shape)
                                           for v in (scale, nmin, nmax, inv, qz, zero))
    shifted = (np.clip(x, nmin, nmax) - nmin).astype(np.float32)
    grid = shifted / scale if axis is None else shifted * inv
    k = np.floor((grid - qz) + np.float32(0.5))
    return np.where(zero, np.float32(0), k).astype(np.int64)


def fake_quant(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int = 8,
               narrow_range: bool = False, axis: int | None = None) -> np.ndarray:
    """TF's fake-quant forward pass in numpy, bit for bit (see :func:`fake_quant_steps`)."""
    scale = nudged_params(np.asarray(lo, np.float32), np.asarray(hi, np.float32), bits,
                          narrow_range)[0]
    x = np.asarray(x, np.float32)
    if axis is not None:
        shape = [1] * x.ndim
        shape[normalize_axis(axis, x.ndim)] = -1
        scale = np.reshape(scale, shape)
    k = fake_quant_steps(x, lo, hi, bits, narrow_range, axis)
    return (k.astype(np.float32) * scale).astype(np.float32)


# ---------------------------------------------------------------- padding
def same_padding(size: int, kernel: int, stride: int = 1, dilation: int = 1,
                 ) -> tuple[int, int, int]:
    """TF/TFLite SAME along one axis: (output size, pad before, pad after).

    ``out = ceil(size / stride)``; the odd pixel of padding goes after
    (TFLite ``ComputePaddingHeightWidth``, ONNX ``SAME_UPPER``).
    """
    eff = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return out, total // 2, total - total // 2


# ------------------------------------------------------------------- axes
def normalize_axis(axis: int, rank: int, what: str = "axis", allow_end: bool = False) -> int:
    """``axis`` in ``[-rank, rank)`` as a non-negative index; ShapeError otherwise.

    ``allow_end`` widens the range to ``[-rank, rank]`` (ONNX Flatten's axis may
    equal the rank).
    """
    axis = int(axis)
    top = rank + 1 if allow_end else rank
    if not -rank <= axis < top:
        raise ShapeError(f"{what} {axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def normalize_axes(axes: Iterable[int], rank: int, what: str = "axis",
                   unique: bool = False) -> list[int]:
    """Sorted, distinct non-negative axes; ``unique`` refuses one named twice
    (``-1`` and ``rank - 1`` are the same axis)."""
    axes = [int(a) for a in axes]
    out = sorted({normalize_axis(a, rank, what) for a in axes})
    if unique and len(out) != len(axes):
        raise ShapeError(f"duplicate {what} in {axes} for rank {rank}")
    return out

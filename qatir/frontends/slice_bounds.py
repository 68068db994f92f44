"""Slice bounds as the IR keeps them: within the dimension, and within int32.

Converters write "to the end" / "from the start" as sentinels far outside the
dimension (TFLiteConverter: ``end = 2^31`` on an int64 index tensor or a
cleared mask; ONNX: ``INT64_MAX`` / ``INT64_MIN``). STRIDED_SLICE clamps
such bounds itself (negative ones count from the end first), so they are
clamped at import: to the dimension when it is known, to int32 when it is
dynamic, and a TFLite file can hold them again.
"""

from __future__ import annotations

INT32_MAX = (1 << 31) - 1
INT32_MIN = -(1 << 31)


def clamp_bounds(begin: int, end: int, stride: int, dim: int | None) -> tuple[int, int]:
    """``(begin, end)`` selecting the same elements as the given ones, in range.

    A known dim: Python's ``slice.indices`` (which clamps exactly as the
    STRIDED_SLICE kernels do); for a negative stride, a bound before the first
    element becomes ``-(dim + 1)`` (``-1`` would count from the end). A dynamic
    dim: clamped to int32.
    """
    if dim is None:
        return (max(INT32_MIN, min(INT32_MAX, begin)), max(INT32_MIN, min(INT32_MAX, end)))
    b, e, _ = slice(begin, end, stride).indices(dim)
    if stride < 0:
        b = -(dim + 1) if b < 0 else b
        e = -(dim + 1) if e < 0 else e
    return b, e

"""Quantization parameters of TFLite tensors as the IR holds them, checked as LiteRT
checks them at load; the dequantized value of a quantized constant; int8 weights and
biases of an imported int8 model put in the form qatir's lowering writes."""

from __future__ import annotations

from typing import Any

import numpy as np

from qatir.errors import ModelFormatError
from qatir.frontends.tflite_reader import TOp, TTensor
from qatir.ir import QuantParams, Tensor
from qatir.ops import get_op
from qatir.target import SOFTMAX_INT16_OUTPUT


def quant_params(path: str, t: TTensor, dtype: np.dtype, producer: str | None = None
                 ) -> QuantParams | None:
    """``t``'s parameters (None for a float or unquantized tensor), after :func:`check_quant`;
    ``producer``: the IR op writing ``t``; ``path`` names the file in errors."""
    if t.quant is None or dtype.kind not in "iu":
        return None
    q = t.quant
    per_channel = q.scale.size > 1
    check_quant(path, t, dtype, q.scale, q.zero_point, per_channel, producer)
    return QuantParams(tuple(q.scale.tolist()), tuple(q.zero_point.tolist()),
                       q.axis if per_channel else None, bits=dtype.itemsize * 8,
                       dtype=dtype.name)


def check_quant(path: str, t: TTensor, dtype: np.dtype, scale: np.ndarray, zp: np.ndarray,
                per_channel: bool, producer: str | None = None) -> None:
    """The TFLite quantization spec's rules LiteRT enforces at load (XNNPACK refuses
    the whole model otherwise): positive normal scales, zero points in the type's
    range, and zero for per-channel, int16 and int32 tensors, except the int16
    output of an int8 SOFTMAX, which LiteRT fixes at zero point -32768."""
    def bad(why: str) -> ModelFormatError:
        return ModelFormatError(f"{path}: tensor {t.name!r} ({dtype.name}): {why}")

    scale = np.asarray(scale, np.float64)
    tiny, big = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)
    if scale.size and not np.all((scale >= tiny) & (scale <= big)):
        raise bad(f"quantization scale {float(scale.flat[np.argmin(scale)]):.4g} is not a "
                  "positive normal float32")
    zp = np.asarray(zp, np.int64)
    if (producer == "SOFTMAX" and dtype == np.int16 and not per_channel
            and zp.tolist() == [SOFTMAX_INT16_OUTPUT[1]]):
        return
    if per_channel or dtype.itemsize > 1:
        if zp.size and np.any(zp != 0):
            kind = "per-channel" if per_channel else dtype.name
            raise bad(f"{kind} zero points must be 0, got {int(zp[np.flatnonzero(zp)[0]])}")
    elif zp.size:
        info = np.iinfo(dtype)
        if zp.min() < info.min or zp.max() > info.max:
            raise bad(f"zero point {int(zp[np.argmax(np.abs(zp))])} is outside "
                      f"[{info.min}, {info.max}]")


def dequantize(where: str, idx: int, t: TTensor, arr: np.ndarray) -> np.ndarray:
    """Float32 value of constant ``idx``: fp16 widened; int8/int16 as ``(q - zp) * scale``."""
    if arr.dtype.kind == "f":
        return arr.astype(np.float32)
    if t.quant is None:
        raise ModelFormatError(f"{where}: integer constant {idx} ({t.name!r}) has no "
                               "quantization parameters to dequantize")
    scale = t.quant.scale.astype(np.float64)
    zp = t.quant.zero_point.astype(np.float64)
    if scale.size > 1:
        shape = [1] * arr.ndim
        shape[t.quant.axis] = scale.size
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return ((arr.astype(np.float64) - zp) * scale).astype(np.float32)


def lowered_weights(ctx: Any, op: TOp, emit_op: str, ins: list[Tensor]) -> list[Tensor]:
    """Match qatir.lower's int8 form: symmetric int8 weights are ``narrow_range``, and
    a missing bias becomes int32 zeros with scale ``float32(in_scale * w_scale)``."""
    x, w = ins[0], ins[1]
    if x.quant is None or w.quant is None or w.dtype != np.int8 or not w.is_const:
        return ins
    q = w.quant
    if all(z == 0 for z in q.zero_point) and (w.data.size == 0 or w.data.min() >= -127):
        w.quant = QuantParams(q.scale, q.zero_point, q.axis, q.bits, True, q.dtype)
    if len(ins) == 2:
        out_ch = w.shape[get_op(emit_op).channel_axis]
        if out_ch is None or w.data.size == 0:
            raise ctx.fail(op, f"weights %{w.name} of shape {list(w.shape)} are empty")
        w_s = np.asarray(q.scale, np.float32)
        b_s = (np.float32(x.quant.scale[0]) * w_s).astype(np.float32)
        per_ch = q.axis is not None
        bq = QuantParams(tuple(b_s.tolist()), (0,) * b_s.size, 0 if per_ch else None, 32,
                         False, "int32")
        bias = ctx.g.const(np.zeros(out_ch or 0, np.int32),
                            name=ctx.fresh(f"{ctx.names[op.outputs[0]]}_bias"), quant=bq)
        ins = [*ins, bias]
    return ins

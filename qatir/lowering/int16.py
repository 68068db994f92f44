"""16x8 lowering: what differs for the int16 activations an ``[[int16]]`` table entry asks for.

The ``activations`` step gives 16-bit FAKE_QUANTs int16 params (:func:`qatir.int16.act_params16`)
and turns the FAKE_QUANT on an edge between an int8 and an int16 region into a
requantizing ``QUANTIZE``; this module gives the conv-like ops that read int16 an int64
bias (LiteRT's ``quantized_bias_type``), scale float32(in_scale · w_scale[i]), zero point 0.
"""

from __future__ import annotations

import numpy as np

from qatir.errors import ExportError
from qatir.int16 import act_params16, touches_int16
from qatir.ir import Graph, Node, QuantParams
from qatir.lowering.common import MIN_SCALE, channels, requantize
from qatir.reference_math import round_half_away

#: LiteRT's int64-input MultiplyByQuantizedMultiplier assumes |acc + bias| < 2^47
#: (``internal/common.cc``); a bias is kept well inside it.
BIAS64_LIMIT = 2**46


def lower_bias64(g: Graph, node: Node) -> None:
    """Give an int16-input conv-like ``node`` its int64 bias (zeros where it had none)."""
    x, w = node.inputs[0], node.inputs[1]
    if not w.is_const or w.dtype != np.int8 or w.quant is None:
        raise ExportError(f"node {node.name!r} ({node.op}): weight %{w.name} is not a "
                          "fake-quantized constant")
    b = node.inputs[2] if len(node.inputs) > 2 else None
    if b is not None and b.dtype == np.int64 and b.quant is not None:
        return  # already lowered
    if b is not None and (not b.is_const or b.dtype != np.float32):
        raise ExportError(f"node {node.name!r}: bias %{b.name} must be a float constant")
    bias = np.zeros(channels(node), np.float32) if b is None else b.data
    in_s = np.float32(x.quant.scale[0])
    w_s = np.asarray(w.quant.scale, np.float32)
    b_s = np.maximum((in_s * w_s).astype(np.float32), np.float32(MIN_SCALE))
    qb = round_half_away(bias.astype(np.float64) / b_s.astype(np.float64))
    qb = np.clip(qb, -BIAS64_LIMIT, BIAS64_LIMIT)
    per_ch = w.quant.axis is not None
    qp = QuantParams(tuple(b_s.tolist()), (0,) * b_s.size, 0 if per_ch else None, 64, False,
                     "int64")
    new = g.const(qb.astype(np.int64), name=f"{node.name}_bias" if b is None else b.name,
                  quant=qp)
    if len(node.inputs) < 3:
        node.add_input(new)
    else:
        node.set_input(2, new)


#: the smallest input scale an int16 LOGISTIC/TANH reads (2^-30, a range of ±3e-5). Below
#: ~3.8e-14 LiteRT's SigmoidPrepare/TanhPrepare truncate the input multiplier to 0 and
#: the kernels compute garbage (sigmoid alternately 1 and 16384 by the input's parity;
#: measured on torchvision EfficientNet-B0's random-init SE blocks, scale 9.9e-15); below
#: 2^-30 the multiplier loses bits; at 2^-30 it is exactly 24576 with a shift of 31.
LUT16_MIN_INPUT_SCALE = 2.0**-30


def floor_lut_inputs(g: Graph) -> None:
    """Step ``int16_lut_floor``: an int16 LOGISTIC/TANH whose input scale is below
    :data:`LUT16_MIN_INPUT_SCALE` reads it through a QUANTIZE (int16 -> int16) onto that
    scale. Its output is then 0.5 / 0, as it should be for inputs that small; the input's
    other readers keep its own grid."""
    for node in list(g.nodes):
        if node.op not in ("LOGISTIC", "TANH") or not touches_int16(node):
            continue
        x = node.inputs[0]
        if x.dtype != np.int16 or x.quant is None or x.quant.scale[0] >= LUT16_MIN_INPUT_SCALE:
            continue
        node.set_input(0, requantize(g, x, act_params16(LUT16_MIN_INPUT_SCALE),
                                     g.unique_name(f"{node.name}_floor"), f"{x.name}_floor"))
    g.toposort()


#: ADD's and SUB's 16-bit general rescale (``add.cc``, ``sub.cc``, left shift 15) needs
#: 2·max(input scale) / (2^15 · output scale) below 1 (QuantizeMultiplierSmallerThanOneExp
#: checks it).
ADD16_MAX_RATIO = 2.0**14
#: the int64 MultiplyByQuantizedMultiplier assumes a shift below 8: in·w/out < 2^7.
CONV16_MAX_REQUANT = 2.0**7
_PASS_THROUGH = frozenset({"QUANTIZE", "DEQUANTIZE"})


def check_int16_region(g: Graph) -> None:
    """Every node reading or writing int16 has a 16x8 kernel qatir supports, and its scales
    stay inside what LiteRT's int16 kernels accept; ExportError names the nodes."""
    from qatir.int16 import INT16_OPS

    bad = [f"{n.name!r} ({n.op})" for n in g.nodes
           if touches_int16(n) and n.op not in INT16_OPS | _PASS_THROUGH]
    if bad:
        raise ExportError(f"no 16x8 kernel (qatir writer + integer reference) for node(s) "
                          f"{', '.join(bad)}; keep them out of the [[int16]] entries")
    for n in g.nodes:
        if not touches_int16(n) or n.outputs[0].quant is None:
            continue
        so = float(n.outputs[0].quant.scale[0])
        if n.op in ("ADD", "SUB"):
            ratio = max(float(t.quant.scale[0]) for t in n.inputs) / so
            if ratio >= ADD16_MAX_RATIO:
                raise ExportError(f"node {n.name!r} ({n.op}, int16): input scale / output "
                                  f"scale = {ratio:.4g} is not below {ADD16_MAX_RATIO:g}; "
                                  f"LiteRT's int16 {n.op} cannot rescale it. Calibrate or "
                                  "widen the output")
        elif n.op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            eff = (float(n.inputs[0].quant.scale[0]) * np.asarray(n.inputs[1].quant.scale) / so)
            if np.any(eff >= CONV16_MAX_REQUANT):
                raise ExportError(f"node {n.name!r} ({n.op}, 16x8): input scale x weight scale "
                                  f"/ output scale = {float(eff.max()):.4g} is not below "
                                  f"{CONV16_MAX_REQUANT:g} (LiteRT's int64 requantization). "
                                  "The output range is too narrow: calibrate or widen it")

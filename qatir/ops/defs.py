"""Definitions of the built-in ops: TFLite builtins (NHWC) plus IR-only ops.

Attribute conventions (shared by frontends, TF execution, reference and writer):
- ``stride``/``dilation``/``filter``: ``[h, w]``; ``padding``: ``"SAME"`` or ``"VALID"``
  with TFLite semantics (frontends insert PAD for any other explicit padding).
- ``fused_activation``: one of NONE, RELU, RELU_N1_TO_1, RELU6, TANH.
- CONV_2D weights are OHWI; DEPTHWISE_CONV_2D weights are 1HWO; FULLY_CONNECTED
  weights are [N, K]; TRANSPOSE_CONV weights are OHWI and inputs are (x, w, b?).
- Unknown (dynamic) dims are ``None``.
"""

from __future__ import annotations

import numpy as np

from qatir.ops import infer as shape
from qatir.ops.infer import conv_out  # noqa: F401  (re-exported)
from qatir.ops.registry import register_op

ACT = {"fused_activation": "NONE"}

_CONV_ATTRS = {"stride": [1, 1], "dilation": [1, 1], "padding": "VALID", **ACT}

# Facts (see OpDef): weight/bias slots, the weight's output-channel axis (channel_axis) and
# TFLite per-channel axis (quant_axis), the output's quantization role, and LiteRT kernel
# availability. int8=True: LiteRT has an int8 kernel and qatir's writer and integer
# reference support it. int16: LiteRT's 16x8 kernels (op_version.cc int16 branches,
# shared/TFLITE_INT8.md section 6). Same-scale ops: LiteRT's int8 kernel needs the output
# on the input's grid (quantization_spec.md; concatenation.cc checks it exactly).
I8 = {"int8": True}
I816 = {"int8": True, "int16": True}
SAME = {"quant": "same_scale"}
_WEIGHTS = {"weight": 1, "bias": 2}
_OUT_256 = {"quant": "fixed", "fixed_output": (1.0 / 256.0, -128)}

register_op("CONV_2D", shape.conv, inputs=(2, 3), attrs=_CONV_ATTRS,
            doc="y = act(conv(x, w) + b); x NHWC, w OHWI",
            **_WEIGHTS, channel_axis=0, quant_axis=0, **I816)
register_op("DEPTHWISE_CONV_2D", shape.dwconv, inputs=(2, 3), attrs={**_CONV_ATTRS, "depth_multiplier": 1},
            doc="depthwise conv; w 1HWO, O = C * depth_multiplier",
            **_WEIGHTS, channel_axis=3, quant_axis=3, **I816)
register_op("FULLY_CONNECTED", shape.fc, inputs=(2, 3), attrs={"keep_num_dims": False, **ACT},
            doc="y = act(x @ w.T + b); w [N, K]",
            **_WEIGHTS, channel_axis=0, quant_axis=0, **I816)
register_op("TRANSPOSE_CONV", shape.tconv, inputs=(2, 3), attrs={"stride": [1, 1], "padding": "VALID", **ACT},
            doc="transposed conv; inputs (x, w OHWI, b?)",
            **_WEIGHTS, channel_axis=0, quant_axis=0, **I816)
for _op in ("ADD", "SUB", "MUL"):
    register_op(_op, shape.binary, inputs=2, attrs=dict(ACT), doc="broadcasting elementwise", **I816)
register_op("DIV", shape.binary, inputs=2, attrs=dict(ACT), doc="broadcasting elementwise")
# SQUARED_DIFFERENCE: LiteRT's int8 kernel rescales both inputs onto 2·max(s1, s2) with a
# left shift of 7, squares the difference and requantizes (squared_difference.cc); no int16.
register_op("SQUARED_DIFFERENCE", shape.binary, inputs=2, doc="y = (a - b)² (broadcasting)", **I8)
for _op in ("MAXIMUM", "MINIMUM"):
    register_op(_op, shape.binary, inputs=2, doc="broadcasting elementwise", **SAME, **I8)
for _op in ("RELU6", "RELU_N1_TO_1", "HARD_SWISH"):
    register_op(_op, shape.same, doc="elementwise", **I8)
register_op("RELU", shape.same, doc="elementwise", quant="inherit", **I8)
register_op("IDENTITY", shape.same, doc="elementwise", quant="inherit")
register_op("LOGISTIC", shape.same, doc="elementwise", **_OUT_256, **I816)
register_op("TANH", shape.same, doc="elementwise", quant="fixed", fixed_output=(1.0 / 128.0, 0), **I816)
for _op in ("RELU_0_TO_1", "ABS", "NEG"):
    register_op(_op, shape.same, doc="elementwise")
for _op in ("EXP", "SQRT"):
    register_op(_op, shape.same, doc="elementwise", int16=True)
# RSQRT int8: a fixed-point 1/√v per input value (elementwise.cc RsqrtEvalQuantizedInt8)
register_op("RSQRT", shape.same, doc="elementwise", **I816)
register_op("LEAKY_RELU", shape.same, attrs={"alpha": 0.2}, **I816)
# GELU: LiteRT's int8 kernel is a 256-entry table computed in float from the input and
# output quantization (gelu.cc, LUTPopulate); its int16 table has no op version yet.
register_op("GELU", shape.same, attrs={"approximate": False},
            doc="0.5·x·(1 + erf(x/√2)); approximate: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))",
            **I8)
# POW and LOCAL_RESPONSE_NORMALIZATION: LiteRT runs them in float only (pow.cc: float32 and
# int32; local_response_norm.cc: float32), so int8 graphs hold them as float islands.
register_op("POW", shape.binary, inputs=2, doc="x ** y, broadcasting")
register_op("LOCAL_RESPONSE_NORMALIZATION", shape.same,
            attrs={"radius": 5, "bias": 1.0, "alpha": 1.0, "beta": 0.5},
            doc="x / (bias + alpha·Σ x_j²)^beta over channels j in [c - radius, c + radius] "
                "(last axis, 4-D)")
register_op("PRELU", shape.prelu, inputs=2, doc="y = x if x >= 0 else alpha * x (alpha broadcasts)",
            params=((1, "alpha"),), **I8)
register_op("SOFTMAX", shape.softmax, attrs={"beta": 1.0},
            doc="softmax over the last axis (int8 in, int8 or int16 out: attribute dtype)", **_OUT_256,
            **I816)
# LOG_SOFTMAX: LiteRT's int8 kernel writes (16/256, 127); qatir has no integer model of it
# (reference_ops::LogSoftmax's fixed point), so in a quantized graph it is a float island.
register_op("LOG_SOFTMAX", shape.same, doc="log(softmax(x)) over the last axis")
register_op("MAX_POOL_2D", shape.pool, attrs={"filter": [1, 1], "stride": [1, 1], "padding": "VALID", **ACT},
            **SAME, **I816)
register_op("AVERAGE_POOL_2D", shape.pool,
            attrs={"filter": [1, 1], "stride": [1, 1], "padding": "VALID", **ACT},
            doc="SAME padding averages over in-bounds taps only (TFLite)", **SAME, **I816)
register_op("MEAN", shape.reduce, attrs={"axis": [1, 2], "keep_dims": False}, **I816)
register_op("SUM", shape.reduce, attrs={"axis": [1, 2], "keep_dims": False}, **I8)
register_op("REDUCE_MAX", shape.reduce, attrs={"axis": [1, 2], "keep_dims": False}, **SAME, **I8)
register_op("RESHAPE", shape.reshape, attrs={"new_shape": [-1]}, **SAME, **I816)
register_op("SQUEEZE", shape.squeeze, attrs={"squeeze_dims": []}, **SAME, **I816)
register_op("TRANSPOSE", shape.transpose, attrs={"perm": [0]}, **SAME, **I816)
register_op("TILE", shape.tile, attrs={"multiples": [1]}, **SAME, **I8)
register_op("CONCATENATION", shape.concat, inputs=(1, 1 << 16), attrs={"axis": -1, **ACT}, **SAME, **I816)
register_op("PAD", shape.pad, attrs={"paddings": [], "constant_value": 0.0},
            doc="paddings [[before, after], ...]; constant_value != 0 exports as PADV2",
            **SAME, **I816)
register_op("RESIZE_BILINEAR", shape.resize,
            attrs={"size": [1, 1], "align_corners": False, "half_pixel_centers": False},
            **SAME, **I816)
register_op("RESIZE_NEAREST_NEIGHBOR", shape.resize,
            attrs={"size": [1, 1], "align_corners": False, "half_pixel_centers": False},
            **SAME, **I816)
register_op("DEPTH_TO_SPACE", shape.d2s, attrs={"block_size": 2}, **SAME, **I8)
register_op("SPACE_TO_DEPTH", shape.s2d, attrs={"block_size": 2}, **SAME, **I8)
register_op("STRIDED_SLICE", shape.strided_slice,
            attrs={"begin": [], "end": [], "strides": [], "shrink_axis": []},
            doc="python-style slice per dim; begin/end/strides cover every dim", **SAME, **I816)
register_op("GATHER", shape.gather, inputs=2, attrs={"axis": 0}, **SAME, **I816)
register_op("BATCH_MATMUL", shape.batch_matmul, inputs=2, attrs={"adj_x": False, "adj_y": False},
            doc="x @ y over the last two axes (adj_*: transposed), batch dims broadcast; "
                "int8 with a zero-point-0 right-hand input is what XNNPACK delegates",
            **I8)
register_op("QUANTIZE", shape.typed(np.int8), attrs={"dtype": "int8"},
            doc="float -> int, or int -> int requantize; params on the output tensor", **I816)
register_op("DEQUANTIZE", shape.typed(np.float32), attrs={"dtype": "float32"}, **I816)
register_op("CAST", shape.typed(np.float32), attrs={"dtype": "float32"})
register_op("SHAPE", shape.shape_of)

# IR-only ops: passes remove or lower them before export.
register_op("BATCH_NORM", shape.same, inputs=5, attrs={"epsilon": 1e-5, "momentum": 0.9}, ir_only=True,
            doc="y = gamma * (x - mean) / sqrt(var + eps) + beta over the last axis; "
                "inputs (x, gamma, beta, mean, var)",
            params=((1, "gamma"), (2, "beta"), (3, "moving_mean"), (4, "moving_var")))
register_op("FAKE_QUANT", shape.fake_quant, inputs=3,
            attrs={"bits": 8, "narrow_range": False, "axis": None, "symmetric": False,
                   "quantizer": "minmax", "kind": "activation"},
            ir_only=True,
            doc="quantize-dequantize x to [min, max] (inputs x, min, max; per-channel when axis set)",
            params=((1, "range"), (2, "range")))
register_op("CLIP", shape.same, attrs={"min": None, "max": None}, ir_only=True,
            doc="clip(x, min, max); None means unbounded. Lowered to RELU* / MAXIMUM+MINIMUM")
register_op("HARD_SIGMOID", shape.same, attrs={"alpha": 0.2, "beta": 0.5}, ir_only=True,
            doc="clip(alpha * x + beta, 0, 1)")

"""16x8 facts: which ops qatir runs with int16 activations and int8 weights, and how.

A leaf module (the op registry only), read by ``insert_fake_quant`` (where a table's
``[[int16]]`` entries put 16-bit fake-quant), lowering, the TFLite writer and the
integer reference (:mod:`qatir.reference_int16`), so that the list is stated once.

LiteRT's 16x8 mode (``shared/TFLITE_INT8.md`` section 6): int16 activations are
symmetric with zero point 0; weights stay int8; conv-like ops take an int64 bias
(``quantized_bias_type``). An op is in :data:`INT16_OPS` when LiteRT has an int16
kernel for it (the ``int16`` op fact, read from ``tflite/kernels/*.cc``, not only from
``op_version.cc``) *and* qatir's writer and integer reference support it. Other ops in an
int16 region stay int8 (a requantizing ``QUANTIZE`` on each edge between the two).
XNNPACK delegates no int16 op: 16x8 nodes run on LiteRT's builtin kernels under the
default resolver too.
"""

from __future__ import annotations

import numpy as np

from qatir.ir import QuantParams
from qatir.ops.registry import get_op

#: ops with a 16x8 kernel in LiteRT that qatir's writer and integer reference support.
INT16_OPS: frozenset[str] = frozenset({
    "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "SUB", "MUL",
    "MAX_POOL_2D", "AVERAGE_POOL_2D", "RESHAPE", "SQUEEZE", "TRANSPOSE", "CONCATENATION",
    "PAD", "STRIDED_SLICE", "RESIZE_NEAREST_NEIGHBOR", "LOGISTIC", "TANH", "SOFTMAX", "MEAN",
})

#: conv-like 16x8 ops: int8 weights, int64 bias. LiteRT runs an int64 bias on its
#: reference kernel under every resolver (conv.cc EvalQuantizedPerChannel16x8,
#: fully_connected.cc), so both resolvers compute the same bits.
INT64_BIAS_OPS: frozenset[str] = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"})

#: The fake-quant attributes of a 16-bit activation: symmetric, narrow range. TF's
#: nudging then puts the zero point at exactly 0 (a symmetric [-m, m] over the full
#: 65536 steps would land it on a tie, 32767.5, and float32 rounding decides).
INT16_FQ = {"bits": 16, "narrow_range": True, "symmetric": True}

I16_MIN, I16_MAX = -32768, 32767


def touches_int16(node) -> bool:
    """``node`` reads or writes an int16 activation: a 16x8 node or a requantize between
    widths. The wide_softmax step's SOFTMAX (int8 in, int16 out on LiteRT's fixed grid)
    is not: it is the int8 SOFTMAX kernel, modelled by the int8 reference."""
    if node.op == "SOFTMAX" and node.inputs[0].dtype == np.int8:
        return False
    return any(t is not None and not t.is_const and t.dtype == np.int16 and t.quant is not None
               for t in (*node.inputs, *node.outputs))


def has_int16(op: str) -> bool:
    """qatir exports ``op`` with int16 activations (LiteRT has the kernel, qatir the rest)."""
    return op in INT16_OPS and get_op(op).int16


def act_params16(scale: float) -> QuantParams:
    """Per-tensor int16 activation parameters (zero point 0, the full int16 range)."""
    return QuantParams((float(np.float32(scale)),), (0,), None, 16, False, "int16")


#: TFLite op version of the 16x8 form (``op_version.cc``): conv/FC at the versions that
#: carry ``quantized_bias_type`` (CONV_2D 8, FULLY_CONNECTED 11); DEPTHWISE_CONV_2D 5
#: ("if the op accepts int16"); ADD 3 and SUB 5 (``pot_scale_int16`` false: the general
#: rescale); MUL 4; pools and CONCATENATION 3; PAD/PADV2 3; RESHAPE 1; QUANTIZE 2 (int16 output),
#: 1 (int16 -> int8); DEQUANTIZE 3; TRANSPOSE 5; RESIZE_NEAREST_NEIGHBOR 4; SQUEEZE and
#: STRIDED_SLICE 1 (no int16 branch: the int8-free default); LOGISTIC, TANH, SOFTMAX and MEAN 3.
INT16_VERSION: dict[str, int] = {
    "CONV_2D": 8, "DEPTHWISE_CONV_2D": 5, "FULLY_CONNECTED": 11, "ADD": 3, "SUB": 5, "MUL": 4,
    "MAX_POOL_2D": 3, "AVERAGE_POOL_2D": 3, "CONCATENATION": 3, "PAD": 3, "PADV2": 3,
    "RESHAPE": 1, "SQUEEZE": 1, "STRIDED_SLICE": 1, "TRANSPOSE": 5,
    "RESIZE_NEAREST_NEIGHBOR": 4, "DEQUANTIZE": 3,
    "LOGISTIC": 3, "TANH": 3, "SOFTMAX": 3, "MEAN": 3,
}

#: op -> (scale, zero point) LiteRT fixes for its int16 output: LOGISTIC checks
#: ``scale == 1./32768`` exactly and TANH a log2 of -15 (``activations.cc`` SigmoidPrepare,
#: TanhPrepare), SOFTMAX 1/32768 within 0.1 % (SoftmaxPrepare); zero point 0 for all.
INT16_FIXED_OUTPUT: dict[str, tuple[float, int]] = {
    "LOGISTIC": (1.0 / 32768.0, 0), "TANH": (1.0 / 32768.0, 0), "SOFTMAX": (1.0 / 32768.0, 0),
}
#: TFLite TensorType INT64, the ``quantized_bias_type`` of a conv/FC with an int64 bias.
TENSOR_TYPE_INT64 = 4


def int16_fields(code: str) -> dict[str, object]:
    """Builtin-option fields the 16x8 form of ``code`` sets beyond the int8 ones."""
    if code in ("CONV_2D", "FULLY_CONNECTED"):
        return {"QuantizedBiasType": TENSOR_TYPE_INT64}
    if code in ("ADD", "SUB"):
        return {"PotScaleInt16": False}
    return {}

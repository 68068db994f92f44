"""Target facts: what LiteRT (and its XNNPACK delegate) can load and run.

One module, read by lowering (``qatir.lowering``), the integer reference and the
TFLite writer, so that a limit is stated once. Per-op facts (weight slots,
quantization roles, kernel availability) live on the op definitions
(``qatir/ops/defs.py``); the pattern table holds only the user's policy.
Sources: LiteRT ``tflite/kernels/*.cc``, ``tflite/tools/versioning/*.cc``, and
measurements recorded in ``shared/TFLITE_INT8.md`` and ``docs/parity-report.md``.
"""

from __future__ import annotations

import warnings

import numpy as np

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
#: Flatbuffers address 32-bit offsets: a file without offset buffers stays below 2 GiB.
MAX_FLATBUFFER = 2**31 - 1

#: Weight ops qatir exports per-tensor only although TFLite has a per-channel form. Empty:
#: FULLY_CONNECTED runs per-channel weights on axis 0 (``fully_connected.cc`` requires
#: quantized_dimension 0; XNNPACK's qc8 FC takes them; op version unchanged, 4/5/6, since
#: ``op_version.cc`` versions per-channel FC only for float inputs), bit-exact under both
#: resolvers (``tests/test_ptq.py``). The quantization spec lists per-axis weights for
#: CONV_2D and DEPTHWISE_CONV_2D only; the converter and ai-edge-quantizer write them for FC.
PER_TENSOR_WEIGHTS: frozenset[str] = frozenset()

#: XNNPACK's limit on a conv/FC requantization scale in·w/out (measured: 255 loads, 256
#: fails, and the delegate then fails the whole model at load).
XNN_MAX_REQUANT = 256.0
#: LiteRT's builtin int8 ADD needs 2·max(input scale) / (2^20 · output scale) < 1
#: (measured: a ratio of 2^19 aborts the process, just below it runs).
ADD_MAX_RATIO = 2.0**19
#: LiteRT's int8 HARD_SWISH (HardSwishPrepare, activations.cc) needs the multiplier
#: (input scale / 128) / output scale below 1, i.e. input / output scale below 128; at or
#: above it the model fails to prepare on both resolvers (measured).
HARD_SWISH_MAX_RATIO = 128.0
#: LiteRT's int8 SQUARED_DIFFERENCE (squared_difference.cc) shifts both inputs left by 7
#: and needs (2·max(input scale))² / (2^14 · output scale) below 1 (its
#: QuantizeMultiplierSmallerThanOneExp check aborts the process otherwise, measured).
SQUARED_DIFFERENCE_SHIFT = 7


def squared_difference_multiplier(s1: float, s2: float, s_out: float) -> float:
    """The output multiplier LiteRT's int8 SQUARED_DIFFERENCE computes (in double)."""
    tw = 2.0 * max(float(np.float32(s1)), float(np.float32(s2)))
    return tw * tw / ((1 << (2 * SQUARED_DIFFERENCE_SHIFT)) * float(np.float32(s_out)))
#: (op, lowest, highest) scale ratio XNNPACK's int8 kernels accept (params-init checks);
#: outside it the node runs on LiteRT's builtin kernel. MUL's ratio is in1·in2/out.
XNN_RATIO: dict[str, tuple[float, float]] = {
    "ADD": (2.0**-10, 2.0**8), "SUB": (2.0**-10, 2.0**8), "MUL": (2.0**-16, 2.0**8),
    "LEAKY_RELU": (2.0**-8, 2.0**7),
}


def xnn_scale_ratios(op: str, in_scales, out_scale: float) -> list[float]:
    """The scale ratios XNNPACK checks against :data:`XNN_RATIO` for an int8 binary op,
    in float32 as the delegate computes them: in1·in2/out for MUL of two quantized inputs,
    each input's / out otherwise."""
    so = np.float32(out_scale)
    if op == "MUL" and len(in_scales) == 2:
        return [float(np.float32(np.float32(in_scales[0]) * np.float32(in_scales[1])) / so)]
    return [float(np.float32(s) / so) for s in in_scales]


def xnn_ratios_ok(op: str, in_scales, out_scale: float) -> bool:
    """Every ratio of :func:`xnn_scale_ratios` within XNNPACK's bounds for ``op``."""
    lo, hi = XNN_RATIO[op]
    return all(lo <= r < hi for r in xnn_scale_ratios(op, in_scales, out_scale))


#: LiteRT's BATCH_MATMUL takes operands of rank 2 to 5 (batch_matmul.cc Prepare).
BATCH_MATMUL_MAX_RANK = 5
#: XNNPACK's int8 convert/requantize (QUANTIZE int8 -> int8) accepts in/out in [2^-8, 2^7].
XNN_CVT_RATIO = (2.0**-8, 2.0**7)



def xnn_takes_batch_matmul(node) -> bool:
    """XNNPACK delegates an int8 BATCH_MATMUL only when the right-hand input's zero point
    is 0 (xnnpack_delegate.cc VisitBatchMatMulNode); otherwise LiteRT's reference kernel
    (the only int8 BATCH_MATMUL it registers) runs it."""
    rhs = node.inputs[1].quant
    return rhs is not None and int(rhs.zero_point[0]) == 0
# ------------------------------------------------------ dynamic range (hybrid)
#: Ops LiteRT runs as hybrid kernels (float input and output, int8 symmetric constant
#: weight in input slot 1, the input quantized on the fly): op -> the weight axis its
#: per-channel scales run along (``None``: BATCH_MATMUL's output-column axis, the
#: right-hand input's last axis, or the one before it with ``adj_y``). Sources:
#: ``conv.cc`` (EvalHybridPerChannel when the filter's scales differ, EvalHybrid with
#: symmetric input quantization when they are all equal), ``depthwise_conv.cc`` (only a
#: per-channel hybrid kernel: it reads one scale per output channel),
#: ``fully_connected.cc`` and ``batch_matmul.cc`` (per-channel when the filter has more
#: than one scale; ``asymmetric_quantize_inputs`` picks per-row asymmetric input
#: quantization). XNNPACK delegates hybrid CONV_2D, FULLY_CONNECTED and BATCH_MATMUL
#: with its own dynamic quantization (``xnnpack_delegate.cc``, qd8), not DEPTHWISE.
HYBRID_WEIGHT_AXIS: dict[str, int | None] = {
    "CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0, "BATCH_MATMUL": None,
}
#: ops XNNPACK runs itself in a dynamic-range file (measured, tests/test_modes.py).
XNN_HYBRID_OPS = frozenset({"CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL"})


# --------------------------------------------------------------------- SOFTMAX
#: reference_ops::Softmax (int8 in, int8 out; ``internal/reference/softmax.h``) keeps
#: the scaled input difference in Q5.26 and the sum of exps in Q12.19. SoftmaxPrepare
#: (``activations.cc``) runs PreprocessSoftmaxScaling (``quantization_util.cc``):
#: QuantizeMultiplierGreaterThanOne(min(beta·s_in·2^26, 2^31-1)) TFLITE_CHECKs a
#: multiplier > 1, so beta·s_in must exceed 2^-26 or the process aborts at prepare.
SOFTMAX_MIN_BETA_SCALE = 2.0**-26
#: At Eval, GetReciprocal gives num_bits_over_unit = 12 - clz(sum of exps, Q12.19) and
#: TFLITE_CHECK(exponent = num_bits_over_unit + 31 - output bits <= 31). For an int8
#: output the sum of exps of a row must stay below 2^28 raw, i.e. 512.0. Each exp is at
#: most 1.0 (2^19 raw, the row's maximum itself), so a row of at most 511 entries can never
#: abort; from 512 entries on, a nearly flat row (many entries equal to the row maximum)
#: aborts the process. With an int16 output the check always holds; the Q12.19 sum itself
#: stays exact while depth x 2^19 < 2^31, i.e. up to 4095 entries.
SOFTMAX_MAX_DEPTH = 511
SOFTMAX_INT16_MAX_DEPTH = 4095
#: The grid reference_ops::Softmax writes an int16 output on: p * 2^16 - 32768.
SOFTMAX_INT16_OUTPUT = (1.0 / 65536.0, -32768)


def softmax_ref_limit(depth: int | None, in_scale: float, beta: float,
                      out_bits: int = 8) -> str | None:
    """Why LiteRT's BUILTIN_REF SOFTMAX (int8 in, ``out_bits`` out) can abort on these
    parameters (None: it cannot)."""
    bs = float(beta) * float(in_scale)
    if not bs * 2.0**26 > 1.0:
        return (f"beta x input scale = {bs:.3g} is not above 2^-26 (PreprocessSoftmaxScaling "
                "needs a multiplier > 1; LiteRT aborts at prepare)")
    limit = SOFTMAX_MAX_DEPTH if out_bits == 8 else SOFTMAX_INT16_MAX_DEPTH
    if depth is None or depth > limit:
        return (f"softmax depth {depth} exceeds {limit}: reference_ops::Softmax aborts (or, "
                "with an int16 output, overflows) when a row's sum of exps reaches "
                f"{512 if out_bits == 8 else 4096}, which a nearly flat row of that many "
                "entries does")
    return None


# ------------------------------------------------------------ versions, runtime
#: Minimum runtime per (builtin, version), from TF tools/versioning/runtime_version.cc
#: (FindMinimumRuntimeVersionForOp); every version qatir's emitters produce must be
#: listed (``tests/test_op_coverage.py``): a missing pair would understate the runtime.
RUNTIME_VERSION: dict[tuple[str, int], str] = {
    ("AVERAGE_POOL_2D", 1): "1.5.0", ("AVERAGE_POOL_2D", 2): "1.14.0",
    ("AVERAGE_POOL_2D", 3): "2.3.0",
    ("BATCH_MATMUL", 1): "2.3.0", ("BATCH_MATMUL", 2): "2.3.0", ("BATCH_MATMUL", 3): "2.4.0",
    ("BATCH_MATMUL", 4): "2.5.0",
    ("CONV_2D", 1): "1.5.0", ("CONV_2D", 2): "1.14.0", ("CONV_2D", 3): "1.14.0",
    ("CONV_2D", 4): "2.3.0", ("CONV_2D", 5): "2.4.0", ("CONV_2D", 6): "2.9.0",
    ("DEPTHWISE_CONV_2D", 1): "1.5.0", ("DEPTHWISE_CONV_2D", 2): "1.12.0",
    ("DEPTHWISE_CONV_2D", 3): "1.14.0", ("DEPTHWISE_CONV_2D", 4): "2.2.0",
    ("DEPTHWISE_CONV_2D", 6): "2.3.0",
    ("ADD", 1): "1.5.0", ("ADD", 2): "1.14.0", ("ADD", 3): "2.4.0",
    ("SUB", 1): "1.6.0", ("SUB", 2): "1.14.0", ("SUB", 3): "2.3.0", ("SUB", 5): "2.4.0",
    ("DIV", 1): "1.6.0", ("DIV", 2): "2.3.0",
    ("CONCATENATION", 1): "1.5.0", ("CONCATENATION", 2): "1.14.0",
    ("CONCATENATION", 3): "2.3.0",
    ("DEPTH_TO_SPACE", 1): "2.1.0", ("DEPTH_TO_SPACE", 2): "2.5.0",
    ("FULLY_CONNECTED", 1): "1.5.0", ("FULLY_CONNECTED", 4): "1.14.0",
    ("FULLY_CONNECTED", 5): "2.0.0", ("FULLY_CONNECTED", 6): "2.1.0",
    ("FULLY_CONNECTED", 9): "2.3.0", ("FULLY_CONNECTED", 12): "2.17.0",
    ("GATHER", 1): "1.6.0", ("GATHER", 2): "1.14.0",
    ("MAX_POOL_2D", 1): "1.5.0", ("MAX_POOL_2D", 2): "1.14.0", ("MAX_POOL_2D", 3): "2.3.0",
    ("MAXIMUM", 1): "1.14.0", ("MAXIMUM", 2): "1.14.0",
    ("MINIMUM", 1): "1.14.0", ("MINIMUM", 2): "1.14.0",
    ("MUL", 1): "1.5.0", ("MUL", 2): "1.14.0", ("MUL", 3): "1.15.0", ("MUL", 4): "2.3.0",
    ("PAD", 1): "1.5.0", ("PAD", 2): "1.14.0", ("PAD", 3): "2.4.0", ("PAD", 4): "2.6.0",
    ("PADV2", 1): "1.9.0", ("PADV2", 2): "1.14.0", ("PADV2", 3): "2.4.0", ("PADV2", 4): "2.6.0",
    ("RESHAPE", 1): "1.5.0",
    ("LOG_SOFTMAX", 1): "1.5.0", ("LOG_SOFTMAX", 2): "1.14.0",
    ("SOFTMAX", 1): "1.5.0", ("SOFTMAX", 2): "1.14.0", ("SOFTMAX", 3): "2.3.0",
    ("SPACE_TO_DEPTH", 1): "1.5.0", ("SPACE_TO_DEPTH", 2): "1.14.0",
    ("TILE", 1): "1.10.1",
    ("TRANSPOSE", 1): "1.6.0", ("TRANSPOSE", 2): "1.14.0", ("TRANSPOSE", 3): "1.15.0",
    ("TRANSPOSE", 4): "2.3.0", ("TRANSPOSE", 5): "2.4.0", ("TRANSPOSE", 6): "2.12.0",
    ("MEAN", 1): "1.6.0", ("MEAN", 2): "1.14.0", ("SUM", 1): "1.10.0", ("SUM", 2): "1.15.0",
    ("REDUCE_MAX", 1): "1.11.0", ("REDUCE_MAX", 2): "1.14.0",
    ("RELU6", 1): "1.5.0", ("RELU6", 2): "1.14.0", ("RELU", 1): "1.5.0", ("RELU", 2): "2.1.0",
    ("RELU_N1_TO_1", 1): "1.5.0", ("RELU_0_TO_1", 1): "2.10.0",
    ("RESIZE_BILINEAR", 1): "1.7.0", ("RESIZE_BILINEAR", 2): "1.14.0",
    ("RESIZE_BILINEAR", 3): "2.2.0",
    ("RESIZE_NEAREST_NEIGHBOR", 1): "1.13.1", ("RESIZE_NEAREST_NEIGHBOR", 2): "1.14.0",
    ("RESIZE_NEAREST_NEIGHBOR", 3): "2.3.0",
    ("SQUEEZE", 1): "1.6.0",
    ("STRIDED_SLICE", 1): "1.6.0", ("STRIDED_SLICE", 2): "1.14.0", ("STRIDED_SLICE", 4): "2.2.0",
    ("TANH", 1): "1.14.0", ("TANH", 2): "1.14.0", ("LOGISTIC", 1): "1.14.0",
    ("LOGISTIC", 2): "1.14.0",
    ("TRANSPOSE_CONV", 1): "1.9.0", ("TRANSPOSE_CONV", 2): "2.2.0", ("TRANSPOSE_CONV", 3): "2.3.0",
    ("TRANSPOSE_CONV", 4): "2.13.0",
    ("LEAKY_RELU", 1): "1.13.1", ("PRELU", 1): "1.8.0", ("HARD_SWISH", 1): "1.15.0",
    ("QUANTIZE", 1): "1.14.0", ("QUANTIZE", 2): "1.15.0", ("QUANTIZE", 3): "2.7.0",
    ("DEQUANTIZE", 1): "1.13.1", ("DEQUANTIZE", 2): "1.14.0", ("DEQUANTIZE", 3): "1.15.0", ("DEQUANTIZE", 5): "2.7.0",
    ("EXP", 1): "1.7.0", ("NEG", 1): "1.9.0", ("SQRT", 1): "1.10.0", ("RSQRT", 1): "1.10.0",
    ("RSQRT", 2): "2.5.0", ("ABS", 1): "1.13.0", ("ABS", 2): "2.4.0",
    ("GELU", 1): "2.9.0", ("GELU", 2): "2.9.0",
    ("SQUARED_DIFFERENCE", 1): "1.13.1", ("SQUARED_DIFFERENCE", 2): "2.5.0",
    ("POW", 1): "1.10.0", ("LOCAL_RESPONSE_NORMALIZATION", 1): "1.5.0",
    # 16x8 forms (qatir/int16.py INT16_VERSION)
    ("CONV_2D", 8): "2.15.0", ("DEPTHWISE_CONV_2D", 5): "2.3.0", ("FULLY_CONNECTED", 11): "2.15.0",
    ("RESIZE_NEAREST_NEIGHBOR", 4): "2.4.0", ("LOGISTIC", 3): "2.3.0", ("TANH", 3): "2.3.0",
    ("MEAN", 3): "2.4.0",
}


def _vkey(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def min_runtime_version(pairs: set[tuple[str, int]]) -> str:
    """The highest runtime version the (builtin, version) pairs need ("" for no pairs).

    Every pair qatir's own emitters produce is listed (the op-coverage test checks it);
    a pair missing from :data:`RUNTIME_VERSION` (a plug-in's op) is skipped with a
    warning naming it, since the metadata may then understate the runtime.
    """
    missing = sorted(p for p in pairs if p not in RUNTIME_VERSION)
    if missing:
        warnings.warn(f"no minimum runtime version known for {missing}; the file's "
                      "min_runtime_version metadata ignores them", stacklevel=2)
    found = [RUNTIME_VERSION[p] for p in pairs if p in RUNTIME_VERSION]
    return max(found, key=_vkey) if found else ""

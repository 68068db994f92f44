"""IR node -> TFLite operator: builtin code, version, operand list and builtin options.

Versions follow TF ``tensorflow/lite/tools/versioning/op_version.cc`` for the
tensor types each op sees (see ``shared/TFLITE_INT8.md`` section 2); every
version an emitter can produce is declared in :data:`VERSIONS`. IR attrs
that TFLite passes as operand tensors (reshape shape, reduction axes, pad
amounts, perm, resize size, strided-slice begin/end/strides, transpose-conv
output shape) become int32 constants here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qatir.errors import ExportError
from qatir.int16 import INT16_VERSION, int16_fields, touches_int16
from qatir.ir import Node, Tensor
from qatir.numerics import normalize_axes, normalize_axis, quantized_fill
from qatir.ops.infer import conv_groups

PADDING = {"SAME": 0, "VALID": 1}
ACTIVATION = {"NONE": 0, "RELU": 1, "RELU_N1_TO_1": 2, "RELU6": 3, "TANH": 4}


@dataclass
class OpSpec:
    """One TFLite operator as the writer emits it."""

    code: str
    version: int
    inputs: list[int]
    outputs: list[int]
    options: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)


class Ctx:
    """What an op emitter may use: tensor indices and fresh int32/int8 constants."""

    def __init__(self, tensor_fn: Callable[[Tensor], int],
                 const_fn: Callable[[np.ndarray, str, Any], int]):
        self.tensor = tensor_fn
        self.const = const_fn

    def i32(self, values: Any, name: str) -> int:
        return self.const(np.asarray(values, np.int32), name, None)


def _q(t: Tensor | None) -> bool:
    return t is not None and t.dtype == np.int8


def _act(node: Node) -> int:
    act = node.attrs.get("fused_activation", "NONE")
    if act not in ACTIVATION:
        raise ExportError(f"node {node.name!r}: unknown fused activation {act!r}")
    return ACTIVATION[act]


def _hybrid(node: Node) -> bool:
    """A dynamic-range (hybrid) op: float input, int8 constant weight in slot 1."""
    w = node.inputs[1] if len(node.inputs) > 1 else None
    return not _q(node.inputs[0]) and _q(w) and w.is_const


def _per_channel(t: Tensor) -> bool:
    return t.quant is not None and len(t.quant.scale) > 1


def _io(node: Node, ctx: Ctx) -> tuple[list[int], list[int]]:
    ins = [-1 if t is None else ctx.tensor(t) for t in node.inputs]
    return ins, [ctx.tensor(t) for t in node.outputs]


def _conv(node: Node, ctx: Ctx) -> OpSpec:
    ins, outs = _io(node, ctx)
    sh, sw = node.attrs["stride"]
    dh, dw = node.attrs.get("dilation", (1, 1))
    fields = {"Padding": PADDING[node.attrs["padding"]], "StrideW": sw, "StrideH": sh,
              "FusedActivationFunction": _act(node), "DilationWFactor": dw, "DilationHFactor": dh}
    # op_version.cc: hybrid CONV_2D is 2, or 5 per-channel; hybrid DEPTHWISE 4, or 6
    hybrid, per_ch = _hybrid(node), _per_channel(node.inputs[1])
    if node.op == "CONV_2D":
        # op_version.cc checks a grouped convolution (6) before the types
        version = 6 if conv_groups(node) > 1 else (
            3 if _q(node.inputs[0]) else ((5 if per_ch else 2) if hybrid else 1))
        return OpSpec("CONV_2D", version, ins, outs, "Conv2DOptions", fields)
    fields["DepthMultiplier"] = int(node.attrs["depth_multiplier"])
    version = 3 if _q(node.inputs[0]) else (2 if (dh, dw) != (1, 1) else 1)
    if hybrid:
        version = 6 if per_ch else 4
    return OpSpec("DEPTHWISE_CONV_2D", version, ins, outs, "DepthwiseConv2DOptions", fields)


def _fc(node: Node, ctx: Ctx) -> OpSpec:
    ins, outs = _io(node, ctx)
    keep = bool(node.attrs["keep_num_dims"])
    hybrid = _hybrid(node)
    if _q(node.inputs[0]):
        version = 6 if len(ins) < 3 else (5 if keep else 4)
    elif hybrid:
        # op_version.cc checks, in order: per-channel hybrid 12, no bias 6, keep_num_dims
        # 5, hybrid with asymmetric_quantize_inputs 9
        version = 12 if _per_channel(node.inputs[1]) else (
            6 if len(ins) < 3 else (5 if keep else 9))
    else:
        version = 5 if keep else 1
    fields = {"FusedActivationFunction": _act(node), "KeepNumDims": keep}
    if hybrid:
        fields["AsymmetricQuantizeInputs"] = True
    return OpSpec("FULLY_CONNECTED", version, ins, outs, "FullyConnectedOptions", fields)


def _tconv(node: Node, ctx: Ctx) -> OpSpec:
    x, w = node.inputs[0], node.inputs[1]
    b = node.inputs[2] if len(node.inputs) > 2 else None
    out = node.outputs[0]
    shape = ctx.i32(list(out.shape), f"{node.name}_output_shape")
    ins = [shape, ctx.tensor(w), ctx.tensor(x)] + ([ctx.tensor(b)] if b is not None else [])
    sh, sw = node.attrs["stride"]
    act = _act(node)
    version = 4 if act else (3 if b is not None else (2 if _q(x) else 1))
    fields = {"Padding": PADDING[node.attrs["padding"]], "StrideW": sw, "StrideH": sh,
              "FusedActivationFunction": act}
    return OpSpec("TRANSPOSE_CONV", version, ins, [ctx.tensor(out)], "TransposeConvOptions", fields)


def _binary(node: Node, ctx: Ctx) -> OpSpec:
    ins, outs = _io(node, ctx)
    a, b = node.inputs
    version = 1
    if _q(a):
        version = 2
        if node.op == "MUL":
            ratio = a.quant.scale[0] * b.quant.scale[0] / node.outputs[0].quant.scale[0]
            version = 3 if ratio >= 1.0 else 2
        if node.op == "SUB" and max(a.rank, b.rank) > 4 and a.shape != b.shape:
            version = 3
    opts = {"ADD": "AddOptions", "SUB": "SubOptions", "MUL": "MulOptions", "DIV": "DivOptions"}
    return OpSpec(node.op, version, ins, outs, opts[node.op],
                  {"FusedActivationFunction": _act(node)})


def _simple(version_q: int, version_f: int = 1, options: str | None = None) -> Callable:
    def emit(node: Node, ctx: Ctx) -> OpSpec:
        ins, outs = _io(node, ctx)
        return OpSpec(node.op, version_q if _q(node.inputs[0]) else version_f, ins, outs, options)
    return emit


def _leaky(node: Node, ctx: Ctx) -> OpSpec:
    ins, outs = _io(node, ctx)
    return OpSpec("LEAKY_RELU", 1, ins, outs, "LeakyReluOptions",
                  {"Alpha": float(node.attrs["alpha"])})


def _lrn(node: Node, ctx: Ctx) -> OpSpec:
    ins, outs = _io(node, ctx)
    a = node.attrs
    return OpSpec("LOCAL_RESPONSE_NORMALIZATION", 1, ins, outs,
                  "LocalResponseNormalizationOptions",
                  {"Radius": int(a["radius"]), "Bias": float(a["bias"]),
                   "Alpha": float(a["alpha"]), "Beta": float(a["beta"])})


def _gelu(node: Node, ctx: Ctx) -> OpSpec:
    ins, outs = _io(node, ctx)
    # op_version.cc: GELU is version 2 for int8/uint8 inputs, 1 for float
    return OpSpec("GELU", 2 if _q(node.inputs[0]) else 1, ins, outs, "GeluOptions",
                  {"Approximate": bool(node.attrs["approximate"])})


def _softmax(node: Node, ctx: Ctx) -> OpSpec:
    ins, outs = _io(node, ctx)
    return OpSpec("SOFTMAX", 2 if _q(node.inputs[0]) else 1, ins, outs, "SoftmaxOptions",
                  {"Beta": float(node.attrs["beta"])})


def _log_softmax(node: Node, ctx: Ctx) -> OpSpec:
    ins, outs = _io(node, ctx)
    return OpSpec("LOG_SOFTMAX", 2 if _q(node.inputs[0]) else 1, ins, outs, "LogSoftmaxOptions")


def _pool(node: Node, ctx: Ctx) -> OpSpec:
    ins, outs = _io(node, ctx)
    kh, kw = node.attrs["filter"]
    sh, sw = node.attrs["stride"]
    fields = {"Padding": PADDING[node.attrs["padding"]], "StrideW": sw, "StrideH": sh,
              "FilterWidth": kw, "FilterHeight": kh, "FusedActivationFunction": _act(node)}
    return OpSpec(node.op, 2 if _q(node.inputs[0]) else 1, ins, outs, "Pool2DOptions", fields)


def _reduce(node: Node, ctx: Ctx) -> OpSpec:
    x = node.inputs[0]
    axes = node.attrs["axis"]
    axes = [axes] if isinstance(axes, int) else list(axes)
    axes = normalize_axes(axes, x.rank)
    ins = [ctx.tensor(x), ctx.i32(axes, f"{node.name}_axes")]
    return OpSpec(node.op, 2 if _q(x) else 1, ins, [ctx.tensor(node.outputs[0])],
                  "ReducerOptions", {"KeepDims": bool(node.attrs["keep_dims"])})


def _reshape(node: Node, ctx: Ctx) -> OpSpec:
    out = node.outputs[0]
    shape = [int(d) for d in out.shape]
    ins = [ctx.tensor(node.inputs[0]), ctx.i32(shape, f"{node.name}_shape")]
    return OpSpec("RESHAPE", 1, ins, [ctx.tensor(out)], "ReshapeOptions", {"NewShape": shape})


def _squeeze(node: Node, ctx: Ctx) -> OpSpec:
    ins, outs = _io(node, ctx)
    x = node.inputs[0]
    dims = [normalize_axis(d, x.rank) for d in node.attrs["squeeze_dims"]]
    return OpSpec("SQUEEZE", 1, ins, outs, "SqueezeOptions", {"SqueezeDims": dims})


def _transpose(node: Node, ctx: Ctx) -> OpSpec:
    x = node.inputs[0]
    ins = [ctx.tensor(x), ctx.i32(list(node.attrs["perm"]), f"{node.name}_perm")]
    version = 2 if _q(x) else 1
    if x.rank > 5:
        version = 6
    elif x.rank > 4:
        version = 4
    return OpSpec("TRANSPOSE", version, ins, [ctx.tensor(node.outputs[0])], "TransposeOptions")


def _tile(node: Node, ctx: Ctx) -> OpSpec:
    x = node.inputs[0]
    ins = [ctx.tensor(x), ctx.i32(list(node.attrs["multiples"]), f"{node.name}_multiples")]
    # version 1 for int8 too: op_version.cc's newer rule (int8 -> 3) is not registered by
    # the ai-edge-litert runtime, whose version-1 kernel handles int8 (measured)
    return OpSpec("TILE", 1, ins, [ctx.tensor(node.outputs[0])], "TileOptions")


def _concat(node: Node, ctx: Ctx) -> OpSpec:
    ins, outs = _io(node, ctx)
    axis = normalize_axis(node.attrs["axis"], node.outputs[0].rank)
    return OpSpec("CONCATENATION", 2 if _q(node.inputs[0]) else 1, ins, outs,
                  "ConcatenationOptions", {"Axis": axis, "FusedActivationFunction": _act(node)})


def _pad(node: Node, ctx: Ctx) -> OpSpec:
    x = node.inputs[0]
    pads = ctx.i32([[int(a), int(b)] for a, b in node.attrs["paddings"]], f"{node.name}_paddings")
    value = float(node.attrs.get("constant_value", 0.0))
    ins = [ctx.tensor(x), pads]
    version = 2 if _q(x) else 1
    if x.rank > 4:
        version = 4
    cv = None
    if x.quant is not None and x.dtype in (np.int8, np.int16):  # int16: a 16x8 region
        q = x.quant
        cv = quantized_fill(value, q.scale[0], q.zero_point[0], x.dtype)
    # A quantized PAD pads with the zero point, so a PADV2 whose value quantizes to it is a
    # PAD, which XNNPACK delegates (it leaves PADV2 to the builtin kernel). A max-pool's
    # -inf padding after a ReLU (zero point -128) is the common case.
    if value == 0.0 or (cv is not None and int(cv) == int(q.zero_point[0])):
        return OpSpec("PAD", version, ins, [ctx.tensor(node.outputs[0])], "PadOptions")
    if cv is not None:
        ins.append(ctx.const(np.asarray([cv], x.dtype).reshape(()), f"{node.name}_value", q))
    else:
        ins.append(ctx.const(np.asarray(value, np.float32), f"{node.name}_value", None))
    return OpSpec("PADV2", version, ins, [ctx.tensor(node.outputs[0])], "PadV2Options")


def _resize(node: Node, ctx: Ctx) -> OpSpec:
    x = node.inputs[0]
    ins = [ctx.tensor(x), ctx.i32(list(node.attrs["size"]), f"{node.name}_size")]
    half = bool(node.attrs["half_pixel_centers"])
    version = 3 if half else (2 if _q(x) else 1)
    opts = "ResizeBilinearOptions" if node.op == "RESIZE_BILINEAR" else "ResizeNearestNeighborOptions"
    return OpSpec(node.op, version, ins, [ctx.tensor(node.outputs[0])], opts,
                  {"AlignCorners": bool(node.attrs["align_corners"]), "HalfPixelCenters": half})


def _block(node: Node, ctx: Ctx) -> OpSpec:
    ins, outs = _io(node, ctx)
    opts = "DepthToSpaceOptions" if node.op == "DEPTH_TO_SPACE" else "SpaceToDepthOptions"
    version = 2 if _q(node.inputs[0]) and node.op == "SPACE_TO_DEPTH" else 1
    return OpSpec(node.op, version, ins, outs, opts, {"BlockSize": int(node.attrs["block_size"])})


def _strided_slice(node: Node, ctx: Ctx) -> OpSpec:
    x = node.inputs[0]
    begin, end, strides, end_mask = [], [], [], 0
    for i, (d, b, e, s) in enumerate(zip(x.shape, *(node.attrs[k] for k in
                                                      ("begin", "end", "strides")))):
        start, stop, step = slice(int(b), int(e), int(s)).indices(int(d))
        begin.append(start)
        strides.append(step)
        if step < 0 and stop < 0:
            end_mask |= 1 << i
            stop = 0
        end.append(stop)
    shrink = 0
    for a in node.attrs.get("shrink_axis", []):
        shrink |= 1 << int(a)
    ins = [ctx.tensor(x), ctx.i32(begin, f"{node.name}_begin"), ctx.i32(end, f"{node.name}_end"),
           ctx.i32(strides, f"{node.name}_strides")]
    version = 4 if x.rank > 4 else (2 if _q(x) else 1)
    return OpSpec("STRIDED_SLICE", version, ins, [ctx.tensor(node.outputs[0])],
                  "StridedSliceOptions", {"EndMask": end_mask, "ShrinkAxisMask": shrink})


def _gather(node: Node, ctx: Ctx) -> OpSpec:
    ins, outs = _io(node, ctx)
    return OpSpec("GATHER", 2 if _q(node.inputs[0]) else 1, ins, outs, "GatherOptions",
                  {"Axis": int(node.attrs["axis"])})


def _batch_matmul(node: Node, ctx: Ctx) -> OpSpec:
    ins, outs = _io(node, ctx)
    fields = {"AdjX": bool(node.attrs["adj_x"]), "AdjY": bool(node.attrs["adj_y"])}
    version = 2 if _q(node.inputs[0]) else 1
    if _hybrid(node):  # op_version.cc: hybrid with asymmetric_quantize_inputs is 4
        version = 4
        fields["AsymmetricQuantizeInputs"] = True
    return OpSpec("BATCH_MATMUL", version, ins, outs, "BatchMatMulOptions", fields)


def _quantize(node: Node, ctx: Ctx) -> OpSpec:
    ins, outs = _io(node, ctx)
    per_ch = node.outputs[0].quant is not None and node.outputs[0].quant.axis is not None
    return OpSpec("QUANTIZE", 3 if per_ch else 1, ins, outs, "QuantizeOptions")


def _dequantize(node: Node, ctx: Ctx) -> OpSpec:
    ins, outs = _io(node, ctx)
    x = node.inputs[0]
    per_ch = x.quant is not None and x.quant.axis is not None
    # op_version.cc: int8 2 (per-channel 5); float16 (and int16) 3
    version = 5 if per_ch else (2 if x.dtype == np.int8 else (3 if x.dtype == np.float16 else 1))
    return OpSpec("DEQUANTIZE", version, ins, outs, "DequantizeOptions")


EMITTERS: dict[str, Callable[[Node, Ctx], OpSpec]] = {
    "CONV_2D": _conv,
    "DEPTHWISE_CONV_2D": _conv,
    "FULLY_CONNECTED": _fc,
    "TRANSPOSE_CONV": _tconv,
    "ADD": _binary, "SUB": _binary, "MUL": _binary, "DIV": _binary,
    "MAXIMUM": _simple(2, 1, "MaximumMinimumOptions"),
    "MINIMUM": _simple(2, 1, "MaximumMinimumOptions"),
    "RELU": _simple(2), "RELU6": _simple(2), "RELU_N1_TO_1": _simple(1), "RELU_0_TO_1": _simple(1),
    "LOGISTIC": _simple(2), "TANH": _simple(2), "HARD_SWISH": _simple(1),
    "EXP": _simple(1), "ABS": _simple(2), "NEG": _simple(1), "SQRT": _simple(1),
    "RSQRT": _simple(2), "PRELU": _simple(1),
    # op_version.cc: SQUARED_DIFFERENCE is version 2 for int8 inputs, 1 for float
    "SQUARED_DIFFERENCE": _simple(2, 1, "SquaredDifferenceOptions"),
    "LEAKY_RELU": _leaky,
    "POW": _simple(1, options="PowOptions"),
    "LOCAL_RESPONSE_NORMALIZATION": _lrn,
    "GELU": _gelu,
    "SOFTMAX": _softmax,
    "LOG_SOFTMAX": _log_softmax,
    "MAX_POOL_2D": _pool, "AVERAGE_POOL_2D": _pool,
    "MEAN": _reduce, "SUM": _reduce, "REDUCE_MAX": _reduce,
    "RESHAPE": _reshape,
    "SQUEEZE": _squeeze,
    "TRANSPOSE": _transpose,
    "TILE": _tile,
    "CONCATENATION": _concat,
    "PAD": _pad,
    "RESIZE_BILINEAR": _resize, "RESIZE_NEAREST_NEIGHBOR": _resize,
    "DEPTH_TO_SPACE": _block, "SPACE_TO_DEPTH": _block,
    "STRIDED_SLICE": _strided_slice,
    "GATHER": _gather,
    "BATCH_MATMUL": _batch_matmul,
    "QUANTIZE": _quantize,
    "DEQUANTIZE": _dequantize,
}

#: Every (builtin, versions) pair an emitter above can produce; the writer refuses any
#: other, and tests/test_op_coverage.py checks each has a RUNTIME_VERSION entry.
VERSIONS: dict[str, tuple[int, ...]] = {
    "CONV_2D": (1, 2, 3, 5, 6), "DEPTHWISE_CONV_2D": (1, 2, 3, 4, 6),
    "FULLY_CONNECTED": (1, 4, 5, 6, 9, 12),
    "TRANSPOSE_CONV": (1, 2, 3, 4), "ADD": (1, 2), "SUB": (1, 2, 3), "MUL": (1, 2, 3),
    "DIV": (1,), "MAXIMUM": (1, 2), "MINIMUM": (1, 2), "RELU": (1, 2), "RELU6": (1, 2),
    "RELU_N1_TO_1": (1,), "RELU_0_TO_1": (1,), "LOGISTIC": (1, 2), "TANH": (1, 2),
    "HARD_SWISH": (1,), "EXP": (1,), "ABS": (1, 2), "NEG": (1,), "SQRT": (1,), "RSQRT": (1, 2),
    "PRELU": (1,), "LEAKY_RELU": (1,), "SOFTMAX": (1, 2), "LOG_SOFTMAX": (1,), "MAX_POOL_2D": (1, 2),
    "AVERAGE_POOL_2D": (1, 2), "MEAN": (1, 2), "SUM": (1, 2), "REDUCE_MAX": (1, 2),
    "RESHAPE": (1,), "SQUEEZE": (1,), "TRANSPOSE": (1, 2, 4, 6), "TILE": (1,),
    "CONCATENATION": (1, 2), "PAD": (1, 2, 4), "PADV2": (1, 2, 4), "RESIZE_BILINEAR": (1, 2, 3),
    "RESIZE_NEAREST_NEIGHBOR": (1, 2, 3), "DEPTH_TO_SPACE": (1,), "SPACE_TO_DEPTH": (1, 2),
    "STRIDED_SLICE": (1, 2, 4), "GATHER": (1, 2), "BATCH_MATMUL": (1, 2, 4),
    "QUANTIZE": (1, 2, 3), "DEQUANTIZE": (1, 2, 3, 5), "GELU": (1, 2), "SQUARED_DIFFERENCE": (1, 2),
    "POW": (1,), "LOCAL_RESPONSE_NORMALIZATION": (1,),
}


for _code, _v in INT16_VERSION.items():  # the 16x8 forms (qatir/int16.py)
    VERSIONS[_code] = tuple(sorted({*VERSIONS.get(_code, ()), _v}))


def _int16_form(node: Node, spec: OpSpec) -> OpSpec:
    """The 16x8 form of ``spec`` when ``node`` reads or writes int16 activations."""
    if not touches_int16(node):  # the wide_softmax step's int8 -> int16 SOFTMAX stays v2
        return spec
    if spec.code == "QUANTIZE":
        spec.version = 2 if node.outputs[0].dtype == np.int16 else spec.version
        return spec
    if spec.code in INT16_VERSION:
        spec.version = INT16_VERSION[spec.code]
        spec.fields.update(int16_fields(spec.code))
    return spec


def emit(node: Node, ctx: Ctx) -> OpSpec:
    """The TFLite operator for ``node``; its (code, version) must be a declared one."""
    spec = _int16_form(node, EMITTERS[node.op](node, ctx))
    if node.op in _BUILTIN_EMITTERS and spec.version not in VERSIONS.get(spec.code, ()):
        raise ExportError(f"node {node.name!r}: the writer produced {spec.code} version "
                          f"{spec.version}, not a declared one {VERSIONS.get(spec.code)}")
    return spec


_BUILTIN_EMITTERS = frozenset(EMITTERS)

"""Which nodes of a ``.tflite`` file XNNPACK leaves to LiteRT's builtin kernels, and why.

:func:`xnnpack_offload` lists every operator the delegate did not take (measured with
:func:`qatir.parity.xnnpack_coverage`), with the check in LiteRT's
``tflite/delegates/xnnpack/xnnpack_delegate.cc`` (snapshot of 2026-08, the one
``ai_edge_litert`` 2.3.0 ships) that refuses it, from the node's tensor types and
quantization parameters (:func:`xnn_refusal`). The reason is read from the source, the
partition is measured: a node whose reason is ``None`` was refused for something this
module does not model (an option such as a fused activation, a shape limit).
"""

from __future__ import annotations

import os

import numpy as np

from qatir.target import XNN_CVT_RATIO, XNN_RATIO, xnn_scale_ratios

#: int8 ops the delegate takes in float only: the Visit*Node function and its check.
FLOAT_ONLY: dict[str, str] = {
    **{op: "VisitUnaryNode: CheckTensorFloatType (int8 refused)" for op in (
        "ABS", "CEIL", "COS", "EXP", "FLOOR", "GELU", "HARD_SWISH", "LOG", "NEG", "RELU",
        "RELU6", "RELU_N1_TO_1", "ROUND", "RSQRT", "SIN", "SQRT", "SQUARE")},
    **{op: "VisitBinaryNode: CheckTensorFloatType (int8 refused)" for op in (
        "DIV", "MAXIMUM", "MINIMUM", "PRELU", "SQUARED_DIFFERENCE")},
    "AVERAGE_POOL_2D": "VisitAveragePool2DNode: CheckTensorFloatType (int8 refused)",
    "SOFTMAX": "VisitSoftmaxNode: CheckTensorFloatType (int8 refused; beta must be 1)",
}
#: builtins VisitNode has no case for: never delegated, in any type.
NOT_VISITED = frozenset({
    "PADV2", "RESIZE_NEAREST_NEIGHBOR", "GATHER", "GATHER_ND", "TILE", "PACK", "UNPACK",
    "SQUEEZE", "SPLIT_V", "BROADCAST_TO", "LOG_SOFTMAX", "CAST", "SHAPE", "ARG_MAX",
    "ARG_MIN", "LOCAL_RESPONSE_NORMALIZATION", "POW", "MIRROR_PAD", "REDUCE_PROD",
    "TOPK_V2", "WHERE", "SELECT", "SELECT_V2", "EMBEDDING_LOOKUP"})


def _ratio_reason(op: str, ins: list[dict], out: dict) -> str | None:
    lo, hi = XNN_RATIO[op]
    ratios = xnn_scale_ratios(op, [t["scale"] for t in ins], out["scale"])
    if op == "MUL":
        r = ratios[0]
        if not lo <= r < hi:
            return (f"VisitBinaryNode: CheckTensorsInputProductOutputScale, in1*in2/out = "
                    f"{float(r):.3g} not in [2^{np.log2(lo):.0f}, 2^{np.log2(hi):.0f})")
        return None
    for k, r in enumerate(ratios):
        if not lo <= r < hi:
            return (f"VisitBinaryNode: CheckTensorsInputOutputScale, input {k} / output scale "
                    f"= {float(r):.3g} not in [2^{np.log2(lo):.0f}, 2^{np.log2(hi):.0f})")
    return None


def xnn_refusal(op: str, ins: list[dict], outs: list[dict]) -> str | None:
    """Why ``xnnpack_delegate.cc`` refuses this node, from its tensors (each a dict with
    ``dtype``, ``scale`` (first or only), ``nscales``, ``const``, ``shape``); ``None``
    when none of the modelled checks refuses it."""
    types = {str(np.dtype(t["dtype"])) for t in (*ins, *outs)}
    if "int16" in types:
        return "int16 tensor: the delegate takes float, int8 and uint8 only"
    quantized = bool(types & {"int8", "uint8"})
    if op in NOT_VISITED:
        return "VisitNode has no case for this builtin"
    if quantized and op in FLOAT_ONLY:
        return FLOAT_ONLY[op]
    if not quantized or not outs:
        return None
    if op in XNN_RATIO and op != "LEAKY_RELU" and len(ins) == 2 and \
            all(t["dtype"] == np.int8 for t in (*ins, outs[0])):
        return _ratio_reason(op, ins, outs[0])
    if op == "QUANTIZE" and ins[0]["dtype"] == outs[0]["dtype"] == np.int8:
        r = np.float32(ins[0]["scale"]) / np.float32(outs[0]["scale"])
        if not XNN_CVT_RATIO[0] <= r <= XNN_CVT_RATIO[1]:
            return (f"VisitUnaryNode (QUANTIZE): input/output scale {float(r):.3g} not in "
                    "[1/256, 128]")
    if op == "CONCATENATION" and not 2 <= len(ins) <= 5:
        return f"VisitConcatenationNode: CheckNumInputsAndOutputs, {len(ins)} inputs (2 to 5)"
    if op == "STRIDED_SLICE":
        return ("VisitStridedSliceNode: needs every stride 1 and no shrink-axis, ellipsis or "
                "new-axis mask (the node has one of these)")
    if op == "BATCH_MATMUL" and len(ins) > 1 and ins[1].get("zero_point", 0) != 0:
        return "VisitBatchMatMulNode: int8 right-hand input with a nonzero zero point"
    return None


def _tensor(d: dict, const: set[int]) -> dict:
    qp = d["quantization_parameters"]
    scales = qp["scales"]
    return {"name": d["name"], "dtype": np.dtype(d["dtype"]), "shape": [int(v) for v in d["shape"]],
            "scale": float(scales[0]) if len(scales) else 0.0, "nscales": len(scales),
            "zero_point": int(qp["zero_points"][0]) if len(qp["zero_points"]) else 0,
            "const": d["index"] in const}


def xnnpack_offload(model: bytes | str | os.PathLike) -> list[dict]:
    """One dict per operator XNNPACK did not take: ``index``, ``op``, ``inputs`` and
    ``outputs`` (tensor dicts: name, dtype, shape, scale, zero point, const) and
    ``reason`` (:func:`xnn_refusal`, ``None`` if not modelled)."""
    from qatir.litert_run import interpreter
    from qatir.parity import _load_bytes, xnnpack_coverage

    buf = _load_bytes(model)
    it = interpreter(buf, threads=1)
    details = {d["index"]: d for d in it.get_tensor_details()}
    ops = [d for d in it._get_ops_details() if d["op_name"] != "DELEGATE"]
    produced = {int(o) for d in ops for o in d["outputs"]}
    inputs = {int(d["index"]) for d in it.get_input_details()}
    const = {i for i in details if i not in produced and i not in inputs}
    rows = []
    for (op, taken), d in zip(xnnpack_coverage(buf), ops):
        if taken:
            continue
        ins = [_tensor(details[int(i)], const) for i in d["inputs"] if int(i) in details]
        outs = [_tensor(details[int(o)], const) for o in d["outputs"] if int(o) in details]
        rows.append({"index": int(d["index"]), "op": op, "inputs": ins, "outputs": outs,
                     "reason": xnn_refusal(op, ins, outs)})
    return rows

"""Step ``litert_limits``: what LiteRT's kernels would refuse, or abort the process on.

Limits come from :mod:`qatir.target`: a conv/FC requantization scale XNNPACK rejects
(it then fails the whole model at load), an ADD scale ratio that makes LiteRT's
builtin ADD or SQUARED_DIFFERENCE abort, a HARD_SWISH whose prepare fails, an int8 SOFTMAX that LiteRT's reference kernel (``BUILTIN_REF``)
can abort on. Scale ratios outside XNNPACK's ranges only warn (the node then runs on
a builtin kernel). RELU6 / RELU_N1_TO_1 bounds outside the output's int8 range are
dropped: they clamp nothing, and LiteRT refuses one that overflows. ``check_dims``
(run by the writer once dynamic dims are fixed) refuses what does not fit TFLite's
int32 fields.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from qatir.errors import ExportError
from qatir.ir import Graph
from qatir.lowering.common import WEIGHT_OPS
from qatir.reference_math import quantize_multiplier
from qatir.target import (
    ADD_MAX_RATIO,
    BATCH_MATMUL_MAX_RANK,
    HARD_SWISH_MAX_RATIO,
    INT32_MAX,
    INT32_MIN,
    XNN_MAX_REQUANT,
    XNN_RATIO,
    softmax_ref_limit,
    squared_difference_multiplier,
    xnn_scale_ratios,
)


def check_litert_limits(g: Graph) -> None:
    for node in g.nodes:
        if node.op in WEIGHT_OPS and len(node.inputs) >= 2:
            x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
            if x.quant is None or w.quant is None or y.quant is None or x.dtype != np.int8:
                continue
            ratio = (np.float32(x.quant.scale[0]) * np.asarray(w.quant.scale, np.float32)
                     / np.float32(y.quant.scale[0]))
            if np.any(ratio >= XNN_MAX_REQUANT):
                c = int(np.argmax(ratio))
                raise ExportError(
                    f"node {node.name!r} ({node.op}): input scale x weight scale / output scale "
                    f"= {float(ratio[c]):.4g} (channel {c}) is not below {XNN_MAX_REQUANT:g}; "
                    "XNNPACK, LiteRT's default CPU path, refuses such a node and with it the "
                    "whole model. The output range is too narrow for these weights: calibrate "
                    "it or widen it")
        elif node.op == "ADD" and node.outputs[0].quant is not None \
                and node.outputs[0].dtype == np.int8:
            ins = [t.quant.scale[0] for t in node.inputs if t is not None and t.quant is not None]
            ratio = max(ins, default=0.0) / node.outputs[0].quant.scale[0]
            if ratio >= ADD_MAX_RATIO:
                raise ExportError(
                    f"node {node.name!r} (ADD): input scale / output scale = {ratio:.4g} is not "
                    f"below {ADD_MAX_RATIO:g}; LiteRT's int8 ADD kernel aborts the process on "
                    "it. The output range is far too narrow for the inputs: calibrate or widen it")
        elif node.op == "HARD_SWISH" and node.inputs[0].dtype == np.int8 \
                and node.inputs[0].quant is not None and node.outputs[0].quant is not None:
            s_in, s_out = node.inputs[0].quant.scale[0], node.outputs[0].quant.scale[0]
            m = float(np.float32(np.float32(1.0 / 128.0) * np.float32(s_in)) / np.float32(s_out))
            if quantize_multiplier(m)[1] > 0:
                raise ExportError(
                    f"node {node.name!r} (HARD_SWISH): input scale / output scale = "
                    f"{s_in / s_out:.4g} is not below {HARD_SWISH_MAX_RATIO:g}; LiteRT's "
                    "HardSwishPrepare refuses it (output_multiplier_exponent <= 0) on both "
                    "resolvers. The output range is far too narrow: calibrate or widen it")
        elif node.op == "SQUARED_DIFFERENCE" and node.outputs[0].dtype == np.int8 \
                and all(t.quant is not None for t in (*node.inputs, node.outputs[0])):
            m = squared_difference_multiplier(*(t.quant.scale[0] for t in node.inputs),
                                              node.outputs[0].quant.scale[0])
            if m >= 1.0:
                raise ExportError(
                    f"node {node.name!r} (SQUARED_DIFFERENCE): (2·max input scale)² / (2^14 · "
                    f"output scale) = {m:.4g} is not below 1; LiteRT's int8 kernel aborts the "
                    "process on it. The output range is far too narrow for the inputs: "
                    "calibrate or widen it")
        elif node.op == "SOFTMAX" and node.inputs[0].dtype == np.int8 \
                and node.inputs[0].quant is not None:
            x = node.inputs[0]
            why = softmax_ref_limit(x.shape[-1] if x.rank else 1, x.quant.scale[0],
                                    float(np.float32(node.attrs["beta"])),
                                    node.outputs[0].dtype.itemsize * 8)
            if why is not None:
                raise ExportError(
                    f"node {node.name!r} (SOFTMAX): {why}; LiteRT's reference kernels "
                    "(OpResolverType.BUILTIN_REF) would abort the process on this file. Keep "
                    "the SOFTMAX out of the exported model (argmax/top-k of its input is "
                    "unchanged)")
        elif node.op == "BATCH_MATMUL":
            ranks = [t.rank for t in node.inputs if t is not None]
            if any(r > BATCH_MATMUL_MAX_RANK for r in ranks):
                raise ExportError(
                    f"node {node.name!r} (BATCH_MATMUL): operand ranks {ranks}; LiteRT's "
                    f"BATCH_MATMUL takes ranks 2 to {BATCH_MATMUL_MAX_RANK} (batch_matmul.cc "
                    "Prepare). Merge leading batch dims with a RESHAPE before it")


def relax_saturated_clamps(g: Graph) -> None:
    """Drop a RELU6 / RELU_N1_TO_1 bound outside the output's int8 range (exact: the kernel
    would clamp at 127/-128 anyway)."""
    for node in g.nodes:
        act = node.attrs.get("fused_activation")
        if act not in ("RELU6", "RELU_N1_TO_1") and node.op not in ("RELU6",):
            continue
        out = node.outputs[0]
        if out.quant is None or out.dtype != np.int8:
            continue
        s, z = np.float32(out.quant.scale[0]), out.quant.zero_point[0]
        hi = 6.0 if (act == "RELU6" or node.op == "RELU6") else 1.0
        if z + float(np.float32(hi) / s) < 127.5:
            continue
        if node.op == "RELU6":
            node.op = "RELU"
        elif act == "RELU6":
            node.attrs["fused_activation"] = "RELU"
        elif z + float(np.float32(-1.0) / s) <= -128.5:
            node.attrs["fused_activation"] = "NONE"


def warn_xnnpack_ratios(g: Graph) -> None:
    """Warn (naming the nodes) where the ranges put an op outside XNNPACK's scale limits:
    XNNPACK then leaves it to LiteRT's builtin kernel, which for ADD/SUB with extreme
    ratios was measured to overflow. 16x8 nodes are left out: XNNPACK delegates none."""
    from qatir.int16 import touches_int16

    bad = []
    for node in g.nodes:
        if node.op not in XNN_RATIO or node.outputs[0].quant is None or touches_int16(node):
            continue
        so = node.outputs[0].quant.scale[0]
        ins = [t.quant.scale[0] for t in node.inputs if t is not None and t.quant is not None]
        ratios = xnn_scale_ratios(node.op, ins, so)
        lo, hi = XNN_RATIO[node.op]
        if any(not lo <= r < hi for r in ratios):
            worst = max(ratios, key=lambda r: abs(np.log2(r)))
            bad.append(f"{node.name!r} ({node.op}, ratio {worst:.3g})")
    if bad:
        warnings.warn("scale ratios outside XNNPACK's limits, these nodes will run on LiteRT's "
                      f"builtin kernels: {', '.join(bad)}", stacklevel=4)


def _int_values(value: Any):
    if isinstance(value, bool):
        return
    if isinstance(value, (int, np.integer)):
        yield int(value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _int_values(v)


def check_dims(g: Graph) -> None:
    """TFLite stores dims, indices and integer options as int32: refuse anything larger,
    and empty activations, which LiteRT's kernels refuse."""
    lo, hi = INT32_MIN, INT32_MAX
    for t in g.tensors.values():
        where = f" (output of node {t.producer.name!r})" if t.producer else ""
        if any(d is not None and not lo <= d <= hi for d in t.shape):
            raise ExportError(f"tensor %{t.name}{where}: shape {list(t.shape)} does not fit "
                              "TFLite's int32 dimensions")
        if not t.is_const and 0 in t.shape:
            raise ExportError(f"tensor %{t.name}{where}: shape {list(t.shape)} is empty; "
                              "LiteRT's kernels refuse empty inputs and outputs")
        if not t.is_const and math.prod(d or 1 for d in t.shape) > hi:
            raise ExportError(f"tensor %{t.name}{where}: shape {list(t.shape)} has more than "
                              "2^31-1 elements, which LiteRT's kernels cannot index")
    for node in g.nodes:
        for key, value in node.attrs.items():
            if any(not lo <= v <= hi for v in _int_values(value)):
                raise ExportError(f"node {node.name!r} ({node.op}): attribute {key}={value} "
                                  "does not fit TFLite's int32 fields")

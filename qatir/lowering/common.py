"""What the lowering steps share: op sets derived from the op facts, param helpers."""

from __future__ import annotations

import numpy as np

from qatir.ir import Graph, Node, QuantParams, Tensor
from qatir.ops import fact_map, get_op, ops_where
from qatir.target import PER_TENSOR_WEIGHTS

#: weight op -> the per-channel axis its weights must use when per-channel (None: the op
#: takes per-tensor weights only), from the ops' quant_axis facts and the target's
#: per-tensor-only list. Per-tensor weights are accepted for every op.
WEIGHT_OPS: dict[str, int | None] = {
    op: (None if op in PER_TENSOR_WEIGHTS else get_op(op).quant_axis)
    for op in sorted(ops_where(weight=...))}
#: op -> (scale, zero point) LiteRT fixes for its int8 output (LOGISTIC, SOFTMAX, TANH).
FIXED_OUTPUT: dict[str, tuple[float, int]] = fact_map("fixed_output")
#: ops whose LiteRT int8 kernel needs the output on the input's grid.
SAME_SCALE = ops_where(quant="same_scale")
#: ops with an int8 kernel that the writer and the integer reference both support.
INT8_OPS = ops_where(int8=True)
#: ops whose output may simply inherit the input params when no FAKE_QUANT follows.
INHERIT = SAME_SCALE | ops_where(quant="inherit")
#: same-scale ops whose every data input (not only the first) must be on the output grid.
MULTI_INPUT_SAME = frozenset({"CONCATENATION", "MAXIMUM", "MINIMUM"})
CLOSE_RTOL = 0.01
MIN_SCALE = 1e-30


def channels(node: Node) -> int:
    """Output channels of a weight op (the length of its bias)."""
    return node.inputs[get_op(node.op).weight].shape[get_op(node.op).channel_axis]


def is_quantized(graph: Graph) -> bool:
    """True when the graph has FAKE_QUANT nodes (not yet lowered)."""
    return any(n.op == "FAKE_QUANT" for n in graph.nodes)


def is_lowered(graph: Graph) -> bool:
    """True for an int8 graph in the lowered form (no FAKE_QUANT, int8 tensors with quant)."""
    if is_quantized(graph):
        return False
    return any(t.quant is not None and t.dtype == np.int8 and not t.is_const
               for t in graph.tensors.values())


def close(a: QuantParams, b: QuantParams, rtol: float = 0.0) -> bool:
    """Equal params, or within ``rtol`` in scale and one step in zero point when rtol > 0."""
    if len(a.scale) != len(b.scale):
        return False
    zdiff = max(abs(x - y) for x, y in zip(a.zero_point, b.zero_point))
    if zdiff > (1 if rtol > 0 else 0):
        return False
    sa, sb = np.asarray(a.scale), np.asarray(b.scale)
    return bool(np.all(np.abs(sa - sb) <= rtol * np.maximum(np.abs(sa), np.abs(sb))))


def act_params(scale: float, zp: int) -> QuantParams:
    """Per-tensor int8 activation parameters."""
    return QuantParams((float(np.float32(scale)),), (int(zp),), None, 8, False, "int8")


def fq_consumers(t: Tensor) -> list[Node]:
    return [u for u in t.users if u.op == "FAKE_QUANT" and u.inputs[0] is t]


def requantize(g: Graph, t: Tensor, quant: QuantParams, name: str, out_name: str) -> Tensor:
    """A requantizing QUANTIZE of ``t`` onto ``quant`` (int8 or int16, its ``dtype``)."""
    req = g.add_node("QUANTIZE", [t], {"dtype": quant.dtype}, name=name,
                     outputs=[g.unique_name(out_name)])
    req.output.quant = quant
    req.output.dtype = np.dtype(quant.dtype)
    return req.output

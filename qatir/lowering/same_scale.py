"""Step ``same_scale``: inputs of same-scale ops whose params differ from the output's
are requantized onto the output grid by an explicit int8 -> int8 ``QUANTIZE`` (for
CONCATENATION / MAXIMUM / MINIMUM: every data input; otherwise the first). A constant
input (ViT's class token, concatenated to the patches) is rewritten onto the output grid
instead, as training computes it: the output FAKE_QUANT (its range tied to the inputs')
applied to the constant's fake-quantized values."""

from __future__ import annotations

import numpy as np

from qatir.errors import ExportError
from qatir.ir import Graph, Node, QuantParams, Tensor
from qatir.lowering.common import MULTI_INPUT_SAME, SAME_SCALE, close, requantize
from qatir.numerics import fake_quant_steps


def unify_same_scale(g: Graph) -> None:
    for node in list(g.nodes):
        if node.op in SAME_SCALE:
            _unify(g, node)
    g.toposort()


def _unify(g: Graph, node: Node) -> None:
    out = node.outputs[0]
    if out.quant is None:
        return
    data_inputs = range(len(node.inputs)) if node.op in MULTI_INPUT_SAME else range(1)
    for i in data_inputs:
        t = node.inputs[i]
        if t is None or t.quant is None or close(t.quant, out.quant):
            continue
        if t.is_const:
            node.set_input(i, _const_on_grid(g, node, t, out.quant))
            continue
        node.set_input(i, requantize(g, t, out.quant, f"{node.name}_requant{i}", f"{t.name}_rq"))


def _const_on_grid(g: Graph, node: Node, t: Tensor, q: QuantParams) -> Tensor:
    """A copy of int8 constant ``t`` on the per-tensor grid ``q``: TF's fake-quant steps
    of its dequantized values, plus the zero point."""
    from qatir.quant import range_for

    tq = t.quant
    if tq.axis is not None or q.axis is not None or t.dtype != np.int8 or q.bits != 8:
        raise ExportError(f"node {node.name!r}: constant %{t.name} is not on the output grid")
    real = (t.data.astype(np.float32) - np.float32(tq.zero_point[0])) * np.float32(tq.scale[0])
    lo, hi = range_for(q.scale[0], q.zero_point[0], 8)
    k = fake_quant_steps(real, np.float32(lo), np.float32(hi), 8, bool(q.narrow_range))
    data = np.clip(k + int(q.zero_point[0]), -128, 127).astype(np.int8)
    c = g.const(data, name=g.unique_name(f"{t.name}_on_{node.name}"))
    c.quant = q
    return c

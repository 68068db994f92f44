"""Step ``same_scale``: inputs of same-scale ops whose params differ from the output's
are requantized onto the output grid by an explicit int8 -> int8 ``QUANTIZE`` (for
CONCATENATION / MAXIMUM / MINIMUM: every data input; otherwise the first). A constant
input (ViT's class token, concatenated with the patch tokens) is requantized here,
once, to the values the output's fake-quant gives it in training."""

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


def _const_on_grid(g: Graph, node: Node, t: Tensor, quant: QuantParams) -> Tensor:
    """``t`` (int8, its own grid) on ``quant``'s grid: TF's fake-quant onto the output
    range of the value training saw, ``(q - z)·s``."""
    if len(t.quant.scale) != 1 or len(quant.scale) != 1 or t.dtype != np.int8:
        raise ExportError(f"node {node.name!r}: constant %{t.name} is not on the output grid")
    deq = (t.data.astype(np.float32) - np.float32(t.quant.zero_point[0])) \
        * np.float32(t.quant.scale[0])
    s, z = np.float32(quant.scale[0]), int(quant.zero_point[0])
    lo, hi = np.float32(s * np.float32(-128 - z)), np.float32(s * np.float32(127 - z))
    data = np.clip(fake_quant_steps(deq, lo, hi) + z, -128, 127).astype(np.int8)
    return g.const(data, name=g.unique_name(f"{t.name}_rq"), quant=quant)

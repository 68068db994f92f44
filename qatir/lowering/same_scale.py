"""Step ``same_scale``: inputs of same-scale ops whose params differ from the output's
are requantized onto the output grid by an explicit int8 -> int8 ``QUANTIZE`` (for
CONCATENATION / MAXIMUM / MINIMUM: every data input; otherwise the first)."""

from __future__ import annotations

from qatir.errors import ExportError
from qatir.ir import Graph, Node
from qatir.lowering.common import MULTI_INPUT_SAME, SAME_SCALE, close, requantize


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
            raise ExportError(f"node {node.name!r}: constant %{t.name} is not on the output grid")
        node.set_input(i, requantize(g, t, out.quant, f"{node.name}_requant{i}", f"{t.name}_rq"))

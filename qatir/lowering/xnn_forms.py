"""Step ``xnn_forms``: exact rewrites of int8 nodes XNNPACK refuses into forms it takes.

- A CONCATENATION of more than 5 inputs (``xnnpack_delegate.cc`` VisitConcatenationNode
  takes 2 to 5: CheckNumInputsAndOutputs) becomes a tree of CONCATENATIONs of at most 5
  along the same axis, every one on the output's grid (the inputs already are, after
  ``same_scale``), the fused activation on the last: pure data movement, exact.
- A standalone int8 RELU / RELU6 / RELU_N1_TO_1 (VisitUnaryNode takes them in float only,
  CheckTensorFloatType) becomes ``ADD(x, 0)`` with that fused activation, the zero on
  the input's scale. With equal input and output grids both of LiteRT's ADD kernels
  return ``x`` exactly before the clamp (XNNPACK: multiplier 2^20 on a 20-bit shift;
  builtin: 1/2 then 2^-19, both exact), so the result equals the activation's bit for
  bit; otherwise the ADD requantizes as the integer reference models it.
"""

from __future__ import annotations

import numpy as np

from qatir.ir import Graph, Node
from qatir.lowering.common import act_params
from qatir.lowering.xnn_ratios import per_tensor_int8
from qatir.target import xnn_ratios_ok

#: VisitConcatenationNode's CheckNumInputsAndOutputs(node, 2, 5, 1)
XNN_CONCAT_MAX_INPUTS = 5
_CLAMPS = ("RELU", "RELU6", "RELU_N1_TO_1")


def _int8_act(t) -> bool:
    return per_tensor_int8(t) and not t.is_const


def _split_concat(g: Graph, node: Node) -> None:
    ins, out, k = list(node.inputs), node.outputs[0], XNN_CONCAT_MAX_INPUTS
    level = 0
    while len(ins) > k:
        parts = []
        for j in range(0, len(ins), k):
            group = ins[j:j + k]
            if len(group) == 1:
                parts.append(group[0])
                continue
            sub = g.add_node("CONCATENATION", group,
                             {"axis": node.attrs["axis"], "fused_activation": "NONE"},
                             name=g.unique_name(f"{node.name}_part{level}_{j // k}"),
                             outputs=[g.unique_name(f"{out.name}_part{level}_{j // k}")])
            sub.output.quant, sub.output.dtype = out.quant, out.dtype
            parts.append(sub.output)
        ins, level = parts, level + 1
    _set_inputs(node, ins)


def _set_inputs(node: Node, ins: list) -> None:
    node.drop_inputs()
    for t in ins:
        node.add_input(t)


def _clamp_as_add(g: Graph, node: Node) -> bool:
    x, out = node.inputs[0], node.outputs[0]
    if not xnn_ratios_ok("ADD", [x.quant.scale[0]], out.quant.scale[0]):
        return False
    zero = g.const(np.zeros([1], np.int8), name=g.unique_name(f"{node.name}_zero"),
                   quant=act_params(x.quant.scale[0], 0))
    node.attrs = {"fused_activation": node.op}
    node.op = "ADD"
    _set_inputs(node, [x, zero])
    return True


def xnn_forms(g: Graph) -> None:
    """Rewrite the nodes listed in the module docstring."""
    changed = False
    for node in list(g.nodes):
        if node.op == "CONCATENATION" and len(node.inputs) > XNN_CONCAT_MAX_INPUTS \
                and _int8_act(node.outputs[0]) \
                and all(t.quant == node.outputs[0].quant for t in node.inputs):
            _split_concat(g, node)
            changed = True
        elif node.op in _CLAMPS and _int8_act(node.inputs[0]) and _int8_act(node.outputs[0]):
            changed |= _clamp_as_add(g, node)
    if changed:
        g.toposort()

"""Step ``wide_softmax``: an int8 SOFTMAX wider than LiteRT's reference kernel allows.

``reference_ops::Softmax`` (``BUILTIN_REF``) aborts the process when a row's sum of exps
reaches 512 with an int8 output, which a nearly flat row of 512+ classes does
(:data:`qatir.target.SOFTMAX_MAX_DEPTH`). With an int16 output the same kernel has room
for 4095 classes. So a wider int8 SOFTMAX is written as SOFTMAX(int8 -> int16 on LiteRT's
fixed grid 1/65536, -32768) followed by a QUANTIZE (int16 -> int8) onto the original
output params; both resolvers run it and the integer reference models both kernels.
Wider still (PP-OCR's recognizer: 6625 characters), no int8 kernel runs it under
BUILTIN_REF, so it becomes a float island: DEQUANTIZE, a float SOFTMAX, and a QUANTIZE
onto the same output params (what the FAKE_QUANT after it trained), listed in
``metadata["float_islands"]``.

SoftmaxPrepare aborts too when beta x input scale is at most 2^-26
(:data:`qatir.target.SOFTMAX_MIN_BETA_SCALE`). Such an input spans less than 2^-18 in
logits, so its softmax is flat to within 4e-6, below half an output step; the step
requantizes it (an int8 QUANTIZE) onto the scale 2^-25 / beta, which the kernel takes and
on which the row is exactly flat: the output is what the float softmax rounds to.
"""

from __future__ import annotations

import numpy as np

from qatir.ir import Graph, Node, QuantParams, Tensor
from qatir.lowering.common import requantize
from qatir.target import (
    SOFTMAX_INT16_MAX_DEPTH,
    SOFTMAX_INT16_OUTPUT,
    SOFTMAX_MAX_DEPTH,
    SOFTMAX_MIN_BETA_SCALE,
)

#: Below this input/floor ratio LiteRT's requantize multiplier would need a shift past 31.
_MIN_RATIO = 2.0**-30


def _floor_input_scale(g: Graph, node: Node) -> None:
    x = node.inputs[0]
    beta = float(node.attrs.get("beta", 1.0))
    if x.quant is None or not beta > 0 or beta * x.quant.scale[0] > SOFTMAX_MIN_BETA_SCALE:
        return
    floor = 2.0 * SOFTMAX_MIN_BETA_SCALE / beta
    if x.quant.scale[0] / floor < _MIN_RATIO:
        return  # left to the limits step, which refuses it by name
    qp = QuantParams((floor,), (0,), None, 8, False, "int8")
    node.set_input(0, requantize(g, x, qp, f"{node.name}_input_floor", f"{x.name}_floor"))


def _take_over(g: Graph, node: Node, new: Tensor) -> None:
    """``new`` replaces ``node``'s output (uses and name); ``node`` is erased."""
    out = node.outputs[0]
    g.replace_all_uses_with(out, new)
    name = out.name
    g.erase(node)
    if name not in g.tensors:
        g.rename_tensor(new, name)


def _float_softmax(g: Graph, node: Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    deq = g.add_node("DEQUANTIZE", [x], {"dtype": "float32"}, name=f"{node.name}_dequantize",
                     outputs=[g.unique_name(f"{x.name}_float")])
    soft = g.add_node("SOFTMAX", [deq.output], dict(node.attrs), name=f"{node.name}_float",
                      outputs=[g.unique_name(f"{out.name}_float")])
    back = g.add_node("QUANTIZE", [soft.output], {"dtype": "int8"}, name=f"{node.name}_quantize",
                      outputs=[g.unique_name(f"{out.name}_q8")])
    back.output.quant = out.quant
    _take_over(g, node, back.output)
    g.metadata["float_islands"] = [*(g.metadata.get("float_islands") or ()), soft.name]


def widen_softmax(g: Graph) -> None:
    for node in list(g.nodes):
        if node.op != "SOFTMAX":
            continue
        x, out = node.inputs[0], node.outputs[0]
        if x.dtype != np.int8 or out.dtype != np.int8 or out.quant is None:
            continue
        _floor_input_scale(g, node)
        x = node.inputs[0]
        depth = x.shape[-1] if x.rank else 1
        if depth is not None and depth <= SOFTMAX_MAX_DEPTH:
            continue
        if depth is None or depth > SOFTMAX_INT16_MAX_DEPTH:
            _float_softmax(g, node)
            continue
        scale, zp = SOFTMAX_INT16_OUTPUT
        wide = g.add_node("SOFTMAX", [x], {**node.attrs, "dtype": "int16"}, name=f"{node.name}_int16",
                          outputs=[g.unique_name(f"{out.name}_int16")])
        wide.output.quant = QuantParams((scale,), (zp,), None, 16, False, "int16")
        narrow = g.add_node("QUANTIZE", [wide.output], {"dtype": "int8"},
                            name=f"{node.name}_to_int8", outputs=[g.unique_name(f"{out.name}_q8")])
        narrow.output.quant = out.quant
        _take_over(g, node, narrow.output)
    g.toposort()

"""Step ``wide_softmax``: an int8 SOFTMAX wider than LiteRT's reference kernel allows.

``reference_ops::Softmax`` (``BUILTIN_REF``) aborts the process when a row's sum of exps
reaches 512 with an int8 output, which a nearly flat row of 512+ classes does
(:data:`qatir.target.SOFTMAX_MAX_DEPTH`). With an int16 output the same kernel has room
for 4095 classes. So a wider int8 SOFTMAX is written as SOFTMAX(int8 -> int16 on LiteRT's
fixed grid 1/65536, -32768) followed by a QUANTIZE (int16 -> int8) onto the original
output params; both resolvers run it and the integer reference models both kernels.
"""

from __future__ import annotations

import numpy as np

from qatir.ir import Graph, QuantParams
from qatir.target import SOFTMAX_INT16_OUTPUT, SOFTMAX_MAX_DEPTH


def widen_softmax(g: Graph) -> None:
    for node in list(g.nodes):
        if node.op != "SOFTMAX":
            continue
        x, out = node.inputs[0], node.outputs[0]
        if x.dtype != np.int8 or out.dtype != np.int8 or out.quant is None:
            continue
        depth = x.shape[-1] if x.rank else 1
        if depth is not None and depth <= SOFTMAX_MAX_DEPTH:
            continue
        scale, zp = SOFTMAX_INT16_OUTPUT
        wide = g.add_node("SOFTMAX", [x], {**node.attrs, "dtype": "int16"}, name=f"{node.name}_int16",
                          outputs=[g.unique_name(f"{out.name}_int16")])
        wide.output.quant = QuantParams((scale,), (zp,), None, 16, False, "int16")
        narrow = g.add_node("QUANTIZE", [wide.output], {"dtype": "int8"},
                            name=f"{node.name}_to_int8", outputs=[g.unique_name(f"{out.name}_q8")])
        narrow.output.quant = out.quant
        g.replace_all_uses_with(out, narrow.output)
        name = out.name
        g.erase(node)
        if name not in g.tensors:
            g.rename_tensor(narrow.output, name)
    g.toposort()

"""An example qatir plug-in: the pass ``relu_to_relu6``.

ReLU6 bounds activations to [0, 6], so their int8 scale is at most 6/255 and
does not depend on rare large values seen during calibration (the MobileNet
trick). The pass rewrites standalone RELU nodes and fused ``act=RELU`` into
their RELU6 forms. It changes the model's function for inputs that drive
activations above 6, so run it before fine-tuning (QAT), not after.

Installed, the package is found through the ``qatir.passes`` entry point;
use it by name:

    qatir.quantize(g, passes=["relu_to_relu6", *qatir.pipeline.DEFAULT_PIPELINE])
    qatir compile model.onnx -o m.tflite --calib-random 8 --passes relu_to_relu6,default
"""

from __future__ import annotations

import qatir
from qatir.ir import Graph
from qatir.pipeline import PassContext


@qatir.register_pass("relu_to_relu6")
def relu_to_relu6(graph: Graph, ctx: PassContext) -> bool:
    """Rewrite RELU (standalone and fused) as RELU6 so activation ranges are bounded."""
    changed = 0
    for node in list(graph.nodes):
        if node.attrs.get("fused_activation") == "RELU":
            node.attrs["fused_activation"] = "RELU6"
            changed += 1
        elif node.op == "RELU":
            x = node.inputs[0]
            new = graph.add_node("RELU6", [x], name=f"{node.name}_6")
            graph.replace_all_uses_with(node.output, new.output)
            graph.erase(node)
            changed += 1
    if changed:
        graph.toposort()
        ctx.notes["relu_to_relu6"] = changed
    return bool(changed)

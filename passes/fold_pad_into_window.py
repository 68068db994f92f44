"""fold_pad_into_window: a PAD that is exactly SAME padding becomes the op's own padding.

Keras writes a strided convolution as ``ZeroPadding2D`` + ``Conv2D(padding="valid")``
(``correct_pad`` in keras.applications' EfficientNet and MobileNets); exporters do the
same for max-pools with -inf padding. When the PAD's spatial pads are the ones SAME
padding would add for that window (``numerics.same_padding``: the odd pixel after), the
PAD is the op's SAME padding:

- CONV_2D / DEPTHWISE_CONV_2D with a zero PAD: SAME pads with zeros in float, with the
  input zero point in int8, which is the value an int8 PAD writes for 0;
- MAX_POOL_2D with a PAD of the float minimum (or -inf): SAME max-pooling skips the
  padded cells, which can never win over -inf-like padding.

AVERAGE_POOL_2D is left alone (SAME averages over the valid cells only). Exact in float
and int8; one node and one pass over the padded tensor less at run time.
"""

from __future__ import annotations

import numpy as np

from qatir.ir import Graph, Node
from qatir.numerics import same_padding
from qatir.patterns import Match, Op, Rewriter, Rule, RuleTable, apply_rules
from qatir.pipeline import PassContext, register_pass
from qatir.table import Table

_MIN_PAD = float(np.finfo(np.float32).min)


def _window(node: Node) -> tuple[list[int], list[int], list[int]]:
    """(kernel, stride, dilation) of a conv-like or pooling node, as [h, w] lists."""
    if node.op == "MAX_POOL_2D":
        return list(node.attrs["filter"]), list(node.attrs["stride"]), [1, 1]
    w = node.inputs[1].shape
    kernel = [w[1], w[2]]
    return kernel, list(node.attrs["stride"]), list(node.attrs.get("dilation", (1, 1)))


def _check(m: Match) -> str | None:
    op, pad = m.root, m["pad"]
    if op.attrs.get("padding") != "VALID":
        return f"{op.name!r} already has padding {op.attrs.get('padding')}"
    value = float(pad.attrs.get("constant_value", 0.0))
    if op.op == "MAX_POOL_2D" and value > _MIN_PAD:
        return f"a max-pool PAD of {value} is not -inf padding"
    if op.op != "MAX_POOL_2D" and value != 0.0:
        return f"a convolution PAD of {value} is not zero padding"
    paddings = [list(p) for p in pad.attrs["paddings"]]
    if len(paddings) != 4 or paddings[0] != [0, 0] or paddings[3] != [0, 0]:
        return "the PAD pads more than the spatial axes"
    x = pad.inputs[0]
    kernel, stride, dilation = _window(op)
    for axis in (0, 1):
        size = x.shape[1 + axis]
        if size is None:
            return "a dynamic spatial size"
        _, before, after = same_padding(int(size), int(kernel[axis]), int(stride[axis]),
                                        int(dilation[axis]))
        if paddings[1 + axis] != [before, after]:
            return f"pads {paddings[1 + axis]} are not SAME's {[before, after]} on axis {1 + axis}"
    return None


def _rewrite(rw: Rewriter, m: Match) -> None:
    op, pad = m.root, m["pad"]
    op.set_input(0, pad.inputs[0])
    op.attrs["padding"] = "SAME"
    rw.remove(pad)


def rules_from_table(table: Table) -> RuleTable:
    rules = []
    for _, f in table.fusions("pad_into_window"):
        pad = Op("PAD", single_use=True, capture="pad")
        rules.append(Rule(f["name"], Op(tuple(f["ops"]), inputs=(pad,)), _check, _rewrite,
                          f.get("note", "")))
    return RuleTable(rules)


@register_pass("fold_pad_into_window")
def fold_pad_into_window(graph: Graph, ctx: PassContext) -> bool:
    """PAD → conv/max-pool(VALID) becomes the op with SAME padding where that is the same."""
    return apply_rules(graph, rules_from_table(ctx.table), ctx.trace, ctx.pass_name)

"""torch.onnx's spelling of ``GroupNorm(1, C)`` -> one normalization over (C, H, W).

The exporters write ``nn.GroupNorm(1, C)`` (PoolFormer's norm) as
``Reshape(x, [N, 1, -1])`` -> ``InstanceNormalization`` with a one-element scale and bias
-> ``Reshape`` back to x's shape (then the per-channel affine as Mul/Add). Converted as
written, the flattening needs x in NCHW order: a TRANSPOSE before and after every norm.
:func:`fuse_group_norm` replaces the three nodes (when the two intermediate values have no
other use) by one ``GroupNorm1`` node, ``(x, scale, bias, shape_in, shape_out)``, whose
converter checks that the reshapes really are ``[N, 1, -1]`` and back to x's shape and
emits the chain of :mod:`qatir.frontends.norm_chain` over all non-batch IR axes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qatir.frontends.onnx_io import splice_nodes, tensor_to_array

OP = "GroupNorm1"
FUSED_DOC = "qatir: fused from the exporter's GroupNorm(1) spelling"


def is_group_norm(node: Any) -> bool:
    return node.doc_string == FUSED_DOC and node.op_type == OP


def _consts(graph: Any) -> dict[str, np.ndarray]:
    """Initializers and Constant-node values, by name (arrays that fail to decode skipped)."""
    out: dict[str, np.ndarray] = {}
    for t in graph.initializer:
        try:
            out[t.name] = np.asarray(tensor_to_array(t, "initializer"))
        except Exception:  # noqa: BLE001  (a malformed constant is simply not matched)
            continue
    for n in graph.node:
        if n.op_type == "Constant" and len(n.output) == 1:
            for a in n.attribute:
                if a.name == "value":
                    try:
                        out[n.output[0]] = np.asarray(tensor_to_array(a.t, "Constant"))
                    except Exception:  # noqa: BLE001
                        continue
    return out


def _single_use(graph: Any) -> dict[str, int]:
    uses: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    for o in graph.output:
        uses[o.name] = uses.get(o.name, 0) + 1
    return uses


def fuse_group_norm(graph: Any) -> int:
    """Replace each Reshape -> InstanceNormalization(1 channel) -> Reshape of ``graph``
    (a GraphProto, edited in place) by a ``GroupNorm1`` node; returns how many."""
    from onnx import helper

    consts = _consts(graph)
    uses = _single_use(graph)
    producer = {o: n for n in graph.node for o in n.output}
    consumer = {i: n for n in graph.node for i in n.input}
    replaced: dict[int, Any] = {}
    dropped: set[int] = set()
    for inorm in graph.node:
        if inorm.op_type != "InstanceNormalization" or len(inorm.input) != 3:
            continue
        first = producer.get(inorm.input[0])
        second = consumer.get(inorm.output[0])
        if first is None or second is None or first.op_type != "Reshape" \
                or second.op_type != "Reshape" or second.input[0] != inorm.output[0]:
            continue
        if uses.get(inorm.input[0]) != 1 or uses.get(inorm.output[0]) != 1:
            continue
        shape_in = consts.get(first.input[1])
        params = [consts.get(n) for n in inorm.input[1:]]
        if shape_in is None or shape_in.size != 3 or int(shape_in.reshape(-1)[1]) != 1 \
                or any(p is None or p.size != 1 for p in params) \
                or second.input[1] not in consts:
            continue
        eps = next((helper.get_attribute_value(a) for a in inorm.attribute
                    if a.name == "epsilon"), 1e-5)
        dropped.update(id(n) for n in (first, inorm, second))
        replaced[id(second)] = helper.make_node(
            OP, [first.input[0], inorm.input[1], inorm.input[2], first.input[1], second.input[1]],
            [second.output[0]], name=inorm.name or f"group_norm_{second.output[0]}",
            doc_string=FUSED_DOC, epsilon=float(eps))
    return splice_nodes(graph, dropped, replaced)

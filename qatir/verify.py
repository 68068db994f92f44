"""The one verifier: ownership, order, names, use lists, arity, shapes, dtypes."""

from __future__ import annotations

import numpy as np

from qatir.errors import VerifyError
from qatir.ir import FUSED_ACTIVATIONS, Graph, Node
from qatir.ops.registry import get_op, has_op


def _context(graph: Graph, node: Node, radius: int = 3) -> str:
    from qatir.printer import format_node

    i = next((k for k, n in enumerate(graph.nodes) if n is node), 0)
    lines = []
    for k in range(max(0, i - radius), min(len(graph.nodes), i + radius + 1)):
        mark = ">>" if k == i else "  "
        lines.append(f"{mark} {format_node(graph.nodes[k])}")
    return "\n".join(lines)


def _fail(graph: Graph, node: Node | None, msg: str) -> None:
    where = f"\n{_context(graph, node)}" if node is not None else ""
    raise VerifyError(f"graph {graph.name!r}: {msg}{where}")


def _shapes_agree(a, b) -> bool:
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))


def verify_graph(graph: Graph) -> None:
    """Raise VerifyError (printing the IR around the fault) unless the graph is well formed."""
    tensors = graph.tensors
    for name, t in tensors.items():
        if t.name != name:
            _fail(graph, None, f"tensor registered as %{name} is named %{t.name}")
        if t.data is not None:
            if tuple(t.data.shape) != t.shape or t.data.dtype != t.dtype:
                _fail(graph, None, f"constant %{name}: data {t.data.dtype}{list(t.data.shape)} "
                                   f"does not match declared {t.dtype}{list(t.shape)}")
    for t in graph.inputs:
        if tensors.get(t.name) is not t or t.producer is not None or t.is_const:
            _fail(graph, None, f"graph input %{t.name} is not a free, registered tensor")
    for t in graph.outputs:
        if tensors.get(t.name) is not t:
            _fail(graph, None, f"graph output %{t.name} is not registered in the graph")

    seen_nodes: set[str] = set()
    defined = {id(t) for t in graph.inputs} | {id(t) for t in tensors.values() if t.is_const}
    expected_uses: dict[int, int] = {}
    for node in graph.nodes:
        if node.name in seen_nodes:
            _fail(graph, node, f"duplicate node name {node.name!r}")
        seen_nodes.add(node.name)
        if node.graph is not graph:
            _fail(graph, node, f"node {node.name!r} is not owned by this graph")
        if not has_op(node.op):
            _fail(graph, node, f"node {node.name!r}: unknown op {node.op!r}")
        opdef = get_op(node.op)
        act = node.attrs.get("fused_activation", "NONE")
        if not isinstance(act, str) or act not in FUSED_ACTIVATIONS:
            _fail(graph, node, f"node {node.name!r}: fused_activation {act!r} is not one of "
                               f"{', '.join(FUSED_ACTIVATIONS)}")
        present = len(node.inputs)
        if not opdef.min_inputs <= present <= opdef.max_inputs:
            _fail(graph, node, f"node {node.name!r} ({node.op}) has {present} inputs, "
                               f"expects {opdef.min_inputs}..{opdef.max_inputs}")
        for i, t in enumerate(node.inputs):
            if t is None:
                continue
            if tensors.get(t.name) is not t:
                _fail(graph, node, f"node {node.name!r} input {i} %{t.name} is not in the graph")
            if id(t) not in defined:
                _fail(graph, node, f"node {node.name!r} uses %{t.name} before it is defined "
                                   "(not topologically ordered, or a dangling tensor)")
            if (node, i) not in t._uses:
                _fail(graph, node, f"use list of %{t.name} misses {node.name!r} input {i}")
            expected_uses[id(t)] = expected_uses.get(id(t), 0) + 1
        for t in node.outputs:
            if t.producer is not node:
                _fail(graph, node, f"output %{t.name} does not name {node.name!r} as producer")
            if tensors.get(t.name) is not t:
                _fail(graph, node, f"output %{t.name} of {node.name!r} is not registered")
            if id(t) in defined:
                _fail(graph, node, f"%{t.name} is defined twice")
            defined.add(id(t))
        try:
            specs = opdef.infer(node)
        except Exception as e:  # noqa: BLE001 - reported with context
            _fail(graph, node, f"node {node.name!r} ({node.op}): shape inference failed: {e}")
        for t, (shape, dtype) in zip(node.outputs, specs):
            if not _shapes_agree(t.shape, tuple(shape)):
                _fail(graph, node, f"%{t.name}: recorded shape {list(t.shape)} != inferred "
                                   f"{list(shape)}")
            if t.dtype != np.dtype(dtype):
                _fail(graph, node, f"%{t.name}: recorded dtype {t.dtype} != inferred "
                                   f"{np.dtype(dtype)}")
    for t in tensors.values():
        if len(t._uses) != expected_uses.get(id(t), 0):
            _fail(graph, None, f"use list of %{t.name} has {len(t._uses)} entries, "
                               f"graph has {expected_uses.get(id(t), 0)} uses")
    for t in graph.outputs:
        if id(t) not in defined:
            _fail(graph, None, f"graph output %{t.name} is never computed")

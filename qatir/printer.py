"""The stable, diff-friendly text dump: one line per node, shapes and quant params shown."""

from __future__ import annotations

from typing import Any

import numpy as np

from qatir.ir import Graph, Node, Tensor, type_str

_ATTR_SHORT = {"fused_activation": "act"}


def _fmt_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt_value(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:.6g}"
    if v is None:
        return "none"
    return str(v)


def format_attrs(node: Node) -> str:
    items = []
    for key in sorted(node.attrs):
        val = node.attrs[key]
        if key == "fused_activation" and val == "NONE":
            continue
        items.append(f"{_ATTR_SHORT.get(key, key)}={_fmt_value(val)}")
    return " {" + ", ".join(items) + "}" if items else ""


def format_tensor(t: Tensor) -> str:
    s = f"%{t.name}: {type_str(t)}"
    if t.quant is not None:
        s += f" {t.quant}"
    return s


def _summary(arr: np.ndarray) -> str:
    if arr.size == 0:
        return "[]"
    if arr.size <= 4:
        return _fmt_value(arr.reshape(-1).tolist())
    a = arr.astype(np.float64)
    return f"range[{a.min():.4g}, {a.max():.4g}]"


def format_node(node: Node) -> str:
    outs = ", ".join(format_tensor(t) for t in node.outputs)
    ins = ", ".join("_" if t is None else f"%{t.name}" for t in node.inputs)
    return f"{outs} = {node.op}({ins}){format_attrs(node)}  # {node.name}"


def format_graph(graph: Graph) -> str:
    """Deterministic text: header, constants used by nodes, then nodes in order."""
    lines = []
    ins = ", ".join(format_tensor(t) for t in graph.inputs)
    outs = ", ".join(f"%{t.name}" for t in graph.outputs)
    lines.append(f"graph {graph.name}({ins}) -> ({outs}) {{")
    seen: set[int] = set()
    for node in graph.nodes:
        for t in node.inputs:
            if t is not None and t.is_const and id(t) not in seen:
                seen.add(id(t))
                lines.append(f"  {format_tensor(t)} = const {_summary(t.data)}")
    for node in graph.nodes:
        lines.append(f"  {format_node(node)}")
    lines.append("}")
    return "\n".join(lines)

"""The layout of :mod:`qatir.draw`'s pictures: node boxes and a small layered layout.

Nodes sit on the layer given by their longest path from the inputs; edges that span
several layers get invisible waypoints so they route around nodes; the order within
each layer comes from a few barycentric sweeps. Box colours (:data:`STYLES`) say what
a node produces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qatir.ir import Graph, Node, Tensor, type_str
from qatir.printer import format_node, format_tensor

CHAR_W = 7.2  # px per character of the 12 px monospace font
LINE_H = 15
LAYER_GAP = 70
NODE_GAP = 28
PAD = 20

# (fill, stroke, legend) per colour class
STYLES = {
    "input": ("#ffffff", "#444444", "graph input / output"),
    "float": ("#dbeafe", "#2563eb", "float op"),
    "fake_quant": ("#fed7aa", "#ea580c", "FAKE_QUANT"),
    "quantized": ("#bbf7d0", "#16a34a", "int8 (quantized) output"),
    "int32": ("#e9d5ff", "#7c3aed", "int32 output"),
    "ir_only": ("#e5e7eb", "#6b7280", "IR-only op (removed before export)"),
}


@dataclass
class Box:
    """A drawn item: a node, a graph input/output terminal, or a waypoint of a long edge."""

    key: str
    lines: list[str]
    style: str
    title: str = ""
    layer: int = 0
    order: float = 0.0
    x: float = 0.0
    y: float = 0.0
    w: float = 0.0
    h: float = 0.0
    node_name: str | None = None
    dummy: bool = False
    preds: list[str] = field(default_factory=list)


def _node_style(node: Node) -> str:
    from qatir.ops.registry import get_op

    if node.op == "FAKE_QUANT":
        return "fake_quant"
    out = node.outputs[0] if node.outputs else None
    try:
        ir_only = get_op(node.op).ir_only
    except Exception:  # an op unknown to the registry is still drawn
        ir_only = False
    if ir_only:
        return "ir_only"
    if out is not None and out.dtype.name == "int32":
        return "int32"
    if out is not None and (out.quant is not None or out.dtype.name in ("int8", "uint8")):
        return "quantized"
    return "float"


def _attr_line(node: Node) -> str:
    keep = []
    for key in ("fused_activation", "stride", "padding", "filter", "axis", "depth_multiplier"):
        if key in node.attrs:
            val = node.attrs[key]
            if val is None or (key == "fused_activation" and val == "NONE"):
                continue
            if isinstance(val, (list, tuple)):
                val = "x".join(str(v) for v in val)
            keep.append(f"{'act' if key == 'fused_activation' else key}={val}")
    return " ".join(keep)


def _const_line(t: Tensor) -> str:
    s = f"{t.name}: {type_str(t)}"
    if t.quant is not None:
        s += " per-ch" if t.quant.per_channel else f" s={t.quant.scale[0]:.3g}"
    return s


def _node_box(node: Node) -> Box:
    lines = [node.op, node.name]
    attrs = _attr_line(node)
    if attrs:
        lines.append(attrs)
    consts = [t for t in node.inputs if t is not None and t.is_const]
    for t in consts[:3]:
        lines.append(_shorten(_const_line(t), 40))
    if len(consts) > 3:
        lines.append(f"+{len(consts) - 3} constants")
    return Box(key=f"n:{node.name}", lines=lines, style=_node_style(node),
                title=format_node(node), node_name=node.name)


def _shorten(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def edge_label(t: Tensor) -> str:
    """The text on an edge: type and shape, plus scale/zero point when quantized."""
    s = type_str(t)
    if t.quant is not None:
        q = t.quant
        s += f" s={q.scale[0]:.3g} zp={q.zero_point[0]}" if not q.per_channel else " per-ch"
    return s


# --------------------------------------------------------------------------- layout
@dataclass
class Layout:
    boxes: dict[str, Box]
    edges: list[tuple[list[str], str]]  # (chain of box keys from source to target, label)
    width: float
    height: float


def layout(graph: Graph) -> Layout:
    """Place inputs, nodes and outputs on layers and order each layer."""
    boxes: dict[str, Box] = {}
    raw_edges: list[tuple[str, str, str]] = []
    source_of: dict[int, str] = {}
    for t in graph.inputs:
        key = f"i:{t.name}"
        boxes[key] = Box(key, ["input", f"%{t.name}"], "input", format_tensor(t))
        source_of[id(t)] = key
    for node in graph.nodes:
        box = _node_box(node)
        boxes[box.key] = box
        for t in node.outputs:
            source_of[id(t)] = box.key
    for node in graph.nodes:
        for t in node.inputs:
            if t is not None and id(t) in source_of:
                raw_edges.append((source_of[id(t)], f"n:{node.name}", edge_label(t)))
    for t in graph.outputs:
        key = f"o:{t.name}"
        boxes[key] = Box(key, ["output", f"%{t.name}"], "input", format_tensor(t))
        if id(t) in source_of:
            raw_edges.append((source_of[id(t)], key, edge_label(t)))

    _assign_layers(boxes, raw_edges)
    edges = _add_waypoints(boxes, raw_edges)
    layers = _order_layers(boxes)
    width, height = _place(boxes, layers)
    return Layout(boxes, edges, width, height)


def _assign_layers(boxes: dict[str, Box], edges: list[tuple[str, str, str]]) -> None:
    """Longest path from the sources; nodes are visited in topological (graph) order."""
    for src, dst, _ in edges:
        boxes[dst].preds.append(src)
    for box in boxes.values():  # dict order: inputs, nodes in topological order, outputs
        if box.preds:
            box.layer = max(boxes[p].layer for p in box.preds) + 1
    # a node fed only by constants (a weight FAKE_QUANT) sits just above its first user
    succs: dict[str, list[str]] = {}
    for src, dst, _ in edges:
        succs.setdefault(src, []).append(dst)
    for box in reversed(list(boxes.values())):
        if box.key.startswith("n:") and not box.preds and box.key in succs:
            box.layer = max(min(boxes[s].layer for s in succs[box.key]) - 1, 0)
    last = max((b.layer for b in boxes.values()), default=0)
    for box in boxes.values():
        if box.key.startswith("o:"):
            box.layer = max(box.layer, last)


def _add_waypoints(boxes: dict[str, Box], edges: list[tuple[str, str, str]],
                   ) -> list[tuple[list[str], str]]:
    chains = []
    for i, (src, dst, label) in enumerate(edges):
        chain = [src]
        for layer in range(boxes[src].layer + 1, boxes[dst].layer):
            key = f"d:{i}:{layer}"
            boxes[key] = Box(key, [], "float", layer=layer, dummy=True)
            chain.append(key)
        chain.append(dst)
        chains.append((chain, label))
    for box in boxes.values():  # predecessors through the waypoints, for ordering
        box.preds = []
    for chain, _ in chains:
        for a, b in zip(chain, chain[1:]):
            if a not in boxes[b].preds:
                boxes[b].preds.append(a)
    return chains


def _order_layers(boxes: dict[str, Box]) -> list[list[Box]]:
    n_layers = max((b.layer for b in boxes.values()), default=0) + 1
    layers: list[list[Box]] = [[] for _ in range(n_layers)]
    for b in boxes.values():
        layers[b.layer].append(b)
    for layer in layers:
        for i, b in enumerate(layer):
            b.order = float(i)
    succs: dict[str, list[str]] = {k: [] for k in boxes}
    for b in boxes.values():
        for p in b.preds:
            succs[p].append(b.key)
    for _ in range(4):  # down then up sweeps of barycentric ordering
        for layer in layers[1:]:
            _sort_by(layer, {b.key: [boxes[p].order for p in b.preds] for b in layer})
        for layer in reversed(layers[:-1]):
            _sort_by(layer, {b.key: [boxes[s].order for s in succs[b.key]] for b in layer})
    return layers


def _sort_by(layer: list[Box], neighbour_orders: dict[str, list[float]]) -> None:
    def bary(b: Box) -> float:
        vals = neighbour_orders[b.key]
        return sum(vals) / len(vals) if vals else b.order

    layer.sort(key=lambda b: (bary(b), b.order))
    for i, b in enumerate(layer):
        b.order = float(i)


def _place(boxes: dict[str, Box], layers: list[list[Box]]) -> tuple[float, float]:
    """Sizes from the text; each row centred; rows stacked with room for edge labels."""
    for b in boxes.values():
        if b.dummy:
            b.w, b.h = 40.0, LINE_H
        else:
            b.w = max(len(s) for s in b.lines) * CHAR_W + 16
            b.h = len(b.lines) * LINE_H + 10
    row_w = [sum(b.w for b in layer) + NODE_GAP * max(len(layer) - 1, 0) for layer in layers]
    width = max(row_w, default=0) + 2 * PAD
    y = PAD
    for layer, rw in zip(layers, row_w):
        x = (width - rw) / 2
        h = max((b.h for b in layer), default=LINE_H)
        for b in layer:
            b.x, b.y = x, y + (h - b.h) / 2
            x += b.w + NODE_GAP
        y += h + LAYER_GAP
    return width, y - LAYER_GAP + PAD

"""Pictures of the IR: a self-contained SVG, an HTML page, and a before/after pair.

No Graphviz and no JavaScript: the layout is a small layered one drawn top to
bottom. Nodes sit on the layer given by their longest path from the inputs;
edges that span several layers get invisible waypoints so they route around
nodes; the order within each layer comes from a few barycentric sweeps, which
removes most crossings on the straight-line CNN graphs qatir sees.

Colours say what a node produces: float, fake-quantized, int8, int32, an
IR-only op that a pass must remove. Edge labels give the tensor type and,
when quantized, its scale and zero point. Hovering a node shows its line of
the text dump.
"""

from __future__ import annotations

import difflib
import html
from collections import Counter
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
class _Box:
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


def _node_box(node: Node) -> _Box:
    lines = [node.op, node.name]
    attrs = _attr_line(node)
    if attrs:
        lines.append(attrs)
    consts = [t for t in node.inputs if t is not None and t.is_const]
    for t in consts[:3]:
        lines.append(_shorten(_const_line(t), 40))
    if len(consts) > 3:
        lines.append(f"+{len(consts) - 3} constants")
    return _Box(key=f"n:{node.name}", lines=lines, style=_node_style(node),
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
    boxes: dict[str, _Box]
    edges: list[tuple[list[str], str]]  # (chain of box keys from source to target, label)
    width: float
    height: float


def layout(graph: Graph) -> Layout:
    """Place inputs, nodes and outputs on layers and order each layer."""
    boxes: dict[str, _Box] = {}
    raw_edges: list[tuple[str, str, str]] = []
    source_of: dict[int, str] = {}
    for t in graph.inputs:
        key = f"i:{t.name}"
        boxes[key] = _Box(key, ["input", f"%{t.name}"], "input", format_tensor(t))
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
        boxes[key] = _Box(key, ["output", f"%{t.name}"], "input", format_tensor(t))
        if id(t) in source_of:
            raw_edges.append((source_of[id(t)], key, edge_label(t)))

    _assign_layers(boxes, raw_edges)
    edges = _add_waypoints(boxes, raw_edges)
    layers = _order_layers(boxes)
    width, height = _place(boxes, layers)
    return Layout(boxes, edges, width, height)


def _assign_layers(boxes: dict[str, _Box], edges: list[tuple[str, str, str]]) -> None:
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


def _add_waypoints(boxes: dict[str, _Box], edges: list[tuple[str, str, str]],
                   ) -> list[tuple[list[str], str]]:
    chains = []
    for i, (src, dst, label) in enumerate(edges):
        chain = [src]
        for layer in range(boxes[src].layer + 1, boxes[dst].layer):
            key = f"d:{i}:{layer}"
            boxes[key] = _Box(key, [], "float", layer=layer, dummy=True)
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


def _order_layers(boxes: dict[str, _Box]) -> list[list[_Box]]:
    n_layers = max((b.layer for b in boxes.values()), default=0) + 1
    layers: list[list[_Box]] = [[] for _ in range(n_layers)]
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


def _sort_by(layer: list[_Box], neighbour_orders: dict[str, list[float]]) -> None:
    def bary(b: _Box) -> float:
        vals = neighbour_orders[b.key]
        return sum(vals) / len(vals) if vals else b.order

    layer.sort(key=lambda b: (bary(b), b.order))
    for i, b in enumerate(layer):
        b.order = float(i)


def _place(boxes: dict[str, _Box], layers: list[list[_Box]]) -> tuple[float, float]:
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


# --------------------------------------------------------------------------- SVG
def _esc(s: str) -> str:
    return html.escape(s, quote=True)


def to_svg(graph: Graph, legend: bool = True) -> str:
    """The graph as a standalone SVG document (UTF-8 text)."""
    lay = layout(graph)
    legend_h = 30 if legend else 0
    w, h = max(lay.width, 620 if legend else 0), lay.height + legend_h
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0f}" height="{h:.0f}" '
           f'viewBox="0 0 {w:.0f} {h:.0f}" font-family="monospace" font-size="12">',
           f"<title>{_esc(graph.name)}</title>",
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
           'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
           'fill="#555"/></marker></defs>',
           f'<rect x="0" y="0" width="{w:.0f}" height="{h:.0f}" fill="#ffffff"/>']
    if legend:
        out.append(_legend())
    out.append(f'<g transform="translate(0,{legend_h})">')
    labelled: set[tuple[str, str]] = set()
    for chain, label in lay.edges:  # a tensor with several users is labelled once
        first = (chain[0], label) not in labelled
        labelled.add((chain[0], label))
        out.append(_edge_svg([lay.boxes[k] for k in chain], label if first else ""))
    for b in lay.boxes.values():
        if not b.dummy:
            out.append(_box_svg(b))
    out.append("</g></svg>")
    return "\n".join(out) + "\n"


def _legend() -> str:
    parts = ['<g class="legend">']
    x = 10.0
    for style in ("float", "fake_quant", "quantized", "int32", "ir_only"):
        fill, stroke, text = STYLES[style]
        text = text.split(" (")[0]
        parts.append(f'<rect x="{x:.0f}" y="8" width="14" height="14" fill="{fill}" '
                     f'stroke="{stroke}"/><text x="{x + 18:.0f}" y="19">{_esc(text)}</text>')
        x += 18 + len(text) * CHAR_W + 16
    parts.append("</g>")
    return "".join(parts)


def _box_svg(b: _Box) -> str:
    fill, stroke, _ = STYLES[b.style]
    dash = ' stroke-dasharray="4 3"' if b.style in ("ir_only", "input") else ""
    rx = 14 if b.style == "input" else 4
    attrs = f' data-node="{_esc(b.node_name)}"' if b.node_name else f' data-terminal="{_esc(b.key)}"'
    parts = [f'<g class="node {b.style}"{attrs}>', f"<title>{_esc(b.title)}</title>",
             f'<rect x="{b.x:.1f}" y="{b.y:.1f}" width="{b.w:.1f}" height="{b.h:.1f}" '
             f'rx="{rx}" fill="{fill}" stroke="{stroke}" stroke-width="1.5"{dash}/>']
    for i, line in enumerate(b.lines):
        weight = ' font-weight="bold"' if i == 0 else ' fill="#333"'
        size = "" if i == 0 else ' font-size="11"'
        parts.append(f'<text x="{b.x + b.w / 2:.1f}" y="{b.y + 17 + i * LINE_H:.1f}" '
                     f'text-anchor="middle"{weight}{size}>{_esc(line)}</text>')
    parts.append("</g>")
    return "".join(parts)


def _edge_svg(chain: list[_Box], label: str) -> str:
    pts = [(chain[0].x + chain[0].w / 2, chain[0].y + chain[0].h)]
    for b in chain[1:-1]:
        pts.append((b.x + b.w / 2, b.y + b.h / 2))
    pts.append((chain[-1].x + chain[-1].w / 2, chain[-1].y))
    d = f"M{pts[0][0]:.1f},{pts[0][1]:.1f}"
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        my = (y0 + y1) / 2
        d += f" C{x0:.1f},{my:.1f} {x1:.1f},{my:.1f} {x1:.1f},{y1:.1f}"
    lx, ly = pts[0][0] + 4, pts[0][1] + 14
    text = (f'<text x="{lx:.1f}" y="{ly:.1f}" font-size="10" fill="#555">{_esc(label)}</text>'
            if label else "")
    return (f'<g class="edge"><path d="{d}" fill="none" stroke="#555" stroke-width="1.2" '
            f'marker-end="url(#arrow)"/>{text}</g>')


# --------------------------------------------------------------------------- HTML
_CSS = ("body{font-family:sans-serif;margin:16px;color:#111}"
        "h1{font-size:18px}h2{font-size:15px}.pair{display:flex;gap:16px;align-items:flex-start}"
        ".pair>div{flex:1;overflow:auto;border:1px solid #ddd;padding:4px}"
        "pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:12px}"
        ".add{color:#166534}.del{color:#991b1b}")


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head>\n"
            f"<body><h1>{_esc(title)}</h1>\n{body}\n</body></html>\n")


def _summary_line(graph: Graph) -> str:
    ops = Counter(n.op for n in graph.nodes)
    listing = ", ".join(f"{op} ×{c}" for op, c in sorted(ops.items()))
    return f"{len(graph.nodes)} nodes: {listing}"


def to_html(graph: Graph, title: str | None = None) -> str:
    """A self-contained page: the picture, an op count and the text dump (no scripts)."""
    title = title or graph.name
    body = (f"<p>{_esc(_summary_line(graph))}</p>\n{to_svg(graph)}"
            f"<details><summary>text dump</summary><pre>{_esc(str(graph))}</pre></details>")
    return _page(title, body)


def text_diff(before: Graph, after: Graph, what: str = "") -> str:
    """A unified diff of the two text dumps."""
    lines = difflib.unified_diff(str(before).splitlines(), str(after).splitlines(),
                                 f"before {what}".strip(), f"after {what}".strip(), lineterm="")
    return "\n".join(lines)


def diff_html(before: Graph, after: Graph, title: str = "before / after") -> str:
    """Two pictures side by side, what changed by op count, and the text diff."""
    b_ops, a_ops = Counter(n.op for n in before.nodes), Counter(n.op for n in after.nodes)
    changes = []
    for op in sorted(set(b_ops) | set(a_ops)):
        delta = a_ops[op] - b_ops[op]
        if delta:
            cls = "add" if delta > 0 else "del"
            changes.append(f'<span class="{cls}">{_esc(op)} {delta:+d}</span>')
    diff_lines = []
    for line in text_diff(before, after).splitlines():
        cls = "add" if line.startswith("+") else "del" if line.startswith("-") else ""
        diff_lines.append(f'<span class="{cls}">{_esc(line)}</span>' if cls else _esc(line))
    body = (f"<p>nodes {len(before.nodes)} → {len(after.nodes)}; "
            f"{', '.join(changes) or 'no op changes'}</p>\n"
            f'<div class="pair"><div><h2>before</h2>{to_svg(before)}</div>'
            f"<div><h2>after</h2>{to_svg(after)}</div></div>\n"
            f"<h2>text diff</h2><pre>{chr(10).join(diff_lines)}</pre>")
    return _page(title, body)


def draw_diff(before: Graph, after: Graph, path: str, title: str = "before / after") -> None:
    """Write :func:`diff_html` to ``path`` atomically."""
    from qatir.fileio import atomic_write

    atomic_write(path, diff_html(before, after, title).encode())


def save_picture(graph: Graph, path: str) -> None:
    """Write the graph as ``.svg`` or ``.html`` by suffix (atomically)."""
    from qatir.errors import QatirError
    from qatir.fileio import atomic_write

    if path.lower().endswith(".svg"):
        text = to_svg(graph)
    elif path.lower().endswith((".html", ".htm")):
        text = to_html(graph)
    else:
        raise QatirError(f"{path}: a picture must end in .svg or .html")
    atomic_write(path, text.encode())

"""Pictures of the IR: a self-contained SVG, an HTML page, and a before/after pair.

No Graphviz and no JavaScript: the layout (:mod:`qatir.draw_layout`) is a small
layered one drawn top to bottom, with a few barycentric sweeps, which removes most
crossings on the straight-line CNN graphs qatir sees.

Colours say what a node produces: float, fake-quantized, int8, int32, an
IR-only op that a pass must remove. Edge labels give the tensor type and,
when quantized, its scale and zero point. Hovering a node shows its line of
the text dump.
"""

from __future__ import annotations

import difflib
import html
from collections import Counter

from qatir.draw_layout import (  # noqa: F401  (STYLES, layout: part of qatir.draw's API)
    CHAR_W,
    LINE_H,
    PAD,
    STYLES,
    Box,
    Layout,
    edge_label,
    layout,
)
from qatir.ir import Graph


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


def _box_svg(b: Box) -> str:
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


def _edge_svg(chain: list[Box], label: str) -> str:
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

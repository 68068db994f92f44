"""Pictures of the IR: the SVG parses and holds every node; the HTML renders in Chromium."""

from __future__ import annotations

import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib

import numpy as np
import pytest

from qatir import draw
from qatir.ir import Graph, QuantParams

SVG = "{http://www.w3.org/2000/svg}"


def branchy_graph() -> Graph:
    """Conv -> two branches (one long) -> concat -> mean: long edges and a join."""
    g = Graph("branchy")
    x = g.add_input("x", [1, 8, 8, 3])
    w = g.const(np.ones((4, 3, 3, 3), np.float32), "w")
    c1 = g.add_node("CONV_2D", [x, w], {"padding": "SAME", "fused_activation": "RELU6"},
                    outputs=["c1"])
    r = g.add_node("RELU", [c1.output], outputs=["r"])
    lo = g.const(np.float32(-1.0), "lo")
    hi = g.const(np.float32(1.0), "hi")
    fq = g.add_node("FAKE_QUANT", [r.output, lo, hi], outputs=["fq"])
    fq.output.quant = QuantParams((2 / 255,), (-1,))
    bn_args = [g.const(np.ones(4, np.float32), n) for n in ("g", "b", "m", "v")]
    bn = g.add_node("BATCH_NORM", [fq.output, *bn_args], outputs=["bn"])
    cat = g.add_node("CONCATENATION", [c1.output, bn.output], {"axis": 3}, outputs=["cat"])
    mean = g.add_node("MEAN", [cat.output], {"axis": [1, 2]}, outputs=["y"])
    g.outputs = [mean.output, r.output]
    g.verify()
    return g


def svg_nodes(svg_text: str) -> dict[str, ET.Element]:
    root = ET.fromstring(svg_text)
    assert root.tag == f"{SVG}svg"
    return {g.get("data-node"): g for g in root.iter(f"{SVG}g") if g.get("data-node")}


def test_svg_parses_and_holds_every_node():
    g = branchy_graph()
    nodes = svg_nodes(draw.to_svg(g))
    assert set(nodes) == {n.name for n in g.nodes}
    # every node's text shows its op; its tooltip is its dump line
    for n in g.nodes:
        texts = [t.text for t in nodes[n.name].iter(f"{SVG}text")]
        assert texts[0] == n.op
        assert nodes[n.name].find(f"{SVG}title").text.endswith(f"# {n.name}")


def test_colours_follow_dtype_and_quantization():
    g = branchy_graph()
    nodes = svg_nodes(draw.to_svg(g))
    classes = {name: el.get("class").split()[1] for name, el in nodes.items()}
    by_op = {n.op: classes[n.name] for n in g.nodes}
    assert by_op["FAKE_QUANT"] == "fake_quant"
    assert by_op["BATCH_NORM"] == "ir_only"
    assert by_op["CONV_2D"] == "float"
    fills = {nodes[n.name].find(f"{SVG}rect").get("fill") for n in g.nodes}
    assert len(fills) == 3


def test_edges_carry_shapes_and_scales():
    svg = draw.to_svg(branchy_graph())
    root = ET.fromstring(svg)
    labels = [t.text for e in root.iter(f"{SVG}g") if e.get("class") == "edge"
              for t in e.iter(f"{SVG}text")]
    assert "f32[1,8,8,4]" in labels
    assert any(lbl.startswith("f32[1,8,8,4] s=0.00784 zp=-1") for lbl in labels)
    # one edge per (producer, consumer) input plus one per graph output; a tensor is
    # labelled once however many users it has
    g = branchy_graph()
    n_edges = sum(1 for n in g.nodes for t in n.inputs if t is not None and not t.is_const)
    edges = [e for e in root.iter(f"{SVG}g") if e.get("class") == "edge"]
    assert len(edges) == n_edges + len(g.outputs)
    produced = {t.name for n in g.nodes for t in n.outputs} | {t.name for t in g.inputs}
    used = {t.name for n in g.nodes for t in n.inputs if t is not None and not t.is_const}
    assert len(labels) == len(produced & (used | {t.name for t in g.outputs}))


def test_layers_flow_downwards_and_boxes_do_not_overlap():
    g = branchy_graph()
    lay = draw.layout(g)
    boxes = [b for b in lay.boxes.values() if not b.dummy]
    for b in boxes:
        for p in b.preds:
            assert lay.boxes[p].y < b.y  # every edge points down
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            apart = (a.x + a.w <= b.x or b.x + b.w <= a.x or a.y + a.h <= b.y or b.y + b.h <= a.y)
            assert apart, (a.key, b.key)
    assert all(0 <= b.x and b.x + b.w <= lay.width for b in boxes)


def test_html_page_and_diff_are_well_formed():
    before = branchy_graph()
    after = before.clone()
    bn = next(n for n in after.nodes if n.op == "BATCH_NORM")
    after.replace_all_uses_with(bn.output, bn.inputs[0])
    after.erase(bn)
    after.prune_tensors()
    page = draw.diff_html(before, after, title="drop bn")
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert "BATCH_NORM -1" in page
    assert page.count("<svg") == 2
    body = page[page.index("<svg"):page.rindex("</svg>") + 6]
    first = body[: body.index("</svg>") + 6]
    assert set(svg_nodes(first)) == {n.name for n in before.nodes}
    diff = draw.text_diff(before, after, "drop")
    assert any(line.startswith("-") and "BATCH_NORM" in line for line in diff.splitlines())


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_chromium() is None,
                    reason="chromium is not installed on this machine (apt-get install chromium); "
                           "the SVG/XML tests above still check the pictures")
def test_html_renders_in_headless_chromium(tmp_path):
    page = tmp_path / "g.html"
    page.write_text(draw.to_html(branchy_graph(), title="branchy"))
    shot = tmp_path / "shot.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
           "--window-size=900,1200", page.as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert shot.is_file() and shot.stat().st_size > 5000
    pixels = decode_png(shot.read_bytes())
    # the boxes really are drawn: each node colour covers a visible area of the screenshot
    for style in ("float", "fake_quant", "ir_only"):
        fill = tuple(int(STYLES_FILL[style][i:i + 2], 16) for i in (1, 3, 5))
        count = int(np.all(pixels[..., :3] == fill, axis=-1).sum())
        assert count > 500, (style, count)
    dom = subprocess.run(cmd[:-3] + ["--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120, check=False).stdout
    assert dom.count('class="node ') == len(branchy_graph().nodes) + 3  # + 1 input, 2 outputs


STYLES_FILL = {k: v[0] for k, v in draw.STYLES.items()}


def decode_png(data: bytes) -> np.ndarray:
    """A minimal PNG decoder (8-bit RGB/RGBA, non-interlaced) -> array [h, w, channels]."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, header
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.int32)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int32)
        if ftype == 0:
            cur = line
        elif ftype == 2:
            cur = (line + prev) & 0xFF
        else:  # Sub, Average, Paeth depend on the reconstructed left pixel: go byte by byte
            cur = np.zeros(stride, np.int32)
            for x in range(stride):
                a = cur[x - bpp] if x >= bpp else 0
                b = prev[x]
                c = prev[x - bpp] if x >= bpp else 0
                if ftype == 1:
                    pred = a
                elif ftype == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[x] = (line[x] + pred) & 0xFF
        out[y] = cur
        prev = cur
    return out.reshape(height, width, bpp)

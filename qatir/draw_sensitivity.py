"""The HTML picture of a sensitivity analysis: one bar per unit, most sensitive first.

Each row shows the SQNR with only that unit quantized (shorter bar = more sensitive) and
the SQNR gained over full int8 by keeping it float or int16. Plain SVG inside one HTML page,
no scripts.
"""

from __future__ import annotations

import html
import math

BAR_W, ROW_H, LABEL_W = 360, 18, 300


def _w(v: float | None, top: float) -> float:
    if v is None or not math.isfinite(v) or top <= 0:
        return 0.0
    return max(0.0, min(v, top)) / top * BAR_W


def sensitivity_html(report, top: int | None = 60) -> str:
    """An HTML page with the ranked bar chart of ``report`` (a :class:`qatir.sensitivity.Report`)."""
    rows = report.rows[:top] if top else report.rows
    finite = [r.sqnr_db for r in rows if math.isfinite(r.sqnr_db)]
    top_db = max([*finite, 1.0])
    gains = [g for r in rows for g in (r.gain_float_db, r.gain_int16_db)
             if g is not None and math.isfinite(g)]
    top_gain = max([*gains, 1.0])
    h = ROW_H * (len(rows) + 2)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{LABEL_W + 2 * BAR_W + 40}" '
             f'height="{h}" font-family="monospace" font-size="11">',
             f'<text x="{LABEL_W}" y="12">SQNR, only this unit int8 (dB, max {top_db:.1f})</text>',
             f'<text x="{LABEL_W + BAR_W + 20}" y="12">gain kept float / '
             f'<tspan fill="#2a7">int16</tspan> (dB)</text>']
    for i, r in enumerate(rows):
        y = ROW_H * (i + 1) + 4
        label = html.escape(f"{i + 1:>3} {r.node[:30]} ({r.op})")
        parts.append(f'<text x="0" y="{y + 11}">{label}</text>')
        parts.append(f'<rect x="{LABEL_W}" y="{y}" width="{_w(r.sqnr_db, top_db):.1f}" '
                     f'height="{ROW_H - 6}" fill="#c44"><title>{r.sqnr_db:.2f} dB</title></rect>')
        x2 = LABEL_W + BAR_W + 20
        parts.append(f'<rect x="{x2}" y="{y}" width="{_w(r.gain_float_db, top_gain):.1f}" '
                     f'height="{(ROW_H - 6) / 2}" fill="#47c"><title>float '
                     f'{r.gain_float_db:+.2f} dB</title></rect>')
        if r.gain_int16_db is not None:
            parts.append(f'<rect x="{x2}" y="{y + (ROW_H - 6) / 2}" '
                         f'width="{_w(r.gain_int16_db, top_gain):.1f}" height="{(ROW_H - 6) / 2}" '
                         f'fill="#2a7"><title>int16 {r.gain_int16_db:+.2f} dB</title></rect>')
    parts.append("</svg>")
    title = html.escape(f"qatir analyze: {report.graph.name}")
    head = html.escape(report.format_text(top=0).splitlines()[0])
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head>"
            f"<body><h3>{title}</h3><p>{head}</p>{''.join(parts)}</body></html>\n")

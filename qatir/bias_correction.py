"""Bias correction: remove the mean output error that rounding the weights causes.

With int8 weights W_q = W + ΔW, a conv/FC computes W_q·x + b, whose mean over the
data differs from the float W·x + b by ΔW·E[x] per output channel (Nagel et al. 2019,
"empirical bias correction" restricted to the weight term). After calibration, when
the table says ``[calibration] bias_correction = true``, each CONV_2D,
DEPTHWISE_CONV_2D and FULLY_CONNECTED with fake-quantized constant weights gets

    b'[o] = b[o] − Σ_{i,j,c} ΔW[o, i, j, c] · E[x at tap (i, j)][c]

where ΔW is TF's fake-quant of the weights minus the weights (what training and the
int8 file compute) and E[x at tap (i, j)] the mean, over the calibration data and all
output positions, of the float input value that kernel tap (i, j) reads (zero where it
reads padding). That is exactly the mean of the conv of x with ΔW, so small maps
(where padding and position matter) are corrected as well as large ones; for
FULLY_CONNECTED it is ΔW · E[x]. The deltas applied are kept in
``graph.metadata["bias_corrections"]`` (node name -> list), so calibrating again
first undoes them: the correction never accumulates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qatir.ir import Graph, Node
from qatir.numerics import fake_quant, same_padding

#: ops whose bias is corrected (TRANSPOSE_CONV scatters a varying number of taps: left out)
CORRECTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _weight_fq(node: Node) -> Node | None:
    """The weight FAKE_QUANT of ``node`` (of a constant), or None."""
    w = node.inputs[1] if len(node.inputs) > 1 else None
    fq = None if w is None else w.producer
    if fq is None or fq.op != "FAKE_QUANT" or fq.attrs.get("kind") != "weight":
        return None
    return fq if fq.inputs[0].is_const else None


def targets(graph: Graph) -> list[Node]:
    """The nodes whose bias calibration corrects."""
    return [n for n in graph.nodes if n.op in CORRECTED_OPS and _weight_fq(n) is not None
            and n.inputs[0].dtype.kind == "f"]


def weight_error(node: Node) -> np.ndarray:
    """ΔW = fake_quant(W) − W for the node's weight, as the FAKE_QUANT's range quantizes it."""
    fq = _weight_fq(node)
    w = np.asarray(fq.inputs[0].data, np.float32)
    q = fake_quant(w, fq.inputs[1].data, fq.inputs[2].data, int(fq.attrs["bits"]),
                   bool(fq.attrs.get("narrow_range")), fq.attrs.get("axis"))
    return q.astype(np.float64) - w


def bias_delta(node: Node, dw: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Σ ΔW · E[x at each tap] per output channel of ``node``.

    ``mean``: for FULLY_CONNECTED the input's channel means ``[K]``; for the convs the
    per-tap means ``[kh, kw, C]`` (:func:`tap_means`).
    """
    if node.op == "FULLY_CONNECTED":
        return dw @ mean
    if node.op == "DEPTHWISE_CONV_2D":  # [1, kh, kw, C·m]: output k reads input k // m
        mult = dw.shape[3] // mean.shape[2]
        return (dw[0] * np.repeat(mean, mult, axis=2)).sum(axis=(0, 1))
    o, c = dw.shape[0], dw.shape[3]  # [O, kh, kw, C/groups]
    groups = mean.shape[2] // c
    per_group = mean.reshape(mean.shape[0], mean.shape[1], groups, c)
    g_of = np.arange(o) // (o // groups)
    return np.einsum("oijc,ijoc->o", dw, per_group[:, :, g_of, :])


def _tap_index(size: int, k: int, stride: int, dilation: int, padding: str) -> np.ndarray:
    """[k, out]: the input index each kernel tap reads at each output position (−1: pad)."""
    if padding == "SAME":
        out, before, _ = same_padding(size, k, stride, dilation)
    else:
        out, before = max((size - (k - 1) * dilation - 1) // stride + 1, 0), 0
    idx = np.arange(k)[:, None] * dilation + np.arange(out)[None, :] * stride - before
    return np.where((idx >= 0) & (idx < size), idx, -1)


def tap_means(node: Node, x: np.ndarray) -> tuple[np.ndarray, int]:
    """(Σ over batch and output positions of the value each tap reads, [kh, kw, C]; count)."""
    kh, kw = node.inputs[1].shape[1:3]
    sh, sw = node.attrs.get("stride", (1, 1))
    dh, dw = node.attrs.get("dilation", (1, 1))
    pad = node.attrs.get("padding", "VALID")
    rows = _tap_index(x.shape[1], kh, sh, dh, pad)
    cols = _tap_index(x.shape[2], kw, sw, dw, pad)
    # per input row / column, how many output positions of each tap read it
    r_hits = np.stack([np.bincount(r[r >= 0], minlength=x.shape[1]) for r in rows])
    c_hits = np.stack([np.bincount(c[c >= 0], minlength=x.shape[2]) for c in cols])
    sums = np.einsum("nhwc,ih,jw->ijc", x.astype(np.float64), r_hits, c_hits)
    return sums, x.shape[0] * rows.shape[1] * cols.shape[1]


def _input_name(node: Node) -> str:
    """The float-graph name of ``node``'s input (the tensor before its FAKE_QUANT)."""
    x = node.inputs[0]
    if x.producer is not None and x.producer.op == "FAKE_QUANT":
        return x.producer.inputs[0].name
    return x.name


def input_means(graph: Graph, nodes: Sequence[Node], feeds: Sequence[tuple[np.ndarray, ...]]
                ) -> dict[str, np.ndarray]:
    """By node name, the mean :func:`bias_delta` needs: channel means of a
    FULLY_CONNECTED's float input, per-tap means of a conv's, over ``feeds``."""
    from qatir.evaluate import FloatRun, strip_fake_quant

    names = {n.name: _input_name(n) for n in nodes}
    run = FloatRun(strip_fake_quant(graph), sorted(set(names.values())))
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for xs in feeds:
        feed = {t.name: x for t, x in zip(graph.inputs, xs)}
        out = run.run(feed)
        for node in nodes:
            name = names[node.name]
            v = np.asarray(out[name] if name in out else feed[name], np.float32)
            if node.op == "FULLY_CONNECTED":
                rows = v.reshape(-1, v.shape[-1]).astype(np.float64)
                total, n = rows.sum(axis=0), rows.shape[0]
            else:
                total, n = tap_means(node, v)
            sums[node.name] = sums.get(node.name, 0.0) + total
            counts[node.name] = counts.get(node.name, 0) + n
    return {n: sums[n] / max(counts[n], 1) for n in names}


def _set_bias(graph: Graph, node: Node, bias: np.ndarray) -> None:
    """Give ``node`` a fresh float bias constant (shared constants are never edited)."""
    old = node.inputs[2] if len(node.inputs) > 2 else None
    new = graph.const(bias.astype(np.float32),
                      name=(old.name if old is not None else node.name + "_bias") + "_bc")
    if len(node.inputs) > 2:
        node.set_input(2, new)
    else:
        node.add_input(new)


def correct_biases(graph: Graph, feeds: Sequence[tuple[np.ndarray, ...]]) -> int:
    """Apply b' = b − ΔW·E[x] to every target (module doc); returns how many changed."""
    nodes = targets(graph)
    done: dict[str, list[float]] = graph.metadata.get("bias_corrections") or {}
    if not nodes or not feeds:
        return 0
    means = input_means(graph, nodes, feeds)
    applied: dict[str, list[float]] = {}
    for node in nodes:
        dw = weight_error(node)
        mean = means[node.name]
        channels = dw.shape[0] if node.op != "DEPTHWISE_CONV_2D" else dw.shape[3]
        bias_t = node.inputs[2] if len(node.inputs) > 2 else None
        b = np.zeros(channels) if bias_t is None else np.asarray(bias_t.data, np.float64)
        b = b + np.asarray(done.get(node.name, 0.0))  # undo an earlier correction
        delta = bias_delta(node, dw, mean)
        if not np.all(np.isfinite(delta)):
            continue
        _set_bias(graph, node, b - delta)
        applied[node.name] = [float(v) for v in delta]
    graph.prune_tensors()
    graph.metadata["bias_corrections"] = applied
    return len(applied)

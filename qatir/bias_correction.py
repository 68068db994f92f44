"""Bias correction: remove the mean output error that quantizing a layer causes.

With int8 weights W_q and an input on its int8 grid x_q, a conv/FC computes
W_q·x_q + b, whose mean over the data differs from the float W·x + b (Nagel et al.
2019, empirical bias correction, here per layer given its float input). After
calibration, when the table says ``[calibration] bias_correction = true``, each
CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED with fake-quantized constant weights gets

    b'[o] = b[o] − Σ_{i,j,c} (W_q[o, i, j, c] · E[x_q at tap (i, j)][c]
                            − W[o, i, j, c] · E[x at tap (i, j)][c])

where W_q is TF's fake-quant of the weights (what training and the int8 file compute),
x_q the float input fake-quantized on the grid of the FAKE_QUANT it comes from, and
E[· at tap (i, j)] the mean, over the calibration data and all output positions, of the
value that kernel tap (i, j) reads (zero where it reads padding). That is exactly the
mean of the layer's output error, so small maps (where padding and position matter) are
corrected as well as large ones; for FULLY_CONNECTED it is W_q·E[x_q] − W·E[x]. A
channel is corrected only where the estimates from the even and the odd calibration
batches agree (:func:`consistent_delta`): from a few samples, a mean that does not stand
out of its own noise would add error. With ``bias_correction = "auto"`` the correction
is kept only if it lowers the int8 model's output error on the calibration data
(:func:`correct_if_better`). The feeds are streamed, never held: :func:`correct_biases`
reads them once, :func:`correct_if_better` twice, so they must be re-iterable. The
deltas applied are kept in
``graph.metadata["bias_corrections"]`` (node name -> list), so calibrating again first
undoes them: the correction never accumulates. Off by default: measured on the corpus
it gains 2-3 dB on random-init models and loses 2-4 dB on MediaPipe's trained landmark
models (README).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

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


def weights(node: Node) -> tuple[np.ndarray, np.ndarray]:
    """(W, fake_quant(W)) of the node, as its weight FAKE_QUANT's range quantizes it."""
    fq = _weight_fq(node)
    w = np.asarray(fq.inputs[0].data, np.float32)
    q = fake_quant(w, fq.inputs[1].data, fq.inputs[2].data, int(fq.attrs["bits"]),
                   bool(fq.attrs.get("narrow_range")), fq.attrs.get("axis"))
    return w.astype(np.float64), q.astype(np.float64)


def bias_delta(node: Node, dw: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Σ w · E[x at each tap] per output channel of ``node``, for weights ``dw`` of the
    node's weight shape (W, W_q or their difference: the sum is linear in them).

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


def _grid(node: Node) -> Node | None:
    """The activation FAKE_QUANT whose grid ``node``'s input lies on (through ops that
    keep their input's grid, e.g. PAD, MAX_POOL_2D, RESHAPE), or None."""
    from qatir.lowering.common import INHERIT

    t = node.inputs[0]
    while t.producer is not None:
        p = t.producer
        if p.op == "FAKE_QUANT":
            return p if p.attrs.get("kind") != "weight" else None
        if p.op not in INHERIT or not p.inputs:
            return None
        t = p.inputs[0]
    return None


def _on_grid(fq: Node | None, v: np.ndarray) -> np.ndarray:
    """``v`` fake-quantized as ``fq`` does (unchanged without one)."""
    if fq is None:
        return v
    return fake_quant(v, fq.inputs[1].data, fq.inputs[2].data, int(fq.attrs["bits"]),
                      bool(fq.attrs.get("narrow_range")))


def _input_name(node: Node) -> str:
    """The float-graph name of ``node``'s input (the tensor before its FAKE_QUANTs: an
    int16 node reading an int8 value reads it through a second, 16-bit one)."""
    x = node.inputs[0]
    while x.producer is not None and x.producer.op == "FAKE_QUANT":
        x = x.producer.inputs[0]
    return x.name


def input_sums(graph: Graph, nodes: Sequence[Node], feeds: Iterable[tuple[np.ndarray, ...]]
               ) -> dict[str, list[tuple[np.ndarray, int]]]:
    """By node name, for the even and the odd feeds: the sums whose mean
    :func:`bias_delta` needs (channel sums of a FULLY_CONNECTED's float input, per-tap
    sums of a conv's) and how many values each sum is over."""
    from qatir.evaluate import FloatRun, strip_fake_quant

    names = {n.name: _input_name(n) for n in nodes}
    run = FloatRun(strip_fake_quant(graph), sorted(set(names.values())))
    halves: dict[str, list[tuple[np.ndarray, int]]] = {n.name: [(0.0, 0), (0.0, 0)]
                                                         for n in nodes}
    grids = {n.name: _grid(n) for n in nodes}
    for k, xs in enumerate(feeds):
        feed = {t.name: x for t, x in zip(graph.inputs, xs)}
        out = run.run(feed)
        for node in nodes:
            name = names[node.name]
            v = np.asarray(out[name] if name in out else feed[name], np.float32)
            vq = _on_grid(grids[node.name], v)
            if node.op == "FULLY_CONNECTED":
                total = np.stack([a.reshape(-1, a.shape[-1]).astype(np.float64).sum(axis=0)
                                  for a in (v, vq)])
                n = v.size // v.shape[-1]
            else:
                (t0, n), (t1, _) = tap_means(node, v), tap_means(node, vq)
                total = np.stack([t0, t1])
            s, c = halves[node.name][k % 2]
            halves[node.name][k % 2] = (s + total, c + n)
    return halves


def mean_error(node: Node, w: np.ndarray, wq: np.ndarray, sums: np.ndarray, n: int
               ) -> np.ndarray:
    """E[W_q·x_q] − E[W·x] per output channel from :func:`input_sums`' sums over n."""
    m = sums / max(n, 1)
    return bias_delta(node, wq, m[1]) - bias_delta(node, w, m[0])


def consistent_delta(node: Node, w: np.ndarray, wq: np.ndarray,
                     halves: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """The mean output error on all the data, kept only for the channels where the even
    and the odd feeds agree: |δ_even − δ_odd| < min(|δ_even|, |δ_odd|), i.e. where it
    stands out of the estimate's own noise (elsewhere a correction from a few samples
    adds more error than it removes). With a single feed every channel is kept."""
    (s0, n0), (s1, n1) = halves
    d_all = mean_error(node, w, wq, s0 + s1, n0 + n1)
    if not n1:
        return d_all
    d0, d1 = mean_error(node, w, wq, s0, n0), mean_error(node, w, wq, s1, n1)
    keep = np.abs(d0 - d1) < np.minimum(np.abs(d0), np.abs(d1))
    return np.where(keep, d_all, 0.0)


def _set_bias(graph: Graph, node: Node, bias: np.ndarray) -> None:
    """Give ``node`` a fresh float bias constant (shared constants are never edited)."""
    old = node.inputs[2] if len(node.inputs) > 2 else None
    new = graph.const(bias.astype(np.float32),
                      name=(old.name if old is not None else node.name + "_bias") + "_bc")
    if len(node.inputs) > 2:
        node.set_input(2, new)
    else:
        node.add_input(new)


def correct_biases(graph: Graph, feeds: Iterable[tuple[np.ndarray, ...]]) -> int:
    """Apply b' = b − ΔW·E[x] to every target (module doc, :func:`consistent_delta`),
    reading ``feeds`` once; returns how many biases changed."""
    nodes = targets(graph)
    done: dict[str, list[float]] = graph.metadata.get("bias_corrections") or {}
    if not nodes:
        return 0
    sums = input_sums(graph, nodes, feeds)
    if not any(n for _, n in sums[nodes[0].name]):  # no feeds
        return 0
    applied: dict[str, list[float]] = {}
    for node in nodes:
        w, wq = weights(node)
        delta = consistent_delta(node, w, wq, sums[node.name])
        if not np.all(np.isfinite(delta)):
            delta = np.zeros_like(delta)
        if not np.any(delta) and node.name not in done:
            continue
        channels = delta.size
        bias_t = node.inputs[2] if len(node.inputs) > 2 else None
        b = np.zeros(channels) if bias_t is None else np.asarray(bias_t.data, np.float64)
        b = b + np.asarray(done.get(node.name, 0.0))  # undo an earlier correction
        _set_bias(graph, node, b - delta)
        if np.any(delta):
            applied[node.name] = [float(v) for v in delta]
    graph.prune_tensors()
    graph.metadata["bias_corrections"] = applied
    return len(applied)


def undo(graph: Graph) -> None:
    """Take back the corrections :func:`correct_biases` applied."""
    done: dict[str, list[float]] = graph.metadata.get("bias_corrections") or {}
    for node in graph.nodes:
        if node.name in done:
            b = np.asarray(node.inputs[2].data, np.float64) + np.asarray(done[node.name])
            _set_bias(graph, node, b)
    graph.prune_tensors()
    graph.metadata["bias_corrections"] = {}


def output_errors(reference: Graph, feeds: Iterable[tuple[np.ndarray, ...]],
                  bufs: Sequence[bytes]) -> list[float]:
    """Squared error of each int8 file's outputs (LiteRT, default resolver, float edges)
    against the float graph ``reference``, summed over ``feeds`` in one pass."""
    from qatir.evaluate import FloatRun
    from qatir.litert_run import LiteRTRunner
    from qatir.metrics import squared_error

    float_run = FloatRun(reference)
    runners = [LiteRTRunner(b) for b in bufs]
    totals = [0.0] * len(bufs)
    for xs in feeds:
        feed = {t.name: x for t, x in zip(reference.inputs, xs)}
        out = float_run.run(feed)
        want = [np.asarray(out[t.name], np.float64) for t in float_run.graph.outputs]
        for k, runner in enumerate(runners):
            totals[k] += squared_error(runner.run(feed), want)
    return totals


def correct_if_better(graph: Graph, feeds: Iterable[tuple[np.ndarray, ...]]) -> bool:
    """``bias_correction = "auto"``: correct, and keep the correction only if the int8
    model's output error on the calibration feeds (against the float graph) went down.
    Reads ``feeds`` twice (the correction, then both files' errors in one pass).
    Returns whether it was kept (``graph.metadata["bias_correction_kept"]`` too)."""
    from qatir.evaluate import strip_fake_quant
    from qatir.tflite_writer import to_tflite

    undo(graph)
    reference = strip_fake_quant(graph)  # the float graph, uncorrected
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = to_tflite(graph, io="float")
        kept = correct_biases(graph, feeds) > 0
        if kept:
            e_before, e_after = output_errors(reference, feeds,
                                              [before, to_tflite(graph, io="float")])
            kept = e_after < e_before
    if not kept:
        undo(graph)
    graph.metadata["bias_correction_kept"] = kept
    return kept

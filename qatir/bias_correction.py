"""Bias correction: remove the mean output error that rounding the weights causes.

With int8 weights W_q = W + ΔW, a conv/FC computes W_q·x + b, whose mean over the
data differs from the float W·x + b by ΔW·E[x] per output channel (Nagel et al. 2019,
"empirical bias correction" restricted to the weight term). After calibration, when
the table says ``[calibration] bias_correction = true``, each CONV_2D,
DEPTHWISE_CONV_2D and FULLY_CONNECTED with fake-quantized constant weights gets

    b' = b − ΔW · E[x]      (E[x]: mean of its float input per channel, calibration data)

where ΔW is TF's fake-quant of the weights minus the weights (what training and the
int8 file compute). Padding taps (zeros) are counted as the channel mean, so convs on
small maps keep a small residual. The deltas applied are kept in
``graph.metadata["bias_corrections"]`` (node name -> list), so calibrating again
first undoes them: the correction never accumulates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qatir.ir import Graph, Node
from qatir.numerics import fake_quant

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
    """ΔW · E[x] per output channel of ``node`` (``mean``: its input's channel means)."""
    if node.op == "FULLY_CONNECTED":
        return dw @ mean
    taps = dw.sum(axis=(1, 2))  # [O, kh, kw, C] / [1, kh, kw, C·m] -> [O, C] / [1, C·m]
    if node.op == "DEPTHWISE_CONV_2D":
        mult = taps.shape[1] // mean.size
        return taps[0] * np.repeat(mean, mult)
    o, c = taps.shape
    groups = mean.size // c
    per_group = mean.reshape(groups, c)[np.arange(o) // (o // groups)]
    return (taps * per_group).sum(axis=1)


def _input_name(node: Node) -> str:
    """The float-graph name of ``node``'s input (the tensor before its FAKE_QUANT)."""
    x = node.inputs[0]
    if x.producer is not None and x.producer.op == "FAKE_QUANT":
        return x.producer.inputs[0].name
    return x.name


def input_means(graph: Graph, nodes: Sequence[Node], feeds: Sequence[tuple[np.ndarray, ...]]
                ) -> dict[str, np.ndarray]:
    """Mean of each node's float input over ``feeds`` per last-axis channel, by node name."""
    from qatir.evaluate import FloatRun, strip_fake_quant

    names = {n.name: _input_name(n) for n in nodes}
    run = FloatRun(strip_fake_quant(graph), sorted(set(names.values())))
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for xs in feeds:
        feed = {t.name: x for t, x in zip(graph.inputs, xs)}
        out = run.run(feed)
        for name in set(names.values()):
            v = np.asarray(out[name] if name in out else feed[name], np.float64)
            rows = v.reshape(-1, v.shape[-1])
            sums[name] = sums.get(name, 0.0) + rows.sum(axis=0)
            counts[name] = counts.get(name, 0) + rows.shape[0]
    return {n: sums[t] / max(counts[t], 1) for n, t in names.items()}


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

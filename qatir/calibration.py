"""Post-training calibration: set every activation range of a quantized graph from data.

The graph runs in float (FAKE_QUANT as identity) and each calibrated
FAKE_QUANT's input is handed to its quantizer (``qatir.quantizers``). Ranges
shared by several FAKE_QUANT nodes (same ``min``/``max`` tensors) pool the
statistics of all users. Weight ranges are recomputed from the weights.

Two engines run the float graph:

- ``"litert"``: the graph, FAKE_QUANTs removed, is written as a float TFLite
  model whose outputs are the calibrated tensors and run by LiteRT (XNNPACK).
  It needs no TensorFlow and no trainable program, which makes it several
  times faster on a fresh graph (``tools/bench_vs_converter.py``);
- ``"tf"``: the graph's TensorFlow program (the one ``fit`` trains).

``engine="auto"`` (the default) takes LiteRT when the float graph can be
written as TFLite and TensorFlow otherwise. Both reduce each batch to
per-channel min/max for quantizers that need no more
(:meth:`qatir.quantizers.Quantizer.needs_rows`); the others get whole
activations, of which they keep a bounded sample.

Calibration streams: batches are read one at a time from any iterable (a list,
a generator, a ``tf.data.Dataset``) and only the quantizers' states are kept,
so the data never has to fit in memory. Bias correction makes further passes
over the data (:class:`Passes`): it needs ``batches`` to be re-iterable.
"""

from __future__ import annotations

import functools
import itertools
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from qatir.auto_range import AutoRanges
from qatir.calibration_taps import CaptureEngine, Tap, as_rows, minmax  # noqa: F401  (re-exported)
from qatir.errors import NumericsError, QatirError
from qatir.feeds import iterate_feeds
from qatir.ir import Graph, Node
from qatir.numerics import MIN_RANGE
from qatir.quant import refresh_quant
from qatir.quantizers import AutoQuantizer, Quantizer, get_quantizer, include_zero, symmetric_range

log = logging.getLogger(__name__)

ENGINES = ("auto", "litert", "tf")


def range_groups(graph: Graph) -> dict[tuple[int, int], list[Node]]:
    """Calibrated FAKE_QUANT nodes grouped by their (shared) min/max tensors."""
    groups: dict[tuple[int, int], list[Node]] = {}
    for node in graph.nodes:
        if node.op != "FAKE_QUANT" or node.attrs.get("kind") == "weight":
            continue
        if not get_quantizer(node.attrs["quantizer"]).calibrates:
            continue
        groups.setdefault((id(node.inputs[1]), id(node.inputs[2])), []).append(node)
    return groups


def set_range(node: Node, lo: np.ndarray, hi: np.ndarray) -> None:
    """Store a range in a FAKE_QUANT's min/max constants (fresh arrays, original shapes)."""
    for t, v in ((node.inputs[1], lo), (node.inputs[2], hi)):
        t.data = np.asarray(v, np.float32).reshape(t.shape).copy()


def weight_range(node: Node) -> tuple[np.ndarray, np.ndarray] | None:
    """The range a weight FAKE_QUANT takes from its current weights, or None when it is
    not computed from them (a learned range, a non-constant weight)."""
    q = get_quantizer(node.attrs["quantizer"])
    w = node.inputs[0]
    if q.trainable or not q.calibrates or not w.is_const:
        return None
    rows = as_rows(np.asarray(w.data, np.float32), node.attrs.get("axis"))
    lo, hi = include_zero(rows.min(axis=0), rows.max(axis=0))
    if node.attrs.get("symmetric"):
        lo, hi = symmetric_range(lo, hi)
    # a channel of denormals (a zero batch-norm gamma folded in) takes the widest
    # channel's range, or [-1, 1]: its weights quantize to zero (see MIN_RANGE)
    tiny = ((hi - lo) < MIN_RANGE) & ((hi != 0) | (lo != 0))
    if np.any(tiny):
        wide = (hi - lo) >= MIN_RANGE
        lo = np.where(tiny, lo[wide].min() if wide.any() else -1.0, lo).astype(np.float32)
        hi = np.where(tiny, hi[wide].max() if wide.any() else 1.0, hi).astype(np.float32)
    return lo, hi


def refresh_weight_ranges(graph: Graph) -> None:
    """Set weight FAKE_QUANT ranges from the current weights (unless the range is learned)."""
    for node in graph.nodes:
        if node.op == "FAKE_QUANT" and node.attrs.get("kind") == "weight":
            rng = weight_range(node)
            if rng is not None:
                set_range(node, *rng)


def retie_shared_inputs(graph: Graph) -> list[str]:
    """Tie again each untied same-scale input (``graph.metadata["requantized_shared_inputs"]``,
    ``passes/propagate_quant_constraints.py``) whose calibrated range holds its output's:
    tying would not widen it for its other readers, and untied its values would be rounded
    twice (its own grid, then the output's). The output group then takes the input's range,
    as tying does. Returns the re-tied input FAKE_QUANT names; the metadata keeps the rest."""
    by_name = {n.name: n for n in graph.nodes}
    kept, tied = [], []
    for entry in graph.metadata.get("requantized_shared_inputs", []):
        fq, out = by_name.get(entry[1]), by_name.get(entry[2])
        if fq is None or out is None:
            continue
        lo, hi = float(np.min(fq.inputs[1].data)), float(np.max(fq.inputs[2].data))
        if fq.inputs[1].data.size == 1 and lo <= float(np.min(out.inputs[1].data)) \
                and hi >= float(np.max(out.inputs[2].data)):
            set_range(out, np.float32(lo), np.float32(hi))
            fq.set_input(1, out.inputs[1])
            fq.set_input(2, out.inputs[2])
            tied.append(fq.name)
        else:
            kept.append(entry)
    if tied:
        graph.prune_tensors()
    graph.metadata["requantized_shared_inputs"] = kept
    return tied


def _progress(items: Iterable[Any], enabled: bool | None, desc: str):
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(items, desc=desc, disable=not enabled, unit="batch")


class Passes:
    """Calibration data that can be read more than once, one checked batch at a time.

    ``batches``: a re-iterable (a list, a ``tf.data.Dataset``, any object whose
    ``iter()`` starts afresh), a callable returning a fresh iterable, or a
    one-shot iterator (a generator), which allows a single pass only. Each pass
    yields graph-sized tuples in input order (:func:`qatir.feeds.iterate_feeds`),
    at most ``max_batches`` of them.
    """

    def __init__(self, graph: Graph, batches: Iterable[Any] | Callable[[], Iterable[Any]],
                 max_batches: int | None = None):
        self.graph, self.batches, self.max_batches = graph, batches, max_batches
        self.one_shot = not callable(batches) and isinstance(batches, Iterator)
        self._passes = 0

    def __iter__(self) -> Iterator[tuple[np.ndarray, ...]]:
        if self.one_shot and self._passes:
            raise QatirError(f"calibrate: graph {self.graph.name!r}: the batches were a "
                             "one-shot iterator, already read")
        self._passes += 1
        source = self.batches() if callable(self.batches) else self.batches
        feeds = iterate_feeds(self.graph, source)
        if self.max_batches is not None:
            feeds = itertools.islice(feeds, max(0, self.max_batches))
        return feeds


def make_engine(graph: Graph, taps: list[Tap], first: tuple[np.ndarray, ...],
                engine: str = "auto", threads: int | None = None
                ) -> tuple[CaptureEngine, dict[str, np.ndarray]]:
    """The capture engine for ``taps`` and its capture of the ``first`` batch.

    Running the first batch here lets ``"auto"`` fall back to TensorFlow when
    LiteRT refuses the float model at build or at its first invoke. ``threads``:
    LiteRT's thread count (default: every core this process may use).
    """
    if engine not in ENGINES:
        raise QatirError(f"calibrate: engine must be one of {ENGINES}, got {engine!r}")
    if engine in ("auto", "litert"):
        from qatir.litert_capture import LiteRTCapture, unsupported_reason

        why = unsupported_reason(graph)
        if why is None:
            try:
                capture = LiteRTCapture(graph, taps, threads=threads)
                return capture, capture.run(first)
            except QatirError as e:
                why = str(e)
        if engine == "litert":
            raise QatirError(f"calibrate: graph {graph.name!r} cannot run on LiteRT: {why}")
        log.info("calibrate: graph %r runs on TensorFlow (%s)", graph.name, why)
    from qatir.tf.calibrate import TfCapture

    capture = TfCapture(graph, taps)
    return capture, capture.run(first)


def calibrate(graph: Graph, batches: Iterable[Any] | Callable[[], Iterable[Any]],
              progress: bool | None = None, max_batches: int | None = None,
              quantizer_options: dict[str, dict] | None = None, engine: str = "auto",
              threads: int | None = None) -> Graph:
    """Set the activation ranges of ``graph`` (in place) from representative ``batches``.

    ``batches``: any iterable, read one batch at a time (never held whole), of
    ``{input_name: array}``, bare arrays for a one-input graph, or
    ``(features, label)`` tuples; a ``tf.data.Dataset`` of those works as it is.
    Batches larger than a fixed-batch graph's are split into graph-sized pieces
    (:func:`qatir.feeds.split_batch`); ``max_batches`` counts those pieces. A
    callable returning a fresh iterable is accepted too. When the table asks for
    it (``[calibration] weight_rounding = "gptq"``), weights are then rounded for the
    layers' outputs (:mod:`qatir.weight_rounding`) and (``[calibration]
    bias_correction``) biases corrected for weight rounding
    (:mod:`qatir.bias_correction`); each reads the data again: a one-shot
    iterator (a generator) is then refused up front. ``quantizer_options`` maps a
    quantizer name to options for it, e.g. ``{"percentile": {"percentile": 99.9}}``.
    ``engine``: "auto", "litert" or "tf" (module docstring); ``threads``: LiteRT's
    thread count (default: all cores). Returns ``graph``.
    """
    if not any(n.op == "FAKE_QUANT" for n in graph.nodes):
        raise QatirError(f"calibrate: graph {graph.name!r} has no FAKE_QUANT nodes "
                         "(quantize it first with qatir.quantize)")
    if engine not in ENGINES:
        raise QatirError(f"calibrate: engine must be one of {ENGINES}, got {engine!r}")
    data = Passes(graph, batches, max_batches)
    correct = bool(graph.metadata.get("bias_correction"))
    rounding = graph.metadata.get("weight_rounding", "nearest") == "gptq"
    if rounding and data.one_shot:
        raise QatirError(f"calibrate: graph {graph.name!r} has weight_rounding = \"gptq\" "
                         "([calibration] weight_rounding), which reads the data a second "
                         f"time, but the batches are a one-shot {type(batches).__name__}: "
                         "pass a re-iterable (a list, a tf.data.Dataset) or a callable "
                         "returning a fresh iterator")
    if correct and data.one_shot:
        raise QatirError(f"calibrate: graph {graph.name!r} has bias correction on "
                         "([calibration] bias_correction), which reads the data a second "
                         f"time, but the batches are a one-shot {type(batches).__name__}: "
                         "pass a re-iterable (a list, a tf.data.Dataset) or a callable "
                         "returning a fresh iterator")
    opts = quantizer_options or {}
    groups = range_groups(graph)
    quantizers: dict[tuple[int, int], Quantizer] = {}
    for key, nodes in groups.items():
        qname = nodes[0].attrs["quantizer"]
        quantizers[key] = get_quantizer(qname)(**opts.get(qname, {}))
    auto_keys = {key for key, q in quantizers.items() if isinstance(q, AutoQuantizer)}
    auto = AutoRanges(quantizers[next(iter(auto_keys))], opts) if auto_keys else None
    taps = [Tap(n.name, n.attrs.get("axis"), (auto.needs_rows() if key in auto_keys
                                              else quantizers[key].needs_rows()))
            for key, nodes in groups.items() for n in nodes]
    feeds = iter(data)
    first = next(feeds, None)
    if first is None:
        raise QatirError(f"calibrate: no batches given for graph {graph.name!r}")
    states: dict[tuple[int, int], dict] = {}
    if taps:
        capture, captured = make_engine(graph, taps, first, engine, threads)
        for i, xs in enumerate(_progress(itertools.chain([first], feeds), progress, "calibrate")):
            if i:
                captured = capture.run(xs)
            part = auto.part(i, xs) if auto is not None else 0
            for key, nodes in groups.items():
                for node in nodes:
                    if key in auto_keys:  # whole activations if any candidate needs them
                        auto.observe(functools.partial(_observe, whole=auto.needs_rows()),
                                     key, node, captured[node.name], part)
                    else:
                        _observe(quantizers[key], states, key, node, captured[node.name])
        del capture, captured  # the interpreter's arena, before bias correction runs
    del first, feeds

    def apply(ranges: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]) -> None:
        for key, (lo, hi) in ranges.items():
            if groups[key][0].attrs.get("symmetric"):
                lo, hi = symmetric_range(lo, hi)
            set_range(groups[key][0], lo, hi)

    apply({key: include_zero(*quantizers[key].compute_range(states[key]))
           for key in groups if key not in auto_keys})
    if auto is not None:
        choice = auto.choose(graph, {k: groups[k] for k in auto_keys}, apply)
        apply({key: auto.ranges(key, c) for key, c in choice.items()})
        graph.metadata["auto_ranges"] = {groups[k][0].name: auto.names[c]
                                         for k, c in choice.items()}
        del auto
    retie_shared_inputs(graph)
    refresh_weight_ranges(graph)
    refresh_quant(graph)
    if rounding:
        from qatir import weight_rounding

        weight_rounding.round_weights(graph, data)
        refresh_weight_ranges(graph)
        refresh_quant(graph)
    if correct:
        from qatir import bias_correction

        if graph.metadata["bias_correction"] == "auto":
            bias_correction.correct_if_better(graph, data)
        else:
            bias_correction.correct_biases(graph, data)
        refresh_quant(graph)
    graph.metadata["calibrated"] = True
    return graph


def _observe(q: Quantizer, states: dict[tuple[int, int], dict], key: tuple[int, int],
             node: Node, value: np.ndarray, whole: bool | None = None) -> None:
    """Hand one captured value to ``q``: the whole activation when ``whole`` (default: when
    ``q`` needs rows, as its tap then asked), else its ``[2, channels]`` min/max."""
    axis = node.attrs.get("axis")
    if whole is None:
        whole = q.needs_rows()
    if whole and not q.needs_rows():  # an ``auto`` range whose other candidate needs rows
        value = minmax(value, axis)
        whole = False
    if whole:
        rows = as_rows(value, axis)
        finite = bool(np.all(np.isfinite(rows)))
    else:
        rows = None
        finite = bool(np.all(np.isfinite(value)))  # NaN propagates into the min/max
    if not finite:
        raise NumericsError(f"FAKE_QUANT {node.name!r}: input %{node.inputs[0].name} "
                            "has NaN or Inf during calibration")
    if key not in states:
        states[key] = q.new_state(value.shape[1] if rows is None else rows.shape[1])
    if rows is None:
        q.observe_minmax(states[key], value[0], value[1])
    else:
        q.observe(states[key], rows)

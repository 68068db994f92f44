"""The LiteRT calibration engine: the float graph as a TFLite model, run by LiteRT.

A copy of the graph has every FAKE_QUANT removed (each one's consumers read
its input again) and, as outputs, the tensors calibration observes. It is
written as a float TFLite model (one per batch size seen) and run with
LiteRT's default resolver (XNNPACK) on all cores. Observed tensors that are
graph inputs or constants are read directly. No TensorFlow is imported.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qatir.calibration_taps import Tap, minmax
from qatir.errors import QatirError
from qatir.ir import Graph, Tensor
from qatir.litert_run import all_threads, interpreter

#: Interpreters kept for different batch sizes (a last, smaller batch is common; many
#: sizes are not, and each interpreter holds its own copy of the weights).
KEEP_INTERPRETERS = 2


def unsupported_reason(graph: Graph) -> str | None:
    """Why LiteRT cannot calibrate ``graph`` (None when it may: the export is tried next)."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError as e:
        return f"ai_edge_litert is not importable ({e})"
    for t in graph.inputs:
        if any(d is None for d in t.shape[1:]):
            return f"input %{t.name} has dynamic non-batch dims {list(t.shape)}"
    return None


def float_tap_graph(graph: Graph, names: set[str]) -> tuple[Graph, dict[str, Tensor]]:
    """A copy of ``graph`` without FAKE_QUANT nodes, and the tensor each named one read.

    The copy's outputs are those tensors that some node computes (not inputs
    or constants), in first-seen order.
    """
    g = graph.clone()
    sources: dict[str, Tensor] = {}
    for node in [n for n in g.nodes if n.op == "FAKE_QUANT"]:
        src = node.inputs[0]  # already rewired past any FAKE_QUANT before it
        if node.name in names:
            sources[node.name] = src
        g.replace_all_uses_with(node.outputs[0], src)
        g.erase(node)
    outputs: dict[int, Tensor] = {}
    for t in sources.values():
        if t.producer is not None:
            outputs.setdefault(id(t), t)
    g.outputs = list(outputs.values())
    g.eliminate_dead_code()
    return g, sources


class LiteRTCapture:
    """Capture engine running the FAKE_QUANT-free float graph in LiteRT."""

    def __init__(self, graph: Graph, taps: list[Tap], threads: int | None = None):
        self.taps = taps
        self.threads = all_threads() if threads is None else threads
        self.graph, self.sources = float_tap_graph(graph, {t.node for t in taps})
        self.dynamic_batch = bool(graph.inputs) and all(t.shape[:1] == (None,)
                                                         for t in graph.inputs)
        self.out_index = {id(t): i for i, t in enumerate(self.graph.outputs)}
        self._interpreters: dict[int, Any] = {}  # by batch size, most recently used last

    def _interpreter(self, xs: tuple[np.ndarray, ...]) -> tuple[Any, list[int], list[int]]:
        """The interpreter for this batch size (written and built on first use)."""
        batch = int(xs[0].shape[0]) if self.dynamic_batch else 1
        entry = self._interpreters.pop(batch, None)
        if entry is not None:
            self._interpreters[batch] = entry
            return entry
        from qatir.tflite_writer import to_tflite

        buf = to_tflite(self.graph, batch_size=batch)
        try:
            it = interpreter(buf, threads=self.threads)
        except (RuntimeError, ValueError) as e:
            raise QatirError(f"LiteRT refused the float model of graph {self.graph.name!r}: "
                             f"{e}") from e
        ins = [d["index"] for d in it.get_input_details()]
        outs = [d["index"] for d in it.get_output_details()]
        kinds = {np.dtype(d["dtype"]).kind for d in it.get_output_details()}
        if kinds - {"f"}:  # e.g. a graph holding already-quantized int8 tensors
            raise QatirError(f"float model of graph {self.graph.name!r}: observed tensors "
                             "are not all float")
        if len(ins) != len(self.graph.inputs) or len(outs) != len(self.graph.outputs):
            raise QatirError(f"float model of graph {self.graph.name!r}: LiteRT sees "
                             f"{len(ins)} inputs / {len(outs)} outputs, expected "
                             f"{len(self.graph.inputs)} / {len(self.graph.outputs)}")
        while len(self._interpreters) >= KEEP_INTERPRETERS:  # each holds a copy of the weights
            self._interpreters.pop(next(iter(self._interpreters)))
        self._interpreters[batch] = entry = (it, ins, outs)
        return entry

    def run(self, xs: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
        given: dict[int, np.ndarray] = {id(t): x for t, x in zip(self.graph.inputs, xs)}
        if self.graph.outputs:
            it, ins, outs = self._interpreter(xs)
            try:
                for x, idx in zip(xs, ins):
                    it.set_tensor(idx, np.ascontiguousarray(x))
                it.invoke()
            except (RuntimeError, ValueError) as e:
                raise QatirError(f"LiteRT failed to run the float model of graph "
                                 f"{self.graph.name!r}: {e}") from e
        out: dict[str, np.ndarray] = {}
        for tap in self.taps:
            src = self.sources[tap.node]
            if id(src) in given or src.is_const:
                x = given[id(src)] if id(src) in given else np.asarray(src.data)
                out[tap.node] = np.array(x, np.float32) if tap.rows else minmax(x, tap.axis)
                continue
            view = it.tensor(outs[self.out_index[id(src)]])()
            out[tap.node] = view.copy() if tap.rows else minmax(view, tap.axis)
            del view  # LiteRT refuses to invoke while views into its arena are alive
        return out

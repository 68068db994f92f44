"""How close the written int8 file comes to float, without TensorFlow.

The float reference is qatir's own float export of the float graph (every
FAKE_QUANT removed, same weights) run by LiteRT (:class:`FloatRun`); the int8
file runs in LiteRT too, and qatir's integer reference on the first samples.
TensorFlow is imported only for what only it can run: the fake-quant graph
(``fake_quant=True``), or a float graph LiteRT cannot run (``engine="auto"``
falls back to it and says why).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from qatir.errors import QatirError
from qatir.ir import Graph
from qatir.litert_run import LiteRTRunner, run_litert
from qatir.metrics import sqnr_db

FLOAT_ENGINES = ("auto", "litert", "tf")


def strip_fake_quant(graph: Graph) -> Graph:
    """A float copy of a quantized graph: every FAKE_QUANT bypassed and removed."""
    g = graph.clone()
    for node in [n for n in g.nodes if n.op == "FAKE_QUANT"]:
        g.replace_all_uses_with(node.outputs[0], node.inputs[0])
    g.eliminate_dead_code()
    return g


class FloatRun:
    """A float graph run by LiteRT (its float .tflite export), or by TensorFlow.

    ``names``: the tensors to return (default: the graph's outputs); tensors
    no node computes are left out. ``engine``: "litert", "tf", or "auto"
    (LiteRT, TensorFlow when LiteRT cannot run the graph; :attr:`fallback`
    then says why).
    """

    def __init__(self, graph: Graph, names: Sequence[str] | None = None, engine: str = "auto"):
        if engine not in FLOAT_ENGINES:
            raise QatirError(f"float engine must be one of {FLOAT_ENGINES}, got {engine!r}")
        g = graph.clone()
        if names is not None:
            g.outputs = [g.tensors[n] for n in dict.fromkeys(names)
                         if n in g.tensors and g.tensors[n].producer is not None]
        self.graph, self.engine, self.fallback = g, engine, None
        self._runners: dict[int, LiteRTRunner] = {}
        if engine != "tf":
            try:
                self._runner(1 if self._dynamic_batch() else None)
                self.engine = "litert"
            except QatirError as e:
                if engine == "litert":
                    raise
                self.engine, self.fallback = "tf", str(e)

    def _dynamic_batch(self) -> bool:
        return bool(self.graph.inputs) and all(t.shape[:1] == (None,) for t in self.graph.inputs)

    def _runner(self, batch: int | None) -> LiteRTRunner:
        key = batch or 0
        if key not in self._runners:
            from qatir.tflite_writer import to_tflite

            g = self.graph
            try:
                runner = LiteRTRunner(to_tflite(g, batch_size=batch or 1))
            except (QatirError, RuntimeError, ValueError) as e:
                raise QatirError(f"LiteRT cannot run the float graph {g.name!r}: {e}") from e
            kinds = {np.dtype(d["dtype"]).kind for d in runner.outputs}
            if len(runner.outputs) != len(g.outputs) or kinds - {"f"}:
                raise QatirError(f"LiteRT cannot run the float graph {g.name!r}: its export "
                                 f"has {len(runner.outputs)} outputs, not {len(g.outputs)} float")
            self._runners[key] = runner
        return self._runners[key]

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``{tensor name: float array}`` for the requested tensors on one feed."""
        if self.engine == "tf":
            import qatir

            return {k: np.asarray(v) for k, v in qatir.run(self.graph, dict(feed)).items()}
        batch = None
        if self._dynamic_batch():
            batch = int(np.shape(feed[self.graph.inputs[0].name])[0])
        try:
            values = self._runner(batch).run({t.name: feed[t.name] for t in self.graph.inputs})
        except (RuntimeError, ValueError) as e:
            raise QatirError(f"LiteRT failed to run the float graph {self.graph.name!r}: "
                             f"{e}") from e
        return {t.name: v for t, v in zip(self.graph.outputs, values)}


@dataclass
class Evaluation:
    """SQNR (dB) against float, per graph output and over all outputs together."""

    samples: int
    outputs: list[str]
    int8_db: dict[str, float] = field(default_factory=dict)
    int8_all_db: float | None = None
    reference_db: float | None = None  # the integer reference on the first samples
    reference_samples: int = 0
    reference_max_lsb: int | None = None  # LiteRT vs the integer reference, in int8 steps
    fake_quant_db: float | None = None  # only with fake_quant=True (TensorFlow)
    float_engine: str = "litert"
    fallback: str | None = None  # why the float graph ran in TensorFlow


def _flat(rows: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    return np.concatenate([np.ravel(a) for row in rows for a in row])


def evaluate(quantized: Graph, buf: bytes, samples: Sequence[Mapping[str, np.ndarray]],
             fake_quant: bool = False, reference_samples: int = 1,
             engine: str = "auto") -> Evaluation | None:
    """The int8 file ``buf`` (written from ``quantized``) against float on ``samples``.

    Samples are float feeds of batch 1 by graph input name; None when there are none.
    """
    if not samples:
        return None
    names = [t.name for t in quantized.outputs]
    floats = FloatRun(strip_fake_quant(quantized), engine=engine)
    ref = [[floats.run(feed)[t.name] for t in floats.graph.outputs] for feed in samples]
    int8 = run_litert(buf, samples)
    ev = Evaluation(len(samples), names, float_engine=floats.engine, fallback=floats.fallback)
    ev.int8_db = {n: sqnr_db(_flat([r[i]] for r in ref), _flat([o[i]] for o in int8))
                  for i, n in enumerate(names)}
    ev.int8_all_db = sqnr_db(_flat(ref), _flat(int8))
    k = min(reference_samples, len(samples))
    if k:
        deq, lsb = _reference(quantized, samples[:k], int8[:k])
        ev.reference_db, ev.reference_samples, ev.reference_max_lsb = \
            sqnr_db(_flat(ref[:k]), _flat(deq)), k, lsb
    if fake_quant:
        import qatir

        fq = [[np.asarray(qatir.run(quantized, feed)[n]) for n in names] for feed in samples]
        ev.fake_quant_db = sqnr_db(_flat(ref), _flat(fq))
    return ev


def _reference(quantized: Graph, samples: Sequence[Mapping[str, np.ndarray]],
               litert: Sequence[Sequence[np.ndarray]]) -> tuple[list[list[np.ndarray]], int]:
    """Dequantized integer-reference outputs (XNNPACK mode, as LiteRT's default kernels),
    and their largest difference from LiteRT's, in int8 steps."""
    from qatir.lower import lower
    from qatir.reference import run_lowered

    lowered = lower(quantized, io="int8")
    out, lsb = [], 0
    for feed, got in zip(samples, litert):
        q_feed = {t.name: quantize_float(t, feed[t.name]) for t in lowered.inputs}
        ints = run_lowered(lowered, q_feed, kernels="xnnpack")
        row = []
        for t, lrt in zip(lowered.outputs, got):
            if t.quant is None:  # a float island's output: float32 already, no LSB
                row.append(np.asarray(ints[t.name], np.float32))
                continue
            s, z = np.float32(t.quant.scale[0]), int(t.quant.zero_point[0])
            row.append((ints[t.name].astype(np.float32) - z) * s)
            diff = np.abs(np.asarray(lrt, np.float64) - row[-1]) / float(s)
            lsb = max(lsb, int(np.rint(diff.max())) if diff.size else 0)
        out.append(row)
    return out, lsb


def quantize_float(t, x: np.ndarray) -> np.ndarray:
    """A float feed as the int8 (or int16) input ``t`` of a lowered graph (rounded half
    away); a float input (read only by a float island) is passed as float32."""
    from qatir.reference_math import round_half_away

    if t.quant is None:
        return np.asarray(x, np.float32)
    s, z = np.float32(t.quant.scale[0]), int(t.quant.zero_point[0])
    q = round_half_away(np.asarray(x, np.float32) / s) + z
    info = np.iinfo(t.dtype)
    return np.clip(q, info.min, info.max).astype(t.dtype)

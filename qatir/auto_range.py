"""Quantizer ``auto``: each range's rule chosen by the int8 model's held-out output error.

Neither range rule wins everywhere on the corpus: ``minmax`` (the overall extremes)
loses to ``ema`` (ai-edge-quantizer's moving average of per-sample extremes) where a
few samples carry outliers, and ``ema`` loses where the extremes matter (MixNet,
PP-OCRv4 rec, README). ``auto`` measures instead of guessing. In the one calibration
pass every candidate rule (option ``candidates``, default ``minmax`` and ``ema``)
observes every ``auto`` range three times: on all batches, on the even and on the odd ones. The first
``held_out`` (default 4) batches of each parity are kept in memory, the only data
calibration holds. Then:

1. each candidate, applied to every ``auto`` range, sets the ranges from the even
   batches; the int8 file (LiteRT, float edges) is scored by its output squared error
   against the float graph on the kept odd batches (data its ranges never saw) and,
   with ``folds = 2`` (the default), the other way round, the two errors summed;
2. greedy per tensor: for the ``refine`` (default 4) ranges where the candidates'
   widths differ most, the other candidates' rules are tried on that range alone and
   kept when they lower the held-out error;
3. the chosen rule of each range sets it from its state on *all* batches.

The squared error over all outputs joined is what an SQNR of the joined outputs
ranks by. Cost: ``folds`` int8 exports and ``folds * held_out`` LiteRT runs per scored
assignment (``len(candidates) + refine`` of them), plus one float run per kept batch.
With fewer than two batches, or a graph LiteRT cannot run in int8, the first candidate
is taken.
The choice is written to ``graph.metadata["auto_ranges"]`` (FAKE_QUANT name -> rule)
and the held-out errors to ``graph.metadata["auto_range_errors"]``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from qatir.errors import QatirError
from qatir.ir import Graph, Node
from qatir.metrics import squared_error
from qatir.quantizers import Quantizer, get_quantizer, include_zero

log = logging.getLogger(__name__)

Key = tuple[int, int]


class AutoRanges:
    """The candidates' states of the ``auto`` ranges during one calibration pass."""

    def __init__(self, auto: Quantizer, opts: dict[str, dict]):
        names = list(auto.options.get("candidates", ("minmax", "ema")))
        if not names or "auto" in names:
            raise QatirError(f"quantizer 'auto': candidates must name other quantizers, "
                             f"got {names!r}")
        self.names = names
        self.candidates = [get_quantizer(n)(**opts.get(n, {})) for n in names]
        self.held_out = int(auto.options.get("held_out", 4))
        self.refine = int(auto.options.get("refine", 4))
        self.folds = int(auto.options.get("folds", 2))
        if self.folds not in (1, 2):
            raise QatirError(f"quantizer 'auto': folds must be 1 or 2, got {self.folds!r}")
        #: (range, candidate, parity of the batch index) -> state; parity None: all batches
        self.states: dict[tuple[Key, int, int | None], dict] = {}
        self.held: list[list[tuple[np.ndarray, ...]]] = [[], []]

    def needs_rows(self) -> bool:
        return any(c.needs_rows() for c in self.candidates)

    def part(self, index: int, xs: tuple[np.ndarray, ...]) -> int:
        """The parity of batch ``index``; the first ``held_out`` batches of each scored
        parity (odd; even too with two folds) are kept for scoring."""
        p = index % 2
        if (p == 1 or self.folds == 2) and len(self.held[p]) < self.held_out:
            self.held[p].append(tuple(np.array(x) for x in xs))
        return p

    def observe(self, observe: Callable[[Quantizer, dict, Any, Node, np.ndarray], None],
                key: Key, node: Node, value: np.ndarray, part: int) -> None:
        """Hand one captured value to every candidate: its all-batch and its parity state."""
        for k, q in enumerate(self.candidates):
            observe(q, self.states, (key, k, None), node, value)
            observe(q, self.states, (key, k, part), node, value)

    def ranges(self, key: Key, k: int, part: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Candidate ``k``'s range for ``key`` from the batches of parity ``part`` (all
        batches when None, or when no batch of that parity reached the range)."""
        state = self.states.get((key, k, part)) or self.states[(key, k, None)]
        return include_zero(*self.candidates[k].compute_range(state))

    def choose(self, graph: Graph, groups: dict[Key, list[Node]],
               apply: Callable[[dict[Key, tuple[np.ndarray, np.ndarray]]], None]) -> dict[Key, int]:
        """The candidate index per ``auto`` range (module doc); ``apply`` sets ranges."""
        keys = [k for k in groups if (k, 0, None) in self.states]
        choice = {k: 0 for k in keys}
        graph.metadata["auto_range_errors"] = {}
        if len(self.candidates) < 2 or not self.held[1] or not keys:
            return choice
        try:
            score = _Scorer(graph, self.held)
            return self._search(graph, groups, keys, score, apply)
        except QatirError as e:
            log.info("calibrate: quantizer 'auto' on graph %r takes %r: %s", graph.name,
                     self.names[0], e)
            return choice

    def _search(self, graph: Graph, groups: dict[Key, list[Node]], keys: list[Key],
                score: _Scorer, apply: Callable) -> dict[Key, int]:
        errors: dict[str, float] = {}

        def error(assign: dict[Key, int]) -> float:
            total = 0.0
            for p in (1, 0) if self.held[0] else (1,):  # score parity p, ranges from 1 - p
                apply({k: self.ranges(k, c, 1 - p) for k, c in assign.items()})
                total += score(graph, p)
            return total

        best, best_err = {}, None
        for c, name in enumerate(self.names):
            assign = {k: c for k in keys}
            errors[name] = e = error(assign)
            if best_err is None or e < best_err:
                best, best_err = assign, e
        for key in self._most_different(keys)[:self.refine]:
            for c in range(len(self.names)):
                if c == best[key]:
                    continue
                trial = {**best, key: c}
                e = error(trial)
                errors[f"{groups[key][0].name}={self.names[c]}"] = e
                if e < best_err:
                    best, best_err = trial, e
        graph.metadata["auto_range_errors"] = errors
        return best

    def _most_different(self, keys: list[Key]) -> list[Key]:
        """The ranges by how much the candidates' widths differ (log ratio), largest first."""
        def spread(key: Key) -> float:
            widths = []
            for c in range(len(self.candidates)):
                lo, hi = self.ranges(key, c)
                widths.append(float(np.max(hi - lo)))
            w = np.maximum(np.array(widths), 1e-12)
            return float(np.log(w.max() / w.min()))

        spreads = {k: spread(k) for k in keys}
        return sorted((k for k in keys if spreads[k] > 1e-6), key=lambda k: -spreads[k])


class _Scorer:
    """Output squared error of the graph's int8 file on the held-out batches of a parity."""

    def __init__(self, graph: Graph, held: list[list[tuple[np.ndarray, ...]]]):
        from qatir.evaluate import FloatRun, strip_fake_quant

        run = FloatRun(strip_fake_quant(graph), engine="litert")
        self.feeds = [[{t.name: x for t, x in zip(graph.inputs, xs)} for xs in part]
                      for part in held]
        self.want = [[[np.asarray(run.run(f)[t.name], np.float64) for t in run.graph.outputs]
                      for f in part] for part in self.feeds]

    def __call__(self, graph: Graph, part: int) -> float:
        from qatir.calibration import refresh_weight_ranges
        from qatir.litert_run import LiteRTRunner
        from qatir.quant import refresh_quant
        from qatir.tflite_writer import to_tflite

        refresh_weight_ranges(graph)
        refresh_quant(graph)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                runner = LiteRTRunner(to_tflite(graph, io="float"))
            except (QatirError, RuntimeError, ValueError) as e:
                raise QatirError(f"quantizer 'auto': graph {graph.name!r} has no int8 "
                                 f"LiteRT file to score: {e}") from e
        total = 0.0
        for feed, want in zip(self.feeds[part], self.want[part]):
            got = runner.run(feed)
            total += squared_error(got, want)
        return total

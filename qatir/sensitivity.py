"""Sensitivity analysis: which nodes cost accuracy in int8, and a table that fixes them.

``analyze(graph, calib)`` quantizes and calibrates ``graph`` once, then runs its
fake-quant TF execution with every FAKE_QUANT *gated*: ``y = x + g8·(fq8(x) − x) +
g16·(fq16(x) − x)``, the gates inputs of the call, so one traced program evaluates
every configuration without retracing, many configurations × all batches per call
(:mod:`qatir.tf.gated`). A *unit* is a quantized compute node with the
FAKE_QUANTs it owns (its weights' and its outputs'); a graph input's FAKE_QUANT is a unit
of its own. Per unit it measures the output SQNR (against the float run) when

- only that unit is quantized (``sqnr_db``; low = sensitive),
- every unit but it is quantized, it kept float (``sqnr_float_db``),
- every unit is int8 but it int16 (``sqnr_int16_db``; 16-bit activations, int8 weights,
  for ops with a 16x8 kernel, :mod:`qatir.int16`, and for graph inputs).

Rows are ranked by ``sqnr_db``, lowest first. :meth:`Report.suggest` picks the units
to take out of int8 greedily by SQNR gain per MAC (int16 where the op has a 16x8 kernel
and it recovers most of the float gain, else a float island), until the gated estimate
reaches the target plus a margin, then checks the real table (quantize + calibrate +
fake-quant run, or the exported file in LiteRT) and adds units until that reaches it too.
A graph input whose int8 quantization alone leaves the output too little headroom over the
target goes int16 first (with its readers). The table it returns is the input table plus
``[[int16]]`` and ``[[exclude]]`` entries naming those nodes (and an ``[[int16]]`` entry
whose ``inputs`` names those graph inputs).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from qatir.errors import QatirError
from qatir.int16 import has_int16
from qatir.ir import Graph, Node

#: int16 is chosen over a float island when it recovers this share of the float gain.
INT16_GAIN_SHARE = 0.8
#: a unit whose float run gains less than this is not also run in int16 (its int16 SQNR is
#: reported as its float one: int16 lies between int8 and float)
MIN_GAIN_DB = 0.05


@dataclass
class Row:
    """One unit of the analysis (SQNR in dB against the float run, MACs of the node)."""

    node: str
    op: str
    macs: int
    sqnr_db: float
    sqnr_float_db: float
    sqnr_int16_db: float | None

    @property
    def gain_float_db(self) -> float:
        return self.sqnr_float_db - self._base

    @property
    def gain_int16_db(self) -> float | None:
        return None if self.sqnr_int16_db is None else self.sqnr_int16_db - self._base

    _base: float = field(default=0.0, repr=False)


def sqnr_db(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    """10·log10(Σ ref² / Σ (ref − got)²) over all outputs and batches (inf when exact)."""
    sig = sum(float(np.sum(np.square(r.astype(np.float64)))) for r in ref)
    err = sum(float(np.sum(np.square(r.astype(np.float64) - g.astype(np.float64))))
              for r, g in zip(ref, got))
    if err == 0.0:
        return math.inf
    return 10.0 * math.log10(max(sig, 1e-30) / err)


def sqnrs(gated: Any, configs: list[tuple[np.ndarray, np.ndarray]],
          ref: list[np.ndarray] | None = None) -> list[float]:
    """The output SQNR against ``ref`` (default: the gated program's float run) of each
    (g8, g16) configuration of ``gated`` (a :class:`qatir.tf.gated.Gated`), in batches."""
    ref = gated.ref if ref is None else ref
    out: list[float] = []
    gated.run_many(configs, lambda got: out.append(sqnr_db(ref, got)))
    return out


def float_ref(graph: Graph, q: Graph, feeds: list[Mapping[str, np.ndarray]]
              ) -> list[np.ndarray] | None:
    """The float graph's outputs on ``feeds`` (in the gated program's order) where ``q``'s
    calibration corrected biases or rounded weights by GPTQ: the gated program's own float
    run (every gate 0) keeps those biases and weights, so it is not the float model. None
    where it is."""
    if not q.metadata.get("bias_corrections") and not q.metadata.get("weight_rounding_done"):
        return None
    import qatir

    out: list[np.ndarray] = []
    for f in feeds:
        ys = qatir.run(graph, f)
        out.extend(np.asarray(ys[t.name]) for t in graph.outputs)
    return out


def _units(q: Graph) -> list[tuple[Node | None, str, list[Node]]]:
    """(compute node or None for a graph input, name, the FAKE_QUANTs it owns)."""
    out = []
    for t in q.inputs:
        fqs = [u for u in t.users if u.op == "FAKE_QUANT"]
        if fqs:
            out.append((None, t.name, fqs))
    floats = set(q.metadata.get("float_nodes") or ())
    for node in q.nodes:
        if node.op == "FAKE_QUANT" or node.name in floats:
            continue
        own = [t.producer for t in node.inputs if t is not None and t.producer is not None
               and t.producer.op == "FAKE_QUANT" and t.producer.attrs.get("kind") == "weight"]
        for o in node.outputs:
            own += [u for u in o.users if u.op == "FAKE_QUANT" and u.inputs[0] is o]
        if own:
            out.append((node, node.name, list(dict.fromkeys(own))))
    return out


@dataclass
class Report:
    """The result of :func:`analyze`: ranked rows and what :meth:`suggest` needs."""

    rows: list[Row]
    full_int8_sqnr_db: float
    seconds: float
    evaluations: int
    graph: Graph = field(repr=False)
    table: Any = field(repr=False)
    calib: list[Mapping[str, np.ndarray]] = field(repr=False)
    gated: Any = field(repr=False)  # qatir.tf.gated.Gated
    units: list[tuple[Node | None, str, list[Node]]] = field(repr=False)
    #: set by :meth:`suggest`: a :class:`qatir.recipes.Suggestion`
    suggestion: Any = field(default=None, repr=False)
    #: seconds by step: "quantize" (quantize + calibrate), "build" (the gated program, its
    #: first calls), "evaluate"; and the samples one call evaluates at most ("batch")
    timing: dict[str, float] = field(default_factory=dict, repr=False)
    #: the float outputs SQNRs are measured against where the gated program's own float run
    #: is not the float model (:func:`float_ref`); None: ``gated.ref``
    ref: list[np.ndarray] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for r in self.rows:
            d = {k: v for k, v in asdict(r).items() if not k.startswith("_")}
            d["gain_float_db"] = r.gain_float_db
            d["gain_int16_db"] = r.gain_int16_db
            rows.append({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                         for k, v in d.items()})
        return {"graph": self.graph.name, "full_int8_sqnr_db": _finite(self.full_int8_sqnr_db),
                "seconds": self.seconds, "evaluations": self.evaluations, "rows": rows}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format_text(self, top: int | None = None) -> str:
        """A ranked table: most sensitive first."""
        lines = [f"graph {self.graph.name!r}: full int8 SQNR {self.full_int8_sqnr_db:.2f} dB; "
                 f"{len(self.rows)} units, {self.evaluations} evaluations in {self.seconds:.1f} s",
                 f"{'rank':>4}  {'node':<32} {'op':<18} {'MACs':>11} {'only q':>8} "
                 f"{'float':>8} {'int16':>8}"]
        for i, r in enumerate(self.rows[:top] if top else self.rows):
            i16 = "-" if r.sqnr_int16_db is None else f"{r.sqnr_int16_db:8.2f}"
            lines.append(f"{i + 1:>4}  {r.node[:32]:<32} {r.op:<18} {r.macs:>11} "
                         f"{r.sqnr_db:8.2f} {r.sqnr_float_db:8.2f} {i16:>8}")
        return "\n".join(lines)

    def suggest(self, target_sqnr: float, *, allow_int16: bool = True,
                allow_float: bool = True, margin_db: float | None = None,
                check: str = "fake_quant", int16_inputs: bool = True) -> dict[str, Any]:
        """A pattern table (plain data) reaching ``target_sqnr`` dB with the fewest MACs out
        of int8, its checks aiming ``margin_db`` dB above (default
        :data:`qatir.recipes.MARGIN_DB`) on the fake-quant run or, ``check="file"``, on the
        exported file; ``int16_inputs=False`` keeps the graph inputs int8 (the file's
        interface); :attr:`suggestion` reports what it chose (see :mod:`qatir.recipes`)."""
        from qatir.recipes import MARGIN_DB, suggest_table

        return suggest_table(self, float(target_sqnr), allow_int16, allow_float,
                             MARGIN_DB if margin_db is None else float(margin_db), check,
                             int16_inputs)


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def analyze(graph: Graph, calib: Iterable[Mapping[str, np.ndarray]], *, table: Any = None,
            max_batches: int = 4, int16: bool = True) -> Report:
    """Per-unit sensitivity of ``graph`` (a float graph) under ``table`` (see the module
    docstring); ``calib`` batches calibrate it, the first ``max_batches`` are evaluated."""
    import qatir
    from qatir.lowering.islands import node_macs
    from qatir.ops import has_op
    from qatir.tf.gated import Gated

    if any(n.op == "FAKE_QUANT" for n in graph.nodes):
        raise QatirError(f"analyze: graph {graph.name!r} is already quantized; give the float "
                         "graph (analyze quantizes it with the table)")
    start = time.perf_counter()
    feeds = list(itertools.islice(iter(calib), max(1, max_batches)))
    if not feeds:
        raise QatirError(f"analyze: no calibration batches given for graph {graph.name!r}")
    from qatir.table import load_table

    tab = load_table(table)
    q = qatir.quantize(graph, table=tab)
    qatir.calibrate(q, feeds)
    t_quant = time.perf_counter()
    gated = Gated(q, feeds)
    _ = gated.ref  # traces and runs the program: part of building it
    t_build = time.perf_counter()
    units = _units(q)
    n = len(gated.fqs)
    zeros, ones = np.zeros(n, np.float32), np.ones(n, np.float32)
    owned = [[gated.index[id(f)] for f in fqs] for _, _, fqs in units]
    configs = [(ones, zeros)]
    for idx in owned:
        only, kept = zeros.copy(), ones.copy()
        only[idx], kept[idx] = 1.0, 0.0
        configs += [(only, zeros), (kept, zeros)]
    ref = float_ref(graph, q, feeds)
    full, *pairs = sqnrs(gated, configs, ref)
    s_only, s_float = pairs[0::2], pairs[1::2]
    wide, s16 = [], [None] * len(units)
    for u, ((node, _, fqs), sf) in enumerate(zip(units, s_float)):
        if not (int16 and (node is None or (has_op(node.op) and has_int16(node.op)))):
            continue  # a graph input (node None) can be int16: an [[int16]] entry's inputs
        if sf - full < MIN_GAIN_DB:
            s16[u] = sf  # kept float does not help: int16 cannot
            continue
        acts = [gated.index[id(f)] for f in fqs if f.attrs.get("kind") == "activation"]
        g8, g16 = ones.copy(), zeros.copy()
        g8[acts], g16[acts] = 0.0, 1.0
        wide.append((u, (g8, g16)))
    for (u, _), v in zip(wide, sqnrs(gated, [c for _, c in wide], ref)):
        s16[u] = v
    rows: list[Row] = []
    for (node, name, _), so, sf, v in zip(units, s_only, s_float, s16):
        macs = node_macs(node) if node is not None else 0
        rows.append(Row(name, node.op if node is not None else "INPUT", int(macs), so, sf, v,
                        _base=full))
    rows.sort(key=lambda r: (r.sqnr_db, r.node))
    end = time.perf_counter()
    timing = {"quantize": t_quant - start, "build": t_build - t_quant, "evaluate": end - t_build,
              "batch": float(gated.batch * len(feeds))}
    return Report(rows, full, end - start, gated.calls, graph, tab, feeds, gated, units,
                  timing=timing, ref=ref)


def name_regex(names: Iterable[str]) -> str:
    """One anchored regex matching exactly ``names``."""
    return "^(?:" + "|".join(re.escape(n) for n in sorted(names)) + ")$"

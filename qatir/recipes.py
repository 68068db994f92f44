"""Recipes from a sensitivity analysis: the table that reaches a target SQNR with the fewest
MACs out of int8 (:meth:`qatir.sensitivity.Report.suggest`), and a TOML writer for tables.

Greedy, by the analysis' SQNR gain per MAC: each unit is taken out of int8 as int16 (its
op has a 16x8 kernel and int16 recovers :data:`~qatir.sensitivity.INT16_GAIN_SHARE` of the
float gain, or comes within :data:`FLOAT_MARGIN_DB` of it) or as a float island; units the
analysis sees no gain in come after the others (int16 first, most sensitive first). A graph
input is a unit too, int16 or int8 only (its int16 form is the file's interface with
``io="int8"``, a QUANTIZE into int16 with float edges): one whose int8 quantization alone
(its ``sqnr_db``) leaves less than :data:`INPUT_HEADROOM_DB` over the goal comes first, with
its readers (no recipe that keeps it int8 gets far past that cap), the others last, taken
only when nothing else reaches the goal. Units are added while the gated estimate stays
below the target; the table is then built and checked for real (quantize, calibrate, fake-quant run
against the float run). The gated estimate is optimistic where a unit's output is read by
int8 nodes (they quantize it again on their input), so when the real SQNR falls short the
picks' readers follow them first (int16 where they can, else float), then further units
are added, a quarter more each check, until the real SQNR reaches the target or none are
left (at most :data:`MAX_CHECKS` checks; the last one takes every unit worth taking).
When that still falls short, one more check each turns ``calibration.weight_rounding =
"gptq"`` and then ``calibration.bias_correction`` on, each kept if it measures better (16x8
keeps int8 weights: their error is what int16 activations leave; :data:`WEIGHT_FIXES`).
When even that falls short and float islands are allowed, the units whose int8 weights
cost most output noise per MAC in that table (:func:`weight_costs`) become float islands,
as many as the measured shares say reach the goal, a quarter more per check after that
(:func:`_float_weights`).

The checks aim at the target plus a margin (:data:`MARGIN_DB`): what is checked is the
calibration samples, what is deployed meets others. ``check="file"`` checks the exported
file itself (float edges, LiteRT's default resolver) instead of the fake-quant run: slower
(an export and a LiteRT run per check), and what the file computes. Measured with
``tools/bench_sensitivity.py``: EfficientNetV2-S's suggestion gave 30.29 dB in the
fake-quant run on the calibration samples and 29.39 dB in the file on held-out ones.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: real checks :func:`suggest_table` runs at most before it stops adding units one by one
MAX_CHECKS = 12
#: a float island is chosen over int16 only when it gains this much more (dB)
FLOAT_MARGIN_DB = 1.0
#: dB above the target the checks aim at by default (see the module docstring)
MARGIN_DB = 0.5
#: what :func:`suggest_table` checks a table on: the fake-quant run or the exported file
CHECKS = ("fake_quant", "file")
#: a graph input goes int16 first when its int8 quantization alone leaves less than this
#: above the goal (dB): it then takes at least half the noise the goal allows
INPUT_HEADROOM_DB = 3.0


@dataclass
class Suggestion:
    """What :func:`suggest_table` chose and what it measured."""

    target_sqnr_db: float
    sqnr_db: float
    estimated_sqnr_db: float
    int16: list[str] = field(default_factory=list)
    float: list[str] = field(default_factory=list)
    #: graph inputs put in int16 (the file's interface with ``io="int8"``; 0 MACs)
    inputs: list[str] = field(default_factory=list)
    int8_mac_share: float = 1.0
    int8_or_int16_mac_share: float = 1.0
    reached: bool = False
    checks: int = 0
    #: what ``sqnr_db`` was measured on (:data:`CHECKS`) and the margin the checks aimed at
    check: str = "fake_quant"
    margin_db: float = 0.0
    #: the table turns ``calibration.bias_correction`` on (tried when the rest fell short)
    bias_correction: bool = False
    #: the table's ``calibration.weight_rounding`` (``"gptq"`` tried when the rest fell short)
    weight_rounding: str = "nearest"
    #: units made float islands for their int8 weights' cost (also in ``float``; tried last)
    float_weights: list[str] = field(default_factory=list)

    def format_text(self) -> str:
        state = "reached" if self.reached else "NOT reached"
        on = "the exported file" if self.check == "file" else "the fake-quant run"
        return (f"target {self.target_sqnr_db:g} dB {state} (checked on {on}, aiming "
                f"{self.margin_db:g} dB above): SQNR {self.sqnr_db:.2f} dB "
                f"(estimate {self.estimated_sqnr_db:.2f}); int8 keeps "
                f"{100 * self.int8_mac_share:.1f}% of MACs, int8 or int16 "
                f"{100 * self.int8_or_int16_mac_share:.1f}%; int16: {self.int16 or 'none'}; "
                f"float: {self.float or 'none'}; int16 graph inputs: {self.inputs or 'none'}"
                + ("; GPTQ weight rounding" if self.weight_rounding == "gptq" else "")
                + (f"; float for their weights: {self.float_weights}"
                   if self.float_weights else "")
                + ("; bias correction on" if self.bias_correction else ""))


def _choice(row, allow_int16: bool, allow_float: bool) -> tuple[str, float] | None:
    from qatir.sensitivity import INT16_GAIN_SHARE

    g16, gf = row.gain_int16_db, row.gain_float_db
    # int16 keeps the MACs integer: a float island only where it gains clearly more
    close = g16 is not None and (g16 >= INT16_GAIN_SHARE * gf or gf - g16 < FLOAT_MARGIN_DB)
    if allow_int16 and g16 is not None and (not allow_float or close):
        return "int16", g16
    if allow_float:
        return "float", gf
    return None


def _order(rep, allow_int16: bool, allow_float: bool, goal: float = math.inf,
           int16_inputs: bool = True) -> list[tuple[Any, str, float]]:
    """(row, mode, gain) of every unit that can leave int8: the graph inputs int8 would cap
    below the goal first (:func:`_needed_inputs`); then those the analysis says gain, best
    gain per MAC first; then the rest, most sensitive first (a model whose noise is spread
    over many layers gains little from any one of them, but from all of them); the other
    graph inputs last (the file's interface changes only where nothing else reaches it)."""
    first = _needed_inputs(rep, goal) if allow_int16 and int16_inputs else []
    taken = {r.node for r, _, _ in first}
    picks, rest, last = [], [], []
    for row in rep.rows:
        if row.node in taken:
            continue
        if row.op == "INPUT":  # int16 or int8: a float input would be a float interface
            if allow_int16 and int16_inputs and row.gain_int16_db is not None:
                last.append((row, "int16", row.gain_int16_db))
            continue
        c = _choice(row, allow_int16, allow_float)
        if c is not None and c[1] > 0:
            picks.append((row, c[0], c[1]))
        elif allow_int16 and row.gain_int16_db is not None:
            rest.append((row, "int16", row.gain_int16_db))
        elif allow_float:
            rest.append((row, "float", row.gain_float_db))
    picks.sort(key=lambda p: (-p[2] / (p[0].macs + 1), p[0].node))
    # int16 before float islands, cheap float islands before costly ones
    rest.sort(key=lambda p: (p[1] == "float", p[0].macs if p[1] == "float" else 0,
                             p[0].sqnr_db, p[0].node))
    return first + picks + rest + last


def _needed_inputs(rep, goal: float) -> list[tuple[Any, str, float]]:
    """The graph inputs whose int8 quantization alone (``sqnr_db``: only it quantized)
    leaves less than :data:`INPUT_HEADROOM_DB` above ``goal``, as int16, each followed by
    its readers that have a 16x8 kernel (an int8 reader requantizes an int16 input to int8,
    and the input gains nothing there)."""
    from qatir.int16 import has_int16
    from qatir.ops import has_op

    rows = {r.node: r for r in rep.rows}
    out: list[tuple[Any, str, float]] = []
    seen: set[str] = set()
    for row in rep.rows:
        if row.op != "INPUT" or row.gain_int16_db is None \
                or row.sqnr_db >= goal + INPUT_HEADROOM_DB:
            continue
        out.append((row, "int16", row.gain_int16_db))
        seen.add(row.node)
        for u in _readers(rep.gated.q, row.node):
            if u.name in rows and u.name not in seen and has_op(u.op) and has_int16(u.op):
                seen.add(u.name)
                out.append((rows[u.name], "int16", 0.0))
    return out


def _config(rep, chosen: list[tuple[Any, str, float]]) -> tuple[np.ndarray, np.ndarray]:
    """The gates of ``chosen`` taken out of int8 (every other unit int8)."""
    gated = rep.gated
    n = len(gated.fqs)
    g8, g16 = np.ones(n, np.float32), np.zeros(n, np.float32)
    owned = {name: fqs for _, name, fqs in rep.units}
    for row, mode, _ in chosen:
        for f in owned[row.node]:
            i = gated.index[id(f)]
            if mode == "float":
                g8[i] = 0.0
            elif f.attrs.get("kind") == "activation":  # int16: 16-bit activations, int8 weights
                g8[i], g16[i] = 0.0, 1.0
    return g8, g16


def _first_reaching(rep, order: list[tuple[Any, str, float]], target: float
                    ) -> tuple[int, float]:
    """The shortest prefix of ``order`` whose gated estimate reaches ``target`` (or all of
    it) and that estimate; prefixes are evaluated a batch at a time."""
    from qatir.sensitivity import sqnrs

    k, est = 0, rep.full_int8_sqnr_db
    step = max(1, rep.gated.batch)
    while est < target and k < len(order):
        ks = list(range(k + 1, min(len(order), k + step) + 1))
        for j, e in zip(ks, sqnrs(rep.gated, [_config(rep, order[:j]) for j in ks], rep.ref)):
            k, est = j, e
            if e >= target:
                break
    return k, est


def table_with(base: dict[str, Any], int16: list[str], floats: list[str],
               inputs: list[str] = ()) -> dict[str, Any]:
    """``base`` plus an ``[[int16]]`` entry naming ``int16`` (and one whose ``inputs`` names
    the graph inputs ``inputs``) and an ``[[exclude]]`` entry naming ``floats`` (exact
    names)."""
    from qatir.sensitivity import name_regex

    data = json.loads(json.dumps(base))  # a deep copy of plain data
    if int16:
        data["int16"] = [*data.get("int16", []), {"name": name_regex(int16)}]
    if inputs:
        data["int16"] = [*data.get("int16", []), {"inputs": name_regex(inputs)}]
    if floats:
        data["exclude"] = [*data.get("exclude", []), {"name": name_regex(floats)}]
    return data


def real_sqnr(graph, table: dict[str, Any], feeds: list) -> float:
    """SQNR of the fake-quant run of ``graph`` quantized with ``table`` against its float run."""
    import qatir
    from qatir.sensitivity import sqnr_db

    q = qatir.quantize(graph, table=table)
    qatir.calibrate(q, feeds)
    ref, got = [], []
    for f in feeds:
        ref.extend(qatir.run(graph, f).values())
        got.extend(qatir.run(q, f).values())
    return sqnr_db(ref, got)


def file_sqnr(graph, table: dict[str, Any], calib: list, evals: list | None = None) -> float:
    """SQNR against the float run of the file (float edges, LiteRT's default resolver) of
    ``graph`` quantized with ``table`` and calibrated on ``calib``, run on ``evals``
    (default: ``calib``)."""
    import warnings

    import qatir
    from qatir.litert_run import LiteRTRunner
    from qatir.sensitivity import sqnr_db

    q = qatir.quantize(graph, table=table)
    qatir.calibrate(q, calib, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the float-island warning: the table asks for them
        buf = qatir.to_tflite(q, io="float")
    runner = LiteRTRunner(buf)
    names = [d["name"] for d in runner.outputs]
    ref, got = [], []
    for f in calib if evals is None else evals:
        want = qatir.run(graph, f)
        ys = runner.run(f)
        outs = dict(zip(names, ys))
        if not all(t.name in outs for t in graph.outputs):  # the file renamed them: by order
            outs = dict(zip([t.name for t in graph.outputs], ys))
        for t in graph.outputs:
            ref.append(np.asarray(want[t.name]))
            got.append(np.asarray(outs[t.name]).reshape(np.shape(want[t.name])))
    return sqnr_db(ref, got)


def _shares(rep, int16: list[str], floats: list[str]) -> tuple[float, float]:
    from qatir.lowering.islands import node_macs

    macs = {n.name: node_macs(n) for n in rep.gated.q.nodes if n.op != "FAKE_QUANT"}
    total = sum(macs.values()) or 1
    m16 = sum(macs.get(n, 0) for n in int16)
    mf = sum(macs.get(n, 0) for n in floats)
    return 1.0 - (m16 + mf) / total, 1.0 - mf / total


_GRID_OPS = frozenset({"RESHAPE", "MAX_POOL_2D", "SQUEEZE", "PAD"})


def _readers(q, name: str) -> list:
    """Compute nodes reading ``name``'s output, or the graph input ``name`` (through
    FAKE_QUANTs and grid-preserving ops, which are returned too)."""
    node = next((n for n in q.nodes if n.name == name), None)
    out: list = []
    todo = list(node.outputs) if node is not None else [t for t in q.inputs if t.name == name]
    seen: set[int] = set()
    while todo:
        t = todo.pop()
        for u in t.users:
            if id(u) in seen:
                continue
            seen.add(id(u))
            if u.op == "FAKE_QUANT" or u.op in _GRID_OPS:
                todo.extend(u.outputs)
            if u.op != "FAKE_QUANT":
                out.append(u)
    return out


def _close(rep, chosen: list[tuple[Any, str, float]], allow_int16: bool
           ) -> list[tuple[Any, str, float]]:
    """``chosen`` plus the readers of each pick: a value taken out of int8 is still read in
    int8 by an int8 reader (its input FAKE_QUANT), so readers follow, as int16 where they
    have a 16x8 kernel (and int16 is allowed), else as float islands."""
    from qatir.int16 import has_int16
    from qatir.ops import has_op

    rows = {r.node: r for r in rep.rows}
    names = {r.node for r, _, _ in chosen}
    out = list(chosen)
    for row, _, _ in chosen:
        for u in _readers(rep.gated.q, row.node):
            if u.name in names or u.name not in rows:
                continue
            names.add(u.name)
            wide = allow_int16 and has_op(u.op) and has_int16(u.op)
            out.append((rows[u.name], "int16" if wide else "float", 0.0))
    return out


def _int16_followers(rep, int16: list[str], inputs: list[str] = ()) -> list[str]:
    """``int16`` plus the nodes that own no unit (a PAD or RESHAPE sharing its input's
    scale) reading an int16 node's output or an int16 graph input, where they have a 16x8
    kernel: left out, each would put an int8 requantize between two int16 nodes
    (EfficientNet-B0, every unit int16: 27.69 dB in the file; with its 5 PADs and 1 RESHAPE
    too: 30.61 dB)."""
    from qatir.int16 import has_int16
    from qatir.ops import has_op

    units = {r.node for r in rep.rows}
    wide = set(int16)
    out = list(int16)
    for node in rep.gated.q.nodes:
        if node.op == "FAKE_QUANT" or node.name in units or node.name in wide:
            continue
        if not (has_op(node.op) and has_int16(node.op)):
            continue
        t = next((t for t in node.inputs if t is not None and not t.is_const), None)
        while t is not None and t.producer is not None and t.producer.op == "FAKE_QUANT":
            t = t.producer.inputs[0]
        if t is None:
            continue
        if (t.producer.name in wide) if t.producer is not None else (t.name in inputs):
            wide.add(node.name)
            out.append(node.name)
    return out


def suggest_table(rep, target: float, allow_int16: bool = True, allow_float: bool = True,
                  margin_db: float = MARGIN_DB, check: str = "fake_quant",
                  int16_inputs: bool = True) -> dict[str, Any]:
    """See the module docstring; ``rep.suggestion`` holds the :class:`Suggestion`."""
    from qatir.errors import QatirError

    if check not in CHECKS:
        raise QatirError(f"suggest: check must be one of {CHECKS}, got {check!r}")
    if not margin_db >= 0:
        raise QatirError(f"suggest: margin_db must be >= 0, got {margin_db!r}")
    measure = file_sqnr if check == "file" else real_sqnr
    base = dict(rep.table.data)
    goal = target + margin_db
    order = _order(rep, allow_int16, allow_float, goal, int16_inputs)
    k, est = _first_reaching(rep, order, goal)
    checks, real, closed = 0, -math.inf, False
    while True:
        chosen = _close(rep, order[:k], allow_int16) if closed else order[:k]
        ins = [r.node for r, _, _ in chosen if r.op == "INPUT"]
        i16 = _int16_followers(rep, [r.node for r, m, _ in chosen
                                     if m == "int16" and r.op != "INPUT"], ins)
        fl = [r.node for r, m, _ in chosen if m == "float"]
        data = table_with(base, i16, fl, ins)
        real = measure(rep.graph, data, rep.calib)
        checks += 1
        if real >= goal or checks >= MAX_CHECKS or (closed and k >= len(order)):
            break
        if not closed and k:  # first let the picks' readers follow them out of int8
            closed = True
            continue
        # then more units, a growing step at a time (the real check is the costly part)
        k = len(order) if checks == MAX_CHECKS - 1 else min(len(order), k + max(1, k // 4))
    taken: dict[str, Any] = {}
    for key, value in WEIGHT_FIXES:
        if real >= goal or base["calibration"].get(key, False) not in (False, "nearest"):
            continue
        data, real, kept = _with_calibration(rep, data, real, measure, key, value)
        checks += 1
        if kept:
            taken[key] = value
    by_weights: list[str] = []
    if real < goal and allow_float:
        data, real, by_weights, n = _float_weights(rep, base, data, real, measure, goal,
                                                   i16, fl, ins)
        checks += n
        i16 = [u for u in i16 if u not in by_weights]
        fl = fl + by_weights
    s8, s816 = _shares(rep, i16, fl)
    rep.suggestion = Suggestion(target, real, est if k else rep.full_int8_sqnr_db, i16, fl, ins,
                                s8, s816, real >= target, checks, check, margin_db,
                                "bias_correction" in taken,
                                taken.get("weight_rounding", "nearest"), by_weights)
    return data


#: checks :func:`_float_weights` runs at most
FLOAT_WEIGHT_CHECKS = 4


def weight_costs(rep, data: dict[str, Any]) -> list[tuple[str, float, int]]:
    """(unit, share of the output noise power its int8 weights cause, MACs) for each unit
    of ``rep`` with fake-quantized weights, in ``data``'s quantization of the graph (every
    other gate as the table has it; weights rounded to nearest, so that turning one
    weight gate off gives the float weights), largest share per MAC first; units whose
    weights cost nothing are left out. One gated program, one evaluation per unit."""
    import qatir
    from qatir.bias_correction import _weight_fq
    from qatir.lowering.islands import node_macs
    from qatir.sensitivity import float_ref, sqnrs
    from qatir.tf.gated import Gated

    plain = json.loads(json.dumps(data))
    plain["calibration"]["weight_rounding"] = "nearest"
    q = qatir.quantize(rep.graph, table=plain)
    qatir.calibrate(q, rep.calib, progress=False)
    gated = Gated(q, rep.calib)
    index = {id(f): i for i, f in enumerate(gated.fqs)}
    units = {r.node for r in rep.rows}
    nodes = [n for n in q.nodes if n.name in units and id(_weight_fq(n)) in index]
    on, off = np.ones(len(gated.fqs), np.float32), np.zeros(len(gated.fqs), np.float32)
    configs = [(on, off)]
    for n in nodes:
        gates = on.copy()
        gates[index[id(_weight_fq(n))]] = 0.0
        configs.append((gates, off))
    got = sqnrs(gated, configs, float_ref(rep.graph, q, rep.calib))
    power = 10.0 ** (-np.asarray(got) / 10.0)
    out = [(n.name, float((power[0] - p) / power[0]), int(node_macs(n)))
           for n, p in zip(nodes, power[1:]) if p < power[0]]
    return sorted(out, key=lambda r: -r[1] / max(r[2], 1))


def _float_weights(rep, base: dict[str, Any], data: dict[str, Any], real: float, measure,
                   goal: float, i16: list[str], fl: list[str], ins: list[str]
                   ) -> tuple[dict[str, Any], float, list[str], int]:
    """When every unit is out of int8 and the fixes are in, what is left is mostly the int8
    weights (16x8 keeps them): float islands for the units whose weights cost most per MAC
    (:func:`weight_costs`), as many as the measured SQNR scaled by their shares says reach
    ``goal``, then a quarter more per check (at most :data:`FLOAT_WEIGHT_CHECKS`). Returns
    (table, SQNR, the units made float, checks run); the table as it was when no check
    measured better. YOLOv8n: its stem's three convs hold a third of its weight noise at
    4 % of its MACs."""
    from qatir.errors import QatirError

    costs = [c for c in weight_costs(rep, data) if c[0] not in fl]
    if not costs:
        return data, real, [], 0
    cal = dict(data["calibration"])
    need = 1.0 - 10.0 ** (-(goal - real) / 10.0)  # the noise share to remove
    k, share = 0, 0.0
    while k < len(costs) and share < need:
        share += costs[k][1]
        k += 1
    best, checks = (data, real, []), 0
    while checks < FLOAT_WEIGHT_CHECKS:
        checks += 1
        names = [c[0] for c in costs[:k]]
        table = table_with({**base, "calibration": cal}, [u for u in i16 if u not in names],
                           fl + names, ins)
        try:
            got = measure(rep.graph, table, rep.calib)
        except QatirError:  # nothing left to quantize: not a recipe; one fewer, no more
            if k <= 1:
                break
            k -= 1
            costs = costs[:k]
            continue
        if got > best[1]:
            best = (table, got, names)
        if got >= goal or k >= len(costs):
            break
        k = min(len(costs), k + max(1, k // 4))
    return best[0], best[1], best[2], checks


#: what :func:`suggest_table` tries, in order, when the units fall short: what int16
#: activations leave is mostly the int8 weights' error (16x8 keeps int8 weights); GPTQ
#: rounding lowers it, bias correction takes out its mean (YOLOv8n, every unit and the
#: input int16: 26.63 -> 28.41 dB in the file with bias correction)
WEIGHT_FIXES = (("weight_rounding", "gptq"), ("bias_correction", True))


def _with_calibration(rep, data: dict[str, Any], real: float, measure, key: str, value: Any
                      ) -> tuple[dict[str, Any], float, bool]:
    """``data`` with ``calibration.<key> = value`` when that measures better, its SQNR, and
    whether it did."""
    fixed = json.loads(json.dumps(data))
    fixed["calibration"][key] = value
    got = measure(rep.graph, fixed, rep.calib)
    return (fixed, got, True) if got > real else (data, real, False)


# ------------------------------------------------------------------ TOML
_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _emit(data: dict[str, Any], path: list[str], out: list[str]) -> None:
    for k, v in data.items():
        if not isinstance(v, dict) and not _is_table_array(v):
            out.append(f"{_key(k)} = {_value(v)}")
    for k, v in data.items():
        name = ".".join(_key(p) for p in [*path, k])
        if isinstance(v, dict):
            out.append(f"\n[{name}]")
            _emit(v, [*path, k], out)
        elif _is_table_array(v):
            for item in v:
                out.append(f"\n[[{name}]]")
                _emit(item, [*path, k], out)


def dump_toml(data: dict[str, Any]) -> str:
    """TOML text of plain table data (``tomllib.loads`` reads it back equal)."""
    out: list[str] = []
    _emit(data, [], out)
    return "\n".join(out).lstrip("\n") + "\n"

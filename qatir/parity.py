"""Parity report: where did the accuracy go, and will the device compute what was trained?

``parity_report(model, graph, inputs=None, n=4)`` runs the same float inputs
through up to four executions and compares them tensor by tensor:

- **float**: the graph with every FAKE_QUANT removed (:func:`strip_fake_quant`),
  exported by qatir as a float ``.tflite`` whose outputs are all its tensors and
  run by LiteRT (:class:`qatir.evaluate.FloatRun`; ``float_engine="tf"`` runs it
  in TensorFlow, and ``"auto"`` falls back to TensorFlow when LiteRT cannot);
- **fake-quant** (``fake_quant=True``, needs TensorFlow): ``qatir.run`` on the
  quantized graph (what training saw); otherwise that column is NaN;
- **reference**: ``qatir.run_reference`` (LiteRT BUILTIN_REF arithmetic), on the
  first ``reference_samples`` inputs (all by default);
- **LiteRT**: the flatbuffer in ``ai_edge_litert`` (default resolver, or
  ``BUILTIN_REF`` with ``resolver="ref"``) with ``experimental_preserve_all_tensors=True``,
  so intermediates can be read; the reference runs in the matching kernel mode.

One row per graph output and per intermediate int8 tensor that exists in both
the lowered graph and the flatbuffer (matched by tensor name): SQNR of the
LiteRT values (dequantized) against float, and the max LSB difference between
LiteRT and the integer reference. Tensors a float island computes get rows too,
marked ``precision="float"`` (``f32`` in the table): their SQNR is of LiteRT's
float values, and instead of an LSB count ``max_abs`` is the largest
|LiteRT - reference| (within ``qatir.reference_float``'s tolerance when they agree).
Rows come worst first (lowest SQNR).
:func:`format_report` prints them as a table.

:func:`xnnpack_coverage` tells which operators the XNNPACK delegate took.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from qatir.errors import QatirError
from qatir.evaluate import FloatRun, quantize_float, strip_fake_quant
from qatir.ir import Graph
from qatir.litert_run import interpreter
from qatir.metrics import sqnr_db

__all__ = ["ParityRow", "format_report", "parity_report", "sqnr_db", "strip_fake_quant",
           "xnnpack_coverage"]


@dataclass(frozen=True)
class ParityRow:
    """One compared tensor."""

    tensor: str
    kind: str  # "output" or "intermediate"
    sqnr_db: float  # LiteRT (dequantized) vs float IR; inf when identical
    fq_sqnr_db: float  # fake-quant IR vs float IR (nan when the tensor is not in the IR run)
    max_lsb: int  # max |LiteRT - reference| in int8 steps
    scale: float
    zero_point: int
    precision: str = "int8"  # "int8", or "float" for a float island's tensor
    max_abs: float = 0.0  # float tensors: max |LiteRT - reference|


def _load_bytes(model: bytes | str | os.PathLike) -> bytes:
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    with open(model, "rb") as f:
        return f.read()


def xnnpack_coverage(model: bytes | str | os.PathLike) -> list[tuple[str, bool]]:
    """(op name, taken by XNNPACK) for every operator, in model order.

    After delegation LiteRT lists the original nodes plus one DELEGATE node per
    partition; a node belongs to a partition when it is reachable backwards from
    the partition's outputs without crossing the partition's inputs.
    """
    it = interpreter(_load_bytes(model), threads=1)
    details = it._get_ops_details()
    producer = {}
    for d in details:
        if d["op_name"] != "DELEGATE":
            for o in d["outputs"]:
                producer[int(o)] = d
    taken: set[int] = set()
    for part in (d for d in details if d["op_name"] == "DELEGATE"):
        stop = {int(i) for i in part["inputs"]}
        stack = [int(o) for o in part["outputs"]]
        while stack:
            t = stack.pop()
            if t in stop or t not in producer:
                continue
            node = producer[t]
            if node["index"] in taken:
                continue
            taken.add(node["index"])
            stack.extend(int(i) for i in node["inputs"])
    return [(d["op_name"], d["index"] in taken) for d in details if d["op_name"] != "DELEGATE"]


_MAC_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV",
                      "BATCH_MATMUL"})


def xnnpack_share(model: bytes | str | os.PathLike) -> dict:
    """How much of a model LiteRT's default path gives XNNPACK: nodes and MACs taken, and
    the count per op left on the builtin kernels (``{"nodes": (taken, all), "macs": (taken,
    all), "off": {op: n}}``). MACs count the conv-like and matmul ops, from tensor shapes."""
    buf = _load_bytes(model)
    it = interpreter(buf, threads=1)
    shapes = {d["index"]: [int(v) for v in d["shape"]] for d in it.get_tensor_details()}
    cover = xnnpack_coverage(buf)
    ops = [d for d in it._get_ops_details() if d["op_name"] != "DELEGATE"]
    macs_all = macs_in = 0
    off: dict[str, int] = {}
    for (name, taken), d in zip(cover, ops):
        macs = _op_macs(name, [shapes.get(int(i)) for i in d["inputs"]],
                        [shapes.get(int(o)) for o in d["outputs"]])
        macs_all += macs
        macs_in += macs if taken else 0
        if not taken:
            off[name] = off.get(name, 0) + 1
    return {"nodes": (sum(t for _, t in cover), len(cover)), "macs": (macs_in, macs_all),
            "off": off}


def _op_macs(op: str, ins: list, outs: list) -> int:
    """Multiply-accumulates of one TFLite operator from its tensor shapes (0 if not conv-like)."""
    if op not in _MAC_OPS or not outs or outs[0] is None or len(ins) < 2 or ins[1] is None:
        return 0
    n_out, w = int(np.prod(outs[0])), ins[1]
    if op == "CONV_2D":
        return n_out * int(np.prod(w[1:]))
    if op == "DEPTHWISE_CONV_2D":
        return n_out * w[1] * w[2]
    if op == "FULLY_CONNECTED":
        return n_out * w[-1]
    if op == "TRANSPOSE_CONV":  # inputs: output shape, weight OHWI, input
        x = ins[2] if len(ins) > 2 and ins[2] is not None else [0]
        return int(np.prod(x)) * w[0] * w[1] * w[2]
    a = ins[0] or [0]
    return n_out * a[-1]


def _random_inputs(lowered: Graph, n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Uniform float inputs over each input's quantized range (inputs the model can represent)."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(n):
        feed = {}
        for t in lowered.inputs:
            shape = [d or 1 for d in t.shape]
            lo, hi = -1.0, 1.0
            if t.quant is not None:
                s, z = t.quant.scale[0], t.quant.zero_point[0]
                lo, hi = (-128 - z) * s, (127 - z) * s
            feed[t.name] = rng.uniform(lo, hi, shape).astype(np.float32)
        batches.append(feed)
    return batches


def parity_report(model: bytes | str | os.PathLike, graph: Graph,
                  inputs: Sequence[Mapping[str, np.ndarray]] | None = None, n: int = 4,
                  resolver: str = "default", fake_quant: bool = True,
                  float_engine: str = "auto",
                  reference_samples: int | None = None) -> list[ParityRow]:
    """Compare float, fake-quant IR, integer reference and LiteRT (see module doc).

    ``graph`` is the quantized (FAKE_QUANT) graph the model was written from;
    ``inputs`` are float feeds keyed by the graph's input names (``n`` batches
    uniform over each input's quantized range when omitted; real data says
    more). ``resolver`` is ``"default"`` (LiteRT with XNNPACK, compared with
    ``kernels="xnnpack"``) or ``"ref"`` (BUILTIN_REF, compared with
    ``kernels="reference"``). ``fake_quant=False`` leaves TensorFlow out (the
    FQ column is NaN); ``float_engine`` runs the float graph ("auto", "litert",
    "tf"); the LSB column covers the first ``reference_samples`` inputs.
    """
    if resolver not in ("default", "ref"):
        raise QatirError(f"resolver must be 'default' or 'ref', got {resolver!r}")
    mode = "reference" if resolver == "ref" else "xnnpack"
    from qatir.lower import is_lowered, is_quantized, lower
    from qatir.reference import run_lowered

    if not (is_quantized(graph) or is_lowered(graph)):
        raise QatirError(f"parity report: graph {graph.name!r} is a float graph; pass the "
                         "quantized (FAKE_QUANT) graph the model was written from")
    buf = _load_bytes(model)
    lowered = lower(graph, io="int8")
    if inputs is None:
        inputs = _random_inputs(lowered, n)
    pairs = _fq_pairs(graph)
    float_graph = strip_fake_quant(graph)
    floats = FloatRun(float_graph, [t.name for t in float_graph.tensors.values()], float_engine)
    fq_all = _all_outputs(graph) if fake_quant else None
    it = interpreter(buf, resolver, threads=1, preserve_all=True)
    tdetails = {d["name"]: d for d in it.get_tensor_details()}
    in_details = it.get_input_details()
    acc: dict[str, dict[str, list[np.ndarray]]] = {}
    k = len(inputs) if reference_samples is None else reference_samples
    for i, feed in enumerate(inputs):
        f_out = _aliased(floats.run(feed), pairs, quantized=False)
        fq_out = {} if fq_all is None else _run_ir_all(fq_all, feed, pairs)
        q_feed = {t.name: quantize_float(t, feed[t.name]) for t in lowered.inputs}
        ref = run_lowered(lowered, q_feed, kernels=mode, keep_all=True) if i < k else {}
        for d in in_details:
            x = feed[d["name"]] if d["dtype"] == np.float32 else q_feed[d["name"]]
            it.set_tensor(d["index"], np.asarray(x).astype(d["dtype"]))
        it.invoke()
        for t in lowered.tensors.values():
            if t.dtype == np.float32:
                d = tdetails.get(t.name)
                if d is None or d["dtype"] != np.float32 or t.producer is None:
                    continue  # a float island's tensor: computed, in the float run and the file
            else:
                d = tdetails.get(f"{t.name}_int8", tdetails.get(t.name))
                if d is None or d["dtype"] != np.int8:
                    continue
            if not t.is_const and t.name in f_out:
                _collect(acc, t.name, it.get_tensor(d["index"]), f_out, fq_out, ref)
    outputs = {t.name for t in lowered.outputs}
    rows = []
    cat = lambda xs: np.concatenate([a.ravel() for a in xs]) if xs else np.zeros(0)  # noqa: E731
    for name, e in acc.items():
        if lowered.tensors[name].dtype == np.float32:
            lrt, flt, fq = cat(e["lrt"]), cat(e["float"]), cat(e["fq"])
            diff = np.abs(cat(e["lrt_ref"]).astype(np.float64) - cat(e["ref"]))
            rows.append(ParityRow(name, "output" if name in outputs else "intermediate",
                                  sqnr_db(flt, lrt), sqnr_db(flt, fq) if fake_quant else math.nan,
                                  0, math.nan, 0, "float", float(diff.max()) if diff.size else 0.0))
            continue
        q = lowered.tensors[name].quant
        s, z = q.scale[0], q.zero_point[0]
        lrt, flt, fq = cat(e["lrt"]).astype(np.int32), cat(e["float"]), cat(e["fq"])
        lsb = np.abs(cat(e["lrt_ref"]).astype(np.int32) - cat(e["ref"]).astype(np.int32))
        rows.append(ParityRow(name, "output" if name in outputs else "intermediate",
                              sqnr_db(flt, (lrt - z) * s),
                              sqnr_db(flt, fq) if fake_quant else math.nan,
                              int(lsb.max()) if lsb.size else 0, s, z))
    rows.sort(key=lambda r: (r.sqnr_db, r.tensor))
    if not rows:
        raise QatirError("parity report: no tensor of the graph was found in the model "
                         "(names differ?)")
    return rows


def _collect(acc: dict, name: str, lrt: np.ndarray, f_out: dict, fq_out: dict,
             ref: dict) -> None:
    """Append one sample of tensor ``name`` (LiteRT's value, the float and fake-quant runs',
    the reference's when it ran) to ``acc``."""
    entry = acc.setdefault(name, {"float": [], "fq": [], "ref": [], "lrt": [], "lrt_ref": []})
    entry["float"].append(f_out[name])
    entry["fq"].append(fq_out.get(name, np.full_like(f_out[name], np.nan)))
    entry["lrt"].append(lrt)
    if name in ref:
        entry["ref"].append(ref[name])
        entry["lrt_ref"].append(lrt)


def _fq_pairs(graph: Graph) -> list[tuple[str, str]]:
    """(pre-FAKE_QUANT name, post-FAKE_QUANT name) for every activation FAKE_QUANT."""
    return [(n.inputs[0].name, n.outputs[0].name) for n in graph.nodes
            if n.op == "FAKE_QUANT" and not n.inputs[0].is_const]


def _all_outputs(graph: Graph) -> Graph:
    g = graph.clone()
    g.outputs = [t for t in g.tensors.values() if t.producer is not None]
    return g


def _aliased(res: dict[str, np.ndarray], pairs: list[tuple[str, str]],
             quantized: bool) -> dict[str, np.ndarray]:
    """Values keyed so lowered tensor names find them.

    The lowered graph names an activation after the FAKE_QUANT input (graph
    outputs after its output): the fake-quant run maps both names to the
    quantized value, the float run both to the float value.
    """
    for pre, post in pairs:
        if quantized and post in res:
            res[pre] = res[post]
        elif not quantized and pre in res:
            res[post] = res[pre]
    return res


def _run_ir_all(g: Graph, feed: Mapping[str, np.ndarray],
                pairs: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    """Every computed tensor of the fake-quant TensorFlow run (see :func:`_aliased`)."""
    import qatir

    res = {k: np.asarray(v) for k, v in qatir.run(g, dict(feed)).items()}
    return _aliased(res, pairs, quantized=True)


def format_report(rows: Sequence[ParityRow]) -> str:
    """A fixed-width table of :func:`parity_report` rows; a float island's tensor shows
    ``f32`` in the LSB column and no scale or zero point."""
    head = f"{'tensor':<40} {'kind':<12} {'SQNR dB':>9} {'FQ SQNR':>9} {'LSB':>4} {'scale':>10} {'zp':>5}"
    lines = [head, "-" * len(head)]
    for r in rows:
        fq = "n/a" if math.isnan(r.fq_sqnr_db) else f"{r.fq_sqnr_db:.2f}"
        if r.precision == "float":
            lines.append(f"{r.tensor[:40]:<40} {r.kind:<12} {r.sqnr_db:>9.2f} {fq:>9} "
                         f"{'f32':>4} {'-':>10} {'-':>5}")
            continue
        lines.append(f"{r.tensor[:40]:<40} {r.kind:<12} {r.sqnr_db:>9.2f} {fq:>9} "
                     f"{r.max_lsb:>4d} {r.scale:>10.4g} {r.zero_point:>5d}")
    return "\n".join(lines)

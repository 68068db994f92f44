"""The compile driver behind ``qatir compile`` (and ``qatir bench``).

``compile_model`` runs load -> quantize -> calibrate -> (QAT) -> write, timing
each stage, and returns a :class:`CompileSummary`: ops by type in the written
file, sizes, SQNR of the fake-quant graph and of the int8 file (run in LiteRT)
against the float graph, and the time per stage. Everything goes through the
public API, so what the CLI does a script can do too.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qatir.errors import QatirError
from qatir.ir import Graph, Tensor

Echo = Callable[[str], None]
EVAL_SAMPLES = 16


class DataError(QatirError):
    """Calibration or training data that does not fit the model's inputs."""


@dataclass
class CompileOptions:
    """What ``qatir compile`` was asked to do (all optional except the paths)."""

    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    calib: str | None = None
    calib_random: int | None = None
    train: str | None = None
    label_key: str = "y"
    epochs: int = 1
    loss: str = "sparse_categorical_crossentropy"
    from_logits: bool | None = None  # None: True unless the output comes from SOFTMAX/LOGISTIC
    batch_size: int = 32
    learning_rate: float = 1e-4
    table: str | None = None
    passes: list[str] | None = None
    io: str = "int8"
    print_ir_after: list[str] | None = None
    report: bool = False
    save_ir: str | None = None
    progress: bool | None = None  # None: progress bars when stderr is a terminal
    seed: int = 0


@dataclass
class CompileSummary:
    """What was written and how it went."""

    output: str
    ops: dict[str, int]
    float_bytes: int
    tflite_bytes: int
    sqnr_fake_quant_db: float | None
    sqnr_int8_db: float | None
    stage_seconds: dict[str, float]
    eval_samples: int = 0
    files: list[str] = field(default_factory=list)
    report: str | None = None

    def format(self) -> str:
        """A short human summary (the last thing ``qatir compile`` prints)."""
        ops = ", ".join(f"{op} {n}" for op, n in sorted(self.ops.items(), key=lambda kv: -kv[1]))
        lines = [
            f"wrote {self.output}",
            f"  ops:    {sum(self.ops.values())} ({ops})",
            f"  size:   float32 weights {format_size(self.float_bytes)} -> int8 .tflite "
            f"{format_size(self.tflite_bytes)} ({_ratio(self.float_bytes, self.tflite_bytes)})",
            f"  SQNR vs float (same weights) on {self.eval_samples} samples: fake-quant "
            f"{_db(self.sqnr_fake_quant_db)}, int8 in LiteRT {_db(self.sqnr_int8_db)}",
            "  time:   " + ", ".join(f"{k} {v:.2f}s" for k, v in self.stage_seconds.items())
            + f" (total {sum(self.stage_seconds.values()):.2f}s)",
        ]
        for extra in self.files[1:]:
            lines.append(f"wrote {extra}")
        if self.report:
            lines += ["", self.report]
        return "\n".join(lines)


def _ratio(before: int, after: int) -> str:
    if after <= before:
        return f"{before / max(after, 1):.1f}x smaller"
    return "larger: the file's fixed overhead outweighs the weights of so small a model"


def format_size(n: int) -> str:
    """Bytes as KiB or MiB."""
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


def _db(v: float | None) -> str:
    if v is None:
        return "n/a"
    return "inf dB (exact)" if math.isinf(v) else f"{v:.1f} dB"


class StageTimer:
    """Wall-clock seconds per named stage, in the order they ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


# --------------------------------------------------------------------------- data
def to_ir_layout(t: Tensor, x: np.ndarray, source: str) -> np.ndarray:
    """Feed arrays may come in the model's source layout (NCHW for ONNX): move them to NHWC."""
    x = np.asarray(x)
    if x.ndim != t.rank:
        raise DataError(f"{source}: array {t.name!r} has shape {list(x.shape)}, the model "
                        f"input is {_shape_str(t.shape)}")
    if _fits(x.shape[1:], t.shape[1:]):
        return x
    if t.source_layout == "NCHW" and x.ndim == 4:
        moved = np.transpose(x, (0, 2, 3, 1))
        if _fits(moved.shape[1:], t.shape[1:]):
            return moved
    raise DataError(f"{source}: array {t.name!r} has shape {list(x.shape)}, the model input is "
                    f"{_shape_str(t.shape)}" + (" (NHWC)" if t.source_layout == "NCHW" else ""))


def _fits(shape: Sequence[int], want: Sequence[int | None]) -> bool:
    return len(shape) == len(want) and all(w is None or s == w for s, w in zip(shape, want))


def _shape_str(shape: Sequence[int | None]) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def load_npz(path: str, graph: Graph, extra: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Arrays for every graph input (by name, in IR layout), plus ``extra`` keys."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    out: dict[str, np.ndarray] = {}
    names = ", ".join(sorted(arrays)) or "none"
    for t in graph.inputs:
        if t.name not in arrays:
            raise DataError(f"{path}: no array named {t.name!r} for model input {t.name!r} "
                            f"(arrays: {names}); save with np.savez(path, {t.name}=...)")
        out[t.name] = to_ir_layout(t, arrays[t.name], path).astype(t.dtype, copy=False)
    for key in extra:
        if key not in arrays:
            raise DataError(f"{path}: no array named {key!r} (arrays: {names})")
        out[key] = arrays[key]
    sizes = {len(v) for v in out.values()}
    if len(sizes) != 1:
        raise DataError(f"{path}: arrays have different lengths {sorted(sizes)}")
    return out


def batches(arrays: Mapping[str, np.ndarray], names: Sequence[str],
            batch_size: int) -> list[dict[str, np.ndarray]]:
    """Split whole-dataset arrays into feed dicts of ``batch_size`` rows."""
    n = len(next(iter(arrays.values())))
    return [{k: arrays[k][i:i + batch_size] for k in names} for i in range(0, n, batch_size)]


def random_batches(graph: Graph, count: int, batch_size: int = 1,
                   seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` batches of standard-normal inputs (a fallback; real data is better)."""
    rng = np.random.default_rng(seed)
    return [{t.name: rng.standard_normal(_concrete(t.shape, batch_size)).astype(t.dtype)
             for t in graph.inputs} for _ in range(count)]


def _concrete(shape: Sequence[int | None], batch: int) -> list[int]:
    dims = [batch if d is None and i == 0 else d for i, d in enumerate(shape)]
    if any(d is None for d in dims):
        raise DataError(f"input shape {_shape_str(shape)} has unknown dimensions; "
                        "fix them with --input-shape NAME=D1,D2,...")
    return [int(d) for d in dims]


def batch_size_for(graph: Graph, wanted: int) -> int:
    """The graph's fixed batch dimension if it has one, else ``wanted``."""
    fixed = {t.shape[0] for t in graph.inputs if t.rank and t.shape[0] is not None}
    return int(fixed.pop()) if len(fixed) == 1 else wanted


# --------------------------------------------------------------------------- metrics
def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when identical)."""
    ref = np.asarray(reference, np.float64)
    noise = float(np.sum((ref - np.asarray(test, np.float64)) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-30) / noise)


def tflite_op_counts(buf: bytes) -> dict[str, int]:
    """Ops by builtin name in a TFLite flatbuffer (read back from the file itself)."""
    import tflite

    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    model = tflite.Model.GetRootAsModel(buf, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        codes.append(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()))
    counts: Counter[str] = Counter()
    for s in range(model.SubgraphsLength()):
        sub = model.Subgraphs(s)
        for j in range(sub.OperatorsLength()):
            code = codes[sub.Operators(j).OpcodeIndex()]
            counts[names.get(code, f"BUILTIN_{code}")] += 1
    return dict(counts)


def float_param_bytes(graph: Graph) -> int:
    """Bytes of the float model's constants (what a float32 file would mostly hold)."""
    return sum(t.data.nbytes for t in graph.tensors.values() if t.data is not None)


def run_litert(buf: bytes, feeds: Sequence[Mapping[str, np.ndarray]],
               ) -> list[list[np.ndarray]]:
    """Run a .tflite one sample at a time in LiteRT; float in, dequantized float out."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=buf)
    interp.allocate_tensors()
    ins, outs = interp.get_input_details(), interp.get_output_details()
    results = []
    for feed in feeds:
        # by tensor name where the file kept the graph's names, else in input order
        by_name = all(d["name"] in feed for d in ins)
        arrays = [feed[d["name"]] for d in ins] if by_name else list(feed.values())
        for detail, x in zip(ins, arrays):
            interp.set_tensor(detail["index"], _quantize_for(detail, x))
        interp.invoke()
        results.append([_dequantize_from(d, interp.get_tensor(d["index"])) for d in outs])
    return results


def _quantize_for(detail: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32).reshape(detail["shape"])
    if detail["dtype"] == np.float32:
        return x
    scale, zp = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale) + zp, info.min, info.max).astype(detail["dtype"])


def _dequantize_from(detail: Mapping[str, Any], y: np.ndarray) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return y.copy()
    scale, zp = detail["quantization"]
    return (y.astype(np.float32) - zp) * np.float32(scale)


def evaluate(float_graph: Graph, quantized: Graph, buf: bytes,
             samples: Sequence[Mapping[str, np.ndarray]]) -> tuple[float | None, float | None]:
    """SQNR (dB) of fake-quant execution and of the int8 file in LiteRT against float."""
    import qatir

    if not samples:
        return None, None
    ref, fq = [], []
    for feed in samples:
        ref.append([qatir.run(float_graph, feed)[t.name] for t in float_graph.outputs])
        fq.append([qatir.run(quantized, feed)[t.name] for t in quantized.outputs])
    int8 = run_litert(buf, samples)
    flat = lambda rows: np.concatenate([np.ravel(a) for row in rows for a in row])  # noqa: E731
    return sqnr_db(flat(ref), flat(fq)), sqnr_db(flat(ref), flat(int8))


# --------------------------------------------------------------------------- passes
def run_one_pass(graph: Graph, name: str, table: str | None = None) -> tuple[Graph, Graph]:
    """(before, after) the pass ``name``, for before/after pictures and diffs.

    A pass of the default pipeline sees the graph as that pipeline hands it
    over (the passes before it have run); any other pass runs on ``graph``.
    """
    import qatir
    from qatir.pipeline import list_pipelines

    default = list_pipelines()["default"]
    before = graph
    if name in default:
        prefix = default[:default.index(name)]
        if prefix:
            before = qatir.quantize(graph, table=table, passes=prefix)
    return before, qatir.quantize(before, table=table, passes=[name])


# --------------------------------------------------------------------------- driver
def compile_model(model: str, output: str, opts: CompileOptions | None = None,
                  echo: Echo = print) -> CompileSummary:
    """Load, quantize, calibrate, optionally QAT-train, and write ``output`` (.tflite)."""
    import qatir
    from qatir.fileio import atomic_write, check_distinct

    opts = opts or CompileOptions()
    check_distinct(output, model, opts.calib, opts.train, opts.table)
    if opts.save_ir:
        check_distinct(opts.save_ir, model, output)
    timer = StageTimer()
    with timer("load"):
        graph = qatir.load(model, input_shapes=opts.input_shapes or None)
    from qatir.lower import is_lowered, is_quantized

    if is_lowered(graph) and not is_quantized(graph):
        raise QatirError(f"{model}: is already an int8 model; there is nothing to quantize "
                         "(compile its float original, or inspect it with qatir dump)")
    bs = batch_size_for(graph, opts.batch_size)
    names = [t.name for t in graph.inputs]
    with timer("data"):
        calib = _calibration_batches(graph, opts, bs)
        train = load_npz(opts.train, graph, [opts.label_key]) if opts.train else None
    if is_quantized(graph):
        # a saved quantized IR (compile --save-ir): keep its (maybe trained) ranges
        # unless calibration data are given
        echo(f"{model}: already quantized; not running the pass pipeline again")
        q = graph
    else:
        with timer("quantize"):
            q = qatir.quantize(graph, table=opts.table, passes=expand_passes(opts.passes),
                               print_ir_after=_ir_selection(opts.print_ir_after))
    if not is_quantized(graph) or opts.calib or opts.calib_random:
        with timer("calibrate"):
            qatir.calibrate(q, calib, progress=opts.progress)
    if train is not None:
        with timer("qat"):
            dataset = []
            for b in batches(train, [*names, opts.label_key], bs):
                labels = b.pop(opts.label_key)
                dataset.append((b, labels))
            qatir.fit(q, dataset, loss=make_loss(opts.loss, q, opts.from_logits),
                      optimizer=_adam(opts.learning_rate),
                      epochs=opts.epochs, verbose=opts.progress)
    with timer("write"):
        buf = qatir.to_tflite(q, io=opts.io)
        atomic_write(output, buf)
        files = [output]
        if opts.save_ir:
            qatir.save(q, opts.save_ir)
            files.append(opts.save_ir)
    with timer("evaluate"):
        samples = [{k: v[i:i + 1] for k, v in b.items()} for b in calib
                   for i in range(len(next(iter(b.values()))))][:EVAL_SAMPLES]
        from qatir.parity import strip_fake_quant

        # against the same (possibly QAT-trained) weights in float, fake-quant removed
        sqnr_fq, sqnr_int8 = evaluate(strip_fake_quant(q), q, buf, samples)
    report = None
    if opts.report:
        with timer("report"):
            report = parity_report(q, buf, samples)
    return CompileSummary(output, tflite_op_counts(buf), float_param_bytes(graph), len(buf),
                          sqnr_fq, sqnr_int8, timer.seconds, len(samples), files, report)


def expand_passes(names: Sequence[str] | None) -> list[str] | None:
    """Pass names, where a pipeline name ("default", "float") stands for its passes."""
    if names is None:
        return None
    from qatir.pipeline import list_pipelines

    pipelines = list_pipelines()
    out: list[str] = []
    for name in names:
        out.extend(pipelines.get(name, [name]))
    return out


def _ir_selection(names: list[str] | None) -> str | list[str] | None:
    """``--print-ir-after all`` means every pass; otherwise the listed pass names."""
    if names and "all" in names:
        return "all"
    return names


def _calibration_batches(graph: Graph, opts: CompileOptions,
                         batch_size: int) -> list[dict[str, np.ndarray]]:
    if opts.calib:
        arrays = load_npz(opts.calib, graph)
        return batches(arrays, [t.name for t in graph.inputs], batch_size)
    return random_batches(graph, opts.calib_random or 8, batch_size, seed=opts.seed)


CROSS_ENTROPY = {
    "sparse_categorical_crossentropy": "SparseCategoricalCrossentropy",
    "categorical_crossentropy": "CategoricalCrossentropy",
    "binary_crossentropy": "BinaryCrossentropy",
}


def make_loss(name: str, graph: Graph, from_logits: bool | None = None) -> Any:
    """A Keras loss by name; cross-entropies get ``from_logits`` right for the model.

    Keras' named cross-entropies expect probabilities; most exported classifiers
    end in logits. Unless told, a model whose first output is not produced by
    SOFTMAX or LOGISTIC is taken to output logits.
    """
    if name not in CROSS_ENTROPY:
        return name
    if from_logits is None:
        producer = graph.outputs[0].producer
        while producer is not None and producer.op == "FAKE_QUANT":
            producer = producer.inputs[0].producer
        from_logits = producer is None or producer.op not in ("SOFTMAX", "LOGISTIC")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    return getattr(tf.keras.losses, CROSS_ENTROPY[name])(from_logits=from_logits)


def _adam(learning_rate: float) -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    return tf.keras.optimizers.Adam(learning_rate)


def parity_report(quantized: Graph, buf: bytes,
                  samples: Sequence[Mapping[str, np.ndarray]]) -> str:
    """The parity report (qatir.parity) of the written file, as text."""
    from qatir.parity import format_report
    from qatir.parity import parity_report as _parity_report

    rows = _parity_report(buf, batch_one(quantized), inputs=list(samples)[:4] or None)
    return "parity report (LiteRT default kernels vs float IR and integer reference):\n" + \
        format_report(rows)


def batch_one(graph: Graph) -> Graph:
    """A copy with dynamic dims set to 1, as the writer does for the .tflite file."""
    g = graph.clone()
    for t in g.tensors.values():
        if None in t.shape:
            t.shape = tuple(1 if d is None else d for d in t.shape)
    return g


@dataclass
class VerifyResult:
    """``qatir verify``: the parity rows and whether LiteRT matched the reference."""

    rows: list[Any]
    tolerance_lsb: int
    resolver: str
    xnnpack: list[tuple[str, bool]]
    inputs: str = ""

    @property
    def max_lsb(self) -> int:
        return max((r.max_lsb for r in self.rows), default=0)

    @property
    def ok(self) -> bool:
        return self.max_lsb <= self.tolerance_lsb

    def format(self) -> str:
        from qatir.parity import format_report

        taken = sum(1 for _, t in self.xnnpack if t)
        out = [r for r in self.rows if r.kind == "output"]
        worst = min((r.sqnr_db for r in out), default=float("nan"))
        verdict = "OK" if self.ok else "MISMATCH"
        return "\n".join([
            f"inputs: {self.inputs}",
            format_report(self.rows),
            f"XNNPACK took {taken}/{len(self.xnnpack)} operators",
            f"{verdict}: LiteRT ({self.resolver} kernels) vs qatir's integer reference: max "
            f"{self.max_lsb} LSB (tolerance {self.tolerance_lsb}); worst output SQNR vs float "
            f"{_db(worst)}",
        ])


def verify_tflite(tflite_path: str, against: str,
                  input_shapes: Mapping[str, Sequence[int]] | None = None, samples: int = 4,
                  data: str | None = None, resolver: str = "default",
                  tolerance_lsb: int = 0) -> VerifyResult:
    """``qatir verify``: compare a .tflite with the quantized IR it was written from."""
    import qatir
    from qatir.parity import parity_report as _parity_report
    from qatir.parity import xnnpack_coverage

    graph = qatir.load(against, input_shapes=dict(input_shapes or {}) or None)
    if not any(n.op == "FAKE_QUANT" for n in graph.nodes):
        raise QatirError(f"{against}: has no FAKE_QUANT nodes; give the quantized IR the "
                         "model was written from (qatir compile ... --save-ir model.qatir)")
    if data:
        arrays = load_npz(data, graph)
        feeds = batches(arrays, [t.name for t in graph.inputs], 1)[:samples]
        desc = f"{len(feeds)} samples from {data}"
    else:
        feeds = random_batches(graph, samples)
        desc = (f"{samples} random standard-normal samples (SQNR against float means little "
                "on random data; pass --data DATA.npz)")
    with open(tflite_path, "rb") as f:
        buf = f.read()
    rows = _parity_report(buf, batch_one(graph), inputs=feeds, resolver=resolver)
    return VerifyResult(rows, tolerance_lsb, resolver, xnnpack_coverage(buf), desc)


def registry_listing() -> str:
    """Text for ``qatir passes``: registered passes, pipelines, pattern tables, quantizers."""
    from qatir.pipeline import list_passes, list_pipelines, list_quantizers, list_tables

    lines = ["passes:"]
    lines += [f"  {name:<30} {doc}" for name, doc in list_passes().items()]
    lines.append("pipelines:")
    lines += [f"  {name:<30} {', '.join(p)}" for name, p in list_pipelines().items()]
    lines.append("pattern tables:")
    lines += [f"  {name:<30} {path}" for name, path in list_tables().items()]
    lines.append("quantizers:")
    lines += [f"  {name:<30} {doc}" for name, doc in list_quantizers().items()]
    return "\n".join(lines)

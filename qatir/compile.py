"""The compile driver behind ``qatir compile``.

``compile_model`` runs load -> quantize -> calibrate -> (QAT) -> write, timing
each stage, and returns a :class:`CompileSummary`: ops by type in the written
file, sizes, SQNR of the int8 file against float (both run in LiteRT, see
:mod:`qatir.evaluate`), and the time per stage. Post-training compile never
imports TensorFlow; ``--train`` and a ``"full"`` report (fake-quant SQNR) do.
Everything goes through the public API, so what the CLI does a script can do too.

Data loading lives in :mod:`qatir.data`, metrics in :mod:`qatir.metrics`, the
LiteRT runner in :mod:`qatir.litert_run`, ``qatir verify`` in :mod:`qatir.verify_file`;
their names used to live here and are still importable from here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qatir.data import (  # noqa: F401  (re-exported: qatir.compile's former contents)
    batch_one,
    batch_size_for,
    batches,
    load_npz,
    random_batches,
    single_samples,
    to_ir_layout,
)
from qatir.errors import DataError, QatirError  # noqa: F401
from qatir.evaluate import Evaluation, evaluate
from qatir.ir import Graph
from qatir.litert_run import run_litert  # noqa: F401
from qatir.metrics import (  # noqa: F401
    float_param_bytes,
    format_db,
    format_size,
    sqnr_db,
    tflite_op_counts,
)
from qatir.timing import StageTimer
from qatir.verify_file import VerifyResult, verify_tflite  # noqa: F401

Echo = Callable[[str], None]
EVAL_SAMPLES = 16
REPORT_SAMPLES = 4
REPORT_KINDS = ("litert", "full")


@dataclass
class CompileOptions:
    """What ``qatir compile`` was asked to do (all optional except the paths).

    ``report``: False, ``"litert"`` (or True; no TensorFlow) or ``"full"`` (adds
    the fake-quant column and SQNR, run in TensorFlow).
    """

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
    mode: str = "int8"  # or "dynamic", "float16", "all" (qatir.compile_modes)
    strict_int8: bool = False
    print_ir_after: list[str] | None = None
    report: bool | str = False
    save_ir: str | None = None
    progress: bool | None = None  # None: progress bars when stderr is a terminal
    seed: int = 0
    #: analyze first and quantize with the suggested table (qatir.sensitivity, TensorFlow)
    target_sqnr: float | None = None

    @property
    def report_kind(self) -> str | None:
        if self.report in (False, None, ""):
            return None
        kind = "litert" if self.report is True else str(self.report)
        if kind not in REPORT_KINDS:
            raise QatirError(f"report must be one of {REPORT_KINDS}, got {self.report!r}")
        return kind


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
    evaluation: Evaluation | None = None
    int8_line: str | None = None
    quantized: Graph | None = None  # the (calibrated, maybe trained) graph written

    def format(self) -> str:
        """A short human summary (the last thing ``qatir compile`` prints)."""
        ops = ", ".join(f"{op} {n}" for op, n in sorted(self.ops.items(), key=lambda kv: -kv[1]))
        lines = [
            f"wrote {self.output}",
            f"  ops:    {sum(self.ops.values())} ({ops})",
            *([f"  {self.int8_line}"] if self.int8_line else []),
            f"  size:   float32 weights {format_size(self.float_bytes)} -> int8 .tflite "
            f"{format_size(self.tflite_bytes)} ({_ratio(self.float_bytes, self.tflite_bytes)})",
            *_sqnr_lines(self),
            "  time:   " + ", ".join(f"{k} {v:.2f}s" for k, v in self.stage_seconds.items())
            + f" (total {sum(self.stage_seconds.values()):.2f}s)",
        ]
        for extra in self.files[1:]:
            lines.append(f"wrote {extra}")
        if self.report:
            lines += ["", self.report]
        return "\n".join(lines)


def _sqnr_lines(s: CompileSummary) -> list[str]:
    ev = s.evaluation
    if ev is None:
        return ["  SQNR vs float: n/a (no samples)"]
    where = "LiteRT" if ev.float_engine == "litert" else "TensorFlow"
    line = (f"  SQNR vs float (same weights, float run in {where}) on {ev.samples} samples: "
            f"int8 in LiteRT {format_db(ev.int8_all_db)}")
    if ev.fake_quant_db is not None:
        line += f", fake-quant {format_db(ev.fake_quant_db)}"
    lines = [line]
    if len(ev.int8_db) > 1:
        lines.append("    per output: " + ", ".join(f"{n} {format_db(v)}"
                                                    for n, v in ev.int8_db.items()))
    if ev.reference_samples:
        lines.append(f"    integer reference {format_db(ev.reference_db)} on "
                     f"{ev.reference_samples} sample(s); max {ev.reference_max_lsb} LSB from "
                     "LiteRT")
    if ev.fallback:
        lines.append(f"    (float in TensorFlow: {ev.fallback})")
    return lines


def _ratio(before: int, after: int) -> str:
    if after <= before:
        return f"{before / max(after, 1):.1f}x smaller"
    return "larger: the file's fixed overhead outweighs the weights of so small a model"


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
    """Load, quantize, calibrate, optionally QAT-train, and write ``output`` (.tflite).

    ``opts.mode`` other than "int8" goes to :func:`qatir.compile_modes.compile_modes`
    (whose summary prints the same way)."""
    import qatir
    from qatir.fileio import atomic_write, check_distinct

    opts = opts or CompileOptions()
    if opts.mode != "int8":
        from qatir.compile_modes import COMPILE_MODES, compile_modes

        if opts.mode not in COMPILE_MODES:
            raise QatirError(f"mode must be one of {COMPILE_MODES}, got {opts.mode!r}")
        modes = ["int8", "dynamic", "float16"] if opts.mode == "all" else [opts.mode]
        return compile_modes(model, output, opts, modes, echo)
    kind = opts.report_kind
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
        table: Any = opts.table
        if opts.target_sqnr is not None:
            with timer("analyze"):
                table = _suggested_table(graph, calib, opts, echo)
        with timer("quantize"):
            q = qatir.quantize(graph, table=table, passes=expand_passes(opts.passes),
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
        from qatir.lowering.islands import format_summary, summary
        from qatir.tflite_writer import FloatIslandWarning

        int8_line = format_summary(summary(q))  # printed below, so not warned as well
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FloatIslandWarning)
            buf = qatir.to_tflite(q, io=opts.io, strict_int8=opts.strict_int8,
                                  print_ir_after=_ir_selection(opts.print_ir_after))
        atomic_write(output, buf)
        files = [output]
        if opts.save_ir:
            qatir.save(q, opts.save_ir)
            files.append(opts.save_ir)
    with timer("evaluate"):
        samples = single_samples(calib, EVAL_SAMPLES)
        # against the same (possibly QAT-trained) weights in float, fake-quant removed;
        # with a report, its LSB column checks the integer reference instead
        ev = evaluate(q, buf, samples, fake_quant=kind == "full",
                      reference_samples=0 if kind else 1)
    report = None
    if kind:
        with timer("report"):
            report = parity_report(q, buf, samples, fake_quant=kind == "full")
    return CompileSummary(output, tflite_op_counts(buf), float_param_bytes(graph), len(buf),
                          ev.fake_quant_db if ev else None, ev.int8_all_db if ev else None,
                          timer.seconds, len(samples), files, report, ev, int8_line, q)


#: samples the --target-sqnr analysis calibrates on and evaluates
ANALYZE_SAMPLES = 4


def _suggested_table(graph: Graph, calib: list, opts: CompileOptions, echo: Echo) -> Any:
    """The table :meth:`qatir.sensitivity.Report.suggest` gives for ``opts.target_sqnr``."""
    from qatir.sensitivity import analyze

    rep = analyze(graph, single_samples(calib, ANALYZE_SAMPLES), table=opts.table,
                  max_batches=ANALYZE_SAMPLES)
    table = rep.suggest(float(opts.target_sqnr))
    echo(f"analyze: full int8 {rep.full_int8_sqnr_db:.2f} dB in {rep.seconds:.1f} s; "
         f"{rep.suggestion.format_text()}")
    return table


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
    """``--print-ir-after all`` means every pass and lowering step; otherwise the listed
    pass and step names (a step as ``lower.bias`` or ``bias``)."""
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
    from qatir.tf.env import import_tensorflow

    return getattr(import_tensorflow().keras.losses, CROSS_ENTROPY[name])(from_logits=from_logits)


def _adam(learning_rate: float) -> Any:
    from qatir.tf.env import import_tensorflow

    return import_tensorflow().keras.optimizers.Adam(learning_rate)


def parity_report(quantized: Graph, buf: bytes, samples: Sequence[Mapping[str, np.ndarray]],
                  fake_quant: bool = False) -> str:
    """The parity report (qatir.parity) of the written file, as text.

    Float runs in LiteRT; the integer reference on the first sample; the
    fake-quant column (TensorFlow) only with ``fake_quant``.
    """
    from qatir.parity import format_report
    from qatir.parity import parity_report as _parity_report

    feeds = list(samples)[:REPORT_SAMPLES] or None
    rows = _parity_report(buf, batch_one(quantized), inputs=feeds, fake_quant=fake_quant,
                          reference_samples=1)
    n = len(feeds) if feeds else 4
    fq = "fake-quant IR in TensorFlow" if fake_quant else "no fake-quant column: --report=full"
    return (f"parity report ({n} samples; LiteRT default kernels vs float, "
            f"integer reference on 1 sample; {fq}):\n" + format_report(rows))


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

"""``qatir compile --mode dynamic|float16|all``: the other modes, and the side-by-side table.

A dynamic-range or float16 file needs no calibration: the graph is loaded (a quantized
``.qatir`` keeps its trained weights) and written by ``to_tflite(mode=...)``. Each file
is measured as the int8 one is: its size, and its SQNR against float on the evaluation
samples (the float32 export run by LiteRT: no TensorFlow), plus qatir's reference on the
first sample (:func:`qatir.modes.run_mode_reference`, the default resolver's kernels).
``--mode all`` writes int8 (``-o``), ``OUT.dynamic.tflite`` and ``OUT.float16.tflite``
and prints one table, so that a user can pick.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qatir.errors import QatirError
from qatir.ir import Graph
from qatir.litert_run import LiteRTRunner
from qatir.metrics import format_db, format_size, sqnr_db

Echo = Callable[[str], None]
#: what ``--mode`` accepts; "all" writes the three quantized modes.
COMPILE_MODES = ("int8", "dynamic", "float16", "all")
SUFFIX = {"dynamic": ".dynamic.tflite", "float16": ".float16.tflite"}


@dataclass
class ModeRow:
    """One written (or, for float32, only measured) file."""

    mode: str
    path: str | None
    size: int
    sqnr_db: float | None
    reference_max_abs: float | None = None  # |LiteRT - qatir's reference| on one sample


@dataclass
class ModesSummary:
    """The table ``--mode all`` prints (and a one-row one for a single mode)."""

    rows: list[ModeRow]
    samples: int
    int8_summary: object | None = None  # qatir.compile.CompileSummary when int8 was built
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        base = next((r.size for r in self.rows if r.mode == "float32"), None)
        head = f"{'mode':<9} {'file':<34} {'size':>10} {'vs float32':>11} {'SQNR vs float':>14}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            ratio = f"{base / r.size:.2f}x" if base and r.size else "n/a"
            path = r.path or "(measured, not written)"
            lines.append(f"{r.mode:<9} {path:<34} {format_size(r.size):>10} {ratio:>11} "
                         f"{format_db(r.sqnr_db):>14}")
        lines.append(f"SQNR on {self.samples} samples against the float32 file, all run by "
                     "LiteRT (default resolver)")
        for r in self.rows:
            if r.reference_max_abs is not None:
                exact = " (bit-exact)" if r.reference_max_abs == 0 else ""
                lines.append(f"  {r.mode}: qatir's reference vs LiteRT on 1 sample: max |diff| "
                             f"{r.reference_max_abs:.3g}{exact}")
        lines += self.notes
        text = "\n".join(lines)
        if self.int8_summary is not None:
            text = self.int8_summary.format() + "\n\n" + text
        return text


def mode_output(output: str, mode: str, all_modes: bool) -> str:
    """Where ``mode``'s file goes: ``-o`` itself, or beside it for ``--mode all``."""
    if not all_modes or mode == "int8":
        return output
    p = Path(output)
    return str(p.with_name(p.name[: -len(p.suffix)] + SUFFIX[mode]))


def _outputs(buf: bytes, samples: Sequence[Mapping[str, np.ndarray]]) -> list[list[np.ndarray]]:
    runner = LiteRTRunner(buf)
    return [runner.run(feed) for feed in samples]


def _sqnr(ref: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> float | None:
    if not ref:
        return None
    flat = [np.concatenate([np.ravel(a) for row in rows for a in row]) for rows in (ref, got)]
    return sqnr_db(*flat)


def measure_mode(graph: Graph, mode: str, path: str | None,
                 samples: Sequence[Mapping[str, np.ndarray]], float_out: list[list[np.ndarray]],
                 check_reference: bool = True, print_ir_after=None) -> tuple[bytes, ModeRow]:
    """Write ``graph`` in ``mode`` (to ``path`` unless None) and measure it."""
    import qatir
    from qatir.fileio import atomic_write
    from qatir.modes import run_mode_reference

    buf = qatir.to_tflite(graph, mode=mode, print_ir_after=print_ir_after)
    if path is not None:
        atomic_write(path, buf)
    got = _outputs(buf, samples)
    row = ModeRow(mode, path, len(buf), _sqnr(float_out, got))
    if check_reference and samples:
        want = run_mode_reference(graph, dict(samples[0]), mode, "xnnpack")
        row.reference_max_abs = max(float(np.abs(np.asarray(w, np.float64) - g).max())
                                    for w, g in zip(want.values(), got[0]))
    return buf, row


def compile_modes(model: str, output: str, opts, modes: Sequence[str],
                  echo: Echo = print) -> ModesSummary:
    """``qatir compile`` for ``modes`` (a subset of int8, dynamic, float16)."""
    import dataclasses

    import qatir
    from qatir.compile import EVAL_SAMPLES, compile_model
    from qatir.data import batch_size_for, single_samples
    from qatir.fileio import check_distinct

    all_modes = len(modes) > 1
    if "int8" not in modes:
        given = [flag for flag, on in (("--train", opts.train), ("--save-ir", opts.save_ir),
                                        ("--report", opts.report)) if on]
        if given:
            raise QatirError(f"{', '.join(given)} apply to the int8 file; with --mode "
                             f"{modes[0]} give --mode all, or compile the trained .qatir "
                             "(--save-ir) in this mode")
    for m in modes:
        check_distinct(mode_output(output, m, all_modes), model, opts.calib, opts.train)
    int8 = None
    if "int8" in modes:
        int8 = compile_model(model, output, dataclasses.replace(opts, mode="int8"), echo=echo)
    graph = qatir.load(model, input_shapes=opts.input_shapes or None)
    if int8 is not None and opts.train:
        graph = int8.quantized  # QAT-trained: dynamic mode uses the trained weight ranges
    from qatir.lower import is_lowered, is_quantized

    if is_lowered(graph) and not is_quantized(graph):
        raise QatirError(f"{model}: is already an int8 model; the other modes need its float "
                         "original")
    from qatir.compile import _calibration_batches, _ir_selection

    samples = single_samples(_calibration_batches(graph, opts, batch_size_for(graph, 1)),
                             EVAL_SAMPLES)
    float_buf = qatir.to_tflite(graph, mode="float")
    float_out = _outputs(float_buf, samples)
    rows = [ModeRow("float32", None, len(float_buf), None)]
    for m in ("float16", "dynamic"):
        if m in modes:
            rows.append(measure_mode(graph, m, mode_output(output, m, all_modes), samples,
                                     float_out,
                                     print_ir_after=_ir_selection(opts.print_ir_after))[1])
    notes = []
    if int8 is not None:
        rows.append(ModeRow("int8", output, int8.tflite_bytes, int8.sqnr_int8_db))
    if not opts.calib:
        notes.append("  (random samples: pass --calib DATA.npz for an SQNR that means something)")
    return ModesSummary(rows, len(samples), int8, notes)

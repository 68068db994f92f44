"""Lowering: a quantized (FAKE_QUANT) graph becomes the LOWERED int8 graph, in named steps.

The lowered form is what the TFLite writer emits and the integer reference runs; the
TFLite frontend imports an already-int8 ``.tflite`` into the same form. Its contract:

- No FAKE_QUANT and no other IR-only op (CLIP with 0/6, 0/inf or -1/1 bounds becomes
  RELU6 / RELU / RELU_N1_TO_1; BATCH_NORM is refused).
- Float islands aside (see below), activations inside the int8 region are int8 with per-tensor params (zero point in
  [-128, 127]); weights are symmetric int8 constants on the axis their op's TFLite
  kernel reads (the ``quant_axis`` op fact) or per-tensor; biases are
  int32 with scale float32(in_scale · w_scale[i]); other constant operands int8.
- Output params are fixed where LiteRT fixes them (``fixed_output`` op facts); ops
  whose kernel needs one grid in and out (``quant="same_scale"``) have it, through an
  explicit requantizing ``QUANTIZE`` where the ranges disagree.
- Nodes an ``[[int16]]`` table entry selects (16-bit FAKE_QUANTs) have int16 activations
  (zero point 0) and, for conv-like ops, int64 biases (:mod:`qatir.lowering.int16`); a
  requantizing ``QUANTIZE`` joins int8 and int16 regions.
- Edges follow ``io`` (:mod:`qatir.lowering.edges`). A float graph stays float (conv-like
  ops get an explicit zero bias).

Anything LiteRT cannot run, or would abort on under either resolver, is refused with
:class:`ExportError` naming the node; NaN/Inf constants raise ``NumericsError``.

The steps (:data:`STEPS`), each a module of this package, run in order:
``legalise`` (→ ``float_bias`` for a float graph) → ``islands`` → ``constants`` →
``activations`` → ``island_edges`` → ``bias`` → ``same_scale`` → ``exact_mean`` →
``xnn_add_ratios`` → ``xnn_forms`` → ``wide_softmax`` → ``int16_lut_floor`` →
``checks`` → ``edges`` → ``limits``. Float islands (nodes the table keeps float, or
without an int8 kernel) are emitted as float ops between DEQUANTIZE and QUANTIZE
(:mod:`qatir.lowering.islands`); their names are in ``metadata["float_islands"]``. ``lower(..., print_ir_after="all")`` dumps the IR
after each (names ``lower.<step>``), ``verify=True`` runs the verifier after each.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TextIO

from qatir.errors import ExportError, QatirError
from qatir.ir import Graph
from qatir.lowering.activations import lower_activations
from qatir.lowering.bias import lower_biases
from qatir.lowering.checks import check_int8_region, check_spec
from qatir.lowering.common import (
    CLOSE_RTOL,
    FIXED_OUTPUT,
    INHERIT,
    INT8_OPS,
    MIN_SCALE,
    SAME_SCALE,
    WEIGHT_OPS,
    act_params,
    is_lowered,
    is_quantized,
)
from qatir.lowering.constants import lower_constants
from qatir.lowering.edges import IO_MODES, apply_io
from qatir.lowering.int16 import check_int16_region, floor_lut_inputs
from qatir.lowering.islands import enter_islands, mark_islands
from qatir.lowering.legalise import add_float_bias, legalise
from qatir.lowering.litert import check_litert_limits, relax_saturated_clamps, warn_xnnpack_ratios
from qatir.lowering.mean import exact_means
from qatir.lowering.same_scale import unify_same_scale
from qatir.lowering.softmax import widen_softmax
from qatir.lowering.xnn_forms import xnn_forms
from qatir.lowering.xnn_ratios import widen_fine_operands
from qatir.target import ADD_MAX_RATIO, INT32_MAX, XNN_MAX_REQUANT

__all__ = ["ADD_MAX_RATIO", "CLOSE_RTOL", "FIXED_OUTPUT", "INHERIT", "INT32_MAX", "INT8_OPS",
           "IO_MODES", "MIN_SCALE", "SAME_SCALE", "STEPS", "WEIGHT_OPS", "XNN_MAX_REQUANT",
           "Step", "act_params", "apply_io", "is_lowered", "is_quantized", "lower", "step_names"]


@dataclass(frozen=True)
class Step:
    """One named lowering step: ``run(graph, io)`` edits the graph in place; ``kinds`` are
    the graph kinds it applies to ("fake_quant": has FAKE_QUANT, "lowered": already int8,
    "float": neither)."""

    name: str
    run: Callable[[Graph, str], None]
    kinds: frozenset[str]
    doc: str = ""


_Q = frozenset({"fake_quant"})
_INT8 = frozenset({"fake_quant", "lowered"})


def _checks(g: Graph, io: str) -> None:
    check_int8_region(g)
    relax_saturated_clamps(g)
    warn_xnnpack_ratios(g)


def _edges(g: Graph, io: str) -> None:
    apply_io(g, io)
    g.eliminate_dead_code()


def _limits(g: Graph, io: str) -> None:
    check_spec(g)
    check_litert_limits(g)
    check_int16_region(g)


STEPS: tuple[Step, ...] = (
    Step("legalise", lambda g, io: legalise(g), frozenset({"fake_quant", "lowered", "float"}),
         "NaN/Inf refused; CLIP -> RELU*; other IR-only ops refused"),
    Step("float_bias", lambda g, io: add_float_bias(g), frozenset({"float"}),
         "a float graph's conv-like ops get a zero bias"),
    Step("islands", lambda g, io: mark_islands(g), _Q,
         "float nodes found; FAKE_QUANTs leaving them -> QUANTIZE; float convs get a bias"),
    Step("constants", lambda g, io: lower_constants(g), _Q, "constant FAKE_QUANTs -> int8"),
    Step("activations", lambda g, io: lower_activations(g), _Q,
         "activation FAKE_QUANTs -> int8 params; fixed / inherited outputs"),
    Step("island_edges", lambda g, io: enter_islands(g), _Q,
         "int8 tensors entering a float node -> one shared DEQUANTIZE"),
    Step("bias", lambda g, io: lower_biases(g), _Q, "float biases -> int32"),
    Step("same_scale", lambda g, io: unify_same_scale(g), _Q,
         "requantize inputs of same-scale ops onto the output grid"),
    Step("exact_mean", lambda g, io: exact_means(g), _Q,
         "int8 MEAN over the innermost axis -> FULLY_CONNECTED (exact on XNNPACK too)"),
    Step("xnn_add_ratios", lambda g, io: widen_fine_operands(g), _Q,
         "ADD/SUB operands below XNNPACK's 2^-10 scale ratio -> output scale x 2^-10"),
    Step("xnn_forms", lambda g, io: xnn_forms(g), _INT8,
         "CONCATENATION of over 5 inputs -> a tree of 5; int8 RELU* -> ADD(x, 0) + act; "
         "spatially strided STRIDED_SLICE -> SPACE_TO_DEPTH + slice"),
    Step("wide_softmax", lambda g, io: widen_softmax(g), _INT8,
         "int8 SOFTMAX over 511 classes -> int16 SOFTMAX + QUANTIZE (LiteRT's REF limit)"),
    Step("int16_lut_floor", lambda g, io: floor_lut_inputs(g), _Q,
         "an int16 LOGISTIC/TANH input scale below 2^-30 -> QUANTIZE onto 2^-30"),
    Step("checks", _checks, _Q, "int8 region complete; saturated clamps dropped"),
    Step("edges", _edges, _INT8, "edges follow io; dead code removed"),
    Step("limits", _limits, _INT8, "quantization spec and LiteRT/XNNPACK limits"),
)


def step_names() -> list[str]:
    """The dump names of the lowering steps, in order (``lower.<step>``)."""
    return [f"lower.{s.name}" for s in STEPS]


def _graph_kind(g: Graph) -> str:
    if is_quantized(g):
        return "fake_quant"
    return "lowered" if is_lowered(g) else "float"


def _wanted(selection: str | Iterable[str] | None, name: str) -> bool:
    if selection is None:
        return False
    if isinstance(selection, str):
        return selection in ("all", name, name.removeprefix("lower."))
    names = set(selection)
    return "all" in names or name in names or name.removeprefix("lower.") in names


def _dump(g: Graph, index: int, name: str, out: TextIO | str | os.PathLike | None) -> None:
    from qatir.pipeline import write_dump

    write_dump(f"// IR after lowering step {index}: {name}\n{g}\n", out,
               f"lower_{index:02d}_{name.removeprefix('lower.')}.txt")


def lower(graph: Graph, io: str = "int8", *, print_ir_after: str | Iterable[str] | None = None,
          ir_out: TextIO | str | os.PathLike | None = None, verify: bool = False) -> Graph:
    """Return a lowered copy of ``graph`` (see the module docstring); the input is untouched.

    ``print_ir_after``: "all", or step names (``lower.bias`` or ``bias``), dumped to
    stdout, a stream or (``ir_out`` a folder) one file per step. ``verify``: run the
    verifier after every step (the result is always verified).
    """
    if io not in IO_MODES:
        raise ExportError(f"io must be one of {IO_MODES}, got {io!r}")
    g = graph.clone()
    kind = None
    done: list[str] = []
    for index, step in enumerate(STEPS):
        kind = kind or (None if step.name == "legalise" else _graph_kind(g))
        if kind is not None and kind not in step.kinds:
            continue
        step.run(g, io)
        name = f"lower.{step.name}"
        if verify:
            try:
                g.verify()
            except QatirError as e:
                raise QatirError(f"verifier failed after lowering step {name!r}: {e} "
                                 f"(steps run before it: {done or 'none'})") from e
        done.append(name)
        if _wanted(print_ir_after, name):
            _dump(g, index, name, ir_out)
    g.verify()
    return g

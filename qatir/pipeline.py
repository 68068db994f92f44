"""The pass manager: a registry of named passes, plug-in loading, and the pipeline runner.

A pass is a function ``fn(graph, ctx) -> bool`` (True when it modified the
graph) or a class whose instances have ``run(graph, ctx) -> bool``; either is
registered with :func:`register_pass`. Passes shipped with qatir live in the
``passes/`` folder (importable as ``qatir.passes``) and are found exactly like
a user's: through the entry-point group ``qatir.passes``. This module never
imports a built-in pass by name.

:func:`run_pipeline` runs an ordered list of pass names on a graph in place,
verifies the IR after each pass, optionally prints the IR dump after chosen
passes, and times each pass. :func:`quantize` is the public entry point behind
``qatir.quantize``: it works on a clone and leaves its input untouched.
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from qatir.errors import PassError, QatirError, VerifyError
from qatir.ir import Graph

if TYPE_CHECKING:
    from qatir.patterns import Trace
    from qatir.table import Table

ENTRY_POINT_GROUP = "qatir.passes"

#: Fold and fuse only: the float graph that training and the writer's float export use.
FLOAT_PIPELINE: tuple[str, ...] = (
    "fold_constants",
    "remove_identities",
    "fold_pad_into_window",
    "fold_batch_norm",
    "fold_bias_add",
    "div_to_mul",
    "fold_scale_shift",
    "lower_clip",
    "lower_relu_0_to_1",
    "fuse_hard_swish",
    "fuse_hard_swish_spelled",
    "canonicalize_layer_norm",
    "fold_scale_into_conv",
    "fuse_activations",
    "eliminate_dead_code",
)

#: The default quantization pipeline: the float pipeline, cross-layer equalization (when
#: the table asks for it), then fake-quant placement.
DEFAULT_PIPELINE: tuple[str, ...] = FLOAT_PIPELINE + (
    "equalize_cross_layer",
    "insert_fake_quant",
    "propagate_quant_constraints",
    "eliminate_dead_code",
)

#: Named pipelines accepted wherever a list of pass names is.
PIPELINES: dict[str, tuple[str, ...]] = {"default": DEFAULT_PIPELINE, "float": FLOAT_PIPELINE}

PassFn = Callable[[Graph, "PassContext"], bool]


@dataclass(frozen=True)
class PassInfo:
    """A registered pass: its name, the callable that runs it, and a one-line summary."""

    name: str
    fn: PassFn
    doc: str
    origin: str


_PASSES: dict[str, PassInfo] = {}
_LOADED_ENTRY_POINTS: set[tuple[str, str]] = set()
_plugins_scanned = False


def _summary(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def register_pass(name: str, *, replace: bool = False) -> Callable[[Any], Any]:
    """Decorator: register a pass function ``fn(graph, ctx) -> bool`` or a pass class.

    A class is instantiated once (no arguments) and its ``run(graph, ctx)`` is called.
    Registering a different object under a taken name needs ``replace=True``.
    """

    def deco(obj: Any) -> Any:
        if inspect.isclass(obj):
            instance = obj()
            if not callable(getattr(instance, "run", None)):
                raise QatirError(f"pass class {obj.__qualname__} registered as {name!r} "
                                 "has no run(graph, ctx) method")
            fn: PassFn = instance.run
        elif callable(obj):
            fn = obj
        else:
            raise QatirError(f"register_pass({name!r}): {obj!r} is neither a function nor a class")
        old = _PASSES.get(name)
        origin = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', name)}"
        if old is not None and old.origin != origin and not replace:
            raise QatirError(f"pass {name!r} is already registered by {old.origin} "
                             "(pass replace=True to override)")
        _PASSES[name] = PassInfo(name, fn, _summary(obj), origin)
        return obj

    return deco


def load_plugins(rescan: bool = False) -> list[str]:
    """Import every entry point of the ``qatir.passes`` group not imported yet.

    Importing a plug-in module registers its passes (it calls :func:`register_pass`).
    The group is scanned once per process; ``rescan=True`` looks again (e.g. after a
    package was installed at run time). Returns the names of newly loaded entry points.
    """
    global _plugins_scanned
    if _plugins_scanned and not rescan:
        return []
    _plugins_scanned = True
    loaded = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = (ep.name, ep.value)
        if key in _LOADED_ENTRY_POINTS:
            continue
        try:
            ep.load()
        except Exception as e:
            dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
            raise QatirError(f"pass plug-in {ep.name!r} = {ep.value!r} (distribution {dist}) "
                             f"failed to import: {type(e).__name__}: {e}") from e
        _LOADED_ENTRY_POINTS.add(key)
        loaded.append(ep.name)
    return loaded


def get_pass(name: str) -> PassInfo:
    """The registered pass ``name``; QatirError lists the known passes."""
    load_plugins()
    try:
        return _PASSES[name]
    except KeyError:
        known = ", ".join(sorted(_PASSES))
        raise QatirError(f"unknown pass {name!r} (registered: {known})") from None


def list_passes() -> dict[str, str]:
    """Registered passes: name -> one-line summary (for ``qatir passes``)."""
    load_plugins()
    return {name: _PASSES[name].doc for name in sorted(_PASSES)}


def list_pipelines() -> dict[str, list[str]]:
    """Named pipelines: name -> pass names."""
    return {name: list(p) for name, p in PIPELINES.items()}


def list_tables() -> dict[str, str]:
    """Built-in pattern tables: name -> file path."""
    from qatir.table import builtin_tables

    return {name: str(path) for name, path in builtin_tables().items()}


def list_quantizers() -> dict[str, str]:
    """Registered quantizers: name -> one-line summary."""
    from qatir.quantizers import all_quantizers

    return {name: _summary(cls) for name, cls in sorted(all_quantizers().items())}


# ---------------------------------------------------------------- running


@dataclass
class PassContext:
    """What a pass may read besides the graph: the pattern table, options, the trace.

    ``notes`` collects plain-data remarks a pass wants to leave in the report
    (e.g. which nodes were kept float).
    """

    table: Table
    options: dict[str, Any] = field(default_factory=dict)
    trace: Trace | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    pass_name: str = ""


@dataclass
class PassRecord:
    """One executed pass: whether it changed the graph, and how long it and the verifier took."""

    name: str
    modified: bool
    seconds: float
    verify_seconds: float
    nodes_after: int


@dataclass
class PipelineReport:
    """Per-pass timing and notes of one pipeline run."""

    records: list[PassRecord] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    trace: Trace | None = None

    @property
    def total_seconds(self) -> float:
        return sum(r.seconds + r.verify_seconds for r in self.records)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-safe), stored in ``graph.metadata["pipeline"]`` by :func:`quantize`."""
        out: dict[str, Any] = {
            "passes": [{"name": r.name, "modified": r.modified, "seconds": r.seconds,
                        "verify_seconds": r.verify_seconds, "nodes_after": r.nodes_after}
                       for r in self.records],
            "notes": self.notes,
        }
        if self.trace is not None:
            out["trace"] = self.trace.to_list()
        return out

    def format(self) -> str:
        lines = [f"{'pass':<32} {'modified':>8} {'ms':>9} {'verify ms':>10} {'nodes':>7}"]
        for r in self.records:
            lines.append(f"{r.name:<32} {str(r.modified):>8} {r.seconds * 1e3:9.2f} "
                         f"{r.verify_seconds * 1e3:10.2f} {r.nodes_after:>7}")
        lines.append(f"total {self.total_seconds * 1e3:.2f} ms")
        return "\n".join(lines)


def resolve_pipeline(passes: str | Sequence[str] | None) -> list[str]:
    """A pipeline name ("default", "float") or a list of pass names -> list of names."""
    if passes is None:
        return list(DEFAULT_PIPELINE)
    if isinstance(passes, str):
        if passes in PIPELINES:
            return list(PIPELINES[passes])
        return [passes]
    return list(passes)


def _wanted(selection: str | Iterable[str] | None, name: str) -> bool:
    if selection is None:
        return False
    if isinstance(selection, str):
        return selection == "all" or selection == name
    return name in selection


def _emit_dump(graph: Graph, index: int, name: str, out: TextIO | str | os.PathLike | None) -> None:
    write_dump(f"// IR after pass {index}: {name}\n{graph}\n", out, f"{index:02d}_{name}.txt")


def write_dump(text: str, out: TextIO | str | os.PathLike | None, filename: str) -> None:
    """An IR dump to stdout (``out`` None), a stream, or ``filename`` in the folder ``out``
    (the pass manager's and lowering's ``--print-ir-after``)."""
    if out is None:
        sys.stdout.write(text)
    elif hasattr(out, "write"):
        out.write(text)  # type: ignore[union-attr]
    else:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / filename).write_text(text)


def _modified(result: Any) -> bool:
    """A pass returns whether it changed the graph; returning a graph is a plug-in mistake.

    Passes edit the graph they are given in place; a returned Graph would be silently
    dropped, so it is refused rather than ignored.
    """
    if isinstance(result, Graph):
        raise QatirError("returned a Graph; a pass edits the graph it is given in place and "
                         "returns True/False (modified)")
    return bool(result)


@cache
def _pass_error_class(cls: type[QatirError]) -> type[PassError]:
    """``PassError`` combined with the QatirError subclass a pass raised (e.g. NumericsError)."""

    def init(self: Exception, msg: str) -> None:
        Exception.__init__(self, msg)

    return type(f"Pass{cls.__name__}", (PassError, cls), {"__init__": init,
                                                          "__module__": __name__})


def pass_error(e: BaseException, msg: str) -> PassError:
    """The PassError for an exception raised inside a pass.

    A :class:`QatirError` subclass raised by the pass is kept: the result is an
    instance of both PassError and that class, so ``except NumericsError`` (say)
    still catches a NaN found by a pass, and the message names the pass.
    """
    if isinstance(e, QatirError) and not isinstance(e, PassError) and type(e) is not QatirError:
        return _pass_error_class(type(e))(msg)
    return PassError(msg)


def _verify_input(graph: Graph) -> None:
    """A broken graph handed to the pipeline is reported as such, not blamed on its first pass."""
    try:
        graph.verify()
    except Exception as e:
        detail = str(e) if isinstance(e, QatirError) else f"{type(e).__name__}: {e}"
        raise VerifyError(f"the graph given to the pipeline is invalid (no pass has run): "
                          f"{detail}") from e


def run_pipeline(graph: Graph, passes: str | Sequence[str] | None = None, *, table: Any = None,
                 verify: bool = True, print_ir_after: str | Iterable[str] | None = None,
                 ir_out: TextIO | str | os.PathLike | None = None, trace: Any = False,
                 **options: Any) -> PipelineReport:
    """Run passes on ``graph`` in place and return the per-pass report.

    ``print_ir_after`` is ``"all"`` or pass names; the dump goes to stdout, to a
    stream, or (``ir_out`` a folder path) into one file per pass. An exception in a
    pass, or a verifier failure after it, raises :class:`PassError` naming the pass
    and the passes that ran before it.
    """
    from qatir.patterns import Trace
    from qatir.table import load_table

    names = resolve_pipeline(passes)
    infos = [get_pass(n) for n in names]
    tr = trace if isinstance(trace, Trace) else (Trace() if trace else None)
    ctx = PassContext(table=load_table(table), options=dict(options), trace=tr)
    report = PipelineReport(notes=ctx.notes, trace=tr)
    done: list[str] = []
    if verify:
        _verify_input(graph)
    for index, info in enumerate(infos):
        ctx.pass_name = info.name
        t0 = time.perf_counter()
        try:
            modified = _modified(info.fn(graph, ctx))
        except Exception as e:
            raise pass_error(e, f"pass {info.name!r} failed: {type(e).__name__}: {e} "
                                f"(passes run before it: {done or 'none'})") from e
        t1 = time.perf_counter()
        if verify:
            try:
                graph.verify()
            except Exception as e:
                raise pass_error(e, f"verifier failed after pass {info.name!r}: {e} "
                                    f"(passes run before it: {done or 'none'})") from e
        t2 = time.perf_counter()
        done.append(info.name)
        report.records.append(PassRecord(info.name, modified, t1 - t0, t2 - t1, len(graph.nodes)))
        if _wanted(print_ir_after, info.name):
            _emit_dump(graph, index, info.name, ir_out)
    return report


def quantize(graph: Graph, table: Any = None, passes: str | Sequence[str] | None = None,
             print_ir_after: str | Iterable[str] | None = None, verify: bool = True,
             trace: Any = False, **options: Any) -> Graph:
    """Run the pipeline (default: fold, fuse, insert fake-quant) on a clone of ``graph``.

    ``table`` is a path, a built-in table name, a dict or a loaded table (default
    ``int8_default``). The report (timings, notes, trace) is stored as plain data in
    ``result.metadata["pipeline"]``; the input graph is untouched.
    """
    result = graph.clone()
    report = run_pipeline(result, passes, table=table, verify=verify,
                          print_ir_after=print_ir_after, trace=trace, **options)
    result.metadata["pipeline"] = report.to_dict()
    return result


def float_pipeline(graph: Graph, table: Any = None, verify: bool = True, **options: Any) -> Graph:
    """Fold and fuse only (no fake-quant) on a clone of ``graph``."""
    return quantize(graph, table=table, passes=FLOAT_PIPELINE, verify=verify, **options)

"""Pattern tables: TOML files that say what fuses, where fake-quant goes, and what stays float.

A table is validated twice: structurally against
``schemas/pattern_table.schema.json`` (jsonschema), then semantically (op names
exist in the op registry, regexes compile, quantizer names are registered,
fusions name ops that can take them). Every :class:`~qatir.errors.TableError`
names the table file and the entry, e.g. ``my.toml: fusions[2].ops: unknown op 'CONVV'``.
Strings in a table are names or regexes; nothing is evaluated as code. Fusion kinds
are open: a plug-in registers its own with :func:`register_fusion_kind`
(:mod:`qatir.table_fusions`), with a sub-schema for its fields.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from qatir.errors import QatirError, TableError
from qatir.ir import FUSED_ACTIVATIONS, Node
from qatir.ops.registry import fact_map, get_op, has_op
from qatir.table_fusions import register_fusion_kind
from qatir.target import PER_TENSOR_WEIGHTS

__all__ = ["DEFAULT_TABLE", "Table", "builtin_tables", "load_table", "register_fusion_kind",
           "validate_table"]

DEFAULT_TABLE = "int8_default"

#: Ops whose weight layout fold_batch_norm knows (output-channel axis of the weight),
#: from the ops' channel_axis facts.
BN_FOLD_AXES = fact_map("channel_axis")
#: the ``[calibration]`` keys that name a quantizer
QUANTIZER_KINDS = ("activation", "weight", "fixed")


@dataclass(frozen=True)
class Selector:
    """One include/exclude rule: op types and/or a regex searched in the node name."""

    ops: frozenset[str] | None
    name: re.Pattern[str] | None

    def matches(self, node: Node) -> bool:
        if self.ops is not None and node.op not in self.ops:
            return False
        return self.name is None or self.name.search(node.name) is not None


@dataclass(frozen=True)
class Table:
    """A validated pattern table. ``data`` is the plain TOML content; ``source`` names the file."""

    source: str
    data: Mapping[str, Any]
    include: tuple[Selector, ...] = ()
    exclude: tuple[Selector, ...] = ()
    int16: tuple[Selector, ...] = ()
    _fixed: Mapping[str, tuple[float, int]] = field(default_factory=dict)
    #: the ``inputs`` regexes of the ``[[int16]]`` entries (graph inputs read in int16)
    int16_inputs: tuple[re.Pattern[str], ...] = ()

    @property
    def name(self) -> str:
        return str(self.data["name"])

    def fusions(self, kind: str) -> list[tuple[int, dict[str, Any]]]:
        """The fusion entries of ``kind`` with their index in ``fusions``, in table order."""
        return [(i, dict(f)) for i, f in enumerate(self.data.get("fusions", [])) if f["kind"] == kind]

    @property
    def activations(self) -> dict[str, Any]:
        return dict(self.data["activations"])

    @property
    def weights(self) -> dict[str, Any]:
        return dict(self.data["weights"])

    @property
    def calibration(self) -> dict[str, str]:
        """Quantizer name per tensor kind (activation, weight, fixed; input: the graph
        inputs', the activation one unless the table names its own)."""
        cal = self.data["calibration"]
        return {**{k: cal[k] for k in QUANTIZER_KINDS},
                "input": cal.get("input", cal["activation"])}

    @property
    def bias_correction(self) -> bool | str:
        """Whether calibration corrects conv/FC biases (True, False or "auto": kept only
        where it lowers the output error on the calibration data; qatir.bias_correction)."""
        return self.data["calibration"].get("bias_correction", False)

    @property
    def weight_rounding(self) -> str:
        """How calibration rounds conv/FC weights: "nearest", or "gptq" (each layer's
        output error on the calibration data; qatir.weight_rounding)."""
        return self.data["calibration"].get("weight_rounding", "nearest")

    def constraint_ops(self, key: str) -> frozenset[str]:
        return frozenset(self.data["constraints"].get(key, ()))

    def symmetric_inputs(self) -> dict[str, tuple[int, ...]]:
        """op -> input slots whose activation the table quantizes symmetric (zero point 0)."""
        return {op: tuple(int(i) for i in slots)
                for op, slots in self.data["constraints"].get("symmetric_inputs", {}).items()}

    @property
    def fixed_output(self) -> dict[str, tuple[float, int]]:
        """op -> (scale, zero_point) of its output: the ops' fixed_output facts (LiteRT
        fixes them) plus the table's own fixed ranges for other ops."""
        return {**fact_map("fixed_output"), **self._fixed}

    def weight_axis(self, op: str) -> int | None:
        """Per-channel axis of the weights of ``op``; None means per-tensor."""
        axes = self.data["weights"].get("per_channel_axis", {})
        return int(axes[op]) if op in axes else None

    def is_quantized(self, node: Node) -> bool:
        """True unless the include/exclude rules keep ``node`` float."""
        if self.include and not any(s.matches(node) for s in self.include):
            return False
        return not any(s.matches(node) for s in self.exclude)

    def wants_int16(self, node: Node) -> bool:
        """True when an ``[[int16]]`` entry selects ``node`` (16x8 where LiteRT can run it)."""
        return any(s.matches(node) for s in self.int16)

    def wants_int16_input(self, name: str) -> bool:
        """True when an ``[[int16]]`` entry's ``inputs`` regex selects the graph input
        ``name``: it is quantized to int16 (the file's interface, or its QUANTIZE with
        float edges, becomes int16)."""
        return any(p.search(name) is not None for p in self.int16_inputs)


def builtin_tables() -> dict[str, Path]:
    """Tables shipped in ``passes/tables``: name -> path.

    Located with ``find_spec`` so that listing tables does not import (and so
    register) the built-in passes; those arrive through the entry point only.
    """
    spec = importlib.util.find_spec("qatir.passes")
    if spec is None or not spec.submodule_search_locations:
        return {}
    out: dict[str, Path] = {}
    for loc in spec.submodule_search_locations:
        folder = Path(loc) / "tables"
        if folder.is_dir():
            out.update({p.stem: p for p in sorted(folder.glob("*.toml"))})
    return out


@lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    text = (resources.files("qatir.schemas") / "pattern_table.schema.json").read_text()
    return json.loads(text)


def _path_str(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _validate_schema(data: dict[str, Any], source: str) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)),
                                                                e.message))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        raise TableError(f"{source}: {_path_str(err.absolute_path)}: {err.message}")


def _check_ops(ops: Any, source: str, where: str) -> None:
    for op in ops:
        if not has_op(op):
            raise TableError(f"{source}: {where}: unknown op {op!r}")


def _check_quantizer(name: str, source: str, where: str) -> None:
    from qatir.quantizers import get_quantizer

    try:
        get_quantizer(name)
    except QatirError as e:
        raise TableError(f"{source}: {where}: {e}") from None


def _check_fusion(i: int, f: dict[str, Any], source: str) -> None:
    where = f"fusions[{i}]"
    _check_ops(f.get("ops", ()), source, f"{where}.ops")
    kind = f["kind"]
    if kind == "batch_norm":
        for op in f["ops"]:
            if op not in BN_FOLD_AXES:
                raise TableError(f"{source}: {where}.ops: cannot fold a batch norm into {op!r} "
                                 f"(known weight layouts: {sorted(BN_FOLD_AXES)})")
    if kind == "activation":
        for op in f["ops"]:
            if "fused_activation" not in get_op(op).attrs:
                raise TableError(f"{source}: {where}.ops: op {op!r} has no fused_activation")
        for act in f["activations"]:
            if act not in FUSED_ACTIVATIONS or act == "NONE":
                raise TableError(f"{source}: {where}.activations: {act!r} is not a fusable "
                                 f"activation (one of {list(FUSED_ACTIVATIONS[1:])})")
    if kind == "clip":
        _check_ops([f["to"]], source, f"{where}.to")
        if not f["min"] < f["max"]:
            raise TableError(f"{source}: {where}: min {f['min']} must be below max {f['max']}")


def _check_weight_facts(w: Mapping[str, Any], source: str) -> None:
    """per_channel_axis must be the axis LiteRT's kernel reads (weights.ops is policy)."""
    for op, axis in w.get("per_channel_axis", {}).items():
        want = get_op(op).quant_axis
        if op in PER_TENSOR_WEIGHTS or want is None:
            raise TableError(f"{source}: weights.per_channel_axis.{op}: qatir exports {op} "
                             "weights per-tensor only; remove the entry")
        if int(axis) != want:
            raise TableError(f"{source}: weights.per_channel_axis.{op}: axis {axis} contradicts "
                             f"the op's TFLite per-channel axis {want}")


def _check_grid_facts(key: str, ops: Any, source: str) -> None:
    """An op LiteRT fixes cannot share or inherit a range; an op whose output is off its
    input's grid cannot inherit (its output would be left unquantized)."""
    for op in ops:
        role = get_op(op).quant
        if role == "fixed":
            raise TableError(f"{source}: constraints.{key}: {op!r} has a fixed output "
                             f"{get_op(op).fixed_output} (LiteRT fixes it); remove it here")
        if key == "inherit" and role not in ("same_scale", "inherit"):
            raise TableError(f"{source}: constraints.inherit: {op!r} does not keep its input's "
                             "grid, so its output cannot inherit the input's parameters "
                             "(list it under same_scale, or leave it out)")


def _check_fixed_fact(op: str, scale: float, zp: int, source: str) -> None:
    """A table's fixed output must agree with the op's fact (LiteRT checks it)."""
    fact = get_op(op).fixed_output
    role = get_op(op).quant
    if fact is not None and (zp != fact[1] or abs(scale - fact[0]) > 1e-6 * fact[0]):
        raise TableError(f"{source}: constraints.fixed_output.{op}: scale {scale:g}, zero point "
                         f"{zp} contradicts LiteRT's fixed output for {op} (scale {fact[0]:g}, "
                         f"zero point {fact[1]}); remove the entry or use those values")
    if role == "same_scale":
        raise TableError(f"{source}: constraints.fixed_output.{op}: {op}'s int8 kernel needs "
                         "its output on its input's grid; it cannot have a fixed output")


def _regex(sel: Mapping[str, Any], key: str, where: str, source: str) -> re.Pattern[str]:
    try:
        return re.compile(sel[key])
    except re.error as e:
        raise TableError(f"{source}: {where}.{key}: bad regex {sel[key]!r}: {e}") from None


def _compile_selectors(data: dict[str, Any], key: str, source: str) -> tuple[Selector, ...]:
    """The node selectors of the ``key`` entries (an ``[[int16]]`` entry with only
    ``inputs`` selects no node)."""
    out = []
    for i, sel in enumerate(data.get(key, [])):
        ops = sel.get("ops")
        if ops is None and "name" not in sel:
            continue
        if ops is not None:
            _check_ops(ops, source, f"{key}[{i}].ops")
        pattern = _regex(sel, "name", f"{key}[{i}]", source) if "name" in sel else None
        out.append(Selector(frozenset(ops) if ops is not None else None, pattern))
    return tuple(out)


def _compile_inputs(data: dict[str, Any], source: str) -> tuple[re.Pattern[str], ...]:
    return tuple(_regex(sel, "inputs", f"int16[{i}]", source)
                 for i, sel in enumerate(data.get("int16", [])) if "inputs" in sel)


def validate_table(data: dict[str, Any], source: str = "<table>") -> Table:
    """Validate plain table data and return the :class:`Table`; TableError names the entry."""
    from qatir.table_fusions import validate_fusion

    _validate_schema(data, source)
    for i, f in enumerate(data.get("fusions", [])):
        validate_fusion(i, f, source, _schema())
        _check_fusion(i, f, source)
    act = data["activations"]
    lo, hi = act.get("initial_range", [-6.0, 6.0])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= 0.0 <= hi and lo < hi):
        raise TableError(f"{source}: activations.initial_range: [{lo}, {hi}] must be finite "
                         "and contain 0")
    w = data["weights"]
    _check_ops(w["ops"], source, "weights.ops")
    _check_ops(w.get("per_channel_axis", {}).keys(), source, "weights.per_channel_axis")
    for kind in (*QUANTIZER_KINDS, "input"):
        if kind in data["calibration"]:
            _check_quantizer(data["calibration"][kind], source, f"calibration.{kind}")
    _check_weight_facts(w, source)
    cons = data["constraints"]
    for key in ("inherit", "same_scale"):
        _check_ops(cons.get(key, ()), source, f"constraints.{key}")
        _check_grid_facts(key, cons.get(key, ()), source)
    _check_ops(cons.get("symmetric_inputs", {}).keys(), source, "constraints.symmetric_inputs")
    loose = set(cons.get("requantize_shared_inputs", ())) - set(cons.get("same_scale", ()))
    if loose:
        raise TableError(f"{source}: constraints.requantize_shared_inputs: {sorted(loose)} not "
                         "in constraints.same_scale (only tied inputs can be untied)")
    both = set(cons.get("inherit", ())) & set(cons.get("same_scale", ()))
    if both:
        raise TableError(f"{source}: constraints: {sorted(both)} listed in both inherit and same_scale")
    fixed: dict[str, tuple[float, int]] = {}
    bits = int(act["bits"])
    for op, p in cons.get("fixed_output", {}).items():
        _check_ops([op], source, "constraints.fixed_output")
        zp = int(p["zero_point"])
        if not -(1 << (bits - 1)) <= zp < (1 << (bits - 1)):
            raise TableError(f"{source}: constraints.fixed_output.{op}.zero_point: {zp} outside "
                             f"the {bits}-bit range")
        scale = float(p["scale"])
        if not (math.isfinite(scale) and scale > 0 and math.isfinite(scale * (1 << bits))):
            raise TableError(f"{source}: constraints.fixed_output.{op}.scale: {scale} must be a "
                             "finite positive number")
        _check_fixed_fact(op, scale, zp, source)
        fixed[op] = (scale, zp)
    return Table(source, data, _compile_selectors(data, "include", source),
                 _compile_selectors(data, "exclude", source),
                 _compile_selectors(data, "int16", source), fixed,
                 _compile_inputs(data, source))


def load_table(table: str | os.PathLike | Mapping[str, Any] | Table | None = None) -> Table:
    """Load a table: None (the default), a built-in name, a .toml path, plain data, or a Table."""
    if isinstance(table, Table):
        return table
    if table is None:
        table = DEFAULT_TABLE
    if isinstance(table, Mapping):
        return validate_table(dict(table), "<table>")
    text_path = os.fspath(table)
    builtins = builtin_tables()
    if text_path in builtins and not os.path.exists(text_path):
        path = builtins[text_path]
    else:
        path = Path(text_path)
    source = path.name if path is builtins.get(text_path) else text_path
    if not path.is_file():
        raise TableError(f"{text_path}: no such table file (built-in tables: {sorted(builtins)})")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise TableError(f"{source}: invalid TOML: {e}") from None
    return validate_table(data, source)

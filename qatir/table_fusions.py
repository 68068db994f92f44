"""Fusion kinds of a pattern table: each kind has its own sub-schema and semantic check.

A ``[[fusions]]`` entry is ``{name, kind, note?, ...}``; the other fields are the kind's.
The built-in kinds (batch_norm, activation, clip, ...) and their sub-schemas come from
``schemas/pattern_table.schema.json`` (``$defs.fusion_kinds``); a plug-in adds its own
kind with :func:`register_fusion_kind`, a JSON Schema for its fields and an optional
check, and reads its entries with ``table.fusions(kind)`` in its pass. Nothing in a
table is evaluated as code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from qatir.errors import QatirError, TableError

#: check(index, entry, source) raises TableError naming ``fusions[index]...``.
FusionCheck = Callable[[int, dict[str, Any], str], None]


@dataclass(frozen=True)
class FusionKind:
    """A fusion kind: the JSON Schema of its own fields (``properties``, ``required``)
    and an optional semantic check run after the schema."""

    name: str
    properties: Mapping[str, Any]
    required: tuple[str, ...] = ()
    check: FusionCheck | None = None


_KINDS: dict[str, FusionKind] = {}


def register_fusion_kind(name: str, properties: Mapping[str, Any] | None = None, *,
                         required: tuple[str, ...] | list[str] = (),
                         check: FusionCheck | None = None, replace: bool = False) -> FusionKind:
    """Register a fusion kind for ``[[fusions]]`` entries (``kind = name``).

    ``properties`` maps the kind's own field names to JSON Schema fragments (they may
    ``$ref`` the table schema's ``#/$defs/opname`` / ``oplist``); ``name``, ``kind``
    and ``note`` are always allowed, any other field is refused.
    """
    _builtin_kinds()
    if name in _KINDS and not replace:
        raise QatirError(f"fusion kind {name!r} is already registered "
                         "(pass replace=True to override)")
    props = dict(properties or {})
    missing = [r for r in required if r not in props]
    if missing:
        raise QatirError(f"fusion kind {name!r}: required field(s) {missing} have no schema")
    kind = FusionKind(name, props, tuple(required), check)
    _KINDS[name] = kind
    return kind


def fusion_kinds() -> dict[str, FusionKind]:
    _builtin_kinds()
    return dict(_KINDS)


_LOADED: list[bool] = []


def _builtin_kinds() -> None:
    """Register the kinds the shipped schema defines (once, on first use)."""
    if _LOADED:
        return
    _LOADED.append(True)
    from qatir.table import _schema

    defs = _schema()["$defs"]
    fields = defs["builtin_fusion_fields"]
    for name, sub in defs["fusion_kinds"].items():
        _KINDS.setdefault(name, FusionKind(name, fields, tuple(sub.get("required", ()))))


def validate_fusion(i: int, entry: dict[str, Any], source: str, root: Mapping[str, Any]) -> None:
    """Check ``fusions[i]`` against its kind's sub-schema and check (TableError names it)."""
    import jsonschema

    kinds = fusion_kinds()
    where = f"fusions[{i}]"
    kind = kinds.get(entry["kind"])
    if kind is None:
        raise TableError(f"{source}: {where}.kind: unknown fusion kind {entry['kind']!r} "
                         f"(known: {sorted(kinds)}; a plug-in adds one with "
                         "qatir.table.register_fusion_kind)")
    schema = {
        "$defs": root["$defs"], "type": "object", "additionalProperties": False,
        "required": ["name", "kind", *kind.required],
        "properties": {"name": {}, "kind": {}, "note": {}, **kind.properties},
    }
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(entry))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
        raise TableError(f"{source}: {where}{path}: {err.message} (fusion kind {kind.name!r})")
    if kind.check is not None:
        kind.check(i, entry, source)

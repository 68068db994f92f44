"""The op registry: each op is defined once (arity, attributes, shape inference).

Other per-op tables (TF kernel, integer reference kernel, TFLite builtin
mapping) live beside the modules that use them and are keyed by op name; a
missing entry raises an error naming the op. The registry is public, so a user
can define a custom op with :func:`register_op`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qatir.errors import QatirError, ShapeError

InferFn = Callable[[Any], list[tuple[tuple[int | None, ...], Any]]]


@dataclass(frozen=True)
class OpDef:
    """What the IR knows of an op.

    ``infer(node)`` returns ``[(shape, dtype), ...]`` for the outputs from the
    node's inputs and attributes. ``attrs`` holds the defaults every node gets.
    ``ir_only`` ops (BATCH_NORM, FAKE_QUANT, CLIP, ...) must be removed or
    lowered before export.
    """

    name: str
    infer: InferFn
    min_inputs: int = 1
    max_inputs: int = 1
    num_outputs: int = 1
    attrs: dict[str, Any] = field(default_factory=dict)
    ir_only: bool = False
    doc: str = ""

    def with_defaults(self, attrs: dict[str, Any] | None) -> dict[str, Any]:
        merged = dict(self.attrs)
        if attrs:
            merged.update(attrs)
        return merged


_OPS: dict[str, OpDef] = {}


def register_op(
    name: str,
    infer: InferFn,
    *,
    inputs: int | tuple[int, int] = 1,
    outputs: int = 1,
    attrs: dict[str, Any] | None = None,
    ir_only: bool = False,
    doc: str = "",
    replace: bool = False,
) -> OpDef:
    """Define an op. Re-defining an existing op needs ``replace=True``."""
    if name in _OPS and not replace:
        raise QatirError(f"op {name!r} is already registered (pass replace=True to override)")
    lo, hi = (inputs, inputs) if isinstance(inputs, int) else inputs
    opdef = OpDef(name, infer, lo, hi, outputs, dict(attrs or {}), ir_only, doc)
    _OPS[name] = opdef
    return opdef


def get_op(name: str) -> OpDef:
    try:
        return _OPS[name]
    except KeyError:
        raise QatirError(f"unknown op {name!r}: no definition in the op registry") from None


def has_op(name: str) -> bool:
    return name in _OPS


def all_ops() -> dict[str, OpDef]:
    return dict(_OPS)


def check(cond: bool, msg: str) -> None:
    """Raise a ShapeError with ``msg`` unless ``cond`` holds (for infer functions)."""
    if not cond:
        raise ShapeError(msg)

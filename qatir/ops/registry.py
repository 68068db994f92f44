"""The op registry: each op is defined once (arity, attributes, shape inference, facts).

The per-op *facts* that several modules need (which input is the weight and
which the bias, the weight's output-channel axis, the TFLite per-channel axis,
the quantization role, kernel availability in LiteRT) are typed fields of
:class:`OpDef`, set once in ``qatir/ops/defs.py``; every list of ops elsewhere
(lowering, batch-norm folding, the TFLite frontend, the TF executor) is derived
from them with :func:`ops_where`. Other per-op tables (TF kernel, integer
reference kernel, TFLite emitter) live beside the modules that use them and are
keyed by op name; ``tests/test_op_coverage.py`` checks that every op has them.
The registry is public, so a user can define a custom op with :func:`register_op`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from qatir.errors import QatirError, ShapeError

InferFn = Callable[[Any], list[tuple[tuple[int | None, ...], Any]]]
#: How an op's output quantization relates to its input's (a LiteRT kernel fact):
#: "same_scale": the int8 kernel needs input and output on one grid; "inherit": the
#: output may take the input's params (e.g. RELU); "fixed": the kernel fixes the output.
QuantRole = Literal["same_scale", "inherit", "fixed"]
QUANT_ROLES = ("same_scale", "inherit", "fixed")


@dataclass(frozen=True)
class OpDef:
    """What the IR knows of an op.

    ``infer(node)`` returns ``[(shape, dtype), ...]`` for the outputs from the
    node's inputs and attributes. ``attrs`` holds the defaults every node gets.
    ``ir_only`` ops (BATCH_NORM, FAKE_QUANT, CLIP, ...) must be removed or
    lowered before export.

    Facts (defaults: none): ``weight``/``bias`` are the input slots of the weight
    and the bias; ``channel_axis`` is the weight axis that indexes output channels
    (batch-norm folding, bias length); ``quant_axis`` is the weight axis TFLite
    quantizes per channel on (``None``: LiteRT has no per-channel form); ``quant``
    is the output's quantization role (:data:`QuantRole`) and ``fixed_output`` the
    ``(scale, zero_point)`` LiteRT fixes for a "fixed" op; ``int8``/``int16`` say
    that LiteRT has an int8 / 16x8 kernel (``int8``: one qatir's writer and integer
    reference also support); ``params`` names further parameter slots
    (``((1, "alpha"),)``) for the TF executor.
    """

    name: str
    infer: InferFn
    min_inputs: int = 1
    max_inputs: int = 1
    num_outputs: int = 1
    attrs: dict[str, Any] = field(default_factory=dict)
    ir_only: bool = False
    doc: str = ""
    weight: int | None = None
    bias: int | None = None
    channel_axis: int | None = None
    quant_axis: int | None = None
    quant: QuantRole | None = None
    fixed_output: tuple[float, int] | None = None
    int8: bool = False
    int16: bool = False
    params: tuple[tuple[int, str], ...] = ()

    def __post_init__(self) -> None:
        if self.quant is not None and self.quant not in QUANT_ROLES:
            raise QatirError(f"op {self.name!r}: quant must be one of {QUANT_ROLES}, "
                             f"not {self.quant!r}")
        if (self.quant == "fixed") != (self.fixed_output is not None):
            raise QatirError(f"op {self.name!r}: fixed_output is set exactly when quant='fixed'")
        if (self.weight is None) != (self.channel_axis is None):
            raise QatirError(f"op {self.name!r}: a weight slot needs its channel_axis")

    def param_slots(self) -> dict[int, str]:
        """Input slot -> role ("weight", "bias", ...) of this op's parameters."""
        out = dict(self.params)
        if self.weight is not None:
            out[self.weight] = "weight"
        if self.bias is not None:
            out[self.bias] = "bias"
        return out

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
    **facts: Any,
) -> OpDef:
    """Define an op; ``facts`` are :class:`OpDef` fact fields (``weight=1``, ``int8=True``...).

    Re-defining an existing op needs ``replace=True``.
    """
    if name in _OPS and not replace:
        raise QatirError(f"op {name!r} is already registered (pass replace=True to override)")
    unknown = set(facts) - _FACT_FIELDS
    if unknown:
        raise QatirError(f"op {name!r}: unknown fact(s) {sorted(unknown)} "
                         f"(known: {sorted(_FACT_FIELDS)})")
    lo, hi = (inputs, inputs) if isinstance(inputs, int) else inputs
    opdef = OpDef(name, infer, lo, hi, outputs, dict(attrs or {}), ir_only, doc, **facts)
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


_FACT_FIELDS = frozenset({"weight", "bias", "channel_axis", "quant_axis", "quant",
                          "fixed_output", "int8", "int16", "params"})


def ops_where(**facts: Any) -> frozenset[str]:
    """Names of the ops whose facts equal ``facts``, e.g. ``ops_where(quant="same_scale")``.

    A value of ``...`` (Ellipsis) means "set" (not None/False): ``ops_where(weight=...)``.
    """
    unknown = set(facts) - _FACT_FIELDS
    if unknown:
        raise QatirError(f"unknown op fact(s) {sorted(unknown)} (known: {sorted(_FACT_FIELDS)})")

    def ok(d: OpDef) -> bool:
        for k, want in facts.items():
            have = getattr(d, k)
            if want is ...:
                if have is None or have is False:
                    return False
            elif have != want:
                return False
        return True

    return frozenset(n for n, d in _OPS.items() if ok(d))


def fact_map(fact: str, **where: Any) -> dict[str, Any]:
    """op -> value of ``fact`` for the ops where it is set (and ``where`` holds)."""
    return {n: getattr(_OPS[n], fact) for n in sorted(ops_where(**{fact: ..., **where}))}


def check(cond: bool, msg: str) -> None:
    """Raise a ShapeError with ``msg`` unless ``cond`` holds (for infer functions)."""
    if not cond:
        raise ShapeError(msg)

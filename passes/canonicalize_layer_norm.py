"""canonicalize_layer_norm: the TFLite converter's LayerNorm becomes the centred chain.

TF's converter writes Keras ``LayerNormalization`` (``tf.nn.batch_normalization``) as
``x·s + t`` with ``s = RSQRT(MEAN(SQUARED_DIFFERENCE(x, μ)) + ε)·γ`` and
``t = NEG(μ)·s (+ β)`` or ``t = β − μ·s``. In int8 the two full-size terms are large
and nearly cancel, and NEG has no int8 kernel: Keras ConvNeXt-T measured 4.4 dB with 23
float islands. The same value is ``(x − μ)·RSQRT(σ² + ε)·γ + β``, the chain qatir's
frontends emit (:mod:`qatir.frontends.norm_chain`): the rewrite keeps MEAN,
SQUARED_DIFFERENCE, MEAN, ADD ε and RSQRT and replaces the tail by SUB, MUL, MUL γ, ADD β.
The old tail is left for ``eliminate_dead_code``.

Exporters below opset 17 (torch's TorchScript exporter) spell LayerNorm out:
``(x − μ) / SQRT(MEAN((x − μ)²) + ε)·γ + β``. SQRT and a DIV by a tensor have no int8
kernel (two float islands per norm); ``DIV(a, SQRT(b)) = MUL(a, RSQRT(b))`` makes the
whole spelling int8 (the square stays MUL(d, d)).
"""

from __future__ import annotations

import numpy as np

from qatir.ir import Graph
from qatir.patterns import AnyValue, Const, Match, Op, Rewriter, Rule, RuleTable, apply_rules
from qatir.pipeline import PassContext, register_pass
from qatir.table import Table

_NONE = {"fused_activation": "NONE"}


def _mul(a, b, capture: str | None = None) -> Op:
    return Op("MUL", inputs=(a, b), attrs=_NONE, commutative=True, capture=capture)


def _patterns() -> list[Op]:
    """x·s + t for s = r·γ or r, t = NEG(μ)·s, NEG(μ)·s + β or β − μ·s."""
    mean = Op("MEAN", inputs=(AnyValue("x"),), attrs={"keep_dims": True}, capture="mean")
    sq = Op("SQUARED_DIFFERENCE", inputs=(AnyValue("x"), mean), commutative=True)
    var = Op("MEAN", inputs=(sq,), attrs={"keep_dims": True}, capture="var")
    inv = Op("RSQRT", inputs=(Op("ADD", inputs=(var, Const("eps")), attrs=_NONE,
                                 commutative=True),), capture="inv")
    pats = []
    for s in (_mul(inv, Const("gamma")), inv):
        negated = _mul(Op("NEG", inputs=(mean,)), s)
        shifted = Op("ADD", inputs=(negated, Const("beta")), attrs=_NONE, commutative=True)
        subtracted = Op("SUB", inputs=(Const("beta"), _mul(mean, s)), attrs=_NONE)
        for t in (negated, shifted, subtracted):
            pats.append(Op("ADD", inputs=(_mul(AnyValue("x"), s), t), attrs=_NONE,
                           commutative=True))
    return pats


def _check(m: Match) -> str | None:
    x, y = m["x"], m.root.output
    if x.dtype.kind != "f" or x.shape != y.shape:
        return "the constants broadcast x to another shape"
    if m["mean"].attrs["axis"] != m["var"].attrs["axis"]:
        return "the two MEANs reduce different axes"
    for key in ("eps", "gamma", "beta"):
        t = m.get(key)
        if t is not None and t.data.dtype.kind != "f":
            return f"%{t.name} is not a float constant"
    return None


def _rewrite(rw: Rewriter, m: Match) -> None:
    name = m.root.name
    x, mean = m["x"], m["mean"].output
    y = rw.add_node("SUB", [x, mean], name=f"{name}__centred").output
    y = rw.add_node("MUL", [y, m["inv"].output], name=f"{name}__normed").output
    if m.get("gamma") is not None:
        y = rw.add_node("MUL", [y, m["gamma"]], name=f"{name}__scaled").output
    if m.get("beta") is not None and np.any(m["beta"].data != 0):
        y = rw.add_node("ADD", [y, m["beta"]], name=f"{name}__shifted").output
    rw.replace(m.root.output, y)
    rw.remove(m.root)


_DIV_BY_SQRT = Op("DIV", inputs=(AnyValue("a"), Op("SQRT", inputs=(AnyValue("b"),),
                                                    single_use=True, capture="sqrt")),
                  attrs=_NONE)


def _rewrite_div(rw: Rewriter, m: Match) -> None:
    inv = rw.add_node("RSQRT", [m["b"]], name=f"{m['sqrt'].name}__rsqrt").output
    y = rw.add_node("MUL", [m["a"], inv], name=f"{m.root.name}__mul").output
    rw.replace(m.root.output, y)
    rw.remove(m.root)
    rw.remove(m["sqrt"])


def rules_from_table(table: Table) -> RuleTable:
    rules = []
    for _, f in table.fusions("layer_norm_spelled"):
        rules += [Rule(f"{f['name']}[{i}]", pat, _check, _rewrite, f.get("note", ""))
                  for i, pat in enumerate(_patterns())]
        rules.append(Rule(f"{f['name']}[div_by_sqrt]", _DIV_BY_SQRT, None, _rewrite_div,
                          "a / √b = a · (1/√b)"))
    return RuleTable(rules)


@register_pass("canonicalize_layer_norm")
def canonicalize_layer_norm(graph: Graph, ctx: PassContext) -> bool:
    """x·(r·γ) + (β − μ·r·γ) (TF's converter) → (x − μ)·r·γ + β, r = 1/√(σ² + ε);
    a / √b → a · RSQRT(b) (the spelled-out LayerNorm of older exporters)."""
    return apply_rules(graph, rules_from_table(ctx.table), ctx.trace, ctx.pass_name)

"""remove_identities: drop ops that return their input unchanged."""

from __future__ import annotations

import numpy as np

from qatir.ir import Graph
from qatir.patterns import AnyValue, Const, Match, Op, Rewriter, Rule, RuleTable, apply_rules
from qatir.pipeline import PassContext, register_pass


def _keeps_output_name(m: Match) -> str | None:
    node = m.root
    x, y = node.inputs[0], node.output
    graph = node.graph
    if any(o is y for o in graph.outputs):
        if x.producer is None:
            return f"%{y.name} is a graph output and %{x.name} is not computed by a node"
        if any(o is x for o in graph.outputs):
            return f"both %{x.name} and %{y.name} are graph outputs"
    return None


def _same_shape(m: Match) -> str | None:
    x, y = m.root.inputs[0], m.root.output
    if x.shape != y.shape or None in x.shape:
        return f"shape changes from {list(x.shape)} to {list(y.shape)}"
    return _keeps_output_name(m)


def _identity_perm(m: Match) -> str | None:
    perm = list(m.root.attrs["perm"])
    if perm != list(range(len(perm))):
        return f"perm {perm} is not the identity"
    return _keeps_output_name(m)


def _zero_pad(m: Match) -> str | None:
    if any(int(a) or int(b) for a, b in m.root.attrs["paddings"]):
        return f"paddings {m.root.attrs['paddings']} are not all zero"
    return _keeps_output_name(m)


def _same_dtype(m: Match) -> str | None:
    if m.root.inputs[0].dtype != m.root.output.dtype:
        return f"casts {m.root.inputs[0].dtype} to {m.root.output.dtype}"
    return _keeps_output_name(m)


def _add_zero(m: Match) -> str | None:
    c, x, y = m["c"], m["x"], m.root.output
    if m.root.attrs.get("fused_activation", "NONE") != "NONE":
        return f"a fused {m.root.attrs['fused_activation']}"
    if c.data.dtype.kind != "f" or np.any(c.data != 0):
        return f"%{c.name} is not all zeros"
    if x.shape != y.shape:
        return f"the zeros broadcast %{x.name} {list(x.shape)} to {list(y.shape)}"
    return _keeps_output_name_of(m, x)


def _keeps_output_name_of(m: Match, x) -> str | None:
    graph, y = m.root.graph, m.root.output
    if any(o is y for o in graph.outputs) and (x.producer is None
                                               or any(o is x for o in graph.outputs)):
        return f"%{y.name} is a graph output that %{x.name} cannot replace"
    return None


def _bypass_to_x(rw: Rewriter, m: Match) -> None:
    rw.replace(m.root.output, m["x"])
    rw.remove(m.root)


def _bypass(rw: Rewriter, m: Match) -> None:
    rw.replace(m.root.output, m.root.inputs[0])
    rw.remove(m.root)


def _rule(name: str, op: str, check, note: str) -> Rule:
    return Rule(name, Op(op, inputs=(AnyValue("x"),)), check, _bypass, note)


RULES = RuleTable([
    _rule("identity", "IDENTITY", _keeps_output_name, "IDENTITY(x) = x"),
    _rule("noop_reshape", "RESHAPE", _same_shape, "RESHAPE(x, shape(x)) = x"),
    _rule("noop_squeeze", "SQUEEZE", _same_shape, "SQUEEZE(x) = x when no dim is dropped"),
    _rule("noop_transpose", "TRANSPOSE", _identity_perm, "TRANSPOSE(x, [0..n-1]) = x"),
    _rule("noop_pad", "PAD", _zero_pad, "PAD(x, 0) = x"),
    _rule("noop_cast", "CAST", _same_dtype, "CAST(x: T → T) = x"),
    Rule("add_zero", Op("ADD", inputs=(AnyValue("x"), Const("c")), commutative=True),
         _add_zero, _bypass_to_x, "x + 0 = x (Keras' Normalization of a random-init model)"),
])


@register_pass("remove_identities")
def remove_identities(graph: Graph, ctx: PassContext) -> bool:
    """Bypass IDENTITY and no-op RESHAPE/SQUEEZE/TRANSPOSE/PAD/CAST nodes and ADDs of zeros."""
    return apply_rules(graph, RULES, ctx.trace, ctx.pass_name)

"""Exporters' spellings of GELU in ONNX -> one ``Gelu`` node, before the nodes are converted.

torch.onnx (TorchScript and dynamo exporters below opset 20) writes exact GELU as
``0.5·x·(1 + erf(x/√2))``: ``Div(x, √2)`` or ``Mul(x, 1/√2)`` -> ``Erf`` -> ``Add(·, 1)``,
then the products with ``x`` and ``0.5`` in any association and operand order. The tanh
approximation ``0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`` is written with ``Pow(x, 3)``
or ``x·x·x``. :func:`fuse_gelu` replaces each such subgraph whose intermediate values have
no other use by a ``Gelu`` node (ONNX opset 20 semantics, ``approximate="none"|"tanh"``),
which the ``Gelu`` converter imports as the IR op ``GELU``. A standalone ``Erf`` stays
unsupported: TFLite has no ERF builtin, so qatir has no IR op for it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from qatir.frontends.onnx_io import splice_nodes, tensor_to_array

#: relative tolerance on the pattern's constants (√2, 1/√2, 0.5, 1, √(2/π), 0.044715, 3)
RTOL = 1e-5
_SQRT2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


class _Index:
    """Producers, consumers and scalar constants of an ONNX graph's nodes."""

    def __init__(self, graph: Any):
        self.producer: dict[str, Any] = {}
        self.uses: dict[str, int] = {}
        self.consts: dict[str, float] = {}
        for t in graph.initializer:
            self._scalar(t.name, lambda t=t: tensor_to_array(t, "initializer"))
        for n in graph.node:
            for o in n.output:
                self.producer[o] = n
            for i in n.input:
                self.uses[i] = self.uses.get(i, 0) + 1
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and len(n.output) == 1:
                self._constant_node(n)
        for o in graph.output:
            self.uses[o.name] = self.uses.get(o.name, 0) + 1  # an output is a use of its own

    def _scalar(self, name: str, get: Any) -> None:
        try:
            arr = np.asarray(get())
        except Exception:  # noqa: BLE001  (a malformed constant is simply not a pattern constant)
            return
        if arr.size == 1 and arr.ndim <= 1 and arr.dtype.kind == "f":
            self.consts[name] = float(arr.reshape(-1)[0])
        elif arr.size == 1 and arr.ndim <= 1 and arr.dtype.kind in "iu":
            self.consts[name] = float(arr.reshape(-1)[0])  # Pow's exponent may be an integer

    def _constant_node(self, n: Any) -> None:
        from onnx import helper

        for a in n.attribute:
            if a.name == "value":
                self._scalar(n.output[0], lambda a=a: tensor_to_array(a.t, "Constant"))
            elif a.name in ("value_float", "value_int"):
                self._scalar(n.output[0], lambda a=a: np.asarray([helper.get_attribute_value(a)],
                                                                 np.float32))

    def node(self, name: str, op: str) -> Any | None:
        """The node of type ``op`` producing ``name``, if it is used exactly once."""
        n = self.producer.get(name)
        if n is None or n.op_type != op or n.domain not in ("", "ai.onnx") or len(n.output) != 1:
            return None
        return n if self.uses.get(name, 0) == 1 else None

    def is_const(self, name: str, value: float) -> bool:
        v = self.consts.get(name)
        return v is not None and math.isclose(v, value, rel_tol=RTOL)


def _operands(n: Any) -> list[tuple[str, str]]:
    """(a, b) and (b, a) for a commutative binary node."""
    if len(n.input) != 2:
        return []
    a, b = n.input
    return [(a, b), (b, a)]


def _times_const(ix: _Index, name: str, value: float) -> tuple[str, list[Any]] | None:
    """``name`` = Mul(y, value): (y, [the Mul])."""
    n = ix.node(name, "Mul")
    for y, c in _operands(n) if n is not None else []:
        if ix.is_const(c, value):
            return y, [n]
    return None


def _scaled_x(ix: _Index, name: str) -> tuple[str, list[Any]] | None:
    """``name`` = x/√2: Div(x, √2) or Mul(x, 1/√2) -> (x, nodes)."""
    n = ix.node(name, "Div")
    if n is not None and len(n.input) == 2 and ix.is_const(n.input[1], _SQRT2):
        return n.input[0], [n]
    return _times_const(ix, name, 1.0 / _SQRT2)


def _cube(ix: _Index, name: str, x: str) -> list[Any] | None:
    """``name`` = x³ (Pow(x, 3), Mul(Mul(x, x), x) in either order): its nodes."""
    p = ix.node(name, "Pow")
    if p is not None and len(p.input) == 2 and p.input[0] == x and ix.is_const(p.input[1], 3.0):
        return [p]
    m = ix.node(name, "Mul")
    for a, b in _operands(m) if m is not None else []:
        sq = ix.node(b, "Mul")
        if a == x and sq is not None and list(sq.input) == [x, x]:
            return [m, sq]
    return None


def _one_plus(ix: _Index, name: str) -> tuple[str, bool, list[Any]] | None:
    """``name`` = 1 + erf(x/√2) or 1 + tanh(√(2/π)(x + 0.044715x³)): (x, approximate, nodes)."""
    add = ix.node(name, "Add")
    for f, one in _operands(add) if add is not None else []:
        if not ix.is_const(one, 1.0):
            continue
        erf = ix.node(f, "Erf")
        if erf is not None and len(erf.input) == 1:
            got = _scaled_x(ix, erf.input[0])
            if got is not None:
                return got[0], False, [add, erf, *got[1]]
        tanh = ix.node(f, "Tanh")
        if tanh is not None and len(tanh.input) == 1:
            inner = _times_const(ix, tanh.input[0], _SQRT_2_OVER_PI)
            s = ix.node(inner[0], "Add") if inner is not None else None
            for x, k in _operands(s) if s is not None else []:
                term = _times_const(ix, k, 0.044715)
                cube = _cube(ix, term[0], x) if term is not None else None
                if cube is not None:
                    return x, True, [add, tanh, *inner[1], s, *term[1], *cube]
    return None


def _match(ix: _Index, root: Any) -> tuple[str, bool, list[Any]] | None:
    """GELU ending at the Mul ``root``: (x, approximate, the pattern's nodes)."""
    if root.op_type != "Mul" or root.domain not in ("", "ai.onnx") or len(root.output) != 1:
        return None
    for a, b in _operands(root):
        # Mul(Mul(x, S), 0.5)
        if ix.is_const(b, 0.5):
            m = ix.node(a, "Mul")
            for x, s in _operands(m) if m is not None else []:
                got = _one_plus(ix, s)
                if got is not None and got[0] == x:
                    return x, got[1], [root, m, *got[2]]
        # Mul(x, Mul(S, 0.5))
        half = _times_const(ix, b, 0.5)
        if half is not None:
            got = _one_plus(ix, half[0])
            if got is not None and got[0] == a:
                return a, got[1], [root, *half[1], *got[2]]
        # Mul(Mul(x, 0.5), S)
        xh = _times_const(ix, a, 0.5)
        if xh is not None:
            got = _one_plus(ix, b)
            if got is not None and got[0] == xh[0]:
                return xh[0], got[1], [root, *xh[1], *got[2]]
    return None


#: doc_string of the nodes :func:`fuse_gelu` writes: their schema is opset 20's ``Gelu``
#: whatever the model's opset, so the frontend does not check them against it.
FUSED_DOC = "qatir: fused from the exporter's GELU spelling"


def is_fused(node: Any) -> bool:
    return node.doc_string == FUSED_DOC and node.op_type == "Gelu"


def fuse_gelu(graph: Any) -> int:
    """Replace the GELU subgraphs of ``graph`` (a GraphProto, edited in place) by ``Gelu``
    nodes; returns how many were replaced."""
    from onnx import helper

    ix = _Index(graph)
    replaced: dict[int, Any] = {}
    dropped: set[int] = set()
    for root in graph.node:
        if id(root) in dropped:
            continue
        got = _match(ix, root)
        if got is None:
            continue
        x, approximate, nodes = got
        if any(id(n) in dropped for n in nodes):
            continue
        dropped.update(id(n) for n in nodes)
        replaced[id(root)] = helper.make_node(
            "Gelu", [x], [root.output[0]], name=root.name or f"gelu_{root.output[0]}",
            doc_string=FUSED_DOC, approximate="tanh" if approximate else "none")
    return splice_nodes(graph, dropped, replaced)

"""propagate_quant_constraints: tie the ranges that TFLite requires to be equal.

For every op in the table's ``constraints.same_scale`` (AVERAGE_POOL_2D,
CONCATENATION, RESIZE_BILINEAR), the FAKE_QUANT on its output and those on its
activation inputs (looking through ``constraints.inherit`` ops) form one group
(union-find, so chains and shared inputs merge). Every member of a group then
reads the *same* ``min``/``max`` constant tensors, initialised to the union of the
members' ranges. Fixed-range (LOGISTIC/SOFTMAX/TANH) and weight FAKE_QUANTs are
never tied; such conflicts are listed in ``graph.metadata["quant_conflicts"]``.

An input of an op in ``constraints.requantize_shared_inputs`` (CONCATENATION by
default) that other nodes read too (the value itself, or one an ``inherit`` op
passes on to it) is not tied: tying would widen its range to the union of all the
concatenated ranges on every reader. It keeps its own range, and export requantizes
it onto the output grid (:mod:`qatir.lowering.same_scale`); these are listed in
``graph.metadata["requantized_shared_inputs"]`` as ``[op, input FAKE_QUANT, output
FAKE_QUANT]`` names. Calibration ties such an input again where its calibrated range
already holds the output's (:func:`qatir.calibration.retie_shared_inputs`): untied, it
would gain nothing and be rounded twice.
"""

from __future__ import annotations

import numpy as np
from qatir.passes.insert_fake_quant import set_quant

from qatir.ir import Graph, Node, Tensor
from qatir.pipeline import PassContext, register_pass


def _fq_behind(t: Tensor | None, inherit: frozenset[str]) -> Node | None:
    """The FAKE_QUANT whose parameters ``t`` carries, looking through inheriting ops."""
    while t is not None and t.producer is not None:
        p = t.producer
        if p.op == "FAKE_QUANT":
            return p
        if p.op not in inherit or not p.inputs:
            return None
        t = p.inputs[0]
    return None


def _fans_out(t: Tensor, node: Node, inherit: frozenset[str]) -> bool:
    """Some other node than ``node`` reads ``t`` or a tensor it inherits from (up to its
    FAKE_QUANT)."""
    reader = node
    while t is not None:
        if any(u is not reader for u, _ in t.uses):
            return True
        p = t.producer
        if p is None or p.op == "FAKE_QUANT" or p.op not in inherit or not p.inputs:
            return False
        reader, t = p, p.inputs[0]
    return False


def _fq_after(t: Tensor) -> Node | None:
    for user, idx in t.uses:
        if user.op == "FAKE_QUANT" and idx == 0:
            return user
    return None


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.nodes: dict[int, Node] = {}

    def find(self, n: Node) -> int:
        k = id(n)
        self.nodes.setdefault(k, n)
        self.parent.setdefault(k, k)
        root = k
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[k] != root:
            self.parent[k], k = root, self.parent[k]
        return root

    def union(self, a: Node, b: Node) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra

    def groups(self) -> list[list[Node]]:
        out: dict[int, list[Node]] = {}
        for n in self.nodes.values():
            out.setdefault(self.find(n), []).append(n)
        return list(out.values())


def _tieable(fq: Node, fixed_quantizer: str) -> bool:
    return fq.attrs.get("kind") == "activation" and fq.attrs.get("quantizer") != fixed_quantizer


@register_pass("propagate_quant_constraints")
def propagate_quant_constraints(graph: Graph, ctx: PassContext) -> bool:
    """Make same-scale ops (concat, average pool, bilinear resize) share one range in and out."""
    table = ctx.table
    same = table.constraint_ops("same_scale")
    inherit = table.constraint_ops("inherit")
    own = table.constraint_ops("requantize_shared_inputs")
    fixed_q = table.calibration["fixed"]
    uf = _UnionFind()
    conflicts: list[str] = []
    kept: list[list[str]] = []
    for node in graph.nodes:
        if node.op not in same or not node.outputs:
            continue
        out_fq = _fq_after(node.output)
        if out_fq is None:
            continue
        members = [out_fq]
        for t in node.inputs:
            if t is None or t.dtype.kind != "f":
                continue
            fq = _fq_behind(t, inherit)
            if fq is not None and node.op in own and _fans_out(t, node, inherit):
                kept.append([node.name, fq.name, out_fq.name])
                continue  # its other readers keep its own grid; export requantizes it
            if fq is not None:
                members.append(fq)
        for fq in members:
            if _tieable(fq, fixed_q):
                uf.union(out_fq, fq)
            else:
                conflicts.append(f"{node.name}: {fq.name} ({fq.attrs.get('kind')}, "
                                 f"{fq.attrs.get('quantizer')}) keeps its own range")
    retied: list[Node] = []
    for group in uf.groups():
        if len(group) < 2:
            continue
        if all(fq.inputs[1] is group[0].inputs[1] and fq.inputs[2] is group[0].inputs[2]
               for fq in group):
            continue
        lo = min(float(np.min(fq.inputs[1].data)) for fq in group)
        hi = max(float(np.max(fq.inputs[2].data)) for fq in group)
        base = group[0].inputs[0].name
        lo_t = graph.const(np.asarray(lo, np.float32), name=f"{base}_shared_min")
        hi_t = graph.const(np.asarray(hi, np.float32), name=f"{base}_shared_max")
        for fq in group:
            fq.set_input(1, lo_t)
            fq.set_input(2, hi_t)
        retied.extend(group)
    if retied:
        graph.prune_tensors()
        set_quant(retied)
    graph.metadata["quant_conflicts"] = conflicts
    graph.metadata["requantized_shared_inputs"] = kept
    ctx.notes["quant_conflicts"] = conflicts
    return bool(retied)

"""Patterns as data: a small matcher over the IR, rules, and a trace of what fired.

A pattern describes a node and, recursively, the producers of its inputs:

- :class:`Op` — the node's op is one of ``ops``; attribute predicates; the output
  is used exactly once (``single_use``); sub-patterns for inputs; ``commutative``
  tries both orders of the first two inputs; ``capture`` names the node.
- :class:`Const` — the input is a constant tensor; :class:`AnyValue` — any tensor.

Captures with the same name must bind the same object, so ``MUL(x, HS(x))`` is
written with ``AnyValue("x")`` twice. A :class:`Rule` is ``(name, pattern, check,
rewrite, note)``: ``check(match)`` returns ``None`` or the reason it refuses,
``rewrite(rw, match)`` edits the graph through a :class:`Rewriter`. Rules
concatenate with ``+`` like lists. :func:`apply_rules` indexes nodes by op type
once, so a sweep is linear in graph size; with a :class:`Trace` it records, for
every candidate node, that a rule fired or the first constraint that failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qatir.ir import Graph, Node, Tensor


@dataclass(frozen=True)
class Pred:
    """An attribute predicate with a description used in failure reasons."""

    fn: Callable[[Any], bool]
    desc: str

    def __call__(self, value: Any) -> bool:
        return bool(self.fn(value))


def one_of(*values: Any) -> Pred:
    return Pred(lambda v: v in values, f"one of {list(values)}")


def close_to(target: float, rel: float = 1e-4) -> Pred:
    return Pred(lambda v: v is not None and abs(float(v) - target) <= rel * max(1.0, abs(target)),
                f"close to {target:.6g}")


@dataclass(frozen=True)
class AnyValue:
    """Any tensor (graph input, constant or computed)."""

    capture: str | None = None


@dataclass(frozen=True)
class Const:
    """A constant tensor (``tensor.data`` is set)."""

    capture: str | None = None


@dataclass(frozen=True)
class Op:
    """A node pattern; see the module docstring."""

    ops: tuple[str, ...] | None = None
    inputs: tuple[Any, ...] | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)
    single_use: bool = False
    commutative: bool = False
    capture: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.ops, str):
            object.__setattr__(self, "ops", (self.ops,))
        elif self.ops is not None:
            object.__setattr__(self, "ops", tuple(self.ops))
        if self.inputs is not None:
            object.__setattr__(self, "inputs", tuple(self.inputs))


class MatchFail(Exception):
    """Internal: the first constraint that failed, as text."""


@dataclass
class Match:
    """A successful match: the root node and the captured nodes/tensors."""

    root: Node
    captures: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.captures[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.captures.get(key, default)


def _bind(caps: dict[str, Any], name: str | None, obj: Any, where: str) -> None:
    if name is None:
        return
    if name in caps and caps[name] is not obj:
        raise MatchFail(f"{where}: capture {name!r} would bind two different values")
    caps[name] = obj


def _is_output(graph: Graph, t: Tensor) -> bool:
    return any(o is t for o in graph.outputs)


def _match_node(graph: Graph, pat: Op, node: Node, caps: dict[str, Any], where: str) -> None:
    if pat.ops is not None and node.op not in pat.ops:
        raise MatchFail(f"{where}: op {node.op} of {node.name!r} is not one of {list(pat.ops)}")
    for key, want in pat.attrs.items():
        have = node.attrs.get(key)
        ok = want(have) if isinstance(want, Pred) else have == want
        if not ok:
            desc = want.desc if isinstance(want, Pred) else repr(want)
            raise MatchFail(f"{where}: {node.name!r}.{key} = {have!r}, needs {desc}")
    if pat.single_use:
        out = node.outputs[0]
        n_uses = len(out.uses)
        if n_uses != 1 or _is_output(graph, out):
            extra = " and is a graph output" if _is_output(graph, out) else ""
            raise MatchFail(f"{where}: output of {node.name!r} has {n_uses} uses{extra} "
                            "(needs single use)")
    if pat.inputs is not None:
        if len(node.inputs) < len(pat.inputs):
            raise MatchFail(f"{where}: {node.name!r} has {len(node.inputs)} inputs, "
                            f"needs {len(pat.inputs)}")
        orders = [list(range(len(pat.inputs)))]
        if pat.commutative and len(pat.inputs) >= 2:
            orders.append([1, 0] + list(range(2, len(pat.inputs))))
        first: MatchFail | None = None
        for order in orders:
            trial = dict(caps)
            try:
                for i, sub in zip(order, pat.inputs):
                    _match_value(graph, sub, node.inputs[i], trial, f"{where}.input[{i}]")
            except MatchFail as e:
                first = first or e
                continue
            caps.clear()
            caps.update(trial)
            break
        else:
            assert first is not None
            raise first
    _bind(caps, pat.capture, node, where)


def _match_value(graph: Graph, pat: Any, t: Tensor | None, caps: dict[str, Any], where: str) -> None:
    if pat is None:
        return
    if t is None:
        raise MatchFail(f"{where}: input is missing")
    if isinstance(pat, AnyValue):
        _bind(caps, pat.capture, t, where)
    elif isinstance(pat, Const):
        if not t.is_const:
            raise MatchFail(f"{where}: %{t.name} is not a constant")
        _bind(caps, pat.capture, t, where)
    elif isinstance(pat, Op):
        if t.producer is None:
            kind = "a constant" if t.is_const else "a graph input"
            raise MatchFail(f"{where}: %{t.name} is {kind}, not the output of {list(pat.ops or [])}")
        _match_node(graph, pat, t.producer, caps, where)
    else:
        raise TypeError(f"not a pattern: {pat!r}")


def match(graph: Graph, pattern: Op, node: Node) -> Match | str:
    """Match ``pattern`` rooted at ``node``: a :class:`Match`, or the reason it fails."""
    caps: dict[str, Any] = {}
    try:
        _match_node(graph, pattern, node, caps, "root")
    except MatchFail as e:
        return str(e)
    return Match(node, caps)


CheckFn = Callable[[Match], "str | None"]
RewriteFn = Callable[["Rewriter", Match], None]


@dataclass(frozen=True)
class Rule:
    """``(name, pattern, check, rewrite, note)``; ``note`` is a one-line statement of the math."""

    name: str
    pattern: Op
    check: CheckFn | None
    rewrite: RewriteFn
    note: str = ""


class RuleTable(tuple):
    """An ordered, concatenable collection of rules (``table_a + table_b``)."""

    def __new__(cls, rules: Iterable[Rule] = ()) -> RuleTable:
        return super().__new__(cls, tuple(rules))

    def __add__(self, other: Iterable[Rule]) -> RuleTable:  # type: ignore[override]
        return RuleTable(tuple(self) + tuple(other))


@dataclass
class TraceEntry:
    rule: str
    node: str
    fired: bool
    reason: str = ""
    pass_name: str = ""


class Trace:
    """Which rules fired on which nodes, and for those that did not, the first failing constraint."""

    def __init__(self) -> None:
        self.entries: list[TraceEntry] = []

    def record(self, rule: str, node: str, fired: bool, reason: str = "", pass_name: str = "") -> None:
        self.entries.append(TraceEntry(rule, node, fired, reason, pass_name))

    def fired(self, rule: str | None = None) -> list[TraceEntry]:
        return [e for e in self.entries if e.fired and (rule is None or e.rule == rule)]

    def not_fired(self, rule: str | None = None) -> list[TraceEntry]:
        return [e for e in self.entries if not e.fired and (rule is None or e.rule == rule)]

    def to_list(self) -> list[dict[str, Any]]:
        return [{"pass": e.pass_name, "rule": e.rule, "node": e.node, "fired": e.fired,
                 "reason": e.reason} for e in self.entries]

    def format(self) -> str:
        lines = []
        for e in self.entries:
            status = "fired" if e.fired else f"not fired: {e.reason}"
            lines.append(f"[{e.pass_name}] {e.rule} @ {e.node}: {status}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


class Rewriter:
    """Graph edits on behalf of rules. Erasure is deferred and done in one linear batch."""

    def __init__(self, graph: Graph, index: dict[str, list[Node]] | None = None):
        self.graph = graph
        self.dead: dict[int, Node] = {}
        self.added = False
        self._index = index

    def is_dead(self, node: Node) -> bool:
        return id(node) in self.dead

    def remove(self, node: Node) -> None:
        """Erase ``node`` at the end of the sweep (its outputs must be unused by then)."""
        self.dead[id(node)] = node

    def replace(self, old: Tensor, new: Tensor) -> None:
        """Point all uses of ``old`` at ``new``, keeping a graph output's name on the new value."""
        replace_tensor(self.graph, old, new)

    def add_node(self, op: str, inputs: Sequence[Tensor | None], attrs: dict[str, Any] | None = None,
                 name: str | None = None) -> Node:
        """Append a node (the graph is re-sorted topologically when the sweep ends)."""
        node = self.graph.add_node(op, inputs, attrs, name=name)
        self.added = True
        if self._index is not None:
            self._index.setdefault(op, []).append(node)
        return node

    def const(self, data: Any, name: str = "const", dtype: Any = None) -> Tensor:
        return self.graph.const(data, name=name, dtype=dtype)

    def finish(self) -> bool:
        """Erase the removed nodes and restore topological order; True if anything changed."""
        changed = bool(self.dead) or self.added
        if self.dead:
            self.graph.erase_many(self.dead.values())
            self.dead = {}
        if self.added:
            self.graph.toposort()
            self.added = False
        return changed


def replace_tensor(graph: Graph, old: Tensor, new: Tensor) -> None:
    """``graph.replace_all_uses_with(old, new)``; when ``old`` is a graph output and ``new``
    is a plain computed value, ``new`` takes ``old``'s name so output names stay stable."""
    was_output = any(o is old for o in graph.outputs)
    graph.replace_all_uses_with(old, new)
    if (was_output and new.producer is not None and not any(t is new for t in graph.inputs)
            and sum(o is new for o in graph.outputs) == 1):
        swap_names(graph, old, new)


def swap_names(graph: Graph, a: Tensor, b: Tensor) -> None:
    """Exchange the names of two registered tensors (both end up last in
    ``graph.tensors``, ``a`` before ``b``)."""
    name_a, name_b = a.name, b.name
    tmp = f"{name_a}<->{name_b}"  # not unique_name: that would advance the name counter
    while tmp in graph.tensors:
        tmp += "'"
    graph.rename_tensor(b, tmp)
    graph.rename_tensor(a, name_b)
    graph.rename_tensor(b, name_a)


def index_by_op(graph: Graph, ops: Iterable[str] | None = None) -> dict[str, list[Node]]:
    """Nodes grouped by op type (graph order); only ``ops`` when given."""
    wanted = None if ops is None else set(ops)
    index: dict[str, list[Node]] = {}
    for n in graph.nodes:
        if wanted is None or n.op in wanted:
            index.setdefault(n.op, []).append(n)
    return index


def apply_rules(graph: Graph, rules: Iterable[Rule], trace: Trace | None = None,
                pass_name: str = "") -> bool:
    """One sweep: every rule, in order, tried on every node whose op its root accepts.

    Returns True when the graph changed. Nodes removed by an earlier rewrite are skipped.
    """
    rules = list(rules)
    roots: set[str] = set()
    for r in rules:
        if r.pattern.ops is None:
            roots = set()
            break
        roots.update(r.pattern.ops)
    index = index_by_op(graph, roots or None)
    rw = Rewriter(graph, index)
    for rule in rules:
        ops = rule.pattern.ops if rule.pattern.ops is not None else list(index)
        for op in ops:
            candidates = index.get(op, [])
            i = 0
            while i < len(candidates):  # the list may grow as rewrites add nodes
                node = candidates[i]
                i += 1
                if rw.is_dead(node) or node.graph is not graph:
                    continue
                m = match(graph, rule.pattern, node)
                if isinstance(m, str):
                    if trace is not None:
                        trace.record(rule.name, node.name, False, m, pass_name)
                    continue
                reason = rule.check(m) if rule.check is not None else None
                if reason:
                    if trace is not None:
                        trace.record(rule.name, node.name, False, f"check: {reason}", pass_name)
                    continue
                rule.rewrite(rw, m)
                if trace is not None:
                    trace.record(rule.name, node.name, True, "", pass_name)
    return rw.finish()

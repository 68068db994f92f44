"""The qatir IR: tensors are values, nodes are TFLite-like ops, a graph owns both.

Layout is NHWC. The IR knows nothing of onnx, tflite or tensorflow: frontends,
the TF executor and the writer depend on it, never the reverse. The value classes
(:class:`QuantParams`, :class:`Tensor`, :class:`Node`) live in :mod:`qatir.ir_values`
and are re-exported here; this module holds the :class:`Graph`.
"""

from __future__ import annotations

import copy
import heapq
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from qatir.errors import ShapeError, VerifyError
from qatir.ir_values import FUSED_ACTIVATIONS, Node, QuantParams, Shape, Tensor, type_str

__all__ = ["FUSED_ACTIVATIONS", "Graph", "Node", "QuantParams", "Shape", "Tensor", "type_str"]


class Graph:
    """Owns nodes in topological order, its inputs and outputs, and all tensors by name."""

    __slots__ = ("name", "nodes", "inputs", "outputs", "tensors", "metadata", "_next_suffix",
                 "_node_names", "__weakref__")

    def __init__(self, name: str = "main"):
        self.name = name
        self.nodes: list[Node] = []
        self.inputs: list[Tensor] = []
        self.outputs: list[Tensor] = []
        self.tensors: dict[str, Tensor] = {}
        self.metadata: dict[str, Any] = {}
        self._next_suffix = 0  # shared by tensor and node names: f"{base}_{n}"
        self._node_names: set[str] = set()

    # ----------------------------------------------------------------- building
    def _suffix(self) -> int:
        n = self._next_suffix
        self._next_suffix += 1
        return n

    def unique_name(self, base: str) -> str:
        if base not in self.tensors:
            return base
        while True:
            cand = f"{base}_{self._suffix()}"
            if cand not in self.tensors:
                return cand

    def rename_tensor(self, tensor: Tensor, new_name: str) -> None:
        """Give ``tensor`` (one of this graph's) the name ``new_name``, keeping the name
        registry current; refuses a name another tensor has. The tensor moves to the end
        of :attr:`tensors`."""
        old = tensor.name
        if self.tensors.get(old) is not tensor:
            raise VerifyError(f"cannot rename %{old} to %{new_name}: %{old} is not a tensor "
                              f"of graph {self.name!r}")
        if new_name == old:
            return
        if new_name in self.tensors:
            raise VerifyError(f"cannot rename %{old} to %{new_name}: graph {self.name!r} "
                              f"already has a tensor %{new_name}")
        del self.tensors[old]
        tensor.name = new_name
        self.tensors[new_name] = tensor

    def add_tensor(self, tensor: Tensor) -> Tensor:
        if tensor.name in self.tensors:
            raise VerifyError(f"duplicate tensor name %{tensor.name}")
        self.tensors[tensor.name] = tensor
        return tensor

    def add_input(self, name: str, shape: Sequence[int | None], dtype: Any = np.float32,
                  source_layout: str | None = None) -> Tensor:
        t = self.add_tensor(Tensor(name, shape, dtype, source_layout=source_layout))
        self.inputs.append(t)
        return t

    def const(self, data: Any, name: str = "const", dtype: Any = None,
              quant: QuantParams | None = None) -> Tensor:
        """Add a constant tensor (a fresh, unique name derived from ``name``)."""
        arr = np.asarray(data, dtype=dtype)
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        return self.add_tensor(Tensor(self.unique_name(name), arr.shape, arr.dtype, arr, quant))

    def add_node(
        self,
        op: str,
        inputs: Sequence[Tensor | None],
        attrs: dict[str, Any] | None = None,
        name: str | None = None,
        outputs: Sequence[Tensor | str] | None = None,
        num_outputs: int | None = None,
    ) -> Node:
        """Append a node; output tensors are created and shaped by the op registry.

        ``outputs`` may give names (or existing, producer-less tensors) for the outputs.
        The node is appended at the end: call :meth:`toposort` after inserting out of order.
        """
        from qatir.ops.registry import get_op

        opdef = get_op(op)
        node = Node(op, self._unique_node_name(name or op.lower()), opdef.with_defaults(attrs))
        for t in inputs:
            node.add_input(t)
        n_out = num_outputs if num_outputs is not None else (len(outputs) if outputs else opdef.num_outputs)
        try:
            specs = opdef.infer(node)
        except ShapeError as e:
            node.drop_inputs()
            raise ShapeError(f"node {node.name!r} ({op}): {e}") from None
        except (ValueError, IndexError, TypeError, KeyError) as e:
            node.drop_inputs()
            raise ShapeError(f"node {node.name!r} ({op}): cannot infer shapes: {e}") from None
        specs = specs[:n_out]
        for i, (shape, dtype) in enumerate(specs):
            given = outputs[i] if outputs else None
            if isinstance(given, Tensor):
                t = given
                t.shape, t.dtype = tuple(shape), np.dtype(dtype)
                if t.name not in self.tensors:
                    self.add_tensor(t)
            else:
                t = self.add_tensor(Tensor(self.unique_name(given or node.name), shape, dtype))
            t.producer = node
            node._outputs.append(t)
        node.graph = self
        self.nodes.append(node)
        return node

    def _unique_node_name(self, base: str) -> str:
        name = base
        while name in self._node_names:
            name = f"{base}_{self._suffix()}"
        self._node_names.add(name)
        return name

    def reinfer(self, node: Node) -> None:
        """Re-run shape inference on ``node`` after its inputs or attributes changed."""
        from qatir.ops.registry import get_op

        for t, (shape, dtype) in zip(node._outputs, get_op(node.op).infer(node)):
            t.shape, t.dtype = tuple(shape), np.dtype(dtype)

    # ---------------------------------------------------------------- rewiring
    def replace_all_uses_with(self, old: Tensor, new: Tensor) -> None:
        """Point every consumer of ``old`` (and the graph outputs) at ``new``.

        The node producing ``new`` keeps reading ``old`` (it would be a self-cycle
        otherwise), so inserting ``new = f(old)`` after ``old`` is one call.
        """
        for node, idx in old.uses:
            if node is not new.producer:
                node.set_input(idx, new)
        self.outputs = [new if t is old else t for t in self.outputs]

    def erase(self, node: Node) -> None:
        """Remove a node whose outputs are unused; refuses a node still in use."""
        for t in node._outputs:
            if t._uses or any(o is t for o in self.outputs):
                raise VerifyError(f"cannot erase node {node.name!r}: output %{t.name} is still used")
        node.drop_inputs()
        for t in node._outputs:
            t.producer = None
            self.tensors.pop(t.name, None)
        self.nodes.remove(node)
        self._node_names.discard(node.name)
        node.graph = None

    def erase_many(self, nodes: Iterable[Node]) -> None:
        """Erase several nodes at once (linear time); each must be unused after the batch.

        Checked before anything changes, so a refused batch leaves the graph intact.
        """
        doomed = {id(n) for n in nodes}
        victims = [n for n in self.nodes if id(n) in doomed]
        graph_outputs = {id(t) for t in self.outputs}
        for n in victims:
            for t in n._outputs:
                if id(t) in graph_outputs or any(id(u) not in doomed for u, _ in t._uses):
                    raise VerifyError(f"cannot erase node {n.name!r}: output %{t.name} is still used")
        for n in victims:
            n.drop_inputs()
        for n in victims:
            for t in n._outputs:
                t.producer = None
                self.tensors.pop(t.name, None)
            self._node_names.discard(n.name)
            n.graph = None
        self.nodes = [n for n in self.nodes if id(n) not in doomed]

    def prune_tensors(self) -> int:
        """Drop constants and orphan tensors that nothing uses. Returns how many."""
        keep = {id(t) for t in self.inputs} | {id(t) for t in self.outputs}
        dead = [name for name, t in self.tensors.items()
                if not t._uses and t.producer is None and id(t) not in keep]
        for name in dead:
            del self.tensors[name]
        return len(dead)

    def eliminate_dead_code(self) -> bool:
        """Remove nodes that do not contribute to an output, then unused constants."""
        live: set[int] = set()
        stack = [t for t in self.outputs]
        while stack:
            t = stack.pop()
            if id(t) in live:
                continue
            live.add(id(t))
            if t.producer is not None:
                stack.extend(i for i in t.producer._inputs if i is not None)
        dead = [n for n in self.nodes if not any(id(o) in live for o in n._outputs)]
        if dead:
            self.erase_many(dead)
        return bool(dead) | bool(self.prune_tensors())

    def toposort(self) -> None:
        """Order nodes so every producer comes before its users (stable, linear time)."""
        indeg: dict[int, int] = {}
        for n in self.nodes:
            indeg[id(n)] = len({id(t.producer) for t in n._inputs
                                if t is not None and t.producer is not None})
        ready = [n for n in self.nodes if indeg[id(n)] == 0]
        order: list[Node] = []
        position = {id(n): i for i, n in enumerate(self.nodes)}
        heap = [(position[id(n)], id(n), n) for n in ready]
        heapq.heapify(heap)
        while heap:
            _, _, n = heapq.heappop(heap)
            order.append(n)
            done: set[int] = set()
            for out in n._outputs:
                for user, _ in out._uses:
                    if id(user) in done:
                        continue
                    done.add(id(user))
                    indeg[id(user)] -= 1
                    if indeg[id(user)] == 0:
                        heapq.heappush(heap, (position[id(user)], id(user), user))
        if len(order) != len(self.nodes):
            stuck = [n.name for n in self.nodes if indeg[id(n)] > 0][:5]
            raise VerifyError(f"graph {self.name!r} has a cycle through nodes {stuck}")
        self.nodes = order

    # ------------------------------------------------------------------ checks
    def verify(self) -> None:
        from qatir.verify import verify_graph

        verify_graph(self)

    def clone(self) -> Graph:
        """A structural deep copy that shares nothing mutable with this graph.

        New Tensor and Node objects with the same names, order, use lists and
        producers; constant arrays are *copied* (passes write ``tensor.data`` and
        calibration writes ranges in place, and a clone is what callers keep as the
        untouched original); attributes and metadata are deep-copied; QuantParams are
        frozen values and are shared. The name counter carries over, so the clone
        names new tensors exactly as this graph would. Only nodes in :attr:`nodes`
        are copied: a use by a node outside the graph is not.
        """
        g = Graph(self.name)
        tmap: dict[int, tuple[Tensor, Tensor]] = {}  # id(original) -> (original, copy)

        def tensor(t: Tensor) -> Tensor:
            pair = tmap.get(id(t))
            if pair is None:
                data = None if t.data is None else t.data.copy()
                pair = tmap[id(t)] = (t, Tensor(t.name, t.shape, t.dtype, data, t.quant,
                                                t.source_layout))
            return pair[1]

        for t in self.tensors.values():
            g.tensors[t.name] = tensor(t)
        nmap: dict[int, Node] = {}
        for n in self.nodes:
            c = Node(n.op, n.name, copy.deepcopy(n.attrs))
            c._inputs = [None if t is None else tensor(t) for t in n._inputs]
            c._outputs = [tensor(t) for t in n._outputs]
            c.graph = g
            nmap[id(n)] = c
            g.nodes.append(c)
        g.inputs = [tensor(t) for t in self.inputs]
        g.outputs = [tensor(t) for t in self.outputs]
        for orig, c in tmap.values():
            c.producer = None if orig.producer is None else nmap.get(id(orig.producer))
            c._uses = [(nmap[id(u)], i) for u, i in orig._uses if id(u) in nmap]
        g.metadata = copy.deepcopy(self.metadata)
        g._next_suffix = self._next_suffix
        g._node_names = set(self._node_names)
        return g

    def __str__(self) -> str:
        from qatir.printer import format_graph

        return format_graph(self)

    def to_json(self, include_data: bool = False) -> str:
        from qatir.serialize import graph_to_json

        return graph_to_json(self, include_data=include_data)

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self.nodes)} nodes)"

"""Run the IR in TensorFlow: one :class:`Program` (a ``tf.Module``) per graph, built once.

Constants that are parameters (weights, biases, batch-norm and PReLU
parameters, FAKE_QUANT ranges and quantized weights) become ``tf.Variable``s
so ``fit`` can train them; other constants are baked in as ``tf.constant``.
:func:`run` keeps one program per graph object in a weak cache and rebuilds it
when the graph's structure changes (a cheap stamp over nodes, attributes,
tensors and non-parameter constant arrays). Parameter arrays replaced in the
IR (e.g. by calibration) are copied into the variables before the next run;
after editing a constant array *in place*, call :func:`invalidate`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

import qatir.tf.fake_quant  # noqa: F401  (registers the FAKE_QUANT kernel)
from qatir.errors import QatirError
from qatir.feeds import check_feeds  # noqa: F401  (re-exported)
from qatir.ir import Graph, Node, Tensor
from qatir.ops import all_ops
from qatir.quantizers import get_quantizer
from qatir.tf.env import import_tensorflow
from qatir.tf.kernels import KernelContext, get_kernel

tf = import_tensorflow()

# (op, input index) -> role of a float constant in that slot (from the op definitions)
_PARAM_SLOTS: dict[tuple[str, int], str] = {
    (op, i): role for op, d in all_ops().items() for i, role in d.param_slots().items()}
_TRAINABLE_ROLES = {"weight", "bias", "gamma", "beta", "alpha"}


def parameter_role(t: Tensor) -> str | None:
    """Why a constant is a parameter ("weight", "bias", "range", ...), or None."""
    if not t.is_const or t.dtype.kind != "f":
        return None
    for node, idx in t.uses:
        role = _PARAM_SLOTS.get((node.op, idx))
        if role is not None:
            return role
        if node.op == "FAKE_QUANT" and idx == 0 and node.attrs.get("kind") == "weight":
            return "weight"
    return None


def _range_trainable(t: Tensor) -> bool:
    return any(node.op == "FAKE_QUANT" and idx in (1, 2)
               and get_quantizer(node.attrs["quantizer"]).trainable for node, idx in t.uses)


def structure_stamp(graph: Graph) -> int:
    """A hash of everything a traced program depends on, except parameter values."""
    parts: list[Any] = [tuple((id(t), t.shape, t.dtype.str) for t in graph.inputs),
                        tuple(id(t) for t in graph.outputs)]
    for node in graph.nodes:
        ins = []
        for t in node.inputs:
            if t is None:
                ins.append(None)
                continue
            const_id = id(t.data) if t.is_const and parameter_role(t) is None else 0
            quant = None if t.producer is not None and t.producer.op == "FAKE_QUANT" else t.quant
            ins.append((id(t), t.shape, t.dtype.str, quant, const_id))
        # a FAKE_QUANT output's quant params follow its range variables: not structure
        outs = tuple((id(t), t.shape, t.dtype.str, None if node.op == "FAKE_QUANT" else t.quant)
                     for t in node.outputs)
        parts.append((id(node), node.op, repr(sorted(node.attrs.items())), tuple(ins), outs))
    return hash(tuple(parts))


class Program(tf.Module):
    """The TF program of one graph: variables for parameters, a traced inference function."""

    def __init__(self, graph: Graph, name: str | None = None):
        super().__init__(name=name or "qatir_program")
        self._graph_ref = weakref.ref(graph)  # the weak cache must not keep its key alive
        self.stamp = structure_stamp(graph)
        self.trace_count = 0
        self.params: dict[str, tf.Variable] = {}
        self.roles: dict[str, str] = {}
        self._consts: dict[str, tf.Tensor] = {}
        self._synced: dict[str, int] = {}
        self.extra_functions: dict[str, Any] = {}  # traced helpers (calibration, training) by key
        for node in graph.nodes:
            get_kernel(node)  # fail early, naming the node, when an op has no kernel
        for t in graph.tensors.values():
            if t.is_const:
                role = parameter_role(t)
                if role is None:
                    self._consts[t.name] = tf.constant(t.data)
                else:
                    self.roles[t.name] = role
                    self.params[t.name] = self._make_variable(t, role)
                    self._synced[t.name] = id(t.data)
        sig = [tf.TensorSpec(t.shape, tf.as_dtype(t.dtype), name=_sig_name(t.name))
               for t in graph.inputs]
        self._infer = tf.function(self._infer_fn, input_signature=sig, autograph=False)

    def _make_variable(self, t: Tensor, role: str) -> tf.Variable:
        trainable = role in _TRAINABLE_ROLES or (role == "range" and _range_trainable(t))
        if role in ("moving_mean", "moving_var"):
            aggregation = tf.VariableAggregation.MEAN
        elif role == "range":
            aggregation = tf.VariableAggregation.ONLY_FIRST_REPLICA
        else:
            aggregation = tf.VariableAggregation.NONE
        return tf.Variable(t.data, trainable=trainable, name=_sig_name(t.name),
                           aggregation=aggregation)

    @property
    def graph(self) -> Graph:
        graph = self._graph_ref()
        if graph is None:
            raise QatirError("the graph of this TF program no longer exists")
        return graph

    @property
    def trainable_params(self) -> list[tf.Variable]:
        return [v for v in self.params.values() if v.trainable]

    # ------------------------------------------------------------ execution
    def forward(self, inputs: list[tf.Tensor], ctx: KernelContext,
                hook: Callable[[Node, list, Any], Any] | None = None) -> list[tf.Tensor]:
        """Run every node in order (Python; call it inside a tf.function). ``hook(node, args,
        outs)``, when given, may replace a node's outputs (``qatir.analyze`` gates the
        FAKE_QUANTs with it)."""
        env: dict[int, Any] = {id(t): x for t, x in zip(self.graph.inputs, inputs)}
        for node in self.graph.nodes:
            args = [None if t is None else self._value(t, env) for t in node.inputs]
            outs = get_kernel(node)(ctx, node, args)
            if hook is not None:
                outs = hook(node, args, outs)
            if isinstance(outs, (tf.Tensor, tf.Variable)) or not isinstance(outs, (list, tuple)):
                outs = [outs]
            if len(outs) != len(node.outputs):
                raise QatirError(f"TF kernel of {node.op} (node {node.name!r}) returned "
                                 f"{len(outs)} outputs, expected {len(node.outputs)}")
            for t, y in zip(node.outputs, outs):
                env[id(t)] = y
        return [self._value(t, env) for t in self.graph.outputs]

    def _value(self, t: Tensor, env: dict[int, Any]) -> Any:
        if id(t) in env:
            return env[id(t)]
        if t.name in self.params:
            return self.params[t.name]
        if t.name in self._consts:
            return self._consts[t.name]
        raise QatirError(f"tensor %{t.name} is used before it is computed (graph not in order?)")

    def _infer_fn(self, *inputs: tf.Tensor) -> list[tf.Tensor]:
        self.trace_count += 1
        return self.forward(list(inputs), KernelContext(self.params))

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Check the feeds, copy changed parameters in, run, return outputs by name."""
        args = check_feeds(self.graph, feeds)
        self.sync_from_graph()
        outs = self._infer(*args)
        return {t.name: y.numpy() for t, y in zip(self.graph.outputs, outs)}

    # ------------------------------------------------------- IR <-> variables
    def sync_from_graph(self) -> None:
        """Copy parameter arrays that were replaced in the IR into their variables."""
        for name, var in self.params.items():
            t = self.graph.tensors.get(name)
            if t is not None and self._synced.get(name) != id(t.data):
                var.assign(t.data)
                self._synced[name] = id(t.data)

    def write_back(self) -> None:
        """Store the variables' values in the IR constants (fresh arrays)."""
        for name, var in self.params.items():
            t = self.graph.tensors.get(name)
            if t is None:
                continue
            t.data = np.array(var.numpy(), dtype=t.dtype, order="C")  # keeps 0-d shapes
            self._synced[name] = id(t.data)


def _sig_name(name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "_." else "_" for c in name)
    return safe if safe[:1].isalpha() else f"t_{safe}"




_CACHE: weakref.WeakKeyDictionary[Graph, Program] = weakref.WeakKeyDictionary()


def program_for(graph: Graph) -> Program:
    """The cached program of ``graph``, rebuilt when its structure changed."""
    prog = _CACHE.get(graph)
    if prog is None or prog.stamp != structure_stamp(graph):
        prog = Program(graph)
        _CACHE[graph] = prog
    return prog


def invalidate(graph: Graph) -> None:
    """Drop the cached program of ``graph`` (after editing constant arrays in place)."""
    _CACHE.pop(graph, None)


def run(graph: Graph, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Execute ``graph`` on ``feeds`` ({input name: array}); returns {output name: array}."""
    return program_for(graph).run(feeds)

"""The Keras importer's context: the converter registry, graph walking, node naming.

A converter is ``fn(ctx, layer, args, kwargs) -> Tensor | list[Tensor]``; ``args``
are the layer call's positional arguments with every KerasTensor replaced by its
IR tensor. An optional ``check(layer) -> reason | None`` registered with it lets
the importer refuse a layer (unsupported option, foreign activation) before
anything is built, so every refusal is listed at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from qatir.errors import ModelFormatError, ShapeError, UnsupportedOpError
from qatir.ir import Graph, Node, Tensor


@dataclass(frozen=True)
class Converter:
    fn: Callable[..., Any]
    check: Callable[[Any], str | None] | None = None


CONVERTERS: dict[str, Converter] = {}
# What a converter may raise on a layer whose configuration it did not expect.
_LAYER_FAULTS = (ValueError, TypeError, IndexError, KeyError, AttributeError, ArithmeticError)


def converter(*class_names: str, check: Callable[[Any], str | None] | None = None,
              op: bool = False):
    """Register ``fn`` for Keras layer classes by class name; ``op=True`` registers
    ``keras.ops`` operation classes instead (``ops.Add`` is not ``layers.Add``)."""
    def deco(fn):
        for name in class_names:
            CONVERTERS[f"ops.{name}" if op else name] = Converter(fn, check)
        return fn
    return deco


def key_of(op: Any) -> str:
    """Registry key of a layer (its class name) or a keras.ops operation (``ops.<class>``)."""
    is_layer = any(c.__name__ == "Layer" and c.__module__.startswith("keras.")
                   for c in type(op).__mro__)
    return type(op).__name__ if is_layer else f"ops.{type(op).__name__}"


def is_keras_class(op: Any) -> bool:
    mod = type(op).__module__
    return mod.startswith("keras.src.") or mod.startswith("keras.layers")


def refusal(op: Any) -> str | None:
    """Why ``op`` (a layer or keras.ops operation) cannot be imported, or None."""
    if not is_keras_class(op):
        base = next((c.__name__ for c in type(op).__mro__[1:] if c.__module__.startswith("keras.")),
                    "Layer")
        return f"a custom class (subclass of keras {base}) whose call qatir cannot see"
    conv = CONVERTERS.get(key_of(op))
    if conv is None:
        if any(c.__name__ == "Model" for c in type(op).__mro__):
            return "a subclassed model whose call qatir cannot see"
        if type(op).__name__ == "Lambda":
            return "a Lambda layer runs Python code qatir cannot see"
        return "no qatir op for this layer"
    return conv.check(op) if conv.check else None


def to_numpy(value: Any) -> np.ndarray:
    """A Keras variable / backend tensor / Python number as a float32-or-native numpy array."""
    import keras

    arr = np.asarray(keras.ops.convert_to_numpy(value))
    return arr.astype(np.float32) if arr.dtype.kind == "f" else arr


def _is_keras_tensor(v: Any) -> bool:
    return type(v).__name__ == "KerasTensor"


class Ctx:
    """Builds one IR graph from a Keras model; converters call :meth:`node` and :meth:`const`."""

    def __init__(self, graph: Graph, source: str):
        self.g = graph
        self.source = source
        self.layer = ""                   # name of the layer being converted (for messages)
        self._calls: dict[int, int] = {}  # id(layer) -> calls converted so far
        self._named: set[str] = set()     # layer names already given to a node

    # ------------------------------------------------------------ building
    def fresh_tensor_name(self, base: str) -> str:
        return self.g.unique_name(base)

    def const(self, arr: Any, what: str, dtype: Any = np.float32) -> Tensor:
        return self.g.const(np.ascontiguousarray(np.asarray(arr, dtype=dtype)),
                            name=f"{self.layer}/{what}")

    def node(self, op: str, ins: list[Tensor | None], attrs: dict[str, Any] | None = None,
             name: str | None = None) -> Tensor:
        """Add one node; the first node of a layer is named after the layer, the rest
        ``layer/op``. Returns its (first) output."""
        if name is None:
            name = self.layer if self.layer not in self._named else f"{self.layer}/{op.lower()}"
            self._named.add(self.layer)
        n: Node = self.g.add_node(op, ins, attrs, name=name,
                                  outputs=[self.g.unique_name(name)])
        return n.output

    @contextmanager
    def part(self, what: str) -> Iterator[None]:
        """Name what is built inside as the part ``layer/what`` of the layer (a sublayer,
        e.g. MultiHeadAttention's ``query``): its first node ``layer/what``, the rest
        ``layer/what/op``, its constants ``layer/what/...``."""
        outer, self.layer = self.layer, f"{self.layer}/{what}"
        try:
            yield
        finally:
            self.layer = outer

    def unsupported(self, layer: Any, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(self.source, {type(layer).__name__: 1},
                                  f"{layer.name!r}: {why}")

    # ------------------------------------------------------------ walking
    def apply_model(self, model: Any, ins: list[Tensor]) -> list[Tensor]:
        """The IR outputs of ``model`` (Sequential or Functional) called on ``ins``."""
        from qatir.frontends.keras import model_kind

        if model_kind(model) == "sequential":
            if len(ins) != 1:
                raise ShapeError(f"Sequential {model.name!r} called on {len(ins)} inputs")
            x: Any = ins[0]
            for layer in model.layers:
                out = self.apply(layer, [x], {})
                x = out[0] if len(out) == 1 else out
            return [x] if isinstance(x, Tensor) else list(x)
        return self._walk_functional(model, ins)

    def _walk_functional(self, model: Any, ins: list[Tensor]) -> list[Tensor]:
        import keras

        if len(ins) != len(model.inputs):
            raise ShapeError(f"model {model.name!r} has {len(model.inputs)} inputs, "
                             f"called on {len(ins)}")
        vals: dict[int, Tensor] = {id(kt): t for kt, t in zip(model.inputs, ins)}
        done: set[int] = set()
        for node in _topo_nodes(model):
            if id(node) in done or node.is_input:
                continue
            done.add(id(node))
            if any(id(kt) not in vals for kt in node.input_tensors):
                raise ShapeError(f"layer {node.operation.name!r} reads a tensor that is not "
                                 "computed from the model's inputs")
            args = keras.tree.map_structure(
                lambda v: vals[id(v)] if _is_keras_tensor(v) else v, node.arguments.args)
            kwargs = keras.tree.map_structure(
                lambda v: vals[id(v)] if _is_keras_tensor(v) else v, node.arguments.kwargs)
            outs = self.apply(node.operation, list(args), dict(kwargs))
            flat = keras.tree.flatten(node.outputs)
            if len(flat) != len(outs):
                raise ShapeError(f"layer {node.operation.name!r} has {len(flat)} outputs, "
                                 f"qatir made {len(outs)}")
            for kt, t in zip(flat, outs):
                self._check_shape(node.operation, kt, t)
                vals[id(kt)] = t
        return [vals[id(kt)] for kt in keras.tree.flatten(model.outputs)]

    def _check_shape(self, op: Any, kt: Any, t: Tensor) -> None:
        want = tuple(kt.shape)
        if len(want) != t.rank or any(a is not None and b is not None and a != b
                                      for a, b in zip(want, t.shape)):
            raise ShapeError(f"Keras says the output of {op.name!r} has shape {list(want)}, "
                             f"qatir's import gives {list(t.shape)}")

    def apply(self, op: Any, args: list[Any], kwargs: dict[str, Any]) -> list[Tensor]:
        from qatir.frontends.keras import model_kind

        if model_kind(op) is not None:
            x = args[0]
            ins = list(x) if isinstance(x, (list, tuple)) else (
                list(x.values()) if isinstance(x, dict) else [x])
            return self.apply_model(op, ins)
        conv = CONVERTERS[key_of(op)]
        k = self._calls.get(id(op), 0)
        self._calls[id(op)] = k + 1
        outer, self.layer = self.layer, op.name if k == 0 else f"{op.name}_call{k}"
        try:
            try:
                out = conv.fn(self, op, args, kwargs)
            except ShapeError as e:
                raise ShapeError(f"layer {op.name!r} ({type(op).__name__}): {e}") from None
            except _LAYER_FAULTS as e:
                raise ModelFormatError(f"{self.source}: layer {op.name!r} ({type(op).__name__}): "
                                       f"cannot import it: {type(e).__name__}: {e}") from None
            outs = [out] if isinstance(out, Tensor) else list(out)
            if len(outs) == 1:
                self._name_output(outs[0])
        finally:
            self.layer = outer
        return outs

    def _name_output(self, t: Tensor) -> None:
        """Give a layer's output tensor the layer's name (an earlier one of its tensors may
        hold it: that one becomes ``layer/<its op>``)."""
        want = self.layer
        if t.name == want or t.producer is None or not (
                t.producer.name == want or t.producer.name.startswith(want + "/")):
            return  # not made by this layer (an identity layer passes its input on)
        holder = self.g.tensors.get(want)
        if holder is not None:
            if holder.producer is None or not holder.producer.name.startswith(want):
                return
            _rename(self.g, holder, self.g.unique_name(f"{want}/{holder.producer.op.lower()}"))
        _rename(self.g, t, want)


def _rename(g: Graph, t: Tensor, new: str) -> None:
    del g.tensors[t.name]
    t.name = new
    g.tensors[new] = t


def _topo_nodes(model: Any) -> list[Any]:
    """The call nodes of a functional model, each after the nodes it reads (iterative DFS)."""
    order: list[Any] = []
    seen: set[int] = set()
    import keras

    stack: list[tuple[Any, bool]] = []
    for kt in reversed(keras.tree.flatten(model.outputs)):
        h = kt._keras_history
        stack.append((h.operation._inbound_nodes[h.node_index], False))
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for kt in reversed(node.input_tensors):
            h = kt._keras_history
            parent = h.operation._inbound_nodes[h.node_index]
            if id(parent) not in seen:
                stack.append((parent, False))
    return order

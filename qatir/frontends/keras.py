"""Keras frontend: a Keras 3 model (TensorFlow backend), or a ``.keras`` / ``.h5`` file, as IR.

Sequential and Functional graphs are walked layer by layer; nested models are
flattened into the one graph. Keras already computes in NHWC, so nothing is
transposed but the weights (HWIO -> OHWI, ...). Node names are layer names; a
layer that becomes several IR nodes names the extra ones ``layer/what``, and
the layer's output tensor carries the layer's name. Weights are float
constants; BatchNormalization stays a BATCH_NORM node, so ``qatir.fit`` on the
float graph trains it and ``qatir.quantize`` folds it. Activations fused in a
Conv/Dense layer become their own node (the fuse pass fuses them back).
A shared layer (one layer object called more than once) gets one set of nodes
per call, named ``layer``, ``layer_call1``, ...; each call has its own copy of
the weights, so ``qatir.fit`` trains the copies apart.

Layers (``keras_layers``, ``keras_misc``, ``keras_act``, MultiHeadAttention in
``keras_attention``) and the ``keras.ops`` operations a functional model may call
(``keras_ops``) are converted by class; the class
must be Keras's own (a user subclass of ``Dense`` is refused, since its
``call`` may differ). Everything qatir cannot import is listed at once, each
layer by name and class, with the way out: convert the model to float TFLite
with the official converter and ``qatir.load`` that file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qatir.errors import ModelFormatError, ShapeError, UnsupportedOpError
from qatir.frontends import (  # noqa: F401
    keras_act,
    keras_attention,
    keras_layers,
    keras_misc,
    keras_ops,
)
from qatir.frontends.keras_ctx import Ctx, refusal
from qatir.ir import Graph

WAY_OUT = ("convert the model to a float TFLite file with tf.lite.TFLiteConverter."
           "from_keras_model(model).convert() and qatir.load that file")


def is_keras_model(obj: Any) -> bool:
    """True for a Keras 3 model object, or any tf-keras object (refused with the way out)."""
    return _is_tf_keras(obj) or _is_model(obj)


def _is_tf_keras(obj: Any) -> bool:
    """True for an instance of a tf-keras (Keras 2) class or of a subclass of one."""
    return any(c.__module__.startswith("tf_keras") for c in type(obj).__mro__)


def load_keras(model: Any, input_shapes: Mapping[str, Sequence[int]] | None = None) -> Graph:
    """Import a ``keras.Model`` or a ``.keras`` / ``.h5`` file; returns a verified graph."""
    from qatir.tf.env import import_tensorflow

    import_tensorflow()   # qatir's TF settings before Keras (its backend) runs anything
    source = "keras model"
    if isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
        model = _read_file(source)
    else:
        source = f"keras model {getattr(model, 'name', '?')!r}"
    if _is_tf_keras(model):
        model = _from_tf_keras(model, source)
    _check_model(model, source)
    _check_supported(model, source)
    graph = Graph(_graph_name(model.name))
    ctx = Ctx(graph, source)
    ins = []
    for kt in model.inputs:
        shape = tuple(None if d is None else int(d) for d in kt.shape)
        name = kt.name
        if input_shapes and name in input_shapes:
            shape = _pinned(shape, input_shapes[name], name, source)
        ins.append(graph.add_input(ctx.fresh_tensor_name(name), shape, np.dtype(kt.dtype)))
    if input_shapes and set(input_shapes) - {kt.name for kt in model.inputs}:
        raise ShapeError(f"{source}: input_shapes names {sorted(set(input_shapes))}, but the "
                         f"inputs are {sorted(kt.name for kt in model.inputs)}")
    try:
        outs = ctx.apply_model(model, ins)
    except ShapeError as e:
        raise ShapeError(f"{source}: {e}") from None
    seen: set[int] = set()
    graph.outputs = []
    for t in outs:
        if t.producer is None or id(t) in seen:  # an input or a repeated output: copy it
            t = ctx.node("IDENTITY", [t], name=f"{t.name}/output")
        seen.add(id(t))
        graph.outputs.append(t)
    graph.eliminate_dead_code()
    graph.metadata["source"] = {"format": "keras", "model": model.name,
                                "keras": _keras_version()}
    graph.verify()
    return graph


def _read_file(path: str) -> Any:
    if not os.path.isfile(path):
        raise ModelFormatError(f"{path}: no such file")
    import keras

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except (ValueError, TypeError, OSError, KeyError, AttributeError) as e:
        raise ModelFormatError(f"{path}: Keras cannot load it: {type(e).__name__}: {e}") from None


def _from_tf_keras(model: Any, source: str) -> Any:
    """A tf-keras (Keras 2) model as the Keras 3 model its HDF5 file loads into.

    Keras 3 reads tf-keras ``.h5`` files (architecture and weights, layer names kept), so the
    model is saved to a temporary one and read back; nothing of the user's is written.
    Subclassed tf-keras models and layers Keras 3 does not know cannot be saved or read
    that way; they are refused with the way out.
    """
    import tempfile

    if model.__class__.__name__ not in ("Sequential", "Functional", "Model") \
            or not getattr(model, "_is_graph_network", False):
        raise UnsupportedOpError(source, {type(model).__name__: 1},
                                 f"a subclassed tf-keras model ({type(model).__name__}), whose "
                                 f"graph qatir cannot see; {WAY_OUT}")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.h5")
        try:
            model.save(path, save_format="h5", include_optimizer=False)
        except (ValueError, TypeError, NotImplementedError, OSError) as e:
            raise ModelFormatError(f"{source}: a tf-keras (Keras 2) model that cannot be saved "
                                   f"as HDF5 ({type(e).__name__}: {e}); {WAY_OUT}") from None
        import keras

        try:
            renamed = _drop_keras2_only_options(path, keras)
            loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
        except (ValueError, TypeError, OSError, KeyError, AttributeError) as e:
            raise ModelFormatError(f"{source}: a tf-keras (Keras 2) model Keras 3 cannot read "
                                   f"back ({type(e).__name__}: {e}); {WAY_OUT}") from None
    for layer in loaded.layers:  # the tf-keras names again (Keras 3 checks only new names)
        if layer.name in renamed:
            layer._name = renamed[layer.name]
    return loaded


#: Layer options every Keras 3 layer takes (``keras.layers.Layer``'s own keyword arguments).
_BASE_LAYER_OPTIONS = frozenset({"name", "trainable", "dtype", "autocast", "input_shape",
                                 "batch_input_shape", "batch_size", "input_dim",
                                 "activity_regularizer"})


def _drop_keras2_only_options(path: str, keras: Any) -> dict[str, str]:
    """Make the HDF5 file's model config one Keras 3 reads: remove layer options tf-keras
    writes and the Keras 3 layer of that class does not take (e.g. ``groups`` of
    DepthwiseConv2D), and rename layers whose names Keras 3 refuses (``/`` in
    keras.applications' ``Conv/BatchNorm``). Returns {new name: tf-keras name}; the weights
    are read by layer order, so their groups keep the old names."""
    import inspect
    import json

    import h5py

    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        layers = config.get("config", {}).get("layers", [])
        taken = {str(layer.get("name")) for layer in layers}
        renamed: dict[str, str] = {}
        for layer in layers:
            old = str(layer.get("name"))
            if "/" in old:
                new = old.replace("/", "_")
                while new in taken:
                    new += "_"
                taken.add(new)
                renamed[new] = old
        config = _rename_strings(config, {v: k for k, v in renamed.items()})
        for layer in config.get("config", {}).get("layers", []):
            cls = getattr(keras.layers, str(layer.get("class_name")), None)
            if cls is None or not isinstance(layer.get("config"), dict):
                continue
            allowed = set(_BASE_LAYER_OPTIONS)
            for klass in cls.__mro__:
                if "__init__" in vars(klass):
                    allowed |= set(inspect.signature(klass.__init__).parameters)
            for key in [k for k in layer["config"] if k not in allowed]:
                del layer["config"][key]
        f.attrs["model_config"] = json.dumps(config)
    return renamed


def _rename_strings(obj: Any, names: Mapping[str, str]) -> Any:
    """``obj`` (parsed JSON) with every string equal to a key of ``names`` replaced."""
    if isinstance(obj, str):
        return names.get(obj, obj)
    if isinstance(obj, list):
        return [_rename_strings(v, names) for v in obj]
    if isinstance(obj, dict):
        return {k: _rename_strings(v, names) for k, v in obj.items()}
    return obj


def _check_model(model: Any, source: str) -> None:
    kind = model_kind(model)
    if kind is None:
        raise UnsupportedOpError(source, {type(model).__name__: 1},
                                 f"a subclassed model ({type(model).__name__} overrides call), "
                                 f"whose graph qatir cannot see; {WAY_OUT}")
    if not getattr(model, "built", False) or not _has_inputs(model):
        raise ModelFormatError(f"{source}: the model has no inputs yet; build it on a "
                               "keras.Input (or call it once) before qatir.load")


def _has_inputs(model: Any) -> bool:
    try:
        return bool(model.inputs)
    except (AttributeError, ValueError):
        return False


def model_kind(model: Any) -> str | None:
    """"sequential", "functional", or None (a subclassed model whose call qatir cannot see)."""
    names = {c.__name__ for c in type(model).__mro__ if c.__module__.startswith("keras.")}
    if "Sequential" in names:
        return "sequential"
    if "Functional" in names:
        return "functional"
    return None


def _check_supported(model: Any, source: str) -> None:
    """Raise one UnsupportedOpError naming every layer (by name and class) qatir cannot import,
    each with the reason, then the way out."""
    bad: dict[str, list[str]] = {}
    for op in _all_operations(model):
        why = refusal(op)
        if why is not None:
            bad.setdefault(type(op).__name__, []).append(f"{op.name!r} ({why})")
    if bad:
        counts = {k: len(v) for k, v in bad.items()}
        detail = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(bad.items()))
        raise UnsupportedOpError(source, counts, f"{detail}. Way out: {WAY_OUT}")


def _all_operations(model: Any) -> list[Any]:
    out = []
    for op in _operations(model):
        if model_kind(op) is not None:
            out += _all_operations(op)
        else:
            out.append(op)   # a layer, a keras.ops operation, or a subclassed inner model
    return out


def _is_model(op: Any) -> bool:
    return any(c.__name__ == "Model" and c.__module__.startswith("keras.")
               for c in type(op).__mro__)


def _operations(model: Any) -> list[Any]:
    if model_kind(model) == "sequential":
        return list(model.layers)
    return [op for op in model.operations if type(op).__name__ != "InputLayer"]


def _pinned(shape: tuple, new: Sequence[int], name: str, source: str) -> tuple:
    new = tuple(int(d) for d in new)
    if len(new) != len(shape) or any(d <= 0 for d in new) or any(
            a is not None and a != b for a, b in zip(shape, new)):
        raise ShapeError(f"{source}: input {name!r} has shape {list(shape)}; {list(new)} does "
                         "not fit it")
    return new


def _graph_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in name) or "main"


def _keras_version() -> str:
    try:
        import keras

        return keras.__version__
    except ImportError:  # pragma: no cover - a model exists, so keras does
        return "?"


"""Turn what a user passes to ``fit``/``calibrate`` into feeds in graph-input order.

``fit`` accepts a ``tf.data.Dataset`` (already batched) or an iterable of
``({input_name: x}, y)`` batches, or one ``({input_name: X}, Y)`` pair of whole
arrays (then batched by ``batch_size``). A graph with one input also accepts a
bare array in place of the dict. Everything becomes a ``tf.data.Dataset`` of
``(tuple of inputs in graph order, y)`` with a dynamic batch dimension, so the
training step is traced once and can be distributed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from qatir.errors import QatirError
from qatir.feeds import check_finite, iterate_feeds, order_inputs  # noqa: F401
from qatir.ir import Graph
from qatir.tf.env import import_tensorflow

tf = import_tensorflow()


def _spec(graph: Graph, y: Any) -> tuple[Any, tf.TensorSpec]:
    xs = tuple(tf.TensorSpec((None,) + tuple(t.shape[1:]), tf.as_dtype(t.dtype))
               for t in graph.inputs)
    y = np.asarray(y)
    return xs, tf.TensorSpec((None,) + y.shape[1:], tf.as_dtype(y.dtype))


def _cast(graph: Graph, xs: tuple[Any, ...]) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(x, dtype=t.dtype) for t, x in zip(graph.inputs, xs))


def as_dataset(graph: Graph, data: Any, batch_size: int = 32) -> tf.data.Dataset:
    """A batched ``tf.data.Dataset`` of ``(inputs in graph order, y)``."""
    if isinstance(data, tf.data.Dataset):
        def checked(x, y):
            xs = tuple(tf.debugging.check_numerics(v, f"input {t.name!r}")
                       if t.dtype.kind == "f" else v
                       for t, v in zip(graph.inputs, order_inputs(graph, x)))
            return xs, y

        return data.map(checked)
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Mapping) \
            and not isinstance(data[1], (list, tuple)) and np.ndim(data[1]) >= 1 \
            and all(np.ndim(v) >= 1 for v in data[0].values()):
        xs = _cast(graph, order_inputs(graph, data[0]))
        check_finite(graph, xs)
        return tf.data.Dataset.from_tensor_slices((xs, np.asarray(data[1]))).batch(batch_size)
    batches = list(data)
    if not batches:
        raise QatirError("fit: the dataset is empty")
    prepared = []
    for i, item in enumerate(batches):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise QatirError(f"fit: batch {i} is not a (features, y) pair")
        xs = _cast(graph, order_inputs(graph, item[0]))
        check_finite(graph, xs)
        prepared.append((xs, np.asarray(item[1])))
    sig = _spec(graph, prepared[0][1])
    return tf.data.Dataset.from_generator(lambda: iter(prepared), output_signature=sig)

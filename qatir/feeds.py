"""Check what a user feeds a graph and put it in graph-input order (no TensorFlow needed).

One validator for the ways data reaches a graph: :func:`qatir.run`,
calibration, the data pipeline of ``fit`` and the ``.npz`` files of the
command line (:mod:`qatir.data`). Every complaint is a
:class:`~qatir.errors.DataError` naming the input. (The integer reference
still checks its int8 feeds itself, raising ``ExportError``.)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from qatir.errors import DataError, NumericsError
from qatir.ir import Graph, Tensor


def shape_str(shape: Sequence[int | None]) -> str:
    """``[1,?,8]``: a shape with unknown dims as ``?``."""
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def fits(shape: Sequence[int], want: Sequence[int | None]) -> bool:
    """Whether a concrete shape fills a declared one (None matches any size)."""
    return len(shape) == len(want) and all(w is None or s == w for s, w in zip(shape, want))


def check_names(graph: Graph, given: Iterable[str], where: str = "") -> None:
    """DataError listing missing and unknown input names at once."""
    names = [t.name for t in graph.inputs]
    given = list(given)
    missing = [n for n in names if n not in given]
    extra = [n for n in given if n not in names]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing input(s) {missing}")
        if extra:
            parts.append(f"unknown input(s) {extra}")
        raise DataError(f"{where or f'graph {graph.name!r}'}: {'; '.join(parts)} "
                        f"(inputs are {names})")


def check_array(t: Tensor, x: Any, cast: bool = True, where: str = "") -> np.ndarray:
    """``x`` as an array fit for input ``t``: same rank, declared dims, a usable dtype.

    ``cast=False`` wants the input's own dtype exactly (no conversion).
    """
    x = np.asarray(x)
    label = f"{where}: input {t.name!r}" if where else f"input {t.name!r}"
    if x.dtype != t.dtype:
        if not cast or (t.dtype.kind == "f" and x.dtype.kind not in "fiub"):
            raise DataError(f"{label}: dtype {x.dtype} cannot feed {t.dtype}")
        x = x.astype(t.dtype)
    if not fits(x.shape, t.shape):
        raise DataError(f"{label}: shape {list(x.shape)} does not match {shape_str(t.shape)}")
    return x


def order_inputs(graph: Graph, features: Any) -> tuple[Any, ...]:
    """Features (dict by input name, or a bare value for a one-input graph) in input order."""
    names = [t.name for t in graph.inputs]
    if not isinstance(features, Mapping):
        if len(names) != 1:
            raise DataError(f"graph {graph.name!r} has inputs {names}: pass a dict by input name")
        return (features,)
    check_names(graph, features)
    return tuple(features[n] for n in names)


def check_finite(graph: Graph, arrays: Iterable[np.ndarray]) -> None:
    """NumericsError naming the first graph input whose batch holds NaN or Inf."""
    for t, x in zip(graph.inputs, arrays):
        x = np.asarray(x)
        if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
            raise NumericsError(f"input {t.name!r}: data contains NaN or Inf")


def check_feeds(graph: Graph, feeds: Mapping[str, Any], cast: bool = True,
                where: str = "") -> list[np.ndarray]:
    """Feeds as arrays in graph-input order; DataError naming a missing/extra/misshaped input."""
    check_names(graph, feeds, where)
    return [check_array(t, feeds[t.name], cast, where) for t in graph.inputs]


def batch_features(graph: Graph, batch: Any) -> Mapping[str, Any]:
    """The features of one calibration batch, by input name.

    A batch is ``{input_name: x}``, a bare array for a one-input graph, or a
    ``(features, label)`` / ``(features, label, weight)`` tuple as Keras and
    ``tf.data`` pipelines yield them (labels are not needed); a tuple's
    features may also be a tuple of arrays in graph-input order.
    """
    names = [t.name for t in graph.inputs]
    if (isinstance(batch, tuple) and 1 <= len(batch) <= 3) or (
            isinstance(batch, list) and len(batch) == 2 and isinstance(batch[0], Mapping)):
        batch = batch[0]
    if isinstance(batch, Mapping):
        return batch
    if isinstance(batch, tuple):
        if len(batch) != len(names):
            raise DataError(f"graph {graph.name!r} has inputs {names}: a batch's features are a "
                            f"tuple of {len(batch)}; pass a dict by input name")
        return dict(zip(names, batch))
    if len(names) != 1:
        raise DataError(f"graph {graph.name!r} has inputs {names}: pass a dict by input name")
    return {names[0]: batch}


def _to_numpy(x: Any) -> np.ndarray:
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x)


def split_batch(graph: Graph, xs: Sequence[np.ndarray]) -> list[tuple[np.ndarray, ...]]:
    """A batch larger than a fixed-batch graph's, as graph-sized pieces (in order).

    Only the leading dimension is split, and only where it is a multiple of the
    graph's batch and every input agrees on the number of pieces; anything else
    is left whole for :func:`check_array` to judge (a DataError naming the input).
    """
    pieces = set()
    for t, x in zip(graph.inputs, xs):
        want = t.shape[0] if t.shape else None
        if (want is None or x.ndim != len(t.shape) or x.shape[0] == want
                or not fits(x.shape[1:], t.shape[1:])):
            pieces.add(1)
        elif x.shape[0] % want:
            raise DataError(f"input {t.name!r}: a batch of {x.shape[0]} does not split into "
                            f"the graph's batch of {want} (shape {list(x.shape)}, graph "
                            f"{shape_str(t.shape)})")
        else:
            pieces.add(x.shape[0] // want)
    if len(pieces) > 1:
        raise DataError(f"graph {graph.name!r}: inputs "
                        f"{[list(np.shape(x)) for x in xs]} hold different numbers of batches "
                        f"of the graph's sizes {[shape_str(t.shape) for t in graph.inputs]}")
    n = pieces.pop() if pieces else 1
    if n == 1:
        return [tuple(xs)]
    return [tuple(x[i * t.shape[0]:(i + 1) * t.shape[0]] for t, x in zip(graph.inputs, xs))
            for i in range(n)]


def iterate_feeds(graph: Graph, batches: Iterable[Any]) -> Iterator[tuple[np.ndarray, ...]]:
    """Calibration batches as checked tuples in input order, one graph-sized batch at a time.

    ``batches``: any iterable (a list, a generator, a ``tf.data.Dataset``) of what
    :func:`batch_features` accepts; TF tensors are converted with ``.numpy()``. A
    batch larger than a fixed-batch graph's is split (:func:`split_batch`). Nothing
    is kept: each batch is read when the previous one has been used.
    """
    for batch in batches:
        feeds = {k: _to_numpy(v) for k, v in batch_features(graph, batch).items()}
        check_names(graph, feeds)
        xs = [feeds[t.name] for t in graph.inputs]
        for piece in split_batch(graph, xs):
            checked = [check_array(t, x) for t, x in zip(graph.inputs, piece)]
            check_finite(graph, checked)
            yield tuple(checked)

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


def iterate_feeds(graph: Graph, batches: Iterable[Any]) -> Iterator[tuple[np.ndarray, ...]]:
    """Calibration batches ({input name: x} or bare arrays) as checked tuples in input order."""
    for batch in batches:
        if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], Mapping):
            batch = batch[0]  # a (features, label) pair: labels are not needed
        feeds = batch if isinstance(batch, Mapping) else dict(zip([graph.inputs[0].name], [batch]))
        xs = check_feeds(graph, {k: (v.numpy() if hasattr(v, "numpy") else v)
                                 for k, v in feeds.items()})
        check_finite(graph, xs)
        yield tuple(xs)

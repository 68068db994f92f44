"""Check what a user feeds a graph and put it in graph-input order (no TensorFlow needed).

Shared by :func:`qatir.run`, calibration and the data pipeline of ``fit``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from qatir.errors import NumericsError, QatirError
from qatir.ir import Graph


def order_inputs(graph: Graph, features: Any) -> tuple[Any, ...]:
    """Features (dict by input name, or a bare value for a one-input graph) in input order."""
    names = [t.name for t in graph.inputs]
    if not isinstance(features, Mapping):
        if len(names) != 1:
            raise QatirError(f"graph {graph.name!r} has inputs {names}: pass a dict by input name")
        return (features,)
    missing = [n for n in names if n not in features]
    extra = [n for n in features if n not in names]
    if missing or extra:
        raise QatirError(f"graph {graph.name!r}: missing input(s) {missing}, unknown input(s) "
                         f"{extra} (inputs are {names})")
    return tuple(features[n] for n in names)


def check_finite(graph: Graph, arrays: Iterable[np.ndarray]) -> None:
    """NumericsError naming the first graph input whose batch holds NaN or Inf."""
    for t, x in zip(graph.inputs, arrays):
        x = np.asarray(x)
        if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
            raise NumericsError(f"input {t.name!r}: data contains NaN or Inf")


def check_feeds(graph: Graph, feeds: Mapping[str, Any]) -> list[np.ndarray]:
    """Feeds as arrays in graph-input order; QatirError naming a missing/extra/misshaped input."""
    names = [t.name for t in graph.inputs]
    missing = [n for n in names if n not in feeds]
    extra = [n for n in feeds if n not in names]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing input(s) {missing}")
        if extra:
            parts.append(f"unknown input(s) {extra}")
        raise QatirError(f"graph {graph.name!r}: {'; '.join(parts)} (inputs are {names})")
    out = []
    for t in graph.inputs:
        x = np.asarray(feeds[t.name])
        if x.dtype != t.dtype:
            if t.dtype.kind == "f" and x.dtype.kind not in "fiub":
                raise QatirError(f"input {t.name!r}: dtype {x.dtype} cannot feed {t.dtype}")
            x = x.astype(t.dtype)
        if x.ndim != t.rank or any(d is not None and d != s for d, s in zip(t.shape, x.shape)):
            want = ["?" if d is None else d for d in t.shape]
            raise QatirError(f"input {t.name!r}: shape {list(x.shape)} does not match {want}")
        out.append(x)
    return out


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

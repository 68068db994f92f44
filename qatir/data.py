"""Data for the command line: ``.npz`` files, batches, random inputs, layout moves.

Arrays are checked by :mod:`qatir.feeds` (one validator, one error class:
:class:`~qatir.errors.DataError`); an ONNX model's users may hold NCHW arrays,
which are moved to the IR's NHWC here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from qatir.errors import DataError
from qatir.feeds import fits, shape_str
from qatir.ir import Graph, Tensor


def to_ir_layout(t: Tensor, x: np.ndarray, source: str) -> np.ndarray:
    """Feed arrays may come in the model's source layout (NCHW for ONNX): move them to NHWC."""
    x = np.asarray(x)
    if x.ndim == t.rank and fits(x.shape[1:], t.shape[1:]):
        return x
    if x.ndim == t.rank and t.source_layout == "NCHW" and x.ndim == 4:
        moved = np.transpose(x, (0, 2, 3, 1))
        if fits(moved.shape[1:], t.shape[1:]):
            return moved
    raise DataError(f"{source}: array {t.name!r} has shape {list(x.shape)}, the model input is "
                    f"{shape_str(t.shape)}" + (" (NHWC)" if t.source_layout == "NCHW" else ""))


def load_npz(path: str, graph: Graph, extra: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Arrays for every graph input (by name, in IR layout), plus ``extra`` keys."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    out: dict[str, np.ndarray] = {}
    names = ", ".join(sorted(arrays)) or "none"
    for t in graph.inputs:
        if t.name not in arrays:
            raise DataError(f"{path}: no array named {t.name!r} for model input {t.name!r} "
                            f"(arrays: {names}); save with np.savez(path, {t.name}=...)")
        out[t.name] = to_ir_layout(t, arrays[t.name], path).astype(t.dtype, copy=False)
    for key in extra:
        if key not in arrays:
            raise DataError(f"{path}: no array named {key!r} (arrays: {names})")
        out[key] = arrays[key]
    sizes = {len(v) for v in out.values()}
    if len(sizes) != 1:
        raise DataError(f"{path}: arrays have different lengths {sorted(sizes)}")
    return out


def batches(arrays: Mapping[str, np.ndarray], names: Sequence[str],
            batch_size: int) -> list[dict[str, np.ndarray]]:
    """Split whole-dataset arrays into feed dicts of ``batch_size`` rows."""
    n = len(next(iter(arrays.values())))
    return [{k: arrays[k][i:i + batch_size] for k in names} for i in range(0, n, batch_size)]


def single_samples(feeds: Sequence[Mapping[str, np.ndarray]], limit: int) -> list[dict[str, np.ndarray]]:
    """The first ``limit`` single-row feeds taken from batched ``feeds``."""
    out: list[dict[str, np.ndarray]] = []
    for b in feeds:
        for i in range(len(next(iter(b.values())))):
            if len(out) == limit:
                return out
            out.append({k: v[i:i + 1] for k, v in b.items()})
    return out


def random_batches(graph: Graph, count: int, batch_size: int = 1,
                   seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` batches of standard-normal inputs (a fallback; real data is better)."""
    rng = np.random.default_rng(seed)
    return [{t.name: rng.standard_normal(_concrete(t.shape, batch_size)).astype(t.dtype)
             for t in graph.inputs} for _ in range(count)]


def _concrete(shape: Sequence[int | None], batch: int) -> list[int]:
    dims = [batch if d is None and i == 0 else d for i, d in enumerate(shape)]
    if any(d is None for d in dims):
        raise DataError(f"input shape {shape_str(shape)} has unknown dimensions; "
                        "fix them with --input-shape NAME=D1,D2,...")
    return [int(d) for d in dims]


def batch_size_for(graph: Graph, wanted: int) -> int:
    """The graph's fixed batch dimension if it has one, else ``wanted``."""
    fixed = {t.shape[0] for t in graph.inputs if t.rank and t.shape[0] is not None}
    return int(fixed.pop()) if len(fixed) == 1 else wanted


def batch_one(graph: Graph) -> Graph:
    """A copy with dynamic dims set to 1, as the writer does for the .tflite file."""
    g = graph.clone()
    for t in g.tensors.values():
        if None in t.shape:
            t.shape = tuple(1 if d is None else d for d in t.shape)
    return g

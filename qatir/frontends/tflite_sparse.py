"""Densify a sparse TFLite constant (the tensor behind a DENSIFY op).

TFLite's sparsity format (schema ``SparsityParameters``): the dense tensor of
rank n is optionally blocked (``block_map[k]`` names the original dim split by
block k), giving n + k "expanded" dims. ``traversal_order`` lists them in
storage order (original dims first, block dims after), and each stored level is
either DENSE (all ``dense_size`` positions) or SPARSE_CSR (for parent position
p, children ``array_indices[array_segments[p]:array_segments[p + 1]]``). The
stored values follow in that traversal order.

The walk here is vectorised level by level: it keeps, for every position
reached so far, its linear "parent" number and its index in each level.
"""

from __future__ import annotations

import numpy as np

from qatir.frontends.tflite_reader import Sparsity

# A densified constant may not exceed this many bytes, nor this multiple of the file size.
MAX_DENSE_BYTES = 1 << 31
MAX_EXPANSION = 4096


def densify(values: np.ndarray, shape: tuple[int, ...], sp: Sparsity, file_size: int,
            what: str) -> np.ndarray:
    """The dense array of ``shape`` described by ``values`` and ``sp``.

    Raises ValueError (turned into ModelFormatError by the caller) on any
    inconsistency: wrong level count, out-of-range segments or indices, value
    count mismatch, or a dense size that the file size cannot justify.
    """
    n = len(shape)
    k = len(sp.block_map)
    levels = n + k
    if len(sp.traversal_order) != levels or sorted(sp.traversal_order) != list(range(levels)):
        raise ValueError(f"{what}: traversal_order {sp.traversal_order} is not a permutation "
                         f"of {levels} dims")
    if any(d < n for d in sp.traversal_order[n:]):
        raise ValueError(f"{what}: block dims must come last in traversal_order")
    if len(sp.dims) != levels:
        raise ValueError(f"{what}: {len(sp.dims)} dim_metadata entries, expected {levels}")
    if any(not 0 <= b < n for b in sp.block_map) or len(set(sp.block_map)) != k:
        raise ValueError(f"{what}: bad block_map {sp.block_map}")
    total = int(np.prod([int(d) for d in shape], dtype=object)) if shape else 1
    nbytes = total * values.dtype.itemsize
    if nbytes > MAX_DENSE_BYTES or nbytes > MAX_EXPANSION * max(file_size, 1):
        raise ValueError(f"{what}: dense size {nbytes} bytes is not plausible for a "
                         f"{file_size}-byte file")
    block_size = _block_sizes(sp, shape, n)
    expanded = [int(d) for d in shape] + block_size
    for b, d in enumerate(sp.block_map):
        expanded[d] //= block_size[b]
    parent = np.zeros(1, np.int64)
    level_idx: list[np.ndarray] = []
    for level in range(levels):
        dim = sp.dims[level]
        extent = expanded[sp.traversal_order[level]]
        if dim.dense:
            size = int(dim.dense_size)
            if size != extent:
                raise ValueError(f"{what}: dense level {level} has size {size}, the dim it "
                                 f"stores has {extent}")
            level_idx = [np.repeat(a, size) for a in level_idx]
            level_idx.append(np.tile(np.arange(size, dtype=np.int64), parent.size))
            parent = (np.repeat(parent, size) * size + level_idx[-1])
        else:
            seg, ind = dim.segments, dim.indices
            if seg is None or ind is None or seg.size < parent.max(initial=-1) + 2:
                raise ValueError(f"{what}: sparse level {level} has too few segments")
            lo, hi = seg[parent], seg[parent + 1]
            counts = hi - lo
            if np.any(counts < 0) or np.any(lo < 0) or np.any(hi > ind.size):
                raise ValueError(f"{what}: sparse level {level} has bad segments")
            reached = int(counts.sum())
            if reached > values.size:
                raise ValueError(f"{what}: sparse level {level} reaches {reached} positions, "
                                 f"only {values.size} values stored")
            starts = np.repeat(lo, counts)
            offsets = np.arange(reached, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts,
                                                                     counts)
            pos = starts + offsets
            level_idx = [np.repeat(a, counts) for a in level_idx]
            level_idx.append(ind[pos])
            if level_idx[-1].size and (level_idx[-1].min() < 0 or level_idx[-1].max() >= extent):
                raise ValueError(f"{what}: sparse level {level} has an index outside [0, {extent})")
            parent = pos
    if parent.size != values.size:
        raise ValueError(f"{what}: the sparsity pattern reaches {parent.size} positions but "
                         f"{values.size} values are stored")
    orig = [np.zeros(parent.size, np.int64) for _ in range(n)]
    for level in range(n):
        orig[sp.traversal_order[level]] = level_idx[level]
    for level in range(n, levels):
        b = sp.traversal_order[level] - n
        d = sp.block_map[b]
        orig[d] = orig[d] * block_size[b] + level_idx[level]
    for d in range(n):
        if orig[d].size and (orig[d].min() < 0 or orig[d].max() >= shape[d]):
            raise ValueError(f"{what}: sparse index out of range in dim {d}")
    dense = np.zeros(total, dtype=values.dtype)
    if n:
        flat = np.ravel_multi_index(tuple(orig), shape) if parent.size else np.zeros(0, np.int64)
        dense[flat] = values
    else:
        dense[:] = values[:1]
    return dense.reshape(shape)


def _block_sizes(sp: Sparsity, shape: tuple[int, ...], n: int) -> list[int]:
    """Size of each block dim, from the dense_size of its level (block dims are dense)."""
    sizes = []
    for b in range(len(sp.block_map)):
        level = sp.traversal_order.index(n + b)
        dim = sp.dims[level]
        if not dim.dense or dim.dense_size <= 0:
            raise ValueError("block dims must be dense with a positive size")
        if shape[sp.block_map[b]] % dim.dense_size:
            raise ValueError(f"block size {dim.dense_size} does not divide dim "
                             f"{shape[sp.block_map[b]]}")
        sizes.append(int(dim.dense_size))
    return sizes

"""Weight rounding chosen from the data: GPTQ (Frantar et al. 2022, "OPTQ").

Nearest rounding makes each int8 weight as close as it can be to the float one, but what
a layer is judged by is its output. With the layer's input X (rows: the values one output
position reads, over the calibration data) and the Hessian H = XᵀX of the output's
squared error, GPTQ rounds the weights of each output channel one input column at a
time and moves the rounding error of column i onto the columns not yet rounded, as the
inverse Hessian says is best:

    q_i = grid(w_i);  δ = (w_i − q_i) / U[i, i];  w_j −= δ · U[i, j]  for j > i

(U the upper Cholesky factor of H⁻¹, H damped by 1 % of its mean diagonal), which is
the optimal brain surgeon update, column by column. The grid is the weight FAKE_QUANT's
own (its per-channel range, computed from the float weights as before): only which
integer each weight takes changes, never a scale, so the int8 file, the integer
reference and LiteRT agree as they do with nearest rounding. Columns are taken in order
of decreasing H[i, i] ("act order"). The weights that set each channel's range (its
smallest and largest) keep their nearest value, so the range computed again from the
rounded weights is the same one.

When the table says ``[calibration] weight_rounding = "gptq"``, calibration does this
for every CONV_2D, DEPTHWISE_CONV_2D (per channel: a 9-tap problem each) and
FULLY_CONNECTED with a fake-quantized constant weight, reading the calibration data once
more (the float graph's inputs of those nodes), before bias correction. A layer whose
input rows are fewer than :data:`MIN_ROWS_PER_COLUMN` times its columns (a classifier
head seen on a few images) keeps nearest rounding: from too few rows the update fits the
error into directions the data never showed, and other inputs pay for it.

The rounded weights replace the float ones in the graph (each on its grid, so the weight
FAKE_QUANT is then exact): a QAT run afterwards starts from them, and calibrating again
rounds nothing more. ``graph.metadata["weight_rounding_done"]`` lists the nodes rounded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np

from qatir.bias_correction import _grid as _input_grid
from qatir.bias_correction import _input_name, _on_grid, _tap_index, _weight_fq
from qatir.ir import Graph, Node
from qatir.numerics import fake_quant_steps, nudged_params

log = logging.getLogger("qatir.weight_rounding")

#: ops whose weights GPTQ rounds
ROUNDED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
#: the values of ``[calibration] weight_rounding``
METHODS = ("nearest", "gptq")
#: a layer is rounded only with at least this many input rows per weight column
MIN_ROWS_PER_COLUMN = 4
#: the Hessian's damping, a fraction of its mean diagonal
DAMP = 0.01
#: columns rounded between two updates of the columns after them (the result is the same)
BLOCK = 128


def targets(graph: Graph) -> list[Node]:
    """The nodes whose weights GPTQ rounds: float input, fake-quantized constant weight
    read by this node only."""
    out = []
    for n in graph.nodes:
        if n.op not in ROUNDED_OPS or n.inputs[0].dtype.kind != "f":
            continue
        fq = _weight_fq(n)
        if fq is None or len(fq.output.users) != 1 or len(fq.inputs[0].users) != 1:
            continue
        out.append(n)
    return out


def patches(node: Node, x: np.ndarray) -> np.ndarray:
    """The rows the node's weights multiply, float64: for FULLY_CONNECTED ``[N, K]``; for a
    conv ``[N·positions, kh·kw·C]`` (tap-major, as the weights ``[O, kh, kw, C]`` flatten,
    zero where a tap reads padding)."""
    x = np.asarray(x, np.float32)
    if node.op == "FULLY_CONNECTED":
        return x.reshape(-1, x.shape[-1]).astype(np.float64)
    kh, kw = node.inputs[1].shape[1:3]
    sh, sw = node.attrs.get("stride", (1, 1))
    dh, dw = node.attrs.get("dilation", (1, 1))
    pad = node.attrs.get("padding", "VALID")
    rows = _tap_index(x.shape[1], kh, sh, dh, pad)  # [kh, oh], -1: padding
    cols = _tap_index(x.shape[2], kw, sw, dw, pad)
    xp = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # index -1 reads the zero row/column
    p = xp[:, rows[:, None, :, None], cols[None, :, None, :], :]  # [n, kh, kw, oh, ow, C]
    p = p.transpose(0, 3, 4, 1, 2, 5)
    return p.reshape(-1, kh * kw * x.shape[3]).astype(np.float64)


def problems(node: Node, w: np.ndarray) -> tuple[np.ndarray, int]:
    """The node's weights as ``[G, O, K]`` independent problems (one Hessian each) and
    the group count G: a conv of ``groups`` groups, a depthwise conv one per input
    channel (its ``m`` outputs), a FULLY_CONNECTED one."""
    if node.op == "FULLY_CONNECTED":
        return w.reshape(1, w.shape[0], -1), 1
    if node.op == "DEPTHWISE_CONV_2D":  # [1, kh, kw, C·m]: output k reads channel k // m
        _, kh, kw, cm = w.shape
        c = node.inputs[0].shape[3]
        return w.reshape(kh * kw, c, cm // c).transpose(1, 2, 0), c
    o, kh, kw, cg = w.shape
    groups = node.inputs[0].shape[3] // cg
    per = w.reshape(groups, o // groups, kh, kw, cg)
    return per.reshape(groups, o // groups, kh * kw * cg), groups


def unproblems(node: Node, p: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """:func:`problems` inverted: ``[G, O, K]`` back to the weight's own shape."""
    if node.op == "FULLY_CONNECTED":
        return p.reshape(shape)
    if node.op == "DEPTHWISE_CONV_2D":
        _, kh, kw, cm = shape
        return p.transpose(2, 0, 1).reshape(1, kh, kw, cm)
    return p.reshape(shape)


def hessian_parts(node: Node, rows: np.ndarray, groups: int) -> np.ndarray:
    """``[G, K, K]``: XᵀX of each group's input columns in ``rows`` (:func:`patches`)."""
    if node.op == "FULLY_CONNECTED":
        return (rows.T @ rows)[None]
    if node.op == "DEPTHWISE_CONV_2D":
        c = node.inputs[0].shape[3]
        r = rows.reshape(rows.shape[0], -1, c)  # [N, taps, C]
        return np.einsum("npc,nqc->cpq", r, r)
    k = rows.shape[1]
    cg = node.inputs[0].shape[3] // groups
    r = rows.reshape(rows.shape[0], k // (cg * groups), groups, cg)
    r = r.transpose(2, 0, 1, 3).reshape(groups, rows.shape[0], -1)
    return np.einsum("gnp,gnq->gpq", r, r)


class Grid:
    """Each weight's own grid (TF's per-channel fake-quant, bit for bit): ``lo``/``hi`` of
    any shape, one range per weight; :meth:`__call__` puts values of that shape on it, or
    (``col``) the values of one last-axis column."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray, bits: int, narrow: bool):
        lo, hi = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
        scale, _, nmin, nmax = nudged_params(lo, hi, bits, narrow)
        steps = np.float32((1 << bits) - 1 - (1 if narrow else 0))
        inv = (steps / np.where(hi > lo, hi - lo, scale * steps)).astype(np.float32)
        qz = np.floor(-nmin * inv + np.float32(0.5)).astype(np.float32)
        scale = np.where((lo == 0) & (hi == 0), np.float32(0), scale).astype(np.float32)
        self.params = np.stack([scale, nmin, nmax, inv, qz])  # [5, *shape]

    def permuted(self, order: np.ndarray) -> Grid:
        """The grid with the last axis of ``[G, O, K]`` taken in ``order`` ``[G, K]``."""
        out = object.__new__(Grid)
        out.params = np.take_along_axis(self.params, order[None, :, None, :], axis=-1)
        return out

    def __call__(self, x: np.ndarray, col: int | None = None) -> np.ndarray:
        scale, nmin, nmax, inv, qz = self.params if col is None else self.params[..., col]
        shifted = (np.clip(np.asarray(x, np.float32), nmin, nmax) - nmin).astype(np.float32)
        k = np.floor((shifted * inv - qz) + np.float32(0.5))
        return (k * scale).astype(np.float32).astype(np.float64)


def gptq(w: np.ndarray, h: np.ndarray, grid: Grid, pinned: np.ndarray) -> np.ndarray:
    """Round ``w`` ``[G, O, K]`` (G independent problems) given their Hessians ``h``
    ``[G, K, K]`` onto ``grid`` (of ``w``'s shape); ``pinned`` ``[G, O, K]`` (bool): weights
    that take their nearest value whatever the updates made of them. Returns the rounded
    ``[G, O, K]``."""
    w = w.astype(np.float64).copy()
    nearest = grid(w)
    h = h.astype(np.float64).copy()
    diag = np.diagonal(h, axis1=1, axis2=2).copy()
    dead = diag <= 0
    g_dead, k_dead = np.nonzero(dead)
    h[g_dead, k_dead, k_dead] = 1.0
    w = np.where(dead[:, None, :], nearest, w)
    order = np.argsort(-np.where(dead, 1.0, diag), axis=1, kind="stable")  # act order
    o3 = order[:, None, :]
    w, pin, near = (np.take_along_axis(a, o3, axis=2) for a in (w, pinned, nearest))
    h = np.take_along_axis(np.take_along_axis(h, o3, axis=2), order[:, :, None], axis=1)
    grid = grid.permuted(order)
    k = w.shape[2]
    idx = np.arange(k)
    h[:, idx, idx] += DAMP * np.mean(h[:, idx, idx], axis=1, keepdims=True)
    try:
        u = np.linalg.cholesky(np.linalg.inv(h)).transpose(0, 2, 1)  # upper: H⁻¹ = UᵀU
    except np.linalg.LinAlgError:
        return nearest
    q = np.empty_like(w)
    for b0 in range(0, k, BLOCK):  # updates inside a block, the rest once after it
        b1 = min(b0 + BLOCK, k)
        errs = np.empty(w.shape[:2] + (b1 - b0,))
        for i in range(b1 - b0):
            c = b0 + i
            qc = np.where(pin[:, :, c], near[:, :, c], grid(w[:, :, c], c))
            q[:, :, c] = qc
            errs[:, :, i] = (w[:, :, c] - qc) / u[:, c, c][:, None]
            w[:, :, c + 1:b1] -= errs[:, :, i, None] * u[:, None, c, c + 1:b1]
        w[:, :, b1:] -= errs @ u[:, b0:b1, b1:]
    back = np.empty_like(q)
    np.put_along_axis(back, np.broadcast_to(o3, q.shape), q, axis=2)
    return back


def round_node(node: Node, h: np.ndarray) -> bool:
    """GPTQ-round ``node``'s weight constant in place given its ``[G, K, K]`` Hessians;
    True if it changed (False: the rounded weights did not keep their grid, left as
    they were)."""
    from qatir.calibration import weight_range

    fq = _weight_fq(node)
    lo, hi = fq.inputs[1].data, fq.inputs[2].data
    bits, narrow = int(fq.attrs["bits"]), bool(fq.attrs.get("narrow_range"))
    axis = fq.attrs.get("axis")
    w0 = np.asarray(fq.inputs[0].data, np.float32)
    shape = w0.shape
    # the grid, per weight: one range per channel along ``axis`` (or one for all)
    lo_p = problems(node, np.ascontiguousarray(np.broadcast_to(
        _along(np.asarray(lo, np.float32), axis, shape), shape)))[0]
    hi_p = problems(node, np.ascontiguousarray(np.broadcast_to(
        _along(np.asarray(hi, np.float32), axis, shape), shape)))[0]
    # the weights that set their channel's range keep their nearest value
    rows_w = _as_channel_rows(w0, axis)
    pin = np.zeros(rows_w.shape, bool)
    pin[np.argmin(rows_w, axis=0), np.arange(rows_w.shape[1])] = True
    pin[np.argmax(rows_w, axis=0), np.arange(rows_w.shape[1])] = True
    out = gptq(problems(node, w0)[0], h, Grid(lo_p, hi_p, bits, narrow),
               problems(node, _from_channel_rows(pin, axis, shape))[0])
    new = unproblems(node, out, shape).astype(np.float32)
    # calibration computes the range again from the rounded weights: it must be the
    # same grid and give the same integers, or the node keeps nearest rounding
    k = fake_quant_steps(new, lo, hi, bits, narrow, axis)
    fq.inputs[0].data = new
    rng = weight_range(fq)
    if rng is None or not np.array_equal(
            fake_quant_steps(new, *(np.reshape(v, np.shape(lo)) for v in rng), bits, narrow,
                             axis), k):
        log.info("weight rounding: %s keeps nearest rounding (the rounded weights move "
                 "their range)", node.name)
        fq.inputs[0].data = w0
        return False
    return True


def _along(v: np.ndarray, axis: int | None, shape: Sequence[int]) -> np.ndarray:
    """A per-channel range ``v`` shaped to broadcast over a weight of ``shape``."""
    if axis is None:
        return v.reshape([1] * len(shape)) if v.size == 1 else v
    s = [1] * len(shape)
    s[axis % len(shape)] = -1
    return v.reshape(s)


def _as_channel_rows(w: np.ndarray, axis: int | None) -> np.ndarray:
    """``[values per channel, channels]`` (one channel for a per-tensor range)."""
    if axis is None:
        return w.reshape(-1, 1)
    return np.moveaxis(w, axis, -1).reshape(-1, w.shape[axis])


def _from_channel_rows(rows: np.ndarray, axis: int | None, shape: Sequence[int]) -> np.ndarray:
    """:func:`_as_channel_rows` inverted."""
    if axis is None:
        return rows.reshape(shape)
    moved = [s for i, s in enumerate(shape) if i != axis % len(shape)] + [shape[axis]]
    return np.moveaxis(rows.reshape(moved), -1, axis)


def hessians(graph: Graph, nodes: Sequence[Node], feeds: Iterable[tuple[np.ndarray, ...]]
             ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """By node name: its ``[G, K, K]`` Hessians summed over ``feeds`` (the float graph's
    values), and how many input rows they are over."""
    from qatir.evaluate import FloatRun, strip_fake_quant

    names = {n.name: _input_name(n) for n in nodes}
    run = FloatRun(strip_fake_quant(graph), sorted(set(names.values())))
    hs: dict[str, np.ndarray] = {}
    count: dict[str, int] = {n.name: 0 for n in nodes}
    groups = {n.name: problems(n, np.asarray(_weight_fq(n).inputs[0].data))[1] for n in nodes}
    grids = {n.name: _input_grid(n) for n in nodes}
    for xs in feeds:
        feed = {t.name: x for t, x in zip(graph.inputs, xs)}
        out = run.run(feed)
        for node in nodes:
            name = names[node.name]
            x = np.asarray(out[name] if name in out else feed[name], np.float32)
            rows = patches(node, _on_grid(grids[node.name], x))
            part = hessian_parts(node, rows, groups[node.name])
            hs[node.name] = part if node.name not in hs else hs[node.name] + part
            count[node.name] += rows.shape[0]
    return hs, count


def round_weights(graph: Graph, feeds: Iterable[tuple[np.ndarray, ...]]) -> list[str]:
    """GPTQ-round the weights of every target (module doc), reading ``feeds`` once;
    returns the names of the nodes rounded (also ``graph.metadata["weight_rounding_done"]``)."""
    nodes = targets(graph)
    done: list[str] = []
    if nodes:
        hs, count = hessians(graph, nodes, feeds)
        for node in nodes:
            if node.name not in hs:
                continue
            k = hs[node.name].shape[-1]
            if count[node.name] < MIN_ROWS_PER_COLUMN * k:
                log.info("weight rounding: %s keeps nearest rounding (%d input rows for %d "
                         "columns)", node.name, count[node.name], k)
                continue
            if round_node(node, hs[node.name]):
                done.append(node.name)
    graph.metadata["weight_rounding_done"] = done
    return done

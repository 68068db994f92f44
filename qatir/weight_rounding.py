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
from qatir.numerics import fake_quant, fake_quant_steps

log = logging.getLogger("qatir.weight_rounding")

#: ops whose weights GPTQ rounds
ROUNDED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
#: the values of ``[calibration] weight_rounding``
METHODS = ("nearest", "gptq")
#: a layer is rounded only with at least this many input rows per weight column
MIN_ROWS_PER_COLUMN = 4
#: the Hessian's damping, a fraction of its mean diagonal
DAMP = 0.01


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


def gptq(w: np.ndarray, h: np.ndarray, quantize, pinned: np.ndarray) -> np.ndarray:
    """Round ``w`` ``[O, K]`` (one problem) given its Hessian ``h`` ``[K, K]``.

    ``quantize(values, cols)``: the grid values of ``values`` ``[O, len(cols)]``, the
    weights at input columns ``cols``; ``pinned`` ``[O, K]`` (bool): weights that take
    their nearest value whatever the updates made of them. Returns the rounded ``[O, K]``.
    """
    w = w.astype(np.float64).copy()
    nearest = quantize(w, np.arange(w.shape[1]))
    h = h.astype(np.float64).copy()
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    w[:, dead] = nearest[:, dead]
    order = np.argsort(-np.diag(h), kind="stable")
    w, h, pin, near = w[:, order], h[np.ix_(order, order)], pinned[:, order], nearest[:, order]
    h[np.diag_indices_from(h)] += DAMP * np.mean(np.diag(h))
    try:
        u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper: H⁻¹ = UᵀU
    except np.linalg.LinAlgError:
        return nearest
    q = np.empty_like(w)
    for i in range(w.shape[1]):
        qi = quantize(w[:, i:i + 1], order[i:i + 1])[:, 0]
        qi = np.where(pin[:, i], near[:, i], qi)
        q[:, i] = qi
        err = (w[:, i] - qi) / u[i, i]
        w[:, i + 1:] -= np.outer(err, u[i, i + 1:])
    back = np.empty_like(q)
    back[:, order] = q
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
    lo_full = np.broadcast_to(_along(np.asarray(lo, np.float32), axis, shape), shape)
    hi_full = np.broadcast_to(_along(np.asarray(hi, np.float32), axis, shape), shape)
    wp, groups = problems(node, w0)
    lo_p, _ = problems(node, np.ascontiguousarray(lo_full))
    hi_p, _ = problems(node, np.ascontiguousarray(hi_full))
    # the weights that set their channel's range keep their nearest value
    rows_w = _as_channel_rows(w0, axis)
    pin_full = np.zeros(rows_w.shape, bool)
    pin_full[np.argmin(rows_w, axis=0), np.arange(rows_w.shape[1])] = True
    pin_full[np.argmax(rows_w, axis=0), np.arange(rows_w.shape[1])] = True
    pin_p, _ = problems(node, _from_channel_rows(pin_full, axis, shape))
    out = np.empty(wp.shape, np.float64)
    for g in range(groups):
        def quantize(values, cols, g=g):
            return _grid(values, lo_p[g][:, cols], hi_p[g][:, cols], bits, narrow)
        out[g] = gptq(wp[g], h[g], quantize, pin_p[g])
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


def _grid(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int, narrow: bool
          ) -> np.ndarray:
    """Each value on its own weight's grid (``lo``/``hi`` the same shape as ``values``)."""
    flat = np.asarray(values, np.float32).reshape(1, -1)
    q = fake_quant(flat, lo.reshape(-1), hi.reshape(-1), bits, narrow, axis=1)
    return q.reshape(values.shape).astype(np.float64)


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

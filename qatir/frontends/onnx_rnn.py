"""ONNX LSTM and GRU, unrolled over a static sequence into int8-capable builtins.

Each time step becomes FULLY_CONNECTED (the recurrent product), ADD, STRIDED_SLICE
(one gate out of the stacked pre-activations), LOGISTIC, TANH, MUL and ADD/SUB, so
every piece has an int8 kernel in LiteRT and qatir's reference, calibration and QAT
see the cell as ordinary ops. (TFLite's UNIDIRECTIONAL_SEQUENCE_LSTM would be one node,
but its int8 kernel needs 16-bit cell state and intermediate scales qatir's pipeline
does not model; the unrolled form needs nothing new.) The input projection of all
steps is one FULLY_CONNECTED over the ``[seq, batch, input]`` tensor, with both biases
folded into it. The sequence length and batch must be static.

ONNX gate order: LSTM ``i, o, f, c`` (W ``[dirs, 4H, in]``), GRU ``z, r, h``. A zero
(or absent) initial state skips the recurrent product of the first step. Supported:
directions forward, reverse and bidirectional; activations Sigmoid/Tanh/Relu; GRU's
``linear_before_reset`` 0 and 1. Refused with the node named: ``clip``, LSTM's
``input_forget`` and non-zero peepholes, ``layout=1``, ``sequence_lens`` shorter
than the sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qatir.frontends.onnx_ctx import Ctx, converter, has_dims, ident, onnx_attrs
from qatir.ir import Tensor

_ACTS = {"Sigmoid": "LOGISTIC", "Tanh": "TANH", "Relu": "RELU"}
# Steps (sequence length x directions) one node may unroll into: a step is 13-16 IR nodes,
# so this bounds one RNN at about 160k nodes (the pass pipeline runs 10k nodes in 0.45 s).
MAX_STEPS = 10_000
_GATES = {"LSTM": 4, "GRU": 3}
_DEFAULT_ACTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}


@dataclass
class RnnWeights:
    """One direction's float weights in ONNX gate order: ``w [G·H, in]``, ``r [G·H, H]``,
    biases ``wb``, ``rb`` ``[G·H]``."""

    w: np.ndarray
    r: np.ndarray
    wb: np.ndarray
    rb: np.ndarray


class _Cell:
    """Emission helper for one RNN node: unique suffixes and the ops a cell is made of."""

    def __init__(self, ctx: Ctx, hidden: int, batch: int, acts: list[str]):
        self.ctx, self.hidden, self.batch, self.acts = ctx, hidden, batch, acts
        self._n = 0

    def op(self, op: str, inputs: list, attrs: dict | None = None, tag: str = "") -> Tensor:
        self._n += 1
        return self.ctx.emit(op, inputs, attrs, suffix=f"__{tag}{self._n}")

    def const(self, arr: np.ndarray, tag: str) -> Tensor:
        self._n += 1
        return self.ctx.const_tensor(np.ascontiguousarray(arr, np.float32),
                                     f"{self.ctx.out_name()}__{tag}{self._n}")

    def cols(self, t: Tensor, lo: int, hi: int) -> Tensor:
        """Columns [lo, hi) of a ``[batch, n]`` tensor."""
        return self.op("STRIDED_SLICE", [t], {"begin": [0, lo], "end": [self.batch, hi],
                                              "strides": [1, 1], "shrink_axis": []}, "gate")

    def gate(self, t: Tensor, k: int, act: str) -> Tensor:
        """Gate ``k`` (a block of ``hidden`` columns) through ONNX activation ``act``."""
        h = self.hidden
        return self.op(_ACTS[act], [self.cols(t, k * h, (k + 1) * h)], tag="act")

    def fc(self, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
        return self.op("FULLY_CONNECTED", [x, w, b], {"keep_num_dims": False}, "fc")

    def step_rows(self, xproj: Tensor, t: int, width: int) -> Tensor:
        """Rows of time step ``t`` out of the ``[seq·batch, width]`` input projection."""
        b = self.batch
        return self.op("STRIDED_SLICE", [xproj], {"begin": [t * b, 0], "end": [(t + 1) * b, width],
                                                  "strides": [1, 1], "shrink_axis": []}, "x")


def _lstm_step(cell: _Cell, xg: Tensor, h: Tensor | None, c: Tensor | None,
               r: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM step: c' = f⊙c + i⊙g(x·W + h·R + b), h' = o⊙h(c') (ONNX gates i, o, f, c)."""
    f_act, g_act, h_act = cell.acts
    pre = xg if h is None else cell.op("ADD", [xg, cell.fc(h, r)], tag="pre")
    i, o, f = (cell.gate(pre, k, f_act) for k in range(3))
    cand = cell.gate(pre, 3, g_act)
    ic = cell.op("MUL", [i, cand], tag="ic")
    c_new = ic if c is None else cell.op("ADD", [cell.op("MUL", [f, c], tag="fc"), ic], tag="c")
    h_new = cell.op("MUL", [o, cell.op(_ACTS[h_act], [c_new], tag="hc")], tag="h")
    return h_new, c_new


def _gru_step(cell: _Cell, xg: Tensor, h: Tensor | None, r_zr: Tensor, r_h: Tensor,
              rb_h: Tensor | None) -> Tensor:
    """One GRU step (ONNX gates z, r, h): n = g(x·W_h + r⊙(h·R_h + Rb_h)) when
    ``rb_h`` is given (linear_before_reset), else g(x·W_h + (r⊙h)·R_h + b); then
    h' = n + z⊙(h - n)."""
    f_act, g_act = cell.acts
    hid = cell.hidden
    xzr, xh = cell.cols(xg, 0, 2 * hid), cell.cols(xg, 2 * hid, 3 * hid)
    zr = xzr if h is None else cell.op("ADD", [xzr, cell.fc(h, r_zr)], tag="pre")
    z, rg = cell.gate(zr, 0, f_act), cell.gate(zr, 1, f_act)
    if rb_h is not None:  # linear_before_reset = 1
        hh = rb_h if h is None else cell.fc(h, r_h, rb_h)
        pre_n = cell.op("ADD", [xh, cell.op("MUL", [rg, hh], tag="rh")], tag="pren")
    elif h is None:
        pre_n = xh
    else:
        pre_n = cell.op("ADD", [xh, cell.fc(cell.op("MUL", [rg, h], tag="rh"), r_h)], tag="pren")
    n = cell.op(_ACTS[g_act], [pre_n], tag="n")
    if h is None:
        return cell.op("SUB", [n, cell.op("MUL", [z, n], tag="zn")], tag="h")
    return cell.op("ADD", [n, cell.op("MUL", [z, cell.op("SUB", [h, n], tag="d")], tag="zd")],
                   tag="h")


# ------------------------------------------------------------------ reading
def _attrs(ctx: Ctx, kind: str) -> tuple[int, str, list[str]]:
    """hidden_size, direction and the activation list, refusing what is not unrolled."""
    a = onnx_attrs(ctx.node)
    if "clip" in a:
        raise ctx.unsupported(f"clip={a['clip']} (cell clipping is not supported)")
    if int(a.get("input_forget", 0)):
        raise ctx.unsupported("input_forget=1 (coupled input/forget gates)")
    if int(a.get("layout", 0)):
        raise ctx.unsupported("layout=1 (batch-major); only layout=0 [seq, batch, input]")
    direction = str(a.get("direction", "forward"))
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ctx.unsupported(f"direction={direction!r}")
    dirs = 2 if direction == "bidirectional" else 1
    acts = list(a.get("activations", _DEFAULT_ACTS[kind] * dirs))
    per = len(_DEFAULT_ACTS[kind])
    if len(acts) != per * dirs or any(x not in _ACTS for x in acts):
        raise ctx.unsupported(f"activations={acts} (only {sorted(_ACTS)}, {per} per direction)")
    if acts[:per] != acts[per:] and dirs == 2:
        raise ctx.unsupported(f"activations={acts} differ between the two directions")
    hidden = int(a.get("hidden_size", 0))
    if hidden < 1:
        raise ctx.shape_error(f"hidden_size={hidden}")
    return hidden, direction, acts[:per]


def _const(ctx: Ctx, i: int, what: str) -> np.ndarray | None:
    v = ctx.inp(i)
    if v is None:
        return None
    if not v.is_const or has_dims(v.const):
        raise ctx.unsupported(f"{what} must be a constant")
    return np.asarray(v.const, np.float32)


def onnx_weights(ctx: Ctx, kind: str, hidden: int, dirs: int, in_size: int,
                 w: np.ndarray, r: np.ndarray) -> list[RnnWeights]:
    """Per-direction weights from ONNX W ``[dirs, G·H, in]``, R ``[dirs, G·H, H]`` and the
    optional B input 3 ``[dirs, 2·G·H]``."""
    gh = _GATES[kind] * hidden
    if w.shape != (dirs, gh, in_size) or r.shape != (dirs, gh, hidden):
        raise ctx.shape_error(f"W {list(w.shape)} / R {list(r.shape)} do not fit "
                              f"{dirs} direction(s), hidden {hidden}, input {in_size}")
    b = _const(ctx, 3, "B")
    b = np.zeros((dirs, 2 * gh), np.float32) if b is None else b
    if b.shape != (dirs, 2 * gh):
        raise ctx.shape_error(f"B {list(b.shape)} is not [{dirs}, {2 * gh}]")
    return [RnnWeights(w[d], r[d], b[d, :gh], b[d, gh:]) for d in range(dirs)]


def _initial(ctx: Ctx, i: int, dirs: int, batch: int, hidden: int,
             what: str) -> list[Tensor | None]:
    """initial_h / initial_c ``[dirs, batch, H]`` per direction; zero or absent is None."""
    v = ctx.inp(i)
    if v is None or (v.is_const and not has_dims(v.const) and not np.any(v.const)):
        return [None] * dirs
    if v.shape != (dirs, batch, hidden):
        raise ctx.shape_error(f"{what} shape {list(v.shape)} is not [{dirs}, {batch}, {hidden}]")
    full = ctx.as_tensor(v, ident(3))
    out = []
    for d in range(dirs):
        s = ctx.emit("STRIDED_SLICE", [full], {"begin": [d, 0, 0], "end": [d + 1, batch, hidden],
                                                "strides": [1, 1, 1], "shrink_axis": [0]},
                     suffix=f"__{what}{d}")
        out.append(s)
    return out


def _check_seq_lens(ctx: Ctx, seq: int) -> None:
    lens = _const(ctx, 4, "sequence_lens")
    if lens is not None and np.any(lens != seq):
        raise ctx.unsupported(f"sequence_lens {lens.astype(int).tolist()} shorter than the "
                              f"sequence ({seq}); only full-length sequences are unrolled")


def _input(ctx: Ctx) -> tuple[Tensor, int, int, int]:
    """X as an IR tensor in ONNX layout ``[seq, batch, input]`` with its static sizes."""
    x = ctx.need(0)
    if x.rank != 3:
        raise ctx.shape_error(f"X has rank {x.rank}, expected [seq, batch, input]")
    seq, batch, in_size = x.shape
    if seq is None or batch is None or in_size is None:
        raise ctx.shape_error(f"X shape {list(x.shape)}: the sequence length and batch must be "
                              "static to unroll; fix them with input_shapes=")
    dirs = 2 if onnx_attrs(ctx.node).get("direction") == "bidirectional" else 1
    if int(seq) * dirs > MAX_STEPS:
        raise ctx.unsupported(f"a sequence of {seq} x {dirs} direction(s): unrolling is "
                              f"limited to {MAX_STEPS} steps")
    return ctx.as_tensor(x, ident(3)), int(seq), int(batch), int(in_size)


# ------------------------------------------------------------------ outputs
def _stack_outputs(ctx: Ctx, cell: _Cell, hs: list[list[Tensor]],
                   finals: list[list[Tensor]]) -> None:
    """Y ``[seq, dirs, batch, H]`` and Y_h (and Y_c) ``[dirs, batch, H]``."""
    b, hid = cell.batch, cell.hidden
    names = ctx.node.output
    if len(names) > 0 and names[0] in ctx.consumed:
        per_dir = []
        for seq_h in hs:
            rows = [cell.op("RESHAPE", [h], {"new_shape": [1, 1, b, hid]}, "y") for h in seq_h]
            per_dir.append(rows[0] if len(rows) == 1 else
                           cell.op("CONCATENATION", rows, {"axis": 0}, "yseq"))
        y = per_dir[0] if len(per_dir) == 1 else cell.op("CONCATENATION", per_dir, {"axis": 1},
                                                         "ydir")
        ctx.set_out(ctx.act(ctx.emit("IDENTITY", [y]), ident(4)), 0)
    for k, final in enumerate(finals, start=1):
        if len(names) <= k or names[k] not in ctx.consumed:
            continue
        parts = [cell.op("RESHAPE", [t], {"new_shape": [1, b, hid]}, "last") for t in final]
        y = parts[0] if len(parts) == 1 else cell.op("CONCATENATION", parts, {"axis": 0}, "ld")
        ctx.set_out(ctx.act(ctx.emit("IDENTITY", [y], name=ctx.out_name(k)), ident(3)), k)


def unroll_lstm(ctx: Ctx, weights: list[RnnWeights]) -> None:
    """Emit an LSTM node (its attributes and activations read from ``ctx.node``) with
    per-direction float ``weights`` (from LSTM or DynamicQuantizeLSTM)."""
    hidden, direction, acts = _attrs(ctx, "LSTM")
    x, seq, batch, _ = _input(ctx)
    _check_seq_lens(ctx, seq)
    p = _const(ctx, 7, "P (peepholes)")
    if p is not None and np.any(p):
        raise ctx.unsupported("non-zero peepholes (P)")
    dirs = len(weights)
    h0 = _initial(ctx, 5, dirs, batch, hidden, "initial_h")
    c0 = _initial(ctx, 6, dirs, batch, hidden, "initial_c")
    cell = _Cell(ctx, hidden, batch, acts)
    hs, last_h, last_c = [], [], []
    for d, wt in enumerate(weights):
        xproj = cell.fc(x, cell.const(wt.w, "w"), cell.const(wt.wb + wt.rb, "b"))
        r = cell.const(wt.r, "r")
        h, c = h0[d], c0[d]
        seq_h: list[Tensor | None] = [None] * seq
        backward = direction == "reverse" or d == 1
        for t in (range(seq - 1, -1, -1) if backward else range(seq)):
            h, c = _lstm_step(cell, cell.step_rows(xproj, t, 4 * hidden), h, c, r)
            seq_h[t] = h
        hs.append(seq_h)
        last_h.append(h)
        last_c.append(c)
    _stack_outputs(ctx, cell, hs, [last_h, last_c])


def unroll_gru(ctx: Ctx, weights: list[RnnWeights]) -> None:
    """Emit a GRU node with per-direction float ``weights``."""
    hidden, direction, acts = _attrs(ctx, "GRU")
    lbr = bool(int(onnx_attrs(ctx.node).get("linear_before_reset", 0)))
    x, seq, batch, _ = _input(ctx)
    _check_seq_lens(ctx, seq)
    h0 = _initial(ctx, 5, len(weights), batch, hidden, "initial_h")
    cell = _Cell(ctx, hidden, batch, acts)
    hs, last_h = [], []
    for d, wt in enumerate(weights):
        bias = wt.wb + wt.rb
        if lbr:  # Rb_h stays inside r ⊙ (h·R_h + Rb_h)
            bias[2 * hidden:] = wt.wb[2 * hidden:]
        xproj = cell.fc(x, cell.const(wt.w, "w"), cell.const(bias, "b"))
        r_zr = cell.const(wt.r[:2 * hidden], "rzr")
        r_h = cell.const(wt.r[2 * hidden:], "rh")
        rb_h = cell.const(wt.rb[2 * hidden:], "rbh") if lbr else None
        h = h0[d]
        seq_h: list[Tensor | None] = [None] * seq
        backward = direction == "reverse" or d == 1
        for t in (range(seq - 1, -1, -1) if backward else range(seq)):
            h = _gru_step(cell, cell.step_rows(xproj, t, 3 * hidden), h, r_zr, r_h, rb_h)
            seq_h[t] = h
        hs.append(seq_h)
        last_h.append(h)
    _stack_outputs(ctx, cell, hs, [last_h])


@converter("LSTM", "GRU")
def _rnn(ctx: Ctx) -> None:
    kind = ctx.node.op_type
    hidden, direction, _ = _attrs(ctx, kind)
    dirs = 2 if direction == "bidirectional" else 1
    w, r = _const(ctx, 1, "W"), _const(ctx, 2, "R")
    in_size = ctx.need(0).shape[-1]
    weights = onnx_weights(ctx, kind, hidden, dirs, in_size, w, r)
    (unroll_lstm if kind == "LSTM" else unroll_gru)(ctx, weights)

"""ONNX Einsum in the forms attention uses: one batched matrix product of two operands.

An equation ``A,B->O`` (``...`` allowed) is classified letter by letter: *batch* letters
are in A, B and O, *m* letters in A and O, *n* letters in B and O, *k* (contracted)
letters in A and B only. A becomes ``[batch..., M, K]`` and B ``[batch..., K, N]`` (or
their adjoints, when that saves a transpose), one ``BATCH_MATMUL`` multiplies them, and
the result ``[batch..., m..., n...]`` is handed on in that layout (the ONNX order is a
layout permutation, so no TRANSPOSE is written for it). A constant operand with no
batch letters becomes the weight of a ``FULLY_CONNECTED`` (``bid,jd->bij``).
``bhid,bhjd->bhij``, ``bhij,bhjd->bhid``, ``bid,jd->bij`` and ``...ij,...jk->...ik`` are
such products. Without a contracted letter (``ij,ij->ij``, an outer product) it is a
broadcasting ``MUL``. Anything else (one operand, three, a repeated letter as in a trace or
diagonal, a letter summed out of one operand alone) is refused with an
:class:`~qatir.errors.UnsupportedOpError` naming the node and the equation.
"""

from __future__ import annotations

import math
import string

import numpy as np

from qatir.frontends.onnx_ctx import Ctx, Val, converter, onnx_attrs
from qatir.frontends.onnx_fold import folder
from qatir.ir import Tensor


def parse_equation(eq: str, ranks: list[int]) -> tuple[list[str], str]:
    """Operand and output subscripts with ``...`` expanded to letters the equation does not
    use (numpy's rules: an implicit output is the ellipsis, then the sorted letters used
    once). Raises ValueError naming what is wrong."""
    eq = eq.replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ValueError(f"{len(terms)} operand subscripts for {len(ranks)} inputs")
    width = 0
    for t, r in zip(terms, ranks):
        if t.count("...") > 1 or (t.replace("...", "") and not t.replace("...", "").isalpha()):
            raise ValueError(f"bad subscripts {t!r}")
        if "..." in t:
            width = max(width, r - len(t.replace("...", "")))
        elif len(t) != r:
            raise ValueError(f"subscripts {t!r} for an input of rank {r}")
    ell = "".join(c for c in string.ascii_letters if c not in eq)[:width]  # fresh letters

    def expand(t: str, r: int) -> str:
        if "..." not in t:
            return t
        n = r - len(t.replace("...", ""))
        if n < 0:
            raise ValueError(f"subscripts {t!r} for an input of rank {r}")
        return t.replace("...", ell[width - n:])

    ops = [expand(t, r) for t, r in zip(terms, ranks)]
    if arrow:
        if "..." not in out and width and any("..." in t for t in terms):
            raise ValueError("the output drops the '...' dimensions")
        out = out.replace("...", ell)
    else:
        named = "".join(t.replace("...", "") for t in terms)
        out = ell + "".join(sorted(c for c in set(named) if named.count(c) == 1))
    return ops, out


@folder("Einsum")
def _fold_einsum(ctx, ins, attrs):
    eq = attrs.get("equation", b"")
    eq = eq.decode() if isinstance(eq, bytes) else str(eq)
    try:
        return [np.asarray(np.einsum(eq, *ins))]
    except ValueError as e:
        raise ctx.unsupported(f"equation {eq!r}: {e}") from None


@converter("Einsum")
def _einsum(ctx: Ctx) -> None:
    eq = onnx_attrs(ctx.node).get("equation", b"")
    eq = eq.decode() if isinstance(eq, bytes) else str(eq)
    if len(ctx.node.input) != 2:
        raise ctx.unsupported(f"equation {eq!r}: only products of two operands are imported")
    a, b = ctx.need(0), ctx.need(1)
    try:
        (sa, sb), so = parse_equation(eq, [a.rank, b.rank])
        roles = _roles(sa, sb, so)
    except ValueError as e:
        raise ctx.unsupported(f"equation {eq!r}: {e}") from None
    if a.is_const and not b.is_const:
        a, b, sa, sb = b, a, sb, sa
        roles = (roles[0], roles[2], roles[1], roles[3])
    batch, m, n, k = roles
    if not k:
        ctx.set_out(_product(ctx, a, b, sa, sb, so))
        return
    if b.is_const and not batch:
        y, letters = _fully_connected(ctx, a, b, sa, sb, m, n, k)
    else:
        y, letters = _batch_matmul(ctx, a, b, sa, sb, batch, m, n, k)
    ctx.set_out(ctx.act(y, tuple(so.index(c) for c in letters)))


def _product(ctx: Ctx, a: Val, b: Val, sa: str, sb: str, so: str) -> Val:
    """No contracted letter (``ij,ij->ij``, ``bi,bj->bij``): a broadcasting MUL, each
    operand laid out in the output's order with size-1 axes for its missing letters."""
    def aligned(v: Val, subs: str) -> Tensor:
        t = ctx.as_tensor(v, tuple(subs.index(c) for c in so if c in subs))
        shape = [v.shape[subs.index(c)] if c in subs else 1 for c in so]
        return t if list(t.shape) == shape else ctx.reshape(t, shape, suffix=f"__{subs}")

    return ctx.act(ctx.emit("MUL", [aligned(a, sa), aligned(b, sb)]))


def _roles(sa: str, sb: str, so: str) -> tuple[str, str, str, str]:
    """(batch, m, n, k) letters, each in the order of the output (k: of the first operand)."""
    for t in (sa, sb, so):
        if len(set(t)) != len(t):
            raise ValueError(f"repeated subscript in {t!r} (diagonals are not imported)")
    extra = set(so) - set(sa) - set(sb)
    if extra:
        raise ValueError(f"output subscripts {sorted(extra)} appear in no operand")
    alone = (set(sa) ^ set(sb)) - set(so)
    if alone:
        raise ValueError(f"subscripts {sorted(alone)} are summed out of one operand alone")
    batch = "".join(c for c in so if c in sa and c in sb)
    m = "".join(c for c in so if c in sa and c not in sb)
    n = "".join(c for c in so if c in sb and c not in sa)
    k = "".join(c for c in sa if c in sb and c not in so)
    return batch, m, n, k


def _dims(v: Val, subs: str, letters: str) -> list[int | None]:
    return [v.shape[subs.index(c)] for c in letters]


def _merged(dims: list[int | None]) -> int | None:
    return None if any(d is None for d in dims) else math.prod(int(d) for d in dims)


def _operand(ctx: Ctx, v: Val, subs: str, lead: str, rows: str, cols: str,
             suffix: str) -> tuple[Tensor, bool]:
    """``v`` as ``[lead..., prod(rows), prod(cols)]`` or, when its own order is
    ``lead, cols, rows``, as that (True: the adjoint)."""
    adj = subs == lead + cols + rows and subs != lead + rows + cols
    order = lead + (cols + rows if adj else rows + cols)
    t = ctx.as_tensor(v, tuple(subs.index(c) for c in order))
    shape = _dims(v, subs, lead)
    first, second = (cols, rows) if adj else (rows, cols)
    shape += [_merged(_dims(v, subs, first)) if first else 1,
              _merged(_dims(v, subs, second)) if second else 1]
    if list(t.shape) != shape:
        t = ctx.reshape(t, shape, suffix=suffix)
    return t, adj


def _batch_matmul(ctx: Ctx, a: Val, b: Val, sa: str, sb: str, batch: str, m: str, n: str,
                  k: str) -> tuple[Tensor, str]:
    ta, adj_x = _operand(ctx, a, sa, batch, m, k, "__lhs")
    tb, adj_y = _operand(ctx, b, sb, batch, k, n, "__rhs")
    dims = _lead(a, sa, b, sb, batch) + _dims(a, sa, m) + _dims(b, sb, n)
    merged = len(m) != 1 or len(n) != 1
    y = ctx.emit("BATCH_MATMUL", [ta, tb], {"adj_x": adj_x, "adj_y": adj_y},
                 suffix="__bmm" if merged else "")
    return _unmerge(ctx, y, batch, m, n, dims)


def _lead(a: Val, sa: str, b: Val, sb: str, batch: str) -> list[int | None]:
    """The broadcast batch dims."""
    out = []
    for da, db in zip(_dims(a, sa, batch), _dims(b, sb, batch)):
        out.append(db if da == 1 else da if db == 1 else da if da is not None else db)
    return out


def _fully_connected(ctx: Ctx, a: Val, b: Val, sa: str, sb: str, m: str, n: str,
                     k: str) -> tuple[Tensor, str]:
    """A constant right-hand side without batch letters: the weight [N, K] of an FC."""
    w = np.transpose(np.asarray(b.const, np.float32), [sb.index(c) for c in n + k])
    nn = int(math.prod(w.shape[:len(n)]))
    w = w.reshape(nn, -1)
    t = ctx.as_tensor(a, tuple(sa.index(c) for c in m + k))
    shape = _dims(a, sa, m) + [_merged(_dims(a, sa, k)) if k else 1]
    if not m:
        shape = [1] + shape
    if list(t.shape) != shape:
        t = ctx.reshape(t, shape, suffix="__lhs")
    name = ctx.out_name()
    dims = _dims(a, sa, m) + [int(b.const.shape[sb.index(c)]) for c in n]
    y = ctx.emit("FULLY_CONNECTED", [t, ctx.const_tensor(w, name + "__weight"), None],
                 {"keep_num_dims": len(shape) > 2},
                 suffix="" if len(m) >= 1 and len(n) == 1 else "__fc")
    return _unmerge(ctx, y, "", m, n, dims)


def _unmerge(ctx: Ctx, y: Tensor, batch: str, m: str, n: str,
             dims: list[int | None]) -> tuple[Tensor, str]:
    """``y`` reshaped to one axis per letter (batch, m, n); returns it and its letters."""
    letters = batch + m + n
    if list(y.shape) != dims:
        y = ctx.reshape(y, dims, name=ctx.out_name())
    return y, letters

"""Float32 numpy kernels for the float islands of a mixed graph.

The integer reference (:mod:`qatir.reference`) runs a node with these kernels when it
computes a float32 tensor (a float island; DEQUANTIZE is the integer kernel's). They
follow LiteRT's float kernels: float32 results, elementwise ops computed in float32
(IEEE-exact ops such as ADD, SUB, MUL, DIV, MAXIMUM, MINIMUM, RELU*, ABS, NEG give
LiteRT's values bit for bit on both resolvers; XNNPACK's SQRT can be 1 ulp off), accumulations (conv, FC, MEAN,
pooling) in float64 and rounded once, transcendental ops through float64. LiteRT
accumulates in float32 in its own order and XNNPACK uses polynomial approximations
of exp/sigmoid/tanh, so those agree within :data:`FLOAT_RTOL` / :data:`FLOAT_ATOL`
(``|a - b| <= FLOAT_ATOL + FLOAT_RTOL * |b|``), checked against both resolvers by
``tests/test_float_islands.py``.

Measured (2026-12-01, ai_edge_litert on x86, 5 random int8 feeds of a [1,8,8,16] island):
bit-exact on both resolvers for DIV, RSQRT and RESIZE_BILINEAR (each resolver's own
formula), and under BUILTIN_REF for EXP and SQRT;
bit-exact for HARD_SWISH and MEAN over H, W on both (each resolver's formula and
order; measured 2026-12-02);
worst relative error 4.7e-7 (EXP, XNNPACK), 1e-6
(MEAN); worst absolute error 3.3e-6 for a 3x3x16 float CONV_2D (float32 accumulation
order). The error of an accumulation grows with its length (about sqrt(K)), so a long
float conv can exceed the tolerance, which covers every case measured here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from qatir.ir import Node
from qatir.reference_kernels import patches

#: Tolerance of a float-island tensor against LiteRT (either resolver).
FLOAT_RTOL = 1e-5
FLOAT_ATOL = 1e-5

FloatKernel = Callable[[Node, list], np.ndarray]
#: float kernels whose result depends on the resolver: ``(node, xs, mode)``.
MODE_KERNELS = ("RESIZE_BILINEAR", "HARD_SWISH", "MEAN", "SUM", "REDUCE_MAX",
                "LOCAL_RESPONSE_NORMALIZATION")
_F = np.float32


def _act(node: Node, y: np.ndarray) -> np.ndarray:
    act = node.attrs.get("fused_activation", "NONE")
    if act == "RELU":
        y = np.maximum(y, _F(0))
    elif act == "RELU6":
        y = np.clip(y, _F(0), _F(6))
    elif act == "RELU_N1_TO_1":
        y = np.clip(y, _F(-1), _F(1))
    elif act == "TANH":
        y = np.tanh(y.astype(np.float64))
    return np.asarray(y).astype(np.float32)


def _f32(xs: list) -> list:
    return [None if x is None else np.asarray(x).astype(np.float32, copy=False) for x in xs]


_BINARY = {"ADD": np.add, "SUB": np.subtract, "MUL": np.multiply, "DIV": np.divide,
           "MAXIMUM": np.maximum, "MINIMUM": np.minimum, "POW": np.power,
           "SQUARED_DIFFERENCE": lambda a, b: np.square(a - b)}
#: ops whose integer-reference kernel is dtype-generic (moves values, computes nothing).
LAYOUT_OPS = frozenset({"RESHAPE", "SQUEEZE", "TRANSPOSE", "TILE", "CONCATENATION", "PAD",
                        "STRIDED_SLICE", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH", "GATHER",
                        "RESIZE_NEAREST_NEIGHBOR"})


def _binary(node: Node, xs: list) -> np.ndarray:
    a, b = _f32(xs)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _act(node, _BINARY[node.op](a, b))


def _unary(fn: Callable[[np.ndarray], np.ndarray], wide: bool = False) -> FloatKernel:
    def kernel(node: Node, xs: list) -> np.ndarray:
        x = _f32(xs)[0]
        with np.errstate(all="ignore"):
            return np.asarray(fn(x.astype(np.float64) if wide else x)).astype(np.float32)
    return kernel


def _hard_swish(node: Node, xs: list, mode: str) -> np.ndarray:
    """BUILTIN_REF: ``(x·relu6(x + 3)) / 6`` in float32; XNNPACK: ``x·clamp(fma(x, 1/6, 0.5),
    0, 1)`` (both measured bit-exact on 16k values, tests/test_modes.py)."""
    x = _f32(xs)[0]
    if mode == "xnnpack":
        t = (x.astype(np.float64) * np.float64(_F(1) / _F(6)) + 0.5).astype(np.float32)
        return (x * np.clip(t, _F(0), _F(1))).astype(np.float32)
    return ((x * np.clip(x + _F(3), _F(0), _F(6))).astype(np.float32) / _F(6)).astype(np.float32)


def _leaky(node: Node, xs: list) -> np.ndarray:
    x = _f32(xs)[0]
    return np.where(x >= 0, x, x * _F(node.attrs["alpha"])).astype(np.float32)


def _prelu(node: Node, xs: list) -> np.ndarray:
    x, a = _f32(xs)
    return np.where(x >= 0, x, x * a).astype(np.float32)


def _softmax(node: Node, xs: list) -> np.ndarray:
    x = _f32(xs)[0].astype(np.float64) * float(node.attrs.get("beta", 1.0))
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _log_softmax(node: Node, xs: list) -> np.ndarray:
    x = _f32(xs)[0].astype(np.float64)
    z = x - x.max(axis=-1, keepdims=True)
    return (z - np.log(np.exp(z).sum(axis=-1, keepdims=True))).astype(np.float32)


def _bias(xs: list, n: int) -> np.ndarray:
    b = xs[2] if len(xs) > 2 and xs[2] is not None else None
    return np.zeros(n) if b is None else b.astype(np.float64)


def _conv(node: Node, xs: list) -> np.ndarray:
    x, w = xs[0], xs[1]
    p, _ = patches(x.astype(np.float64), w.shape[1], w.shape[2], node.attrs, 0.0)
    groups, c = x.shape[3] // w.shape[3], w.shape[3]
    wg = np.split(w.astype(np.float64), groups, axis=0)
    acc = np.concatenate([np.einsum("nhiwjc,oijc->nhwo", p[..., g * c:(g + 1) * c], wg[g],
                                    optimize=True) for g in range(groups)], axis=-1)
    return _act(node, acc + _bias(xs, w.shape[0]))


def _dwconv(node: Node, xs: list) -> np.ndarray:
    x, w = xs[0], xs[1]
    mult = int(node.attrs.get("depth_multiplier", 1))
    p, _ = patches(x.astype(np.float64), w.shape[1], w.shape[2], node.attrs, 0.0)
    p = np.repeat(p, mult, axis=-1) if mult > 1 else p
    acc = np.einsum("nhiwjc,ijc->nhwc", p, w[0].astype(np.float64), optimize=True)
    return _act(node, acc + _bias(xs, w.shape[3]))


def _fc(node: Node, xs: list) -> np.ndarray:
    x, w = xs[0], xs[1]
    k = w.shape[1]
    acc = x.astype(np.float64).reshape(-1, k) @ w.astype(np.float64).T + _bias(xs, w.shape[0])
    return _act(node, acc.reshape(node.outputs[0].shape))


def _pool(node: Node, xs: list) -> np.ndarray:
    kh, kw = node.attrs["filter"]
    if node.op == "MAX_POOL_2D":
        p, _ = patches(xs[0].astype(np.float32), kh, kw, node.attrs, -np.inf)
        return _act(node, p.max(axis=(2, 4)))
    p, mask = patches(xs[0].astype(np.float64), kh, kw, node.attrs, 0.0)
    cnt = mask.sum(axis=(1, 3))[None, :, :, None]
    return _act(node, p.sum(axis=(2, 4)) / cnt)


def _reduce(node: Node, xs: list, mode: str) -> np.ndarray:
    """REDUCE_MAX exactly; MEAN and SUM accumulate in float32 one element after the
    other in row-major order of the reduced axes, as LiteRT's kernels do; MEAN then
    divides by the count (BUILTIN_REF) or multiplies by its reciprocal (XNNPACK): measured
    bit-exact (tests/test_modes.py) except XNNPACK's reduction of the last axis, which sums
    in its own order (within the float tolerance)."""
    x = _f32(xs)[0]
    axis = tuple(sorted(int(a) % x.ndim for a in node.attrs["axis"]))
    shape = node.outputs[0].shape
    if node.op == "REDUCE_MAX":
        return np.max(x, axis=axis, keepdims=bool(node.attrs["keep_dims"])).reshape(shape)
    kept = [i for i in range(x.ndim) if i not in axis]
    rows = np.transpose(x, axis + tuple(kept)).reshape(-1, *[x.shape[i] for i in kept])
    acc = np.zeros(rows.shape[1:], np.float32)
    for r in rows:
        acc = (acc + r).astype(np.float32)
    if node.op == "MEAN":
        n = _F(len(rows))
        acc = (acc * (_F(1) / n) if mode == "xnnpack" else acc / n).astype(np.float32)
    return acc.reshape(shape)


def _batch_matmul(node: Node, xs: list) -> np.ndarray:
    a, b = (x.astype(np.float64) for x in xs)
    if node.attrs.get("adj_x"):
        a = np.swapaxes(a, -1, -2)
    if node.attrs.get("adj_y"):
        b = np.swapaxes(b, -1, -2)
    return (a @ b).astype(np.float32)


def _lrn(node: Node, xs: list, mode: str) -> np.ndarray:
    """LOCAL_RESPONSE_NORMALIZATION over the last axis, summed in float32 in channel order.

    The resolvers disagree on the window (measured 2026-12-02, ai_edge_litert 2.3.0):
    the default path (optimized_ops, TF's definition) sums channels [c - r, c + r];
    BUILTIN_REF's reference_ops stops before c + r, i.e. [c - r, c + r - 1].
    """
    x = xs[0].astype(np.float32)
    a = node.attrs
    r, depth = int(a["radius"]), x.shape[-1]
    hi = r if mode == "reference" else r + 1
    sq = x * x
    out = np.empty_like(x)
    for c in range(depth):
        acc = np.zeros(x.shape[:-1], np.float32)
        for j in range(max(0, c - r), min(depth, c + hi)):
            acc += sq[..., j]
        base = _F(a["bias"]) + _F(a["alpha"]) * acc
        out[..., c] = x[..., c] * np.power(base, _F(-float(a["beta"])))
    return out


def _resize_bilinear(node: Node, xs: list, mode: str) -> np.ndarray:
    """reference_ops::ResizeBilinear (float; weights from the unclamped position), or
    XNNPACK's f32 ibilinear (positions clamped, lerp horizontally then vertically)."""
    x = xs[0].astype(np.float32)
    _, h, w, _ = x.shape
    oh, ow = node.attrs["size"]
    align, half = bool(node.attrs["align_corners"]), bool(node.attrs["half_pixel_centers"])
    if mode == "xnnpack":
        return _xnn_resize_f32(x, oh, ow, align, half)

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scale = _F((n_in - 1) / (n_out - 1) if align and n_out > 1 else n_in / n_out)
        v = np.arange(n_out, dtype=np.float32)
        pos = (v + _F(0.5)) * scale - _F(0.5) if half else v * scale
        lo = np.maximum(np.floor(pos), 0).astype(np.int64)
        up = np.minimum(np.ceil(pos).astype(np.int64), n_in - 1)
        return lo, up, (pos - lo.astype(np.float32)).astype(np.float32)

    y0, y1, dy = axis(oh, h)
    x0, x1, dx = axis(ow, w)
    dy, dx = dy[None, :, None, None], dx[None, None, :, None]
    one = _F(1)
    return (x[:, y0][:, :, x0] * (one - dy) * (one - dx) + x[:, y1][:, :, x0] * dy * (one - dx)
            + x[:, y0][:, :, x1] * (one - dy) * dx + x[:, y1][:, :, x1] * dy * dx
            ).astype(np.float32)


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """a + (b − a)·t in float32, product and sum rounded separately (no FMA: measured
    bit-exact with XNNPACK's f32 ibilinear on x86)."""
    return (a + (b - a) * t).astype(np.float32)


def _xnn_resize_f32(x: np.ndarray, oh: int, ow: int, align: bool, half: bool) -> np.ndarray:
    from qatir.reference_extra import _xnn_interp

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lo, up, _ = _xnn_interp(n_out, n_in, align, half)
        adj = 1 if align else 0
        scale = _F(n_in - adj) / _F(n_out - adj) if n_out - adj > 0 else _F(0)
        v = np.arange(n_out, dtype=np.float32)
        if half and not align:
            off = _F(_F(0.5) * scale - _F(0.5))
            pos = np.clip((v * scale + off).astype(np.float32), _F(0), _F(n_in - 1))
        else:
            pos = (v * scale).astype(np.float32)
        return lo, up, (pos - lo.astype(np.float32)).astype(np.float32)

    _, h, w, _ = x.shape
    y0, y1, av = axis(oh, h)
    x0, x1, ah = axis(ow, w)
    ah, av = ah[None, None, :, None], av[None, :, None, None]
    tl, tr = x[:, y0][:, :, x0], x[:, y0][:, :, x1]
    bl, br = x[:, y1][:, :, x0], x[:, y1][:, :, x1]
    return _lerp(_lerp(tl, tr, ah), _lerp(bl, br, ah), av)


def _cast(node: Node, xs: list) -> np.ndarray:
    return np.asarray(xs[0]).astype(node.outputs[0].dtype)


def float_kernels() -> dict[str, FloatKernel]:
    """op -> float32 kernel; layout ops (RESHAPE, PAD, ...) use the dtype-generic ones of
    :func:`qatir.reference.kernels`."""
    table: dict[str, FloatKernel] = dict.fromkeys(_BINARY, _binary)
    table.update({
        "RELU": _unary(lambda x: np.maximum(x, _F(0))),
        "RELU6": _unary(lambda x: np.clip(x, _F(0), _F(6))),
        "RELU_N1_TO_1": _unary(lambda x: np.clip(x, _F(-1), _F(1))),
        "RELU_0_TO_1": _unary(lambda x: np.clip(x, _F(0), _F(1))),
        "ABS": _unary(np.abs), "NEG": _unary(np.negative), "SQRT": _unary(np.sqrt),
        "RSQRT": _unary(lambda x: 1.0 / np.sqrt(x), wide=True),
        "EXP": _unary(np.exp, wide=True), "TANH": _unary(np.tanh, wide=True),
        "LOGISTIC": _unary(lambda x: 1.0 / (1.0 + np.exp(-x)), wide=True),
        "HARD_SWISH": _hard_swish,
        "LEAKY_RELU": _leaky, "PRELU": _prelu, "SOFTMAX": _softmax, "LOG_SOFTMAX": _log_softmax,
        "CONV_2D": _conv, "DEPTHWISE_CONV_2D": _dwconv, "FULLY_CONNECTED": _fc,
        "MAX_POOL_2D": _pool, "AVERAGE_POOL_2D": _pool,
        "MEAN": _reduce, "SUM": _reduce, "REDUCE_MAX": _reduce,
        "BATCH_MATMUL": _batch_matmul, "CAST": _cast, "RESIZE_BILINEAR": _resize_bilinear,
        "LOCAL_RESPONSE_NORMALIZATION": _lrn,
    })
    return table


def close(a: np.ndarray, b: np.ndarray) -> bool:
    """``a`` within the float-island tolerance of ``b``."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return bool(np.all(np.abs(a64 - b64) <= FLOAT_ATOL + FLOAT_RTOL * np.abs(b64)))

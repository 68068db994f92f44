"""Integer kernels of the arithmetic ops (conv, FC, add, mul, pooling, activations).

Each kernel takes ``(node, xs, mode)``: the lowered node, its input values
(int8/int32 numpy arrays, ``None`` for an absent input) and ``mode`` —
``"reference"`` (LiteRT ``BUILTIN_REF``: gemmlowp double rounding, float
round-half-away FC) or ``"xnnpack"`` (the default resolver: XNNPACK's
arithmetic where XNNPACK takes the op, LiteRT's optimized kernel where it does
not, including the scale ratios XNNPACK refuses: ADD/SUB outside [2^-10, 2^8),
MUL outside [2^-16, 2^8), LEAKY_RELU/QUANTIZE outside [2^-8, 2^7]). It returns
the int8 output.
"""

from __future__ import annotations

import numpy as np

from qatir.ir import Node, QuantParams
from qatir.numerics import same_padding
from qatir.ops.defs import conv_out
from qatir.reference_math import (
    act_range,
    fp32_requant,
    libm,
    mbqm,
    quantize_multiplier,
    quantize_multipliers,
    round_half_away,
    wrap32,
)
from qatir.target import XNN_CVT_RATIO, XNN_RATIO

I8_MIN, I8_MAX = -128, 127


def _qp(t) -> tuple[float, int]:
    q: QuantParams = t.quant
    return q.scale[0], q.zero_point[0]


def _act(node: Node) -> tuple[int, int]:
    s, z = _qp(node.outputs[0])
    return act_range(node.attrs.get("fused_activation", "NONE"), s, z)


def _window(size: int, k: int, stride: int, dilation: int, padding: str) -> tuple[int, int]:
    """(output size, padding before) exactly as TFLite ComputePaddingHeightWidth."""
    if padding == "SAME":
        return same_padding(size, k, stride, dilation)[:2]
    return conv_out(size, k, stride, dilation, padding), 0


def patches(x: np.ndarray, kh: int, kw: int, attrs: dict, fill: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """im2col: ([n, oh, kh, ow, kw, c] window values, [oh, kh, ow, kw] in-bounds mask)."""
    n, h, w, c = x.shape
    sh, sw = attrs["stride"]
    dh, dw = attrs.get("dilation", (1, 1))
    oh, pt = _window(h, kh, sh, dh, attrs["padding"])
    ow, pl = _window(w, kw, sw, dw, attrs["padding"])
    ih = np.arange(oh)[:, None] * sh + np.arange(kh)[None, :] * dh - pt
    iw = np.arange(ow)[:, None] * sw + np.arange(kw)[None, :] * dw - pl
    mh = (ih >= 0) & (ih < h)
    mw = (iw >= 0) & (iw < w)
    xp = np.concatenate([x, np.full((n, 1, w, c), fill, x.dtype)], axis=1)
    xp = np.concatenate([xp, np.full((n, h + 1, 1, c), fill, x.dtype)], axis=2)
    ihc = np.where(mh, ih, h)
    iwc = np.where(mw, iw, w)
    p = xp[:, ihc[:, :, None, None], iwc[None, None, :, :], :]
    return p, mh[:, :, None, None] & mw[None, None, :, :]


def _requant(acc: np.ndarray, node: Node, eff: np.ndarray, mode: str, *,
             float_round: bool = False) -> np.ndarray:
    """acc (int64, channel last) -> int8 output of ``node`` under ``mode``."""
    _, oz = _qp(node.outputs[0])
    lo, hi = _act(node)
    if mode == "xnnpack":
        return fp32_requant(acc, eff.astype(np.float32), oz, lo, hi).astype(np.int8)
    if float_round:
        y = round_half_away(acc.astype(np.float64) * eff.astype(np.float64)).astype(np.int64)
    else:
        qm, sh = quantize_multipliers(eff)
        y = mbqm(acc, qm, sh)
    return np.clip(y + oz, lo, hi).astype(np.int8)


def _scales(node: Node, mode: str) -> np.ndarray:
    """Effective output scale per channel: in*w/out (double for REF, float32 for XNNPACK)."""
    x, w = node.inputs[0], node.inputs[1]
    s_in, _ = _qp(x)
    s_out, _ = _qp(node.outputs[0])
    ws = np.asarray(w.quant.scale, np.float64)
    if mode == "xnnpack":
        return (np.float32(s_in) * ws.astype(np.float32)) / np.float32(s_out)
    return np.float64(s_in) * ws / np.float64(s_out)


def _bias(xs: list, n: int) -> np.ndarray:
    b = xs[2] if len(xs) > 2 else None
    return np.zeros(n, np.int64) if b is None else b.astype(np.int64)


def _exact_dtype(x: np.ndarray, w: np.ndarray, zp: int, taps: int) -> type:
    """The narrowest float type whose sums of ``taps`` products ``(x - zp) * w`` are exact.

    Every product and partial sum is an integer below the bound, so a float
    accumulator of that many mantissa bits gets each one exactly, in any order
    (BLAS blocking and FMA included). int64 only past 2^53.
    """
    xm = max(abs(int(x.max()) - zp), abs(int(x.min()) - zp)) if x.size else 0
    wm = max(abs(int(w.max())), abs(int(w.min()))) if w.size else 0
    bound = taps * xm * wm
    if bound < 1 << 24:
        return np.float32
    return np.float64 if bound < 1 << 53 else np.int64


def _taps(x: np.ndarray, kh: int, kw: int, attrs: dict, zp: int, dtype: type
          ) -> tuple[np.ndarray, int, int]:
    """im2col: ``[n, oh, ow, kh * kw, c]`` of ``x - zp`` (padding reads 0), oh, ow."""
    n, h, w, c = x.shape
    sh, sw = attrs["stride"]
    dh, dw = attrs.get("dilation", (1, 1))
    oh, pt = _window(h, kh, sh, dh, attrs["padding"])
    ow, pl = _window(w, kw, sw, dw, attrs["padding"])
    need_h, need_w = (oh - 1) * sh + (kh - 1) * dh + 1, (ow - 1) * sw + (kw - 1) * dw + 1
    xz = x.astype(dtype) - dtype(zp)
    xp = np.zeros((n, max(need_h, pt + h), max(need_w, pl + w), c), dtype)
    xp[:, pt:pt + h, pl:pl + w] = xz
    cols = np.empty((n, oh, ow, kh * kw, c), dtype)
    for i in range(kh):
        for j in range(kw):
            y0, x0 = i * dh, j * dw
            cols[:, :, :, i * kw + j] = xp[:, y0:y0 + (oh - 1) * sh + 1:sh,
                                           x0:x0 + (ow - 1) * sw + 1:sw]
    return cols, oh, ow


def conv2d(node: Node, xs: list, mode: str) -> np.ndarray:
    """One GEMM over an im2col, in float32/float64 where that is exact (see _exact_dtype)."""
    x, w = xs[0], xs[1]
    _, zp = _qp(node.inputs[0])
    o, kh, kw, c = w.shape
    groups = x.shape[3] // c
    dtype = _exact_dtype(x, w, zp, kh * kw * c)
    cols, oh, ow = _taps(x, kh, kw, node.attrs, zp, dtype)
    acc = np.concatenate([_group_gemm(cols, w, g, groups, dtype) for g in range(groups)], -1)
    acc = acc.astype(np.int64).reshape(x.shape[0], oh, ow, o) + _bias(xs, o)
    return _requant(acc, node, _scales(node, mode), mode)


def _group_gemm(cols: np.ndarray, w: np.ndarray, g: int, groups: int, dtype: type) -> np.ndarray:
    """Group ``g`` of a (grouped) convolution: its input channels' taps times its filters."""
    o, kh, kw, c = w.shape
    og = o // groups
    taps = cols[..., g * c:(g + 1) * c].reshape(-1, kh * kw * c)
    return taps @ w[g * og:(g + 1) * og].reshape(og, -1).astype(dtype).T


def depthwise_conv2d(node: Node, xs: list, mode: str) -> np.ndarray:
    x, w = xs[0], xs[1]
    _, zp = _qp(node.inputs[0])
    m = int(node.attrs["depth_multiplier"])
    _, kh, kw, o = w.shape
    dtype = _exact_dtype(x, w, zp, kh * kw)
    cols, oh, ow = _taps(x, kh, kw, node.attrs, zp, dtype)
    if m > 1:
        cols = np.repeat(cols, m, axis=-1)
    wt = w[0].reshape(kh * kw, o).astype(dtype)
    acc = cols[:, :, :, 0] * wt[0]
    for t in range(1, kh * kw):
        acc += cols[:, :, :, t] * wt[t]
    acc = acc.astype(np.int64) + _bias(xs, o)
    return _requant(acc, node, _scales(node, mode), mode)


def fully_connected(node: Node, xs: list, mode: str) -> np.ndarray:
    x, w = xs[0], xs[1]
    _, zp = _qp(node.inputs[0])
    flat = x.reshape(-1, w.shape[1]).astype(np.float64) - zp
    acc = np.rint(flat @ w.astype(np.float64).T).astype(np.int64) + _bias(xs, w.shape[0])
    y = _requant(acc, node, _scales(node, mode), mode, float_round=True)
    return y.reshape(node.outputs[0].shape)


def batch_matmul(node: Node, xs: list, mode: str) -> np.ndarray:
    """int8 BATCH_MATMUL of two activations (batch_matmul.cc EvalInt8Int8,
    reference_ops::BatchMatMul): acc = sum((a - za)(b - zb)) exactly, batch dims
    broadcast, requantized by MBQM with multiplier double(float32(sa·sb)) / double(so)
    (GetQuantizedConvolutionMultipler without a bias); no fused activation. Where
    XNNPACK takes the op (the right-hand zero point is 0) it requantizes in fp32."""
    (sa, za), (sb, zb), (so, zo) = (_qp(t) for t in (*node.inputs, node.outputs[0]))
    a = xs[0].astype(np.int64) - za
    b = xs[1].astype(np.int64) - zb
    if node.attrs.get("adj_x"):
        a = np.swapaxes(a, -1, -2)
    if node.attrs.get("adj_y"):
        b = np.swapaxes(b, -1, -2)
    # float64 sums of int8 products are exact below 2^53 / 2^16 = 2^37 terms
    acc = np.rint(a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)
    if mode == "xnnpack" and xnn_batch_matmul(node):
        scale = np.float32(np.float32(sa) * np.float32(sb)) / np.float32(so)
        return fp32_requant(acc, scale, zo, I8_MIN, I8_MAX).astype(np.int8)
    qm, sh = quantize_multiplier(float(np.float64(np.float32(sa) * np.float32(sb)) / np.float64(so)))
    return np.clip(mbqm(acc, qm, sh) + zo, I8_MIN, I8_MAX).astype(np.int8)


def xnn_batch_matmul(node: Node) -> bool:
    """XNNPACK takes an int8 BATCH_MATMUL (see :data:`qatir.target.XNN_BATCH_MATMUL`)."""
    from qatir.target import xnn_takes_batch_matmul

    return xnn_takes_batch_matmul(node)


def transpose_conv(node: Node, xs: list, mode: str) -> np.ndarray:
    x, w = xs[0], xs[1]
    _, zp = _qp(node.inputs[0])
    n, h, wd, _ = x.shape
    o, kh, kw, _ = w.shape
    oh, ow = node.outputs[0].shape[1:3]
    sh, sw = node.attrs["stride"]
    _, pt = _window(oh, kh, sh, 1, node.attrs["padding"])
    _, pl = _window(ow, kw, sw, 1, node.attrs["padding"])
    # contrib[n, y, x, i, j, o] scattered to out[y*s - pt + i, x*s - pl + j]
    contrib = np.einsum("nyxc,oijc->nyxijo", x.astype(np.int64) - zp, w.astype(np.int64))
    full = np.zeros((n, (h - 1) * sh + kh, (wd - 1) * sw + kw, o), np.int64)
    for i in range(kh):
        for j in range(kw):
            full[:, i:i + (h - 1) * sh + 1:sh, j:j + (wd - 1) * sw + 1:sw, :] += contrib[:, :, :, i, j]
    acc = full[:, pt:pt + oh, pl:pl + ow, :]
    if acc.shape[1] < oh or acc.shape[2] < ow:
        acc = np.pad(acc, ((0, 0), (0, oh - acc.shape[1]), (0, ow - acc.shape[2]), (0, 0)))
    acc = acc + _bias(xs, o)
    return _requant(acc, node, _scales(node, mode), mode)


# ---------------------------------------------------------------- elementwise
def _add_params(s1: float, s2: float, so: float) -> tuple:
    tw = 2.0 * max(s1, s2)
    return (quantize_multiplier(s1 / tw), quantize_multiplier(s2 / tw),
            quantize_multiplier(tw / ((1 << 20) * so)))


def add_sub(node: Node, xs: list, mode: str) -> np.ndarray:
    (s1, z1), (s2, z2), (so, zo) = (_qp(t) for t in (*node.inputs, node.outputs[0]))
    lo, hi = _act(node)
    a = xs[0].astype(np.int64) - z1
    b = xs[1].astype(np.int64) - z2
    ra, rb = np.float32(s1) / np.float32(so), np.float32(s2) / np.float32(so)
    rlo, rhi = XNN_RATIO[node.op]
    if mode == "xnnpack" and all(rlo <= r < rhi for r in (ra, rb)):
        return xnn_add(a, b, ra, -rb if node.op == "SUB" else rb, zo, lo, hi)
    (m1, e1), (m2, e2), (mo, eo) = _add_params(s1, s2, so)
    sa = mbqm(a << 20, m1, e1)
    sb = mbqm(b << 20, m2, e2)
    raw = sa - sb if node.op == "SUB" else sa + sb
    return np.clip(mbqm(raw, mo, eo) + zo, lo, hi).astype(np.int8)


def xnn_add(a: np.ndarray, b: np.ndarray, ra: float, rb: float, zo: int, lo: int, hi: int
            ) -> np.ndarray:
    """XNNPACK qs8 vadd: 21-bit multipliers from the float32 scale ratios, round half up."""
    ra32, rb32 = np.float32(ra), np.float32(rb)
    exp = int(np.frexp(max(abs(ra32), abs(rb32)))[1]) - 1
    shift = 20 - exp
    ma = int(np.rint(np.ldexp(np.float64(ra32), shift)))
    mb = int(np.rint(np.ldexp(np.float64(rb32), shift)))
    y = (a * ma + b * mb + (1 << (shift - 1))) >> shift  # arithmetic shift: floor
    return np.clip(y + zo, lo, hi).astype(np.int8)


def mul(node: Node, xs: list, mode: str) -> np.ndarray:
    (s1, z1), (s2, z2), (so, zo) = (_qp(t) for t in (*node.inputs, node.outputs[0]))
    lo, hi = _act(node)
    prod = (xs[0].astype(np.int64) - z1) * (xs[1].astype(np.int64) - z2)
    scale = np.float32(np.float32(s1) * np.float32(s2)) / np.float32(so)
    rlo, rhi = XNN_RATIO["MUL"]
    if mode == "xnnpack" and rlo <= scale < rhi:
        return fp32_requant(prod, scale, zo, lo, hi).astype(np.int8)
    qm, sh = quantize_multiplier(float(np.float32(np.float32(s1) * np.float32(s2)) / np.float32(so)))
    return np.clip(mbqm(prod, qm, sh) + zo, lo, hi).astype(np.int8)


def _requant_unary(x: np.ndarray, s_in: float, z_in: int, s_out: float, z_out: int
                   ) -> np.ndarray:
    qm, sh = quantize_multiplier(float(s_in) / float(s_out))
    return mbqm(x.astype(np.int64) - z_in, qm, sh) + z_out


def quantize(node: Node, xs: list, mode: str) -> np.ndarray:
    so, zo = _qp(node.outputs[0])
    lo, hi = node.outputs[0].quant.qrange()
    if xs[0].dtype.kind == "f":
        x = xs[0].astype(np.float32)
        if mode == "xnnpack" and node.outputs[0].dtype == np.int8:
            return _xnn_quantize(x, so, zo, lo, hi)
        return _builtin_quantize(x, so, zo, lo, hi).astype(node.outputs[0].dtype)
    si, zi = _qp(node.inputs[0])
    if mode == "xnnpack" and xs[0].dtype == np.int8 and xnn_cvt_ok(si / so):
        y = xnn_mul8(xs[0].astype(np.int64) - zi, np.float32(si) / np.float32(so), zo)
    else:
        y = _requant_unary(xs[0], si, zi, so, zo)
    return np.clip(y, lo, hi).astype(node.outputs[0].dtype)


def _xnn_quantize(x: np.ndarray, so: float, zo: int, lo: int, hi: int) -> np.ndarray:
    """XNNPACK f32 -> qs8 convert: x · float32(1/scale), rounded half to even, clamped in
    float (+-inf saturate); NaN writes the top of the range (measured)."""
    nan = np.isnan(x)
    y = np.rint(np.where(nan, np.float32(0), x) * (np.float32(1.0) / np.float32(so)))
    y = np.clip(y, lo - zo, hi - zo).astype(np.int64) + zo
    return np.where(nan, hi, y).astype(np.int8)


def _builtin_quantize(x: np.ndarray, so: float, zo: int, lo: int, hi: int) -> np.ndarray:
    """LiteRT's AffineQuantize: static_cast<int32>(round_half_away(x / scale)) + zp, then
    clamped. The cast of NaN, inf or anything outside int32 is x86's INT32_MIN, and the
    zero point is added with int32 wrap-around (measured on a float island's 0/0 and x/0,
    e.g. EfficientViT's attention normalizer)."""
    r = round_half_away(x / np.float32(so)).astype(np.float64)
    bad = ~np.isfinite(r) | (r >= 2.0**31) | (r < -(2.0**31))
    k = np.where(bad, INT32_MIN_F, r).astype(np.int64)
    return np.clip(wrap32(k + zo), lo, hi)


INT32_MIN_F = float(-(2**31))


def xnn_cvt_ok(ratio: float) -> bool:
    """XNNPACK's qs8 convert/leaky-relu multipliers cover ratios in [2^-8, 2^7]."""
    return XNN_CVT_RATIO[0] <= ratio <= XNN_CVT_RATIO[1]


def xnn_mul8(v: np.ndarray, ratio: np.float32, zo: int) -> np.ndarray:
    """XNNPACK qs8 convert: (v * lrintf(256 * ratio) + (zo << 8) + 0x80) >> 8."""
    m = int(np.rint(np.float32(256.0) * np.float32(ratio)))
    return (v * m + (zo << 8) + 0x80) >> 8


def dequantize(node: Node, xs: list, mode: str) -> np.ndarray:
    if xs[0].dtype == np.float16:  # a float16 constant: widened exactly
        return xs[0].astype(np.float32)
    s, z = _qp(node.inputs[0])
    return ((xs[0].astype(np.int32) - z).astype(np.float32) * np.float32(s)).astype(np.float32)


def relu_like(node: Node, xs: list, mode: str) -> np.ndarray:
    (si, zi), (so, zo) = _qp(node.inputs[0]), _qp(node.outputs[0])
    act = {"RELU": "RELU", "RELU6": "RELU6", "RELU_N1_TO_1": "RELU_N1_TO_1"}[node.op]
    lo, hi = act_range(act, so, zo)
    return np.clip(_requant_unary(xs[0], si, zi, so, zo), lo, hi).astype(np.int8)


def leaky_relu(node: Node, xs: list, mode: str) -> np.ndarray:
    (si, zi), (so, zo) = _qp(node.inputs[0]), _qp(node.outputs[0])
    alpha = np.float32(node.attrs["alpha"])
    m_alpha = quantize_multiplier(float(np.float32(np.float32(si) * alpha) / np.float32(so)))
    m_id = quantize_multiplier(float(np.float32(si) / np.float32(so)))
    v = xs[0].astype(np.int64) - zi
    pos = np.float32(si) / np.float32(so)
    neg = np.float32(pos * alpha)
    if mode == "xnnpack" and xnn_cvt_ok(pos) and xnn_cvt_ok(abs(neg)):
        y = np.where(v >= 0, xnn_mul8(v, pos, zo), xnn_mul8(v, neg, zo))
        return np.clip(y, I8_MIN, I8_MAX).astype(np.int8)
    y = np.where(v >= 0, mbqm(v, *m_id), mbqm(v, *m_alpha)) + zo
    return np.clip(y, I8_MIN, I8_MAX).astype(np.int8)


def prelu(node: Node, xs: list, mode: str) -> np.ndarray:
    (si, zi), (sa, za), (so, zo) = (_qp(t) for t in (*node.inputs, node.outputs[0]))
    m1 = quantize_multiplier(float(np.float32(si) / np.float32(so)))
    m2 = quantize_multiplier(float(np.float32(np.float32(si) * np.float32(sa)) / np.float32(so)))
    v = xs[0].astype(np.int64) - zi
    a = xs[1].astype(np.int64) - za
    y = np.where(v >= 0, mbqm(v, *m1), mbqm(v * a, *m2)) + zo
    return np.clip(y, I8_MIN, I8_MAX).astype(np.int8)


def _lut(node: Node, fn) -> np.ndarray:
    (si, zi), (so, zo) = _qp(node.inputs[0]), _qp(node.outputs[0])
    inv = np.float32(1.0) / np.float32(so)
    vals = np.arange(-128, 128)
    table = np.empty(256, np.int64)
    for k, v in enumerate(vals):
        deq = np.float32(np.float32(si) * np.float32(v - zi))
        t = np.float32(fn(float(deq)))
        r = round_half_away(np.float32(t * inv))
        table[k] = int(np.float32(r + np.float32(zo)))
    return np.clip(table, I8_MIN, I8_MAX)


def logistic_tanh(node: Node, xs: list, mode: str) -> np.ndarray:
    m = libm()
    if node.op == "LOGISTIC":
        def fn(x: float) -> float:
            return float(np.float32(1.0) / (np.float32(1.0) + np.float32(m.expf(-x))))
    else:
        fn = m.tanhf
    table = _lut(node, fn)
    return table[xs[0].astype(np.int64) + 128].astype(np.int8)


#: LiteRT's GELU transforms (``reference/gelu.h``, as ai-edge-litert 2.3.0 builds them; told
#: apart from the ``1 + erf`` spellings on rounding ties): exact ``0.5f·x·erfcf(x·c)`` with
#: c = float(-1/√2); approximate ``0.5f·x·(1 + tanhf(k·(x + 0.044715f·x·x·x)))`` with
#: k = float(√(2/π)), all in float without fused multiply-adds.
_GELU_C = np.float32(-0.70710678118654752440)
_GELU_K = np.float32(1.12837916709551257390 * 0.70710678118654752440)


def _gelu_fn(approximate: bool):
    import ctypes

    m = libm()
    erfcf = m.erfcf
    erfcf.restype, erfcf.argtypes = ctypes.c_float, [ctypes.c_float]
    f32 = np.float32

    if approximate:
        def fn(x: float) -> float:
            v = f32(x)
            inner = f32(_GELU_K * f32(v + f32(f32(f32(f32(0.044715) * v) * v) * v)))
            return float(f32(f32(f32(0.5) * v) * f32(f32(1.0) + f32(m.tanhf(inner)))))
    else:
        def fn(x: float) -> float:
            v = f32(x)
            return float(f32(f32(f32(0.5) * v) * f32(erfcf(f32(v * _GELU_C)))))
    return fn


def gelu(node: Node, xs: list, mode: str) -> np.ndarray:
    """int8 GELU: LiteRT's 256-entry table (GeluPrepare, LUTPopulate), on both resolvers:
    XNNPACK does not take int8 GELU (measured), so the default path runs the same table."""
    table = _lut(node, _gelu_fn(bool(node.attrs.get("approximate", False))))
    return table[xs[0].astype(np.int64) + 128].astype(np.int8)


def max_pool(node: Node, xs: list, mode: str) -> np.ndarray:
    kh, kw = node.attrs["filter"]
    p, mask = patches(xs[0], kh, kw, node.attrs, I8_MIN)
    lo, hi = _act(node)
    return np.clip(p.max(axis=(2, 4)), lo, hi).astype(np.int8)


def avg_pool(node: Node, xs: list, mode: str) -> np.ndarray:
    kh, kw = node.attrs["filter"]
    p, mask = patches(xs[0].astype(np.int64), kh, kw, node.attrs, 0)
    total = p.sum(axis=(2, 4))
    cnt = mask.sum(axis=(1, 3))[None, :, :, None].astype(np.int64)
    lo, hi = _act(node)
    half = cnt // 2
    num = np.where(total > 0, total + half, total - half)
    avg = np.where(num >= 0, num // cnt, -((-num) // cnt))
    return np.clip(avg, lo, hi).astype(np.int8)


def nearest_index(out: int, size: int, align: bool, half: bool) -> np.ndarray:
    """The input index LiteRT's RESIZE_NEAREST_NEIGHBOR reads for each of ``out`` outputs
    along an axis of ``size``."""
    scale = (size - 1) / (out - 1) if align and out > 1 else size / out
    scale = np.float32(scale)
    pos = np.arange(out, dtype=np.float32)
    offset = np.float32(0.5) if half else np.float32(0.0)
    v = (pos + offset) * scale
    v = round_half_away(v) if align else np.floor(v)
    return np.minimum(v.astype(np.int64), size - 1)

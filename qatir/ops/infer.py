"""Shape inference of the built-in ops (registered in ``qatir/ops/defs.py``).

Each function takes a node and returns ``[(shape, dtype), ...]`` for its outputs;
a violated precondition raises :class:`~qatir.errors.ShapeError` through ``check``.
"""

from __future__ import annotations

import math

import numpy as np

from qatir.numerics import normalize_axes, normalize_axis, same_padding
from qatir.ops.registry import check


def _in(node, i=0):
    t = node.inputs[i]
    check(t is not None, f"input {i} is missing")
    return t


def same(node):
    x = _in(node)
    return [(x.shape, x.dtype)]


def _broadcast(a, b):
    out = []
    for i in range(max(len(a), len(b))):
        da = a[len(a) - 1 - i] if i < len(a) else 1
        db = b[len(b) - 1 - i] if i < len(b) else 1
        if da == 1:
            out.append(db)
        elif db == 1 or db == da:
            out.append(da)
        elif da is None or db is None:
            out.append(da if db is None else db)
        else:
            check(False, f"shapes {list(a)} and {list(b)} do not broadcast")
    return tuple(reversed(out))


def binary(node):
    a, b = _in(node, 0), _in(node, 1)
    return [(_broadcast(a.shape, b.shape), a.dtype)]


def conv_out(size, k, stride, dilation, padding):
    """Output length of a TFLite-style SAME/VALID window op along one axis."""
    if size is None:
        return None
    if padding == "SAME":
        return same_padding(size, k, stride, dilation)[0]
    eff = (k - 1) * dilation + 1
    check(padding == "VALID", f"padding must be SAME or VALID, got {padding!r}")
    check(size >= eff, f"window {eff} larger than input {size}")
    return (size - eff) // stride + 1


def _window(x, kh, kw, attrs, channels):
    check(x.rank == 4, f"expected a 4-D NHWC input, got shape {list(x.shape)}")
    sh, sw = attrs["stride"]
    dh, dw = attrs.get("dilation", (1, 1))
    n, h, w, _ = x.shape
    return (n, conv_out(h, kh, sh, dh, attrs["padding"]), conv_out(w, kw, sw, dw, attrs["padding"]),
            channels)


def _check_bias(node, channels):
    b = node.inputs[2] if len(node.inputs) > 2 else None
    if b is not None:
        check(b.shape == (channels,), f"bias %{b.name} has shape {list(b.shape)}, "
                                      f"expected [{channels}]")


def conv(node):
    x, w = _in(node), _in(node, 1)
    _check_bias(node, w.shape[0])
    check(w.rank == 4, "CONV_2D weights must be 4-D OHWI")
    # A grouped convolution (as TFLite's CONV_2D v6): the weight holds the input channels of
    # one group; the group count is input channels / weight input channels.
    cin, cg, o = x.shape[3], w.shape[3], w.shape[0]
    check(cin is None or (cin % cg == 0 and o % (cin // cg) == 0),
          f"input channels {cin} do not fit weight channels {cg} with {o} outputs (OHWI): "
          "a grouped convolution needs both channel counts divisible by the group count")
    return [(_window(x, w.shape[1], w.shape[2], node.attrs, w.shape[0]), x.dtype)]


def conv_groups(node) -> int:
    """The group count of a CONV_2D: input channels / the weight's input channels (OHWI);
    1 for an ordinary convolution (TFLite's CONV_2D v6 infers it the same way)."""
    cin, cg = node.inputs[0].shape[3], node.inputs[1].shape[3]
    return 1 if cin is None or not cg else int(cin) // int(cg)


def dwconv(node):
    x, w = _in(node), _in(node, 1)
    _check_bias(node, w.shape[3])
    check(w.rank == 4 and w.shape[0] == 1, "DEPTHWISE_CONV_2D weights must be 1HWO")
    m = node.attrs["depth_multiplier"]
    check(x.shape[3] is None or x.shape[3] * m == w.shape[3],
          f"channels {x.shape[3]} x multiplier {m} != weight channels {w.shape[3]}")
    return [(_window(x, w.shape[1], w.shape[2], node.attrs, w.shape[3]), x.dtype)]


def fc(node):
    x, w = _in(node), _in(node, 1)
    _check_bias(node, w.shape[0])
    check(w.rank == 2, "FULLY_CONNECTED weights must be [N, K]")
    check(x.shape[-1] is None or x.shape[-1] == w.shape[1],
          f"input depth {x.shape[-1]} != weight depth {w.shape[1]}")
    if node.attrs["keep_num_dims"]:
        return [(x.shape[:-1] + (w.shape[0],), x.dtype)]
    lead = x.shape[:-1]
    rows = None if any(d is None for d in lead) else int(np.prod(lead, dtype=np.int64))
    return [((rows, w.shape[0]), x.dtype)]


def tconv(node):
    x, w = _in(node), _in(node, 1)
    _check_bias(node, w.shape[0])
    check(x.rank == 4 and w.rank == 4, "TRANSPOSE_CONV needs 4-D input and OHWI weights")
    check(x.shape[3] is None or x.shape[3] == w.shape[3],
          f"input channels {x.shape[3]} != weight channels {w.shape[3]} (OHWI)")
    sh, sw = node.attrs["stride"]
    n, h, wd, _ = x.shape

    def size(i, k, s):
        if i is None:
            return None
        return i * s if node.attrs["padding"] == "SAME" else (i - 1) * s + k

    return [((n, size(h, w.shape[1], sh), size(wd, w.shape[2], sw), w.shape[0]), x.dtype)]


def pool(node):
    x = _in(node)
    kh, kw = node.attrs["filter"]
    return [(_window(x, kh, kw, node.attrs, x.shape[3]), x.dtype)]


def _axes(node, rank):
    axes = node.attrs["axis"]
    axes = [axes] if isinstance(axes, int) else list(axes)
    return normalize_axes(axes, rank)


def reduce(node):
    x = _in(node)
    axes = _axes(node, x.rank)
    if node.attrs["keep_dims"]:
        return [(tuple(1 if i in axes else d for i, d in enumerate(x.shape)), x.dtype)]
    return [(tuple(d for i, d in enumerate(x.shape) if i not in axes), x.dtype)]


def reshape(node):
    x = _in(node)
    new = [int(d) for d in node.attrs["new_shape"]]
    check(sum(d == -1 for d in new) <= 1, f"new_shape {new} has more than one -1")
    known = [d for d in x.shape if d is not None]
    if -1 in new:
        rest = math.prod(d for d in new if d != -1)
        if len(known) == x.rank:
            total = math.prod(known)
            check(rest > 0 and total % rest == 0, f"cannot reshape {list(x.shape)} to {new}")
            new = [total // rest if d == -1 else d for d in new]
        else:
            return [(tuple(None if d == -1 else d for d in new), x.dtype)]
    elif len(known) == x.rank:
        check(math.prod(new) == math.prod(known), f"cannot reshape {list(x.shape)} to {new}")
    else:  # dynamic dims and no -1: the known dims must divide the new size
        k, size = math.prod(known), math.prod(new)
        check(size == 0 if k == 0 else size % k == 0, f"cannot reshape {list(x.shape)} to {new}")
    return [(tuple(new), x.dtype)]


def squeeze(node):
    x = _in(node)
    dims = node.attrs["squeeze_dims"]
    if not dims:
        return [(tuple(d for d in x.shape if d != 1), x.dtype)]
    dims = set(normalize_axes(dims, x.rank, "squeeze_dims"))
    for d in dims:
        check(x.shape[d] in (1, None), f"cannot squeeze dim {d} of size {x.shape[d]}")
    return [(tuple(s for i, s in enumerate(x.shape) if i not in dims), x.dtype)]


def transpose(node):
    x = _in(node)
    perm = list(node.attrs["perm"])
    check(sorted(perm) == list(range(x.rank)), f"perm {perm} does not fit rank {x.rank}")
    return [(tuple(x.shape[p] for p in perm), x.dtype)]


def tile(node):
    x = _in(node)
    reps = [int(r) for r in node.attrs["multiples"]]
    check(len(reps) == x.rank and all(r >= 1 for r in reps),
          f"multiples {reps} must be {x.rank} positive counts")
    return [(tuple(None if d is None else d * r for d, r in zip(x.shape, reps)), x.dtype)]


def concat(node):
    xs = [t for t in node.inputs]
    check(len(xs) >= 1 and all(t is not None for t in xs), "CONCATENATION needs inputs")
    rank = xs[0].rank
    axis = normalize_axis(node.attrs["axis"], rank)
    out = list(xs[0].shape)
    for t in xs[1:]:
        check(t.rank == rank, "CONCATENATION inputs differ in rank")
        for i in range(rank):
            if i == axis:
                out[i] = None if out[i] is None or t.shape[i] is None else out[i] + t.shape[i]
            elif out[i] is None:
                out[i] = t.shape[i]
            else:
                check(t.shape[i] in (None, out[i]),
                      f"CONCATENATION inputs differ in dim {i}: {out[i]} vs {t.shape[i]}")
    return [(tuple(out), xs[0].dtype)]


def pad(node):
    x = _in(node)
    pads = node.attrs["paddings"]
    check(len(pads) == x.rank, f"paddings {pads} do not fit rank {x.rank}")
    return [(tuple(None if d is None else d + int(a) + int(b) for d, (a, b) in zip(x.shape, pads)),
             x.dtype)]


def resize(node):
    x = _in(node)
    check(x.rank == 4, "resize needs a 4-D NHWC input")
    h, w = node.attrs["size"]
    return [((x.shape[0], int(h), int(w), x.shape[3]), x.dtype)]


def d2s(node):
    x = _in(node)
    b = node.attrs["block_size"]
    n, h, w, c = x.shape
    check(c is None or c % (b * b) == 0, f"channels {c} not divisible by {b * b}")
    return [((n, None if h is None else h * b, None if w is None else w * b,
              None if c is None else c // (b * b)), x.dtype)]


def s2d(node):
    x = _in(node)
    b = node.attrs["block_size"]
    n, h, w, c = x.shape
    check((h is None or h % b == 0) and (w is None or w % b == 0),
          f"spatial dims {h}x{w} not divisible by {b}")
    return [((n, None if h is None else h // b, None if w is None else w // b,
              None if c is None else c * b * b), x.dtype)]


def strided_slice(node):
    x = _in(node)
    begin, end, strides = (node.attrs[k] for k in ("begin", "end", "strides"))
    check(len(begin) == len(end) == len(strides) == x.rank, "begin/end/strides must cover every dim")
    out = []
    for d, b, e, s in zip(x.shape, begin, end, strides):
        check(s != 0, "stride 0 in STRIDED_SLICE")
        if d is None:
            out.append(None)
            continue
        out.append(len(range(*slice(b, e, s).indices(d))))
    shrink = node.attrs.get("shrink_axis", [])
    return [(tuple(d for i, d in enumerate(out) if i not in shrink), x.dtype)]


def gather(node):
    x, idx = _in(node), _in(node, 1)
    axis = normalize_axis(node.attrs["axis"], x.rank)
    dim = x.shape[axis]
    if idx.data is not None and dim is not None and idx.data.size:
        lo, hi = int(idx.data.min()), int(idx.data.max())
        check(-dim <= lo and hi < dim, f"indices %{idx.name} range [{lo}, {hi}] outside "
                                       f"[{-dim}, {dim}) of axis {axis}")
    return [(x.shape[:axis] + idx.shape + x.shape[axis + 1:], x.dtype)]


def batch_matmul(node):
    a, b = _in(node), _in(node, 1)
    check(a.rank >= 2 and b.rank >= 2, "BATCH_MATMUL needs rank >= 2")
    m, k = (a.shape[-1], a.shape[-2]) if node.attrs["adj_x"] else (a.shape[-2], a.shape[-1])
    k2, n = (b.shape[-1], b.shape[-2]) if node.attrs["adj_y"] else (b.shape[-2], b.shape[-1])
    check(k is None or k2 is None or k == k2, f"inner dims differ: {k} vs {k2}")
    lead = _broadcast(a.shape[:-2], b.shape[:-2])
    return [(lead + (m, n), a.dtype)]


def prelu(node):
    x, alpha = _in(node), _in(node, 1)
    _broadcast(x.shape, alpha.shape)
    return [(x.shape, x.dtype)]


def softmax(node):
    """Output like the input; an int8 SOFTMAX may write int16 (attribute ``dtype``)."""
    x = _in(node)
    dtype = node.attrs.get("dtype")
    return [(x.shape, np.dtype(dtype) if dtype else x.dtype)]


def typed(dtype):
    def infer(node):
        return [(_in(node).shape, np.dtype(node.attrs.get("dtype") or dtype))]
    return infer


def shape_of(node):
    return [((_in(node).rank,), np.int32)]


def fake_quant(node):
    x = _in(node)
    return [(x.shape, x.dtype)]



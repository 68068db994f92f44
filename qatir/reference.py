"""The integer reference: runs a quantized int8 graph with numpy integer kernels.

``run_reference(graph, feeds, kernels="reference")`` takes a quantized
(FAKE_QUANT) or already lowered graph, lowers a copy with int8 edges and runs
it on int8 feeds, matching LiteRT's ``OpResolverType.BUILTIN_REF`` kernels bit
for bit; ``kernels="xnnpack"`` matches the default resolver (XNNPACK delegate
with fp32 requantization for the ops it takes, LiteRT's optimized kernels for
the rest). The rules of each path are in ``shared/TFLITE_INT8.md`` section 4.
The data-movement kernels (reshape, pad, concat, gather, resize-nearest, ...)
are here; the arithmetic ones in :mod:`qatir.reference_kernels`; SOFTMAX, MEAN,
SUM, REDUCE_MAX, HARD_SWISH and RESIZE_BILINEAR, with their own fixed-point
algorithms, in :mod:`qatir.reference_extra`; the requantization primitives in
:mod:`qatir.reference_math`.

Nodes that read or write int16 (16x8 regions) run the kernels of
:mod:`qatir.reference_int16`, bit for bit with LiteRT on both resolvers.

A mixed graph (float islands between DEQUANTIZE and QUANTIZE) runs its float nodes
with the float32 kernels of :mod:`qatir.reference_float`; those tensors match LiteRT
within ``reference_float.FLOAT_RTOL``/``FLOAT_ATOL``, the int8 ones bit for bit. The
float ops of a dynamic-range file whose weight is int8 run LiteRT's hybrid kernels
(:mod:`qatir.reference_hybrid`); a float16 file's DEQUANTIZE widens its weights exactly
(:func:`qatir.modes.run_mode_reference` runs either).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import numpy as np

from qatir import reference_kernels as K
from qatir.errors import ExportError, UnsupportedOpError
from qatir.ir import Graph, Node
from qatir.lower import is_lowered, is_quantized, lower
from qatir.numerics import normalize_axis, round_half_away

Kernel = Callable[[Node, list, str], np.ndarray]
MODES = ("reference", "xnnpack")


def _same(fn: Callable[[Node, list], np.ndarray]) -> Kernel:
    def kernel(node: Node, xs: list, mode: str) -> np.ndarray:
        return fn(node, xs)
    return kernel


def _reshape(node: Node, xs: list) -> np.ndarray:
    shape = node.outputs[0].shape
    if any(d is None for d in shape):  # dynamic batch: the attribute holds the -1
        shape = tuple(int(d) for d in node.attrs["new_shape"])
    return xs[0].reshape(shape)


def _transpose(node: Node, xs: list) -> np.ndarray:
    return np.transpose(xs[0], node.attrs["perm"])


def _tile(node: Node, xs: list) -> np.ndarray:
    return np.tile(xs[0], node.attrs["multiples"])


def _concat(node: Node, xs: list) -> np.ndarray:
    return np.concatenate(xs, axis=normalize_axis(node.attrs["axis"], xs[0].ndim))


def _pad(node: Node, xs: list) -> np.ndarray:
    x = xs[0]
    q = node.outputs[0].quant
    value = 0
    cv = float(node.attrs.get("constant_value", 0.0))
    if q is not None:
        value = q.zero_point[0]
        if cv != 0.0:
            value = int(np.clip(round_half_away(cv / q.scale[0]) + q.zero_point[0],
                                *q.qrange()))
    elif cv != 0.0:
        value = cv
    return np.pad(x, [tuple(int(v) for v in p) for p in node.attrs["paddings"]],
                  constant_values=value)


def _strided_slice(node: Node, xs: list) -> np.ndarray:
    idx = tuple(slice(b, e, s) for b, e, s in zip(node.attrs["begin"], node.attrs["end"],
                                                   node.attrs["strides"]))
    return xs[0][idx].reshape(node.outputs[0].shape)


def _d2s(node: Node, xs: list) -> np.ndarray:
    b = int(node.attrs["block_size"])
    n, h, w, c = xs[0].shape
    y = xs[0].reshape(n, h, w, b, b, c // (b * b)).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(n, h * b, w * b, c // (b * b))


def _s2d(node: Node, xs: list) -> np.ndarray:
    b = int(node.attrs["block_size"])
    n, h, w, c = xs[0].shape
    y = xs[0].reshape(n, h // b, b, w // b, b, c).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(n, h // b, w // b, c * b * b)


def _gather(node: Node, xs: list) -> np.ndarray:
    return np.take(xs[0], xs[1].astype(np.int64), axis=int(node.attrs["axis"]))


def _resize_nearest(node: Node, xs: list) -> np.ndarray:
    x = xs[0]
    _, h, w, _ = x.shape
    oh, ow = node.attrs["size"]
    align, half = bool(node.attrs["align_corners"]), bool(node.attrs["half_pixel_centers"])
    return x[:, K.nearest_index(oh, h, align, half)][:, :, K.nearest_index(ow, w, align, half)]


def _minmax(node: Node, xs: list) -> np.ndarray:
    fn = np.maximum if node.op == "MAXIMUM" else np.minimum
    return fn(xs[0], xs[1])


def _squeeze(node: Node, xs: list) -> np.ndarray:
    return xs[0].reshape(node.outputs[0].shape)


def kernels() -> dict[str, Kernel]:
    """The op -> kernel table (softmax, mean and the rest are looked up lazily)."""
    from qatir import reference_extra as E

    return {
        "CONV_2D": K.conv2d, "DEPTHWISE_CONV_2D": K.depthwise_conv2d,
        "FULLY_CONNECTED": K.fully_connected, "TRANSPOSE_CONV": K.transpose_conv,
        "BATCH_MATMUL": K.batch_matmul,
        "ADD": K.add_sub, "SUB": K.add_sub, "MUL": K.mul,
        "AVERAGE_POOL_2D": K.avg_pool, "MAX_POOL_2D": K.max_pool,
        "RELU": K.relu_like, "RELU6": K.relu_like, "RELU_N1_TO_1": K.relu_like,
        "LEAKY_RELU": K.leaky_relu, "PRELU": K.prelu,
        "LOGISTIC": K.logistic_tanh, "TANH": K.logistic_tanh,
        "GELU": K.gelu,
        "QUANTIZE": K.quantize, "DEQUANTIZE": K.dequantize,
        "SOFTMAX": E.softmax, "MEAN": E.mean, "SUM": E.reduce_sum_max,
        "REDUCE_MAX": E.reduce_sum_max, "HARD_SWISH": E.hard_swish,
        "RESIZE_BILINEAR": E.resize_bilinear,
        "SQUARED_DIFFERENCE": E.squared_difference, "RSQRT": E.rsqrt,
        "RESHAPE": _same(_reshape), "SQUEEZE": _same(_squeeze), "TRANSPOSE": _same(_transpose),
        "TILE": _same(_tile),
        "CONCATENATION": _same(_concat), "PAD": _same(_pad),
        "STRIDED_SLICE": _same(_strided_slice), "DEPTH_TO_SPACE": _same(_d2s),
        "SPACE_TO_DEPTH": _same(_s2d), "GATHER": _same(_gather),
        "RESIZE_NEAREST_NEIGHBOR": _same(_resize_nearest),
        "MAXIMUM": _same(_minmax), "MINIMUM": _same(_minmax),
    }


def _bind_dynamic_dims(g: Graph, values: dict[int, np.ndarray]) -> None:
    """Give dynamic (None) dims the size the feeds have (the batch, in practice)."""
    sizes: dict[int, int] = {}
    for t in g.inputs:
        arr = values[id(t)]
        if arr.ndim != t.rank:
            raise ExportError(f"feed %{t.name}: rank {arr.ndim}, expected {t.rank}")
        for i, d in enumerate(t.shape):
            if d is None:
                sizes.setdefault(i, arr.shape[i])
            elif d != arr.shape[i]:
                raise ExportError(f"feed %{t.name}: shape {list(arr.shape)}, expected "
                                  f"{list(t.shape)}")
    batch = sizes.get(0, 1)
    for t in g.inputs:
        if any(d is None for d in t.shape):
            t.shape = tuple(batch if d is None else d for d in t.shape)
    # the rest follows by shape inference: a dynamic dim need not be the batch itself
    # (RESHAPE to [-1, C] of [N, H, W, C] makes it N·H·W)
    for node in g.nodes:
        if any(None in t.shape for t in node.outputs):
            g.reinfer(node)


def _one_blas_thread() -> contextlib.AbstractContextManager:
    """BLAS on one thread while the kernels run: their GEMMs are small, and waking a
    thread pool costs more than it saves (a 36x192 @ 192x192 float32 product: 0.12 ms
    on one thread, 22 ms on two busy cores; tools/bench_compile.py's model)."""
    try:
        from threadpoolctl import threadpool_limits  # scikit-learn's dependency
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _is_float(node: Node) -> bool:
    """A float-island node: it computes float32 (DEQUANTIZE is an integer kernel)."""
    return node.op != "DEQUANTIZE" and node.outputs[0].dtype == np.float32


def _kernel_for(node: Node, table: dict, ftable: dict, layout: frozenset) -> Kernel | None:
    from qatir import reference_int16

    if reference_int16.is_int16(node):
        return reference_int16.kernel_for(node, table)
    if not _is_float(node):
        return table.get(node.op)
    from qatir.reference_hybrid import HYBRID_KERNELS, is_hybrid

    if is_hybrid(node):  # a dynamic-range file's int8-weight op
        return HYBRID_KERNELS[node.op]
    if node.op in ftable:
        from qatir.reference_float import MODE_KERNELS

        return ftable[node.op] if node.op in MODE_KERNELS else _same(ftable[node.op])
    return table.get(node.op) if node.op in layout else None


def run_reference(graph: Graph, feeds: Mapping[str, np.ndarray], kernels: str = "reference",
                  keep_all: bool = False) -> dict[str, np.ndarray]:
    """Run ``graph`` (lowered on the fly with int8 edges) on int8 ``feeds``.

    Returns ``{output name: int8 array}`` (float32 for an output a float island
    computes; such an input is fed float32 too); with ``keep_all`` every tensor the
    graph computes (for the parity report).
    """
    if kernels not in MODES:
        raise ExportError(f"kernels must be one of {MODES}, got {kernels!r}")
    if not (is_quantized(graph) or is_lowered(graph)):
        raise ExportError(f"graph {graph.name!r} is a float graph; the integer reference needs "
                          "a quantized (FAKE_QUANT) or lowered int8 graph")
    return run_lowered(lower(graph, io="int8"), feeds, kernels, keep_all)


def run_lowered(g: Graph, feeds: Mapping[str, np.ndarray], kernels: str = "reference",
                keep_all: bool = False) -> dict[str, np.ndarray]:
    """:func:`run_reference` on ``g``, the result of ``lower(graph, io="int8")``, without
    lowering it again (the parity report and compile's check run many feeds through one
    lowering). A dynamic batch is bound to the feeds' in place."""
    if kernels not in MODES:
        raise ExportError(f"kernels must be one of {MODES}, got {kernels!r}")
    from qatir.reference_float import LAYOUT_OPS, float_kernels

    table = globals()["kernels"]()
    ftable = float_kernels()
    chosen: list[Kernel] = []
    missing: dict[str, int] = {}
    for node in g.nodes:
        fn = _kernel_for(node, table, ftable, LAYOUT_OPS)
        if fn is None:
            key = node.op if not _is_float(node) else f"{node.op} (float)"
            missing[key] = missing.get(key, 0) + 1
        chosen.append(fn)
    if missing:
        raise UnsupportedOpError(f"graph {g.name!r} (integer reference)", missing)
    values: dict[int, np.ndarray] = {}
    for t in g.inputs:
        if t.name not in feeds:
            raise ExportError(f"missing feed for input %{t.name}")
        arr = np.asarray(feeds[t.name])
        if arr.dtype != t.dtype:
            raise ExportError(f"feed %{t.name}: expected {t.dtype}, got {arr.dtype}")
        values[id(t)] = arr
    _bind_dynamic_dims(g, values)
    for t in g.tensors.values():
        if t.is_const:
            values[id(t)] = t.data
    with _one_blas_thread():
        for node, fn in zip(g.nodes, chosen):
            xs = [None if t is None else values[id(t)] for t in node.inputs]
            values[id(node.outputs[0])] = fn(node, xs, kernels)
    if keep_all:
        return {t.name: values[id(t)] for t in g.tensors.values()
                if id(t) in values and not t.is_const}
    return {t.name: values[id(t)] for t in g.outputs}

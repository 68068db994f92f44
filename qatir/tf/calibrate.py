"""Post-training calibration: set every activation range of a quantized graph from data.

The graph runs in float (FAKE_QUANT as identity) and each calibrated
FAKE_QUANT's input is handed to its quantizer (``qatir.quantizers``). Ranges
shared by several FAKE_QUANT nodes (same ``min``/``max`` tensors) pool the
statistics of all users. Weight ranges are recomputed from the weights.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from qatir.errors import NumericsError, QatirError  # noqa: E402
from qatir.ir import Graph, Node  # noqa: E402
from qatir.quant import refresh_quant  # noqa: E402
from qatir.quantizers import Quantizer, get_quantizer, include_zero, symmetric_range  # noqa: E402
from qatir.tf.data import iterate_feeds  # noqa: E402
from qatir.tf.executor import program_for  # noqa: E402
from qatir.tf.kernels import KernelContext  # noqa: E402


def _as_rows(x: np.ndarray, axis: int | None) -> np.ndarray:
    """[rows, channels] view of a captured activation (one column when per-tensor)."""
    if axis is None:
        return x.reshape(-1, 1)
    return np.moveaxis(x, axis % x.ndim, -1).reshape(-1, x.shape[axis])


def range_groups(graph: Graph) -> dict[tuple[int, int], list[Node]]:
    """Calibrated FAKE_QUANT nodes grouped by their (shared) min/max tensors."""
    groups: dict[tuple[int, int], list[Node]] = {}
    for node in graph.nodes:
        if node.op != "FAKE_QUANT" or node.attrs.get("kind") == "weight":
            continue
        if not get_quantizer(node.attrs["quantizer"]).calibrates:
            continue
        groups.setdefault((id(node.inputs[1]), id(node.inputs[2])), []).append(node)
    return groups


def set_range(node: Node, lo: np.ndarray, hi: np.ndarray) -> None:
    """Store a range in a FAKE_QUANT's min/max constants (fresh arrays, original shapes)."""
    for t, v in ((node.inputs[1], lo), (node.inputs[2], hi)):
        t.data = np.asarray(v, np.float32).reshape(t.shape).copy()


def refresh_weight_ranges(graph: Graph) -> None:
    """Set weight FAKE_QUANT ranges from the current weights (unless the range is learned)."""
    for node in graph.nodes:
        if node.op != "FAKE_QUANT" or node.attrs.get("kind") != "weight":
            continue
        q = get_quantizer(node.attrs["quantizer"])
        w = node.inputs[0]
        if q.trainable or not q.calibrates or not w.is_const:
            continue
        rows = _as_rows(np.asarray(w.data, np.float32), node.attrs.get("axis"))
        lo, hi = include_zero(rows.min(axis=0), rows.max(axis=0))
        if node.attrs.get("symmetric"):
            lo, hi = symmetric_range(lo, hi)
        set_range(node, lo, hi)


def _progress(items: Iterable[Any], enabled: bool | None, desc: str):
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(items, desc=desc, disable=not enabled, unit="batch")


def calibrate(graph: Graph, batches: Iterable[Any], progress: bool | None = None,
              max_batches: int | None = None, quantizer_options: dict[str, dict] | None = None,
              ) -> Graph:
    """Set the activation ranges of ``graph`` (in place) from representative ``batches``.

    ``batches``: iterable of ``{input_name: array}`` (or bare arrays for a
    one-input graph). ``quantizer_options`` maps a quantizer name to options
    for it, e.g. ``{"percentile": {"percentile": 99.9}}``. Returns ``graph``.
    """
    if not any(n.op == "FAKE_QUANT" for n in graph.nodes):
        raise QatirError(f"calibrate: graph {graph.name!r} has no FAKE_QUANT nodes "
                         "(quantize it first with qatir.quantize)")
    groups = range_groups(graph)
    prog = program_for(graph)
    prog.sync_from_graph()
    names = frozenset(n.name for nodes in groups.values() for n in nodes)
    capture = _capture_fn(prog, names)
    opts = quantizer_options or {}
    quantizers: dict[tuple[int, int], Quantizer] = {}
    states: dict[tuple[int, int], dict] = {}
    for key, nodes in groups.items():
        qname = nodes[0].attrs["quantizer"]
        quantizers[key] = get_quantizer(qname)(**opts.get(qname, {}))
    seen = 0
    for xs in _progress(iterate_feeds(graph, batches), progress, "calibrate"):
        if max_batches is not None and seen >= max_batches:
            break
        captured = {k: v.numpy() for k, v in capture(*xs).items()}
        for key, nodes in groups.items():
            for node in nodes:
                rows = _as_rows(captured[node.name], node.attrs.get("axis"))
                if not np.all(np.isfinite(rows)):
                    raise NumericsError(f"FAKE_QUANT {node.name!r}: input %{node.inputs[0].name} "
                                        "has NaN or Inf during calibration")
                if key not in states:
                    states[key] = quantizers[key].new_state(rows.shape[1])
                quantizers[key].observe(states[key], rows)
        seen += 1
    if seen == 0:
        raise QatirError(f"calibrate: no batches given for graph {graph.name!r}")
    for key, nodes in groups.items():
        lo, hi = include_zero(*quantizers[key].compute_range(states[key]))
        if nodes[0].attrs.get("symmetric"):
            lo, hi = symmetric_range(lo, hi)
        set_range(nodes[0], lo, hi)
    refresh_weight_ranges(graph)
    refresh_quant(graph)
    graph.metadata["calibrated"] = True
    return graph


def _capture_fn(prog, names: frozenset[str]):
    """A traced function returning the inputs of the named FAKE_QUANT nodes (float run)."""
    key = "capture:" + ",".join(sorted(names))
    fn = prog.extra_functions.get(key)
    if fn is None:
        sig = [tf.TensorSpec(t.shape, tf.as_dtype(t.dtype)) for t in prog.graph.inputs]

        def capture(*inputs):
            ctx = KernelContext(prog.params, fake_quant=False, capture=names)
            prog.forward(list(inputs), ctx)
            return dict(ctx.captured)

        fn = tf.function(capture, input_signature=sig, autograph=False)
        prog.extra_functions[key] = fn
    return fn

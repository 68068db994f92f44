"""Step ``legalise``: refuse NaN/Inf constants, rewrite the IR-only ops TFLite has a builtin
for (CLIP with 0/6, 0/inf, -1/1, 0/1 bounds), refuse the rest (BATCH_NORM, HARD_SIGMOID)."""

from __future__ import annotations

import numpy as np

from qatir.errors import ExportError, NumericsError
from qatir.ir import Graph
from qatir.lowering.common import WEIGHT_OPS, channels

_CLIP_AS = {(0.0, 6.0): "RELU6", (0.0, None): "RELU", (-1.0, 1.0): "RELU_N1_TO_1",
            (0.0, 1.0): "RELU_0_TO_1"}


def legalise(g: Graph) -> None:
    check_finite(g)
    for node in list(g.nodes):
        if node.op == "CLIP":
            lo, hi = node.attrs.get("min"), node.attrs.get("max")
            key = (None if lo is None else float(lo), None if hi is None else float(hi))
            if key not in _CLIP_AS:
                raise ExportError(f"node {node.name!r}: CLIP({lo}, {hi}) has no TFLite builtin "
                                  "(only 0..6, 0..inf, -1..1, 0..1)")
            node.op = _CLIP_AS[key]
            node.attrs = {}
        elif node.op in ("BATCH_NORM", "HARD_SIGMOID"):
            raise ExportError(f"node {node.name!r}: {node.op} must be folded/lowered by the "
                              "passes before export")


def check_finite(g: Graph) -> None:
    for t in g.tensors.values():
        if t.is_const and t.data.dtype.kind == "f" and not np.all(np.isfinite(t.data)):
            raise NumericsError(f"constant %{t.name} holds NaN or Inf")


def add_float_bias(g: Graph) -> None:
    """Conv-like ops of a float graph get an explicit zero bias (LiteRT's float kernels
    expect one: float DEPTHWISE_CONV_2D crashes without)."""
    for node in list(g.nodes):
        if node.op in WEIGHT_OPS and (len(node.inputs) < 3 or node.inputs[2] is None):
            w = node.inputs[1]
            bias = g.const(np.zeros(channels(node), w.dtype), name=f"{node.name}_bias")
            if len(node.inputs) < 3:
                node.add_input(bias)
            else:
                node.set_input(2, bias)

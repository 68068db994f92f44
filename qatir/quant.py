"""Range → quantization parameters, exactly as TF's fake-quant ops nudge them
(:func:`qatir.numerics.nudged_params`, re-exported here).

The conventions of a quantized (not yet lowered) graph:
- A FAKE_QUANT node has inputs ``(x, min, max)``; ``min``/``max`` are float32
  constants (shape [] per-tensor, [C] per-channel along ``attrs["axis"]``).
- FAKE_QUANT nodes that must share a scale (concat inputs/output, average pool
  in/out, ...) share the *same* ``min`` and ``max`` tensor objects. In TF they
  become one variable; calibration updates a shared range from every user.
- Ops whose output lies exactly on the input grid (MAX_POOL_2D, RESHAPE,
  SQUEEZE, TRANSPOSE, PAD, STRIDED_SLICE, DEPTH_TO_SPACE, SPACE_TO_DEPTH,
  RESIZE_NEAREST_NEIGHBOR) may have no FAKE_QUANT on their output; they
  inherit the input's parameters when the graph is lowered.
- Weights are FAKE_QUANT'ed constants (kind="weight", symmetric, narrow range);
  biases stay float and become int32 with scale = input_scale * weight_scale.
- The output tensor of every FAKE_QUANT carries ``tensor.quant`` computed here
  (refreshed by :func:`refresh_quant` after calibration or training).
"""

from __future__ import annotations

import numpy as np

from qatir.errors import NumericsError
from qatir.ir import Graph, Node, QuantParams
from qatir.numerics import normalize_axis, nudged_params

__all__ = ["nudged_params", "params_for", "range_for", "refresh_quant"]


def params_for(node: Node) -> QuantParams:
    """The QuantParams a FAKE_QUANT node's output represents (int8 storage domain)."""
    lo, hi = node.inputs[1].data, node.inputs[2].data
    bits = int(node.attrs["bits"])
    narrow = bool(node.attrs["narrow_range"])
    scale, zp, _, _ = nudged_params(lo, hi, bits, narrow)
    axis = node.attrs.get("axis")
    if axis is not None:
        axis = normalize_axis(axis, max(node.inputs[0].rank, 1), f"FAKE_QUANT {node.name!r}: axis")
    scale = np.atleast_1d(scale)
    zp = np.atleast_1d(zp)
    if axis is None and scale.size != 1:
        raise NumericsError(f"FAKE_QUANT {node.name!r}: per-tensor range has {scale.size} values")
    return QuantParams(tuple(scale.tolist()), tuple(zp.tolist()), axis, bits, narrow,
                       "int8" if bits <= 8 else f"int{bits}")


def range_for(scale: float, zero_point: int, bits: int = 8) -> tuple[float, float]:
    """The [min, max] that makes TF's nudging reproduce (scale, zero_point) exactly."""
    offset = 1 << (bits - 1)
    lo = (-offset - zero_point) * np.float32(scale)
    hi = (offset - 1 - zero_point) * np.float32(scale)
    return float(np.float32(lo)), float(np.float32(hi))


def refresh_quant(graph: Graph) -> None:
    """Recompute ``tensor.quant`` on every FAKE_QUANT output from its current range."""
    for node in graph.nodes:
        if node.op == "FAKE_QUANT":
            node.outputs[0].quant = params_for(node)

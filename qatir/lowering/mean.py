"""Step ``exact_mean``: an int8 MEAN over the innermost axis written as a FULLY_CONNECTED.

XNNPACK runs an int8 MEAN over the innermost axis by summing in float32 in the order of
its SIMD lanes, so near a rounding tie its result depends on the CPU (measured: 1 LSB on
6 of 147 rows of a [49, 96] mean, tests/test_lowering_steps.py); LayerNorm's two MEANs
are such means. ``mean(x) = FC(x; w = 1/C)`` exactly in real numbers, and with the weight
stored as 127 on the scale ``1/(127·C)`` the int8 FULLY_CONNECTED accumulates in integers
on every path, so the integer reference predicts it bit for bit on both resolvers. The
FC keeps the MEAN's output parameters (what the FAKE_QUANT after it trained); a MEAN
without ``keep_dims`` gets a RESHAPE after the FC.
"""

from __future__ import annotations

import numpy as np

from qatir.ir import Graph, Node, QuantParams
from qatir.numerics import normalize_axes
from qatir.target import XNN_MAX_REQUANT

#: the int8 weight value that stands for 1/C (its scale is 1/(127·C))
_ONE = 127


def _innermost_mean(node: Node) -> bool:
    if node.op != "MEAN" or node.inputs[0].quant is None or node.outputs[0].quant is None:
        return False
    x, out = node.inputs[0], node.outputs[0]
    if x.quant.dtype != "int8" or out.quant.dtype != "int8" or x.quant.per_channel:
        return False  # an int16 (16x8) region's MEAN keeps its own kernel
    if x.dtype != np.int8 or x.rank < 2 or x.shape[-1] is None:
        return False
    axes = node.attrs["axis"]
    axes = normalize_axes([axes] if isinstance(axes, int) else list(axes), x.rank)
    if list(axes) != [x.rank - 1]:
        return False
    # XNNPACK refuses a whole model whose FC requantization in·w/out reaches its limit
    requant = x.quant.scale[0] / (_ONE * int(x.shape[-1])) / node.outputs[0].quant.scale[0]
    return requant * _ONE < XNN_MAX_REQUANT


def _as_fc(g: Graph, node: Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    c = int(x.shape[-1])
    w = g.const(np.full((1, c), _ONE, np.int8), name=g.unique_name(f"{node.name}_ones"))
    w.quant = QuantParams((1.0 / (_ONE * c),), (0,), None, 8, True, "int8")
    keep = bool(node.attrs["keep_dims"])
    fc = g.add_node("FULLY_CONNECTED", [x, w],
                    {"keep_num_dims": keep and x.rank > 2, "fused_activation": "NONE"},
                    name=g.unique_name(f"{node.name}_fc"),
                    outputs=[g.unique_name(f"{out.name}_fc")])
    fc.output.quant = out.quant
    y = fc.output
    if tuple(y.shape) != tuple(out.shape):
        r = g.add_node("RESHAPE", [y], {"new_shape": [-1 if d is None else int(d)
                                                     for d in out.shape]},
                       name=g.unique_name(f"{node.name}_reshape"),
                       outputs=[g.unique_name(f"{out.name}_reshaped")])
        r.output.quant = out.quant
        y = r.output
    name = out.name
    g.replace_all_uses_with(out, y)
    g.erase(node)
    if name not in g.tensors:
        g.rename_tensor(y, name)


def exact_means(g: Graph) -> None:
    """Every int8 MEAN over the innermost axis becomes a FULLY_CONNECTED (see the module)."""
    for node in [n for n in g.nodes if _innermost_mean(n)]:
        _as_fc(g, node)
    g.toposort()

"""Step ``activations``: activation FAKE_QUANTs become int8 tensor params.

Walking in topological order, a FAKE_QUANT on a float tensor gives it its params; one
on an already-int8 tensor whose params differ becomes a requantizing ``QUANTIZE``
(after a fixed-output op a range within 1 % / one zero-point step is dropped instead).
Outputs without a FAKE_QUANT take the fixed params (LOGISTIC, SOFTMAX, TANH; on an int16
input their int16 grid, 1/32768) or inherit
their input's (grid-preserving ops, RELU). Float-island nodes keep float outputs.
"""

from __future__ import annotations

import numpy as np

from qatir.errors import ExportError
from qatir.int16 import INT16_FIXED_OUTPUT, act_params16
from qatir.ir import Graph, Node, Tensor
from qatir.lowering.common import (
    CLOSE_RTOL,
    FIXED_OUTPUT,
    INHERIT,
    act_params,
    close,
    fq_consumers,
    requantize,
)
from qatir.quant import params_for


def lower_activations(g: Graph) -> None:
    floats = set(g.metadata.get("float_islands") or ())
    for node in list(g.nodes):
        if node.graph is not g or node.name in floats:
            continue
        if node.op == "FAKE_QUANT":
            _lower_act_fq(g, node)
        else:
            _assign_output_params(node)


def _lower_act_fq(g: Graph, node: Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    p = params_for(node)
    bits = int(node.attrs["bits"])
    if bits not in (8, 16):
        raise ExportError(f"node {node.name!r}: {bits}-bit activation %{x.name} "
                          "has no TFLite kernel (activations must be 8-bit, or 16-bit in 16x8)")
    if p.axis is not None:
        raise ExportError(f"node {node.name!r}: per-channel activation quantization of "
                          f"%{x.name} is not supported by TFLite")
    if bits == 16 and p.zero_point[0] != 0:
        raise ExportError(f"node {node.name!r}: 16-bit activation %{x.name} has zero point "
                          f"{p.zero_point[0]}; LiteRT's 16x8 kernels need a symmetric range "
                          "(zero point 0)")
    p = act_params16(p.scale[0]) if bits == 16 else act_params(p.scale[0], p.zero_point[0])
    dtype = np.dtype(p.dtype)
    if x.quant is None:
        if x.dtype != np.float32:
            raise ExportError(f"node {node.name!r}: cannot quantize {x.dtype} tensor %{x.name}")
        x.quant, x.dtype = p, dtype
        src = x
    elif x.dtype == dtype and close(x.quant, p, CLOSE_RTOL if _fixed(x) else 0.0):
        src = x
    else:
        src = requantize(g, x, p, f"{node.name}_requant", out.name + "_rq")
    out_name = out.name
    g.replace_all_uses_with(out, src)
    g.erase(node)
    if any(t is src for t in g.outputs) and src.producer is not None:
        g.rename_tensor(src, out_name)


def _fixed(t: Tensor) -> bool:
    return t.producer is not None and t.producer.op in FIXED_OUTPUT


def _assign_output_params(node: Node) -> None:
    """Fixed or inherited output params; outputs followed by a FAKE_QUANT are left to it."""
    if node.op in ("QUANTIZE", "DEQUANTIZE"):
        return
    out = node.outputs[0]
    if out.quant is not None:
        return
    if node.op in FIXED_OUTPUT:
        x = node.inputs[0]
        if x is not None and x.quant is not None and x.dtype == np.int16 \
                and node.op in INT16_FIXED_OUTPUT:  # a 16x8 node: LiteRT's int16 grid
            out.quant, out.dtype = act_params16(INT16_FIXED_OUTPUT[node.op][0]), np.dtype(np.int16)
        elif x is not None and x.quant is not None:
            out.quant, out.dtype = act_params(*FIXED_OUTPUT[node.op]), np.dtype(np.int8)
        return
    if fq_consumers(out):
        return
    if node.op in INHERIT:
        srcs = [t for t in node.inputs if t is not None and t.quant is not None
                and not t.is_const]
        if node.op == "CONCATENATION" and len({t.quant for t in srcs}) > 1:
            return  # left float: the checks step reports it
        if srcs and srcs[0].dtype in (np.int8, np.int16):
            out.quant, out.dtype = srcs[0].quant, srcs[0].dtype

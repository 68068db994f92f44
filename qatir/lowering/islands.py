"""Steps ``islands`` and ``island_edges``: float islands inside a quantized graph.

A *float node* is one the table kept out of quantization (``graph.metadata["float_nodes"]``,
written by ``insert_fake_quant``) or one whose op has no int8 kernel (``int8`` op fact).
It is emitted as a float op. Where a tensor crosses into an island, one ``DEQUANTIZE``
(shared by every float user of that tensor) brings it to float32; where a float tensor
crosses out, the FAKE_QUANT on that edge becomes a ``QUANTIZE`` with that FAKE_QUANT's
parameters. So the deployed edges are exactly the fake-quant edges QAT trained with.
Constants a float node reads stay float (a fake-quantized one keeps its dequantized
values); float conv-like ops get an explicit zero bias (LiteRT's float DEPTHWISE_CONV_2D
crashes without one). The island's node names go to ``metadata["float_islands"]``.

``islands`` runs before the activation params are assigned (it turns the exit
FAKE_QUANTs into QUANTIZE), ``island_edges`` right after them (entry DEQUANTIZEs).
:func:`summary` / :func:`format_summary` give the "int8: N of M nodes (P% of MACs)"
line; :func:`report_islands` is the writer's warning (or, strict, refusal).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from qatir.errors import ExportError
from qatir.int16 import act_params16
from qatir.ir import Graph, Node, Tensor
from qatir.lowering.common import WEIGHT_OPS, act_params, channels
from qatir.ops import get_op, has_op
from qatir.quant import params_for

_EDGE_OPS = frozenset({"FAKE_QUANT", "QUANTIZE", "DEQUANTIZE"})
META = "float_islands"


def is_float_node(node: Node, listed: set[str]) -> bool:
    """True for a node that runs in float inside a quantized graph (see the module doc)."""
    if node.op in _EDGE_OPS or not has_op(node.op):
        return False
    op = get_op(node.op)
    return node.name in listed or (not op.int8 and not op.ir_only)


def float_node_names(g: Graph) -> list[str]:
    listed = set(g.metadata.get("float_nodes") or ())
    return [n.name for n in g.nodes if is_float_node(n, listed)]


def mark_islands(g: Graph) -> None:
    """Record the float nodes, turn exit FAKE_QUANTs into QUANTIZE, give float convs a bias."""
    names = float_node_names(g)
    g.metadata[META] = names
    if not names:
        return
    floats = set(names)
    for node in list(g.nodes):
        if node.op == "FAKE_QUANT" and node.attrs.get("kind") != "weight":
            x = node.inputs[0]
            if x.producer is not None and x.producer.name in floats:
                _exit(g, node)
        elif node.name in floats and node.op in WEIGHT_OPS:
            _float_bias(g, node)
    g.toposort()


def _exit(g: Graph, fq: Node) -> None:
    x, out = fq.inputs[0], fq.outputs[0]
    p = params_for(fq)
    bits = int(fq.attrs["bits"])
    if bits not in (8, 16) or p.axis is not None or (bits == 16 and p.zero_point[0] != 0):
        raise ExportError(f"node {fq.name!r}: the edge out of float node {x.producer.name!r} "
                          "needs a per-tensor 8-bit (or symmetric 16-bit) FAKE_QUANT")
    qp = act_params16(p.scale[0]) if bits == 16 else act_params(p.scale[0], p.zero_point[0])
    q = g.add_node("QUANTIZE", [x], {"dtype": qp.dtype}, name=f"{fq.name}_quantize",
                   outputs=[g.unique_name(f"{x.name}_{qp.dtype}")])
    q.output.quant = qp
    was_output = any(t is out for t in g.outputs)
    name = out.name
    g.replace_all_uses_with(out, q.output)
    g.erase(fq)
    if was_output:
        del g.tensors[q.output.name]
        q.output.name = name
        g.tensors[name] = q.output


def _float_bias(g: Graph, node: Node) -> None:
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        return
    bias = g.const(np.zeros(channels(node), np.float32), name=f"{node.name}_bias")
    if len(node.inputs) < 3:
        node.add_input(bias)
    else:
        node.set_input(2, bias)


def enter_islands(g: Graph) -> None:
    """Each int8 tensor a float node reads goes through one shared DEQUANTIZE; an int8
    constant it reads becomes a float constant holding the dequantized values."""
    floats = set(g.metadata.get(META) or ())
    if not floats:
        return
    dq: dict[int, Tensor] = {}
    for node in list(g.nodes):
        if node.name not in floats:
            continue
        for i, t in enumerate(node.inputs):
            if t is None or t.quant is None or t.dtype.kind not in "iu":
                continue
            if t.dtype == np.int32 and t.quant.bits == 32:
                continue
            if t.is_const:
                node.set_input(i, _float_const(g, t))
                continue
            if id(t) not in dq:
                d = g.add_node("DEQUANTIZE", [t], {"dtype": "float32"},
                               name=g.unique_name(f"{t.name}_dequantize"),
                               outputs=[g.unique_name(f"{t.name}_float")])
                dq[id(t)] = d.output
            node.set_input(i, dq[id(t)])
    g.toposort()


def _float_const(g: Graph, t: Tensor) -> Tensor:
    q = t.quant
    scale = np.asarray(q.scale, np.float32)
    zp = np.asarray(q.zero_point, np.float32)
    if q.axis is not None:
        shape = [1] * t.data.ndim
        shape[q.axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    data = ((t.data.astype(np.float32) - zp) * scale).astype(np.float32)
    return g.const(data, name=g.unique_name(f"{t.name}_float"))


# ------------------------------------------------------------------ the summary
def node_macs(node: Node) -> int:
    """Multiply-accumulates of a conv-like / matmul node (0 for the elementwise rest)."""
    out = node.outputs[0]
    n_out = math.prod(int(d or 1) for d in out.shape)
    if node.op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV") \
            and len(node.inputs) > 1 and node.inputs[1] is not None:
        w = node.inputs[1].shape
        if node.op == "CONV_2D":
            return n_out * int(w[1]) * int(w[2]) * int(w[3])
        if node.op == "DEPTHWISE_CONV_2D":
            return n_out * int(w[1]) * int(w[2])
        if node.op == "FULLY_CONNECTED":
            return n_out * int(w[1])
        x = node.inputs[0].shape
        return math.prod(int(d or 1) for d in x) * int(w[0]) * int(w[1]) * int(w[2])
    if node.op == "BATCH_MATMUL":
        a = node.inputs[0].shape
        k = a[-2] if node.attrs.get("adj_x") else a[-1]
        return n_out * int(k or 1)
    return 0


def summary(g: Graph) -> dict:
    """How much of a graph (quantized or lowered) runs in int8: node counts (FAKE_QUANT,
    QUANTIZE and DEQUANTIZE not counted), MAC shares, the float nodes."""
    floats = set(g.metadata[META] if META in g.metadata else float_node_names(g))
    compute = [n for n in g.nodes if n.op not in _EDGE_OPS]
    macs = {n.name: node_macs(n) for n in compute}
    total = sum(macs.values())
    float_rows = [{"node": n.name, "op": n.op, "macs": macs[n.name],
                   "mac_share": macs[n.name] / total if total else 0.0}
                  for n in compute if n.name in floats]
    float_macs = sum(r["macs"] for r in float_rows)
    return {"nodes": len(compute), "int8_nodes": len(compute) - len(float_rows),
            "macs": total, "int8_mac_share": 1.0 - (float_macs / total if total else 0.0),
            "float": float_rows}


def format_summary(s: dict) -> str:
    """``int8: N of M nodes (P% of MACs); float: 'a' (DIV, 0.0%), ...``"""
    head = (f"int8: {s['int8_nodes']} of {s['nodes']} nodes "
            f"({100.0 * s['int8_mac_share']:.1f}% of MACs)")
    if not s["float"]:
        return head + "; float: none"
    rows = ", ".join(f"{r['node']!r} ({r['op']}, {100.0 * r['mac_share']:.1f}% of MACs)"
                     for r in s["float"])
    return f"{head}; float: {rows}"


class FloatIslandWarning(UserWarning):
    """A quantized graph was exported with float islands (see ``strict_int8``)."""


def report_islands(g: Graph, strict: bool) -> None:
    """Refuse (``strict``) or warn once about the float islands of a lowered graph."""
    if not g.metadata.get("float_islands"):
        return
    s = summary(g)
    if strict:
        nodes = ", ".join(f"{r['node']!r} ({r['op']})" for r in s["float"])
        raise ExportError(f"no int8 kernel, or kept float by the table, for node(s) {nodes}; "
                          "strict_int8 refuses float islands (drop it to export them as "
                          "float ops between DEQUANTIZE and QUANTIZE)")
    warnings.warn(f"graph {g.name!r} exported with float islands: {format_summary(s)}",
                  FloatIslandWarning, stacklevel=4)

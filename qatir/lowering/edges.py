"""Step ``edges``: normalise a lowered graph's inputs and outputs to ``io``.

``io="int8"``: the edges are the int8 tensors themselves. ``"float"``: each input is a
float32 tensor feeding a ``QUANTIZE`` and each output the float32 result of a
``DEQUANTIZE``. ``"uint8"``: uint8 edges (zero point + 128) converted by ``QUANTIZE``
nodes. An int16 edge (a 16x8 output, or an input an ``[[int16]]`` entry's ``inputs``
selects) is int16 with ``"int8"`` and ``"uint8"`` and float with ``"float"`` (a float32
input feeding a ``QUANTIZE`` into int16). Edge tensors keep the graph's original names.
"""

from __future__ import annotations

import numpy as np

from qatir.ir import Graph, QuantParams, Tensor

IO_MODES = ("int8", "float", "uint8")


def apply_io(g: Graph, io: str) -> None:
    """Normalize a lowered graph's edges to ``io`` (see the module docstring)."""
    _strip_edges(g)
    if io == "int8":
        return
    for i, t in enumerate(list(g.inputs)):
        if t.quant is None or not _converted(t, io):
            continue
        name = t.name
        g.rename_tensor(t, g.unique_name(f"{name}_{t.dtype.name}"))
        dtype, qp = _edge_type(io, t.quant)
        new = g.add_tensor(Tensor(name, t.shape, dtype, quant=qp, source_layout=t.source_layout))
        g.inputs[i] = new
        g.add_node("QUANTIZE", [new], {"dtype": t.dtype.name}, name=f"{name}_quantize",
                   outputs=[t])
    for i, t in enumerate(list(g.outputs)):
        if t.quant is None or not _converted(t, io):
            continue
        name = t.name
        g.rename_tensor(t, g.unique_name(f"{name}_int8"))
        dtype, qp = _edge_type(io, t.quant)
        op = "DEQUANTIZE" if io == "float" else "QUANTIZE"
        node = g.add_node(op, [t], {"dtype": np.dtype(dtype).name}, name=f"{name}_{op.lower()}",
                          outputs=[name])
        node.output.quant = qp
        g.outputs[i] = node.output
    g.toposort()


def _converted(t: Tensor, io: str) -> bool:
    """An int8 edge takes ``io``'s type; an int16 (16x8) one stays int16 unless the edges
    are float (uint8 edges are the int8 ones shifted)."""
    return t.dtype == np.int8 or (io == "float" and t.dtype == np.int16)


def _edge_type(io: str, q: QuantParams) -> tuple[type, QuantParams | None]:
    if io == "float":
        return np.float32, None
    return np.uint8, QuantParams(q.scale, (q.zero_point[0] + 128,), None, 8, False, "uint8")


def _strip_edges(g: Graph) -> None:
    """Turn QUANTIZE-at-input / DEQUANTIZE-at-output edges back into int8 edges."""
    for i, t in enumerate(list(g.inputs)):
        users = t.users
        if t.dtype in (np.int8, np.int16) or not users:
            continue
        dtype = users[0].output.dtype
        if dtype not in (np.int8, np.int16) or not all(
                u.op == "QUANTIZE" and u.output.dtype == dtype for u in users):
            continue
        qp = users[0].output.quant
        if qp is None or any(u.output.quant != qp for u in users[1:]):
            continue
        name = t.name
        new = g.add_tensor(Tensor(g.unique_name(f"{name}_{dtype.name}"), t.shape, dtype,
                                  quant=qp, source_layout=t.source_layout))
        for u in users:
            g.replace_all_uses_with(u.output, new)
        g.erase_many(users)
        g.inputs[i] = new
        del g.tensors[name]
        g.rename_tensor(new, name)
    for i, t in enumerate(list(g.outputs)):
        p = t.producer
        if p is None or t.uses or sum(o is t for o in g.outputs) > 1:
            continue
        src = p.inputs[0]
        if src.dtype not in (np.int8, np.int16) or src.quant is None:
            continue
        if not (p.op == "DEQUANTIZE" or (p.op == "QUANTIZE" and t.dtype == np.uint8)):
            continue
        name = t.name
        g.outputs[i] = src
        g.erase(p)
        if src.producer is not None and not any(o is src for j, o in enumerate(g.outputs) if j != i):
            g.rename_tensor(src, name)

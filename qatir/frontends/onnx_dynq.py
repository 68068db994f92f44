"""onnxruntime's dynamic quantization, undone at import: the float model it came from.

``onnxruntime.quantization.quantize_dynamic`` writes int8/uint8 weights and quantizes
activations at run time: ``DynamicQuantizeLinear(x) -> (x_q, s_x, z_x)`` feeds
``ConvInteger`` / ``MatMulInteger`` (``Σ (x_q - z_x)(w_q - z_w)`` in int32), whose output
is cast to float and multiplied by ``s_x·s_w``; biases are quantized inline
(``Cast(Floor(b / (s_x·s_w)))``). LSTMs become ``com.microsoft::DynamicQuantizeLSTM``
with W and R stored quantized and transposed (``[dirs, in, 4H]``).

:func:`dequantize_dynamic` rewrites the graph (in place, before conversion) so every
identity above holds with real numbers: ``DynamicQuantizeLinear`` passes ``x`` through
with ``s_x = 1`` and ``z_x = 0``; ``ConvInteger``/``MatMulInteger`` become ``Conv``/``MatMul``
on ``w_q - z_w`` (exact in float); the inline bias quantization loses its Floor and
integer Cast (so the bias is exact too); ``DynamicQuantizeLSTM`` becomes ``LSTM`` on
``(w_q - z_w)·s_w``. What is left is the float model qatir quantizes itself; it differs
from onnxruntime's run of the original file by that file's activation rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qatir.errors import ModelFormatError
from qatir.frontends.onnx_io import tensor_to_array

_INTEGER_OPS = {"ConvInteger": "Conv", "MatMulInteger": "MatMul"}
_MS = "com.microsoft"
_FAULTS = (ValueError, TypeError, IndexError, KeyError, OverflowError)  # malformed weights


def has_dynamic_quant(graph: Any) -> bool:
    return any(n.op_type == "DynamicQuantizeLinear" or n.op_type in _INTEGER_OPS
               or (n.domain == _MS and n.op_type == "DynamicQuantizeLSTM") for n in graph.node)


def dequantize_dynamic(graph: Any, path: str) -> int:
    """Rewrite ``graph`` (an onnx GraphProto) into its float equivalent; returns the
    number of nodes rewritten. A quantized value used other than as above is left alone
    (its node then shows up as unsupported)."""
    if not has_dynamic_quant(graph):
        return 0
    inits = {t.name: t for t in graph.initializer}
    arrays: dict[str, np.ndarray] = {}

    def const(name: str) -> np.ndarray | None:
        if name not in inits:
            return None
        if name not in arrays:
            arrays[name] = tensor_to_array(inits[name], path)
        return arrays[name]

    users = _users(graph)
    new_inits: list[Any] = []
    dql = _passthrough_quantizers(graph, users)
    scales = _derived_from({n.output[1] for n in graph.node
                            if n.op_type == "DynamicQuantizeLinear" and n.output[0] in dql}, graph)
    nodes, count = [], 0
    for n in graph.node:
        try:
            rewritten = _rewrite(n, dql, scales, const, new_inits, path)
        except _FAULTS as e:
            raise ModelFormatError(f"{path}: node {n.name or n.op_type!r} ({n.op_type}): "
                                   f"invalid quantized weights ({type(e).__name__}: {e})") from None
        if rewritten is None:
            nodes.append(n)
        else:
            nodes.extend(rewritten)
            count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    return count


def _users(graph: Any) -> dict[str, list[tuple[Any, int]]]:
    out: dict[str, list[tuple[Any, int]]] = {}
    for n in graph.node:
        for k, name in enumerate(n.input):
            out.setdefault(name, []).append((n, k))
    for vi in graph.output:
        out.setdefault(vi.name, []).append((None, -1))
    return out


def _passthrough_quantizers(graph: Any, users: dict) -> set[str]:
    """DynamicQuantizeLinear nodes (by their first output) whose x_q and z_x feed only
    integer ops (slot 0/2)."""
    ok = set()
    for n in graph.node:
        if n.op_type != "DynamicQuantizeLinear" or len(n.output) != 3:
            continue
        q_uses = users.get(n.output[0], [])
        z_uses = users.get(n.output[2], [])
        if all(u is not None and u.op_type in _INTEGER_OPS and k == 0 for u, k in q_uses) and \
                all(u is not None and u.op_type in _INTEGER_OPS and k == 2 for u, k in z_uses):
            ok.add(n.output[0])
    return ok


def _derived_from(seeds: set[str], graph: Any) -> set[str]:
    """Values computed from ``seeds`` and constants only (the inline bias quantization:
    ``Cast(Floor(b / (s_x·s_w)))``); anything that also reads an activation is not."""
    fixed = {t.name for t in graph.initializer}
    fixed |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    out = set(seeds)
    changed = True
    while changed:
        changed = False
        for n in graph.node:
            if any(i in out for i in n.input) and all(not i or i in out or i in fixed
                                                      for i in n.input):
                new = {o for o in n.output if o} - out
                if new:
                    out |= new
                    changed = True
    return out


def _rewrite(n: Any, dql: set[str], scales: set[str], const, new_inits: list,
             path: str) -> list[Any] | None:
    from onnx import TensorProto, helper

    if n.op_type == "DynamicQuantizeLinear" and n.output[0] in dql:
        base = n.name or n.output[0]
        return [helper.make_node("Identity", [n.input[0]], [n.output[0]], name=n.name),
                _constant(n.output[1], np.float32(1.0), base + "__scale"),
                _constant(n.output[2], np.uint8(0), base + "__zero_point")]
    if n.op_type in ("Floor", "Cast") and n.input and n.input[0] in scales:
        to = next((a.i for a in n.attribute if a.name == "to"), TensorProto.FLOAT)
        if n.op_type == "Floor" or to != TensorProto.FLOAT:  # bias quantization: keep exact
            return [helper.make_node("Identity", [n.input[0]], [n.output[0]], name=n.name)]
        return None
    if n.op_type in _INTEGER_OPS:
        return _integer_op(n, const, new_inits, path)
    if n.domain == _MS and n.op_type == "DynamicQuantizeLSTM":
        return [_lstm(n, const, new_inits, path)]
    return None


def _constant(name: str, value: np.ndarray, node_name: str) -> Any:
    from onnx import helper, numpy_helper

    return helper.make_node("Constant", [], [name], name=node_name,
                            value=numpy_helper.from_array(np.asarray(value)))


def _weight(const, name: str, zp_name: str | None, where: str) -> np.ndarray:
    w = const(name)
    if w is None:
        raise ModelFormatError(f"{where}: quantized weight {name!r} is not an initializer")
    zp = const(zp_name) if zp_name else np.zeros((), w.dtype)
    if zp is None:
        raise ModelFormatError(f"{where}: zero point {zp_name!r} is not an initializer")
    return w.astype(np.float32), zp.astype(np.float32)


def _integer_op(n: Any, const, new_inits: list, path: str) -> list[Any] | None:
    """ConvInteger/MatMulInteger(x, w, z_x, z_w) -> Conv/MatMul(x, w - z_w)."""
    from onnx import numpy_helper

    where = f"{path}: node {n.name or n.op_type!r} ({n.op_type})"
    if len(n.input) > 2 and n.input[2] and const(n.input[2]) is not None \
            and np.any(const(n.input[2])):
        return None  # a constant non-zero input zero point: not from a dynamic quantizer
    w, zp = _weight(const, n.input[1], n.input[3] if len(n.input) > 3 else None, where)
    if n.op_type == "ConvInteger" and zp.ndim == 1:  # per output channel
        zp = zp.reshape((-1,) + (1,) * (w.ndim - 1))
    name = f"{n.input[1]}__float"
    new_inits.append(numpy_helper.from_array(w - zp, name))
    node = _copy_node(n, _INTEGER_OPS[n.op_type], [n.input[0], name])
    return [node]


def _copy_node(n: Any, op: str, inputs: list[str], domain: str = "") -> Any:
    from onnx import helper

    node = helper.make_node(op, inputs, list(n.output), name=n.name, domain=domain)
    node.attribute.extend(n.attribute)
    return node


def _lstm(n: Any, const, new_inits: list, path: str) -> Any:
    """DynamicQuantizeLSTM(X, W_q, R_q, B, lens, h0, c0, P, s_W, z_W, s_R, z_R) -> LSTM."""
    from onnx import numpy_helper

    where = f"{path}: node {n.name or n.op_type!r} (DynamicQuantizeLSTM)"
    ins = list(n.input) + [""] * (12 - len(n.input))
    mats = []
    for q, s, z in ((1, 8, 9), (2, 10, 11)):
        w, zp = _weight(const, ins[q], ins[z] or None, where)
        scale = const(ins[s])
        if scale is None:
            raise ModelFormatError(f"{where}: scale {ins[s]!r} is not an initializer")
        shape = (w.shape[0], 1, -1)  # [dirs] or [dirs, 4H] over W [dirs, in, 4H]
        real = (w - zp.reshape(shape)) * scale.astype(np.float32).reshape(shape)
        name = f"{ins[q]}__float"
        new_inits.append(numpy_helper.from_array(np.ascontiguousarray(
            real.transpose(0, 2, 1)), name))
        mats.append(name)
    lstm_ins = [ins[0], *mats, *ins[3:8]]
    while lstm_ins and not lstm_ins[-1]:
        lstm_ins.pop()
    return _copy_node(n, "LSTM", lstm_ins)

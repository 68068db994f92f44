"""Step ``constants``: every FAKE_QUANT of a constant becomes an int8 constant.

Values are rounded exactly as TF's fake-quant rounds them; weights must be symmetric
and quantized on the axis their op's TFLite kernel reads (``WEIGHT_OPS``); weights of
fewer than 8 bits are stored as int8 with their own scale and ``bits`` kept.
"""

from __future__ import annotations

import warnings

import numpy as np

from qatir.errors import ExportError
from qatir.ir import Graph, Node, QuantParams, Tensor
from qatir.lowering.common import WEIGHT_OPS
from qatir.numerics import fake_quant_steps
from qatir.ops import get_op
from qatir.quant import params_for


def lower_constants(g: Graph) -> None:
    g.toposort()
    for node in list(g.nodes):
        if node.op == "FAKE_QUANT" and node.inputs[0].is_const:
            _lower_const_fq(g, node)


def fq_int_values(node: Node, data: np.ndarray) -> tuple[np.ndarray, QuantParams]:
    """Integer values (int8 domain) exactly as TF's fake-quant rounds ``data``."""
    p = params_for(node)
    lo, hi = node.inputs[1].data, node.inputs[2].data
    bits, narrow = int(node.attrs["bits"]), bool(node.attrs["narrow_range"])
    k = fake_quant_steps(data, lo, hi, bits, narrow, p.axis)
    zp = np.asarray(p.zero_point, np.int64)
    if p.axis is not None:
        shape = [1] * k.ndim
        shape[p.axis] = -1
        zp = zp.reshape(shape)
    q = k + zp
    return q, p


def _lower_const_fq(g: Graph, node: Node) -> None:
    const, out = node.inputs[0], node.outputs[0]
    bits = int(node.attrs["bits"])
    if bits > 8:
        raise ExportError(f"node {node.name!r}: {bits}-bit constant %{const.name} has no int8 "
                          "TFLite kernel")
    q, p = fq_int_values(node, const.data)
    q, p = _zero_channels_symmetric(node, const, q, p)
    for user, idx in out.uses:
        if user.op in WEIGHT_OPS and idx == get_op(user.op).weight:
            want = WEIGHT_OPS[user.op]
            if any(z != 0 for z in p.zero_point):
                raise ExportError(f"node {node.name!r}: weight %{const.name} of {user.name!r} "
                                  f"is not symmetric (zero points {sorted(set(p.zero_point))})")
            if p.axis is not None and p.axis != want:
                raise ExportError(f"node {node.name!r}: weight %{const.name} of {user.name!r} "
                                  f"({user.op}) is quantized on axis {p.axis}, TFLite needs "
                                  f"{'per-tensor' if want is None else f'axis {want} or per-tensor'}")
    if bits < 8 and any(z != 0 for z in p.zero_point):
        raise ExportError(f"node {node.name!r}: {bits}-bit constant %{const.name} must be symmetric")
    if p.axis is None and out.uses and all(_writes_int16(u) and (u.op not in WEIGHT_OPS or i !=
                                           get_op(u.op).weight) for u, i in out.uses):
        # an operand of 16x8 nodes only (an ADD of a constant): the same values on the int16
        # grid, zero point 0 (|q - zp| <= 255), as LiteRT's int16 kernels read both inputs
        qp = QuantParams(p.scale, (0,), None, 16, False, "int16")
        new = g.const((q - int(p.zero_point[0])).astype(np.int16), name=out.name, quant=qp)
    else:
        qp = QuantParams(p.scale, p.zero_point, p.axis, bits, p.narrow_range or bits < 8, "int8")
        new = g.const(q.astype(np.int8), name=out.name, quant=qp)
    g.replace_all_uses_with(out, new)
    g.erase(node)
    if out.name not in g.tensors and new.name != out.name:
        g.rename_tensor(new, out.name)


def _writes_int16(node: Node) -> bool:
    """``node``'s output is 16-bit fake-quantized (an ``[[int16]]`` node, before the
    ``activations`` step gives it int16 params)."""
    return any(u.op == "FAKE_QUANT" and int(u.attrs.get("bits", 8)) == 16
               for o in node.outputs for u in o.users)


def _zero_channels_symmetric(node: Node, const: Tensor, q: np.ndarray, p: QuantParams
                             ) -> tuple[np.ndarray, QuantParams]:
    """An all-zero weight channel has a degenerate range (nudged zero point != 0): force the
    symmetric form (values 0, zero point 0) and warn; its scale is fixed up with the bias."""
    if p.axis is None or node.attrs.get("kind") != "weight" or not any(p.zero_point):
        return q, p
    red = tuple(i for i in range(const.data.ndim) if i != p.axis)
    zero = ~np.any(const.data != 0, axis=red)
    if not np.any(zero):
        return q, p
    warnings.warn(f"node {node.name!r}: weight %{const.name} has all-zero channels "
                  f"{np.flatnonzero(zero).tolist()}; their zero points are set to 0", stacklevel=6)
    shape = [1] * const.data.ndim
    shape[p.axis] = -1
    q = np.where(np.reshape(zero, shape), 0, q)
    zps = tuple(0 if z else zp for z, zp in zip(zero, p.zero_point))
    return q, QuantParams(p.scale, zps, p.axis, p.bits, p.narrow_range, p.dtype)

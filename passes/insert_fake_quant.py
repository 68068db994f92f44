"""insert_fake_quant: place FAKE_QUANT nodes as the pattern table says.

The layout produced (consumed by calibration/training and by the int8 writer;
it follows the conventions of :mod:`qatir.quant`). Op lists in brackets are the
default table's (``int8_default``); the pass reads them from the table.

- A FAKE_QUANT node has inputs ``(x, min, max)``; ``min``/``max`` are float32
  constants, shape ``[]`` per-tensor or ``[C]`` per-channel along ``attrs["axis"]``.
  Attributes: ``bits``, ``narrow_range``, ``axis`` (None = per-tensor),
  ``symmetric``, ``quantizer`` (a :mod:`qatir.quantizers` name from the table's
  ``[calibration]``) and ``kind``:

  * ``"weight"`` — a constant operand. Input 1 of the table's ``weights.ops``
    [CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV] is quantized
    per-channel on ``weights.per_channel_axis[op]`` [CONV_2D 0, DEPTHWISE_CONV_2D 3,
    TRANSPOSE_CONV 0, FULLY_CONNECTED 0], per-tensor for an op not listed there or
    when the axis does not exist in that constant; any other float constant input of
    a quantized node (e.g. the operand of ADD/MUL) is per-tensor. The range comes
    from the data: ``[-max|w|, max|w|]`` per channel when ``weights.symmetric``
    (an all-zero channel borrows the tensor's max, or 1.0), else
    ``[min(w, 0), max(w, 0)]``; ``narrow_range`` defaults to ``symmetric``, so the
    default zero point is 0. One FAKE_QUANT per (constant, axis), shared by all its
    users. Biases (input 2 of ``weights.ops``) stay float, never fake-quantized.
  * ``"activation"`` — every float output of a quantized node, and every graph
    input or float (excluded) producer output that a quantized node reads (a graph
    input at the table's bits, or 16-bit where an ``[[int16]]`` entry's ``inputs``
    regex selects its name; a float producer's output at its first reader's). The
    FAKE_QUANT output replaces the value for all consumers; a graph output then
    points at the FAKE_QUANT output, which takes over the output's name. The range
    starts as the table's ``activations.initial_range`` placeholder (default
    ``[-6, 6]``; symmetric tables use ``[-m, m]``) and ``graph.metadata["calibrated"]``
    is False until calibration. Outputs of ops in ``constraints.fixed_output``
    [LOGISTIC, SOFTMAX, TANH], and of ops whose ``fused_activation`` is listed there,
    get the exact range :func:`qatir.quant.range_for` gives for their (scale, zero
    point), with the table's ``calibration.fixed`` quantizer.
- Ops in ``constraints.inherit`` [MAX_POOL_2D, RESHAPE, TRANSPOSE, ...] get no
  output FAKE_QUANT when their first input is quantized: they inherit its parameters.
- Ops in ``constraints.same_scale`` [AVERAGE_POOL_2D, CONCATENATION,
  RESIZE_BILINEAR] get an output FAKE_QUANT here; ``propagate_quant_constraints``
  then makes it and the input FAKE_QUANT(s) share the same ``min``/``max`` tensors.
- Inputs listed in ``constraints.symmetric_inputs`` [BATCH_MATMUL input 1: XNNPACK
  delegates int8 BATCH_MATMUL only with a zero-point-0 right-hand side] are read on a
  symmetric narrow-range grid: the FAKE_QUANT they inherit (through ``inherit`` ops)
  becomes symmetric when its range is its own, else a symmetric FAKE_QUANT goes on
  the edge (a requantize at export).
- A value already read only by a FAKE_QUANT is left as it is, so a second run
  adds nothing.
- Nodes the table's include/exclude rules keep float, and nodes whose op has no
  int8 kernel (the ``int8`` op fact), get no FAKE_QUANT on their outputs or
  constants: they are *float islands*. The activations entering them are the
  fake-quantized values of their producers, and a quantized node reading an
  island's output gets a FAKE_QUANT on that edge, so QAT sees fake-quant exactly
  at the island edges. Their names are listed in ``graph.metadata["float_nodes"]``;
  the writer emits them as float ops between DEQUANTIZE and QUANTIZE with those
  edges' parameters (:mod:`qatir.lowering.islands`). ``metadata["quant_table"]``
  names the table.
- Every FAKE_QUANT this pass creates carries ``tensor.quant``
  (:func:`qatir.quant.params_for`, as :func:`qatir.quant.refresh_quant` sets it).
- Refused: a NaN/Inf constant read by a quantized node (NumericsError naming
  node and tensor) and a table entry that asks for fake-quant on an integer
  tensor (TableError naming the entry).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qatir.errors import NumericsError, TableError
from qatir.int16 import INT16_FIXED_OUTPUT, INT16_FQ, has_int16
from qatir.ir import Graph, Node, QuantParams, Tensor
from qatir.numerics import MIN_RANGE
from qatir.ops import get_op, has_op
from qatir.patterns import replace_tensor
from qatir.pipeline import PassContext, register_pass
from qatir.quant import params_for, range_for
from qatir.table import BN_FOLD_AXES, Table

SKIP_OPS = frozenset({"FAKE_QUANT", "QUANTIZE", "DEQUANTIZE"})


def _is_float(t: Tensor | None) -> bool:
    return t is not None and t.dtype.kind == "f"


def weight_range(data: np.ndarray, axis: int | None, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (or per-tensor) [lo, hi] of a constant; symmetric gives [-max|w|, max|w|]."""
    w = data.astype(np.float32)
    red = tuple(i for i in range(w.ndim) if i != axis) if axis is not None else None
    if symmetric:
        m = np.max(np.abs(w), axis=red) if w.size else np.float32(0)
        fallback = float(np.max(np.abs(w))) if w.size and 2 * np.max(np.abs(w)) >= MIN_RANGE \
            else 1.0
        m = np.where(2 * m >= MIN_RANGE, m, fallback).astype(np.float32)
        return -m, m
    lo = np.minimum(np.min(w, axis=red), 0).astype(np.float32)
    hi = np.maximum(np.max(w, axis=red), 0).astype(np.float32)
    hi = np.where(hi > lo, hi, lo + 1.0).astype(np.float32)
    return lo, hi


class _Inserter:
    """Builds FAKE_QUANT nodes for one graph and one table."""

    def __init__(self, graph: Graph, table: Table):
        self.graph = graph
        self.table = table
        self.act = table.activations
        self.w = table.weights
        self.cal = table.calibration
        self.fixed = table.fixed_output
        self.weight_cache: dict[tuple[int, int | None], Tensor] = {}
        self.created: list[Node] = []
        #: id(quantized activation) -> its bits; (id, bits) -> the edge FAKE_QUANT output
        self.bits: dict[int, int] = {}
        self.edges: dict[tuple[int, int], Tensor] = {}

    def _fq(self, x: Tensor, lo: Any, hi: Any, attrs: dict[str, Any], tag: str) -> Node:
        g = self.graph
        lo_t = g.const(np.asarray(lo, np.float32), name=f"{x.name}_{tag}min")
        hi_t = g.const(np.asarray(hi, np.float32), name=f"{x.name}_{tag}max")
        node = g.add_node("FAKE_QUANT", [x, lo_t, hi_t], attrs, name=f"{x.name}_fq")
        self.created.append(node)
        return node

    def weight(self, t: Tensor, axis: int | None) -> Tensor:
        key = (id(t), axis)
        if key not in self.weight_cache:
            if axis is not None and not (0 <= axis < t.rank):
                axis = None
            sym = bool(self.w["symmetric"])
            lo, hi = weight_range(t.data, axis, sym)
            attrs = {"bits": int(self.w["bits"]), "narrow_range": bool(self.w.get("narrow_range", sym)),
                     "axis": axis, "symmetric": sym, "quantizer": self.cal["weight"], "kind": "weight"}
            self.weight_cache[key] = self._fq(t, lo, hi, attrs, "w").output
        return self.weight_cache[key]

    def activation(self, t: Tensor, producer: Node | None, bits: int | None = None) -> Node:
        """The activation FAKE_QUANT of ``t``; ``bits=16``: a 16x8 one (:data:`INT16_FQ`)."""
        fixed16 = bits == 16 and producer is not None and producer.op in INT16_FIXED_OUTPUT
        fixed = INT16_FIXED_OUTPUT[producer.op] if fixed16 else self._fixed_params(producer)
        wide = bits == 16 and (fixed is None or fixed16)
        bits = 16 if wide else int(self.act["bits"])
        sym = (wide and not fixed16) or bool(self.act["symmetric"])
        if fixed is not None:
            lo, hi = range_for(fixed[0], fixed[1], bits)
            quantizer = self.cal["fixed"]
        else:
            lo, hi = (float(v) for v in self.act.get("initial_range", [-6.0, 6.0]))
            if sym:
                m = max(abs(lo), abs(hi))
                lo, hi = -m, m
            quantizer = self.cal["input" if t.producer is None else "activation"]
        attrs = {"bits": bits, "narrow_range": bool(self.act.get("narrow_range", False)),
                 "axis": None, "symmetric": sym and fixed is None, "quantizer": quantizer,
                 "kind": "activation"}
        if wide and not fixed16:
            attrs.update(INT16_FQ)
        node = self._fq(t, lo, hi, attrs, "" if bits == int(self.act["bits"]) else f"{bits}")
        self.bits[id(node.output)] = bits
        return node

    def at_bits(self, q: Tensor, bits: int) -> Tensor:
        """``q`` (a quantized activation) as a node of ``bits``-bit activations reads it:
        itself, or a FAKE_QUANT of ``q`` at those bits on the edge between an int8 and an
        int16 region (a requantizing QUANTIZE once lowered), one per (value, bits)."""
        if self.bits.get(id(q), int(self.act["bits"])) == bits:
            return q
        key = (id(q), bits)
        if key not in self.edges:
            self.edges[key] = self.activation(q, None, bits).output
        return self.edges[key]

    def symmetric_inputs(self, inherit: frozenset[str]) -> None:
        """Put each activation read at a ``constraints.symmetric_inputs`` slot on a symmetric
        narrow-range grid (zero point 0): the FAKE_QUANT it inherits from (through
        ``inherit`` ops such as RESHAPE/TRANSPOSE) becomes symmetric when this pass made it
        and its range is its own; otherwise a symmetric FAKE_QUANT goes on that edge (a
        requantize at export)."""
        slots = self.table.symmetric_inputs()
        mine = {id(n) for n in self.created}
        tied = self.table.constraint_ops("same_scale")
        for node in list(self.graph.nodes):
            for i in slots.get(node.op, ()):
                if i >= len(node.inputs) or not _is_float(node.inputs[i]) \
                        or node.inputs[i].is_const:
                    continue
                root = _inherited_fq(node.inputs[i], inherit)
                if root is not None and root.attrs.get("symmetric") and root.attrs["narrow_range"]:
                    continue
                if root is not None and id(root) in mine and _own_range(root, tied) \
                        and root.attrs["quantizer"] in (self.cal["activation"], self.cal["input"]):
                    _make_symmetric(root)
                    continue
                fq = self.activation(node.inputs[i], None)
                _make_symmetric(fq)
                node.set_input(i, fq.output)

    def _fixed_params(self, producer: Node | None) -> tuple[float, int] | None:
        if producer is None:
            return None
        if producer.op in self.fixed:
            return self.fixed[producer.op]
        act = producer.attrs.get("fused_activation")
        if act and act != "NONE" and act in self.fixed:
            return self.fixed[act]
        return None


def _inherited_fq(t: Tensor, inherit: frozenset[str]) -> Node | None:
    """The activation FAKE_QUANT whose parameters ``t`` carries (through ``inherit`` ops)."""
    while t.producer is not None and t.producer.op in inherit:
        t = t.producer.inputs[0]
    p = t.producer
    return p if p is not None and p.op == "FAKE_QUANT" and p.attrs.get("kind") == "activation" \
        else None


def _own_range(fq: Node, tied: frozenset[str]) -> bool:
    """The FAKE_QUANT's range is its own: its min/max are read by it alone, and neither its
    producer nor a reader is an op whose ranges ``propagate_quant_constraints`` ties."""
    x = fq.inputs[0]
    if x.producer is not None and x.producer.op in tied:
        return False
    if any(n.op in tied for n, _ in fq.outputs[0].uses):
        return False
    return all(len(t.uses) == 1 for t in fq.inputs[1:3])


def _make_symmetric(fq: Node) -> None:
    """[-m, m] on a narrow-range grid (zero point 0); calibration and fit keep it symmetric."""
    lo, hi = fq.inputs[1].data, fq.inputs[2].data
    m = np.maximum(np.abs(lo), np.abs(hi)).astype(np.float32)
    fq.inputs[1].data = (-m).astype(np.float32)
    fq.inputs[2].data = m
    fq.attrs["symmetric"] = True
    fq.attrs["narrow_range"] = True


def set_quant(nodes: list[Node]) -> None:
    """``tensor.quant`` of each FAKE_QUANT output, as :func:`qatir.quant.refresh_quant` sets it.

    Per-tensor ranges repeat (placeholders, tied groups), so their parameters are
    computed once per distinct (min, max, bits, narrow_range).
    """
    cache: dict[tuple[float, float, int, bool], QuantParams] = {}
    for n in nodes:
        lo, hi = n.inputs[1].data, n.inputs[2].data
        if n.attrs.get("axis") is not None or lo.size != 1 or hi.size != 1:
            n.outputs[0].quant = params_for(n)
            continue
        key = (float(lo), float(hi), int(n.attrs["bits"]), bool(n.attrs["narrow_range"]))
        if key not in cache:
            cache[key] = params_for(n)
        n.outputs[0].quant = cache[key]


def check_finite(node: Node, t: Tensor) -> None:
    """A float constant a quantized node reads must be finite: NaN/Inf has no int8 (or int32) value."""
    bad = ~np.isfinite(t.data)
    if np.any(bad):
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise NumericsError(f"node {node.name!r}: constant %{t.name} holds {int(bad.sum())} NaN/Inf "
                            f"value(s) (first at index {list(first)}: {t.data[first]})")


def check_table_dtypes(table: Table, node: Node) -> None:
    """Refuse a table entry that asks for fake-quant on an integer tensor (indices, shapes).

    An integer tensor that already carries quantization parameters (an imported int8
    model) is not a table mistake and is left alone.
    """
    weight_ops = table.weights["ops"]
    # A built-in weight op (CONV_2D, ...) with an integer weight is the model's problem, not
    # the table's: it is left for the writer to refuse, naming the node.
    if node.op in weight_ops and node.op not in BN_FOLD_AXES and len(node.inputs) > 1:
        w = node.inputs[1]
        if w is not None and w.dtype.kind in "iub" and w.quant is None:
            raise TableError(f"{table.source}: weights.ops: {node.op!r} is listed, but input 1 of "
                             f"node {node.name!r} (%{w.name}) is {w.dtype}; fake-quant needs "
                             "a float tensor")
    if node.op in table.fixed_output:
        for out in node.outputs:
            if out.dtype.kind in "iub" and out.quant is None:
                raise TableError(f"{table.source}: constraints.fixed_output.{node.op}: output "
                                 f"%{out.name} of node {node.name!r} is {out.dtype}; a fixed "
                                 "output range needs a float tensor")


def _fq_after(t: Tensor) -> Node | None:
    uses = t.uses
    if len(uses) == 1 and uses[0][0].op == "FAKE_QUANT" and uses[0][1] == 0:
        return uses[0][0]
    return None


def _needs_quant(node: Node) -> bool:
    return node.op not in SKIP_OPS and any(_is_float(t) for t in node.outputs)


def _input_bits(table: Table, t: Tensor) -> int | None:
    """16 for a graph input an ``[[int16]]`` entry's ``inputs`` selects, else the table's."""
    return 16 if table.wants_int16_input(t.name) else None


def _has_int8_kernel(node: Node) -> bool:
    """LiteRT has an int8 kernel for the op (IR-only ops are lowered before export)."""
    if not has_op(node.op):
        return True  # an op of the user's: left for the writer to name
    op = get_op(node.op)
    return op.int8 or op.ir_only


@register_pass("insert_fake_quant")
def insert_fake_quant(graph: Graph, ctx: PassContext) -> bool:
    """Insert FAKE_QUANT on activations, weights and constants as the table's policy says."""
    table: Table = ctx.table
    ins = _Inserter(graph, table)
    inherit = table.constraint_ops("inherit")
    weight_ops = frozenset(table.weights["ops"])
    quantized: dict[int, Tensor] = {}
    float_nodes: list[str] = []
    for node in list(graph.nodes):
        if node.op == "FAKE_QUANT":
            quantized[id(node.output)] = node.output
            ins.bits[id(node.output)] = int(node.attrs["bits"])
            continue
        if not _needs_quant(node):
            if node.op not in SKIP_OPS and table.is_quantized(node):
                check_table_dtypes(table, node)
            continue
        if not table.is_quantized(node) or not _has_int8_kernel(node):
            float_nodes.append(node.name)
            continue
        check_table_dtypes(table, node)
        bits = 16 if table.wants_int16(node) and has_int16(node.op) else int(ins.act["bits"])
        for i, t in enumerate(node.inputs):
            if not _is_float(t):
                continue
            if t.is_const:
                check_finite(node, t)
                if node.op in weight_ops and i == 2:
                    continue  # bias: stays float, int32 at export
                axis = table.weight_axis(node.op) if node.op in weight_ops and i == 1 else None
                if bits == 16 and node.op == "FULLY_CONNECTED":
                    axis = None  # 16x8 FC: per-tensor weights, the form measured (test_int16)
                node.set_input(i, ins.weight(t, axis))
                continue
            q = quantized.get(id(t))
            if q is None:
                # a graph input is 8-bit unless an [[int16]] entry's ``inputs`` names it
                # (the file's interface); a float producer's output is quantized at the
                # width of its first quantized reader
                q = ins.activation(t, None, _input_bits(table, t) if t.producer is None
                                   else bits).output
                quantized[id(t)] = q
                quantized[id(q)] = q
            q = ins.at_bits(q, bits)
            if q is not t:
                node.set_input(i, q)
        first = node.inputs[0] if node.inputs else None
        for out in node.outputs:
            if not _is_float(out):
                continue
            if node.op in inherit and first is not None and id(first) in quantized:
                quantized[id(out)] = out
                ins.bits[id(out)] = ins.bits.get(id(first), bits)
                continue
            already = _fq_after(out)
            if already is not None:  # quantized before (e.g. a second run of the pipeline)
                quantized[id(out)] = already.output
                continue
            fq = ins.activation(out, node, bits)
            replace_tensor(graph, out, fq.output)
            quantized[id(out)] = fq.output
            quantized[id(fq.output)] = fq.output
    ins.symmetric_inputs(inherit)
    if ins.created:
        graph.toposort()
        set_quant(ins.created)
    graph.metadata["calibrated"] = False
    graph.metadata["float_nodes"] = float_nodes
    graph.metadata["quant_table"] = table.name
    graph.metadata["bias_correction"] = table.bias_correction
    graph.metadata["weight_rounding"] = table.weight_rounding
    ctx.notes["float_nodes"] = float_nodes
    ctx.notes["fake_quant_inserted"] = len(ins.created)
    return bool(ins.created)

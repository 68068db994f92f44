"""The converter's other two modes: dynamic range (int8 weights) and float16 weights.

``to_tflite(graph, mode=...)`` writes one of:

- ``"int8"``: the full-integer file (a quantized graph; a float graph stays float32);
- ``"float"``: float32 throughout (every FAKE_QUANT of a quantized graph dropped);
- ``"dynamic"``: float activations; CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED and
  BATCH_MATMUL with a constant right-hand side get int8 symmetric weights (per output
  channel, zero point 0) and run as LiteRT's hybrid kernels, which quantize their
  float input on the fly (``asymmetric_quantize_inputs`` where the op has the option);
  every other op stays float;
- ``"float16"``: every float32 constant stored as float16 behind a DEQUANTIZE, as TF's
  converter writes a float16-quantized file; all arithmetic is float32.

Both new modes take any float graph qatir imports, or a quantized one: the activation
FAKE_QUANTs are dropped, and in dynamic mode a weight behind a FAKE_QUANT keeps the
integer values and scales that fake-quant trained (the int8 file's weights, exactly).
:func:`lower_mode` builds the IR the writer emits; the integer reference
(:func:`qatir.reference.run_lowered`) runs it, with the hybrid kernels of
:mod:`qatir.reference_hybrid`.
"""

from __future__ import annotations

import numpy as np

from qatir.errors import ExportError
from qatir.ir import Graph, Node, QuantParams, Tensor
from qatir.numerics import round_half_away
from qatir.ops.infer import conv_groups
from qatir.target import HYBRID_WEIGHT_AXIS

MODES = ("int8", "float", "dynamic", "float16")
#: int8 weights are symmetric in [-127, 127] (the quantization spec's weight range).
WEIGHT_MAX = 127


def check_mode(mode: str) -> None:
    """Refuse an unknown mode, naming the known ones."""
    if mode not in MODES:
        raise ExportError(f"mode must be one of {MODES}, got {mode!r}")


def lower_mode(graph: Graph, mode: str, **dump) -> Graph:
    """A lowered float copy of ``graph`` with its weights as ``mode`` stores them.

    ``mode``: "float", "dynamic" or "float16" (see the module docstring). A float graph
    first runs the float pipeline (batch norm folded, activations fused), as a quantized
    one already has. ``dump``: ``print_ir_after`` / ``ir_out`` as for
    :func:`qatir.lowering.lower`; the weights' step is named ``lower.mode``.
    """
    from qatir.lowering import is_quantized, lower
    from qatir.pipeline import float_pipeline

    check_mode(mode)
    if mode == "int8":
        raise ExportError("lower_mode builds the float modes; int8 goes through lower()")
    if not is_quantized(graph):
        graph = float_pipeline(graph)
    g, trained = _strip_activation_quant(graph)
    g = lower(g, **dump)
    if mode == "dynamic":
        for node in list(g.nodes):
            _quantize_weight(g, node, trained.get(node.name))
    elif mode == "float16":
        _float16_constants(g)
    g.metadata["mode"] = mode
    g.verify()
    _dump_mode_step(g, mode, dump.get("print_ir_after"), dump.get("ir_out"))
    return g


def _dump_mode_step(g: Graph, mode: str, selection, out) -> None:
    """``print_ir_after`` "all", "mode" or "lower.mode": the IR with ``mode``'s weights."""
    from qatir.pipeline import write_dump

    names = {selection} if isinstance(selection, str) else set(selection or ())
    if names & {"all", "mode", "lower.mode"}:
        write_dump(f"// IR after lowering step lower.mode ({mode})\n{g}\n", out,
                   "lower_mode.txt")


def _strip_activation_quant(graph: Graph) -> tuple[Graph, dict[str, tuple[np.ndarray, QuantParams]]]:
    """A float copy without FAKE_QUANT nodes, and the trained int8 weight (values, params)
    of each weight op whose weight went through a constant FAKE_QUANT, by node name."""
    from qatir.lowering.constants import fq_int_values

    g = graph.clone()
    trained: dict[str, tuple[np.ndarray, QuantParams]] = {}
    for node in [n for n in g.nodes if n.op == "FAKE_QUANT"]:
        src, out = node.inputs[0], node.outputs[0]
        if src.is_const:
            for user, idx in out.uses:
                if user.op in HYBRID_WEIGHT_AXIS and idx == 1:
                    trained[user.name] = fq_int_values(node, src.data)
        g.replace_all_uses_with(out, src)
    g.eliminate_dead_code()
    return g, trained


def hybrid_axis(node: Node) -> int | None:
    """The weight axis of ``node``'s per-channel scales in dynamic mode; None when the node
    stays float (not a hybrid op, a non-constant weight, or a BATCH_MATMUL LiteRT's hybrid
    kernel does not take: adj_x, or a right-hand side of rank below 2)."""
    if node.op not in HYBRID_WEIGHT_AXIS or len(node.inputs) < 2:
        return None
    w = node.inputs[1]
    if w is None or not w.is_const or w.dtype != np.float32:
        return None
    if node.op == "CONV_2D" and conv_groups(node) > 1:
        return None  # grouped (v6): LiteRT runs it hybrid, qatir's hybrid reference does not yet
    if node.op == "BATCH_MATMUL":
        if node.attrs.get("adj_x") or w.rank < 2:
            return None
        return w.rank - 2 if node.attrs.get("adj_y") else w.rank - 1
    return HYBRID_WEIGHT_AXIS[node.op]


def symmetric_weights(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric int8 weights: (q, scales) with scale = max|w| / 127 along
    ``axis`` (float32; an all-zero channel gets scale 1) and q = round_half_away(w / s)."""
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.max(np.abs(w), axis=red).astype(np.float32)
    scale = np.where(amax > 0, amax / np.float32(WEIGHT_MAX), np.float32(1)).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = round_half_away(w.astype(np.float32) / scale.reshape(shape))
    return np.clip(q, -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8), scale


def _quantize_weight(g: Graph, node: Node, trained: tuple[np.ndarray, QuantParams] | None
                     ) -> None:
    axis = hybrid_axis(node)
    if axis is None:
        return
    w = node.inputs[1]
    if trained is not None:
        q, p = _trained_weight(node, w, axis, *trained)
    else:
        q, scale = symmetric_weights(w.data, axis)
        p = QuantParams(tuple(scale.tolist()), (0,) * len(scale), axis, 8, True, "int8")
    new = g.const(q, name=f"{w.name}_int8", quant=p)
    node.set_input(1, new)


def _trained_weight(node: Node, w: Tensor, axis: int, q: np.ndarray, p: QuantParams
                    ) -> tuple[np.ndarray, QuantParams]:
    """The fake-quant trained weight as a hybrid kernel reads it (per-tensor scales spread
    over the channels where the kernel needs one per channel: DEPTHWISE_CONV_2D)."""
    if any(z != 0 for z in p.zero_point):
        raise ExportError(f"node {node.name!r}: weight %{w.name} was trained asymmetric (zero "
                          f"points {sorted(set(p.zero_point))}); LiteRT's hybrid kernels need "
                          "symmetric int8 weights")
    if p.bits > 8:
        raise ExportError(f"node {node.name!r}: weight %{w.name} has {p.bits} bits; hybrid "
                          "kernels take int8 weights")
    if p.axis is not None and p.axis != axis:
        raise ExportError(f"node {node.name!r}: weight %{w.name} is quantized on axis {p.axis}; "
                          f"the hybrid {node.op} kernel reads axis {axis}")
    if p.axis is None and node.op == "DEPTHWISE_CONV_2D":
        n = w.shape[axis]
        p = QuantParams(p.scale * n, (0,) * n, axis, p.bits, True, "int8")
    return np.asarray(q).astype(np.int8), QuantParams(p.scale, p.zero_point, p.axis, p.bits,
                                                      True, "int8")


def _float16_constants(g: Graph) -> None:
    """Every float32 constant a node reads becomes a float16 constant behind one shared
    DEQUANTIZE (float16 -> float32)."""
    made: dict[int, Tensor] = {}
    for node in list(g.nodes):
        for i, t in enumerate(node.inputs):
            if t is None or not t.is_const or t.dtype != np.float32:
                continue
            if id(t) not in made:
                half = g.const(t.data.astype(np.float16), name=f"{t.name}_fp16")
                deq = g.add_node("DEQUANTIZE", [half], {"dtype": "float32"},
                                 name=f"{t.name}_dequantize",
                                 outputs=[g.unique_name(f"{t.name}_fp32")])
                made[id(t)] = deq.outputs[0]
            node.set_input(i, made[id(t)])
    g.toposort()
    g.prune_tensors()


def run_mode_reference(graph: Graph, feeds: dict[str, np.ndarray], mode: str,
                       kernels: str = "reference") -> dict[str, np.ndarray]:
    """The reference run of ``graph`` written in ``mode`` ("float", "dynamic", "float16")
    on float ``feeds``: ``{output name: float32 array}``. ``kernels``: "reference"
    (LiteRT's BUILTIN_REF) or "xnnpack" (the default resolver)."""
    from qatir.reference import run_lowered

    return run_lowered(lower_mode(graph, mode), feeds, kernels)


def file_mode(buf: bytes) -> str:
    """Which mode a .tflite file was written in, read from its tensors: "int8" (an int8
    tensor that is not a constant), "dynamic" (float activations, int8 constants),
    "float16" (float16 constants) or "float"."""
    import tflite

    model = tflite.Model.GetRootAsModel(buf, 0)
    sub = model.Subgraphs(0)
    int8_act = int8_const = half = False
    for i in range(sub.TensorsLength()):
        t = sub.Tensors(i)
        data = model.Buffers(t.Buffer()).DataLength() if t.Buffer() > 0 else 0
        const = data > 0 or (t.Buffer() > 0 and model.Buffers(t.Buffer()).Size() > 1)
        if t.Type() == tflite.TensorType.INT8:
            int8_const |= const
            int8_act |= not const
        half |= t.Type() == tflite.TensorType.FLOAT16 and const
    if int8_act:
        return "int8"
    if int8_const:
        return "dynamic"
    return "float16" if half else "float"

"""Lowering: a quantized (FAKE_QUANT) graph becomes the LOWERED int8 graph.

The lowered form is what the TFLite writer emits and the integer reference
runs; the TFLite frontend imports an already-int8 ``.tflite`` into the same
form. Its contract:

- No FAKE_QUANT (and no other IR-only op: BATCH_NORM is refused, CLIP with
  0/6, 0/inf or -1/1 bounds becomes RELU6 / RELU / RELU_N1_TO_1).
- Every activation tensor inside the int8 region has ``dtype == int8`` and a
  per-tensor ``tensor.quant`` (QuantParams, dtype "int8", bits 8, zero point in
  [-128, 127]); real = (q - zp) * scale.
- Weights are int8 constants, symmetric (every zero point 0, values in
  [-127, 127], ``narrow_range=True``): CONV_2D and TRANSPOSE_CONV per-channel
  on axis 0 (OHWI), DEPTHWISE_CONV_2D per-channel on axis 3 (1HWO),
  FULLY_CONNECTED per-tensor. Weights quantized to fewer bits (e.g. 4) are
  stored as int8 with their own scale and ``bits`` kept in the params.
- Biases are int32 constants, zero point 0, scale = float32(in_scale *
  w_scale[i]) (per-channel on axis 0 when the weight is per-channel). Every
  CONV_2D / DEPTHWISE_CONV_2D / TRANSPOSE_CONV / FULLY_CONNECTED has a bias
  (zeros are inserted when the float graph had none). TRANSPOSE_CONV keeps the
  IR input order (x, w, b); the writer reorders for TFLite.
- Other constant operands (an ADD/MUL/PRELU/... operand) are int8 constants
  with per-tensor (possibly asymmetric) quant.
- Output params are fixed where TFLite fixes them: LOGISTIC and SOFTMAX
  (1/256, -128), TANH (1/128, 0). A FAKE_QUANT after such an op whose range
  nearly matches (scale within 1 %, zero point within 1) is dropped; a really
  different one becomes a requantizing QUANTIZE. Ops whose TFLite kernel needs input and
  output on the same grid (pooling, reshape-like ops, pad, resize,
  concatenation, ...) have equal params in and out; where the FAKE_QUANT
  ranges disagree an explicit requantizing ``QUANTIZE`` (int8 -> int8) is
  inserted (for concatenation: on each input whose params really differ).
- Edges: with ``io="int8"`` graph inputs and outputs are the int8 tensors
  themselves. With ``io="float"`` each input is a float32 tensor feeding a
  ``QUANTIZE`` (float -> int8) and each output is the float32 result of a
  ``DEQUANTIZE``. With ``io="uint8"`` the edges are uint8 tensors (zero point
  + 128) converted by ``QUANTIZE`` nodes (uint8 <-> int8 requantize).
  Edge tensors keep the graph's original input/output names.
- A float graph (no FAKE_QUANT and no int8 tensor) stays float (conv-like ops
  get an explicit zero bias: LiteRT's float DEPTHWISE_CONV_2D crashes without).

- A fused RELU6 / RELU_N1_TO_1 bound that lies outside the output's int8
  range is dropped (it clamps nothing; LiteRT refuses it when it overflows).
- All-zero weight channels get zero point 0 and a scale that keeps their bias
  inside int32 (with a warning naming the weight).

Anything TFLite cannot run is refused with :class:`ExportError` naming the
node or tensor (activation bits != 8, weights wider than 8 bits, a float
activation inside the int8 region, an op without an int8 kernel in
:data:`INT8_OPS`, per-channel weights on the wrong axis); NaN/Inf constants
raise :class:`NumericsError`.
"""

from __future__ import annotations

import warnings

import numpy as np

from qatir.errors import ExportError, NumericsError
from qatir.ir import Graph, Node, QuantParams, Tensor
from qatir.quant import nudged_params, params_for

IO_MODES = ("int8", "float", "uint8")
WEIGHT_OPS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "TRANSPOSE_CONV": 0, "FULLY_CONNECTED": None}
FIXED_OUTPUT = {
    "LOGISTIC": (1.0 / 256.0, -128),
    "SOFTMAX": (1.0 / 256.0, -128),
    "TANH": (1.0 / 128.0, 0),
}
# TFLite int8 kernels for these ops need the output on the input's grid.
SAME_SCALE = {
    "AVERAGE_POOL_2D", "MAX_POOL_2D", "RESHAPE", "SQUEEZE", "TRANSPOSE", "TILE", "PAD",
    "STRIDED_SLICE", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH", "RESIZE_NEAREST_NEIGHBOR",
    "RESIZE_BILINEAR", "GATHER", "MAXIMUM", "MINIMUM", "CONCATENATION", "REDUCE_MAX",
}
# Ops with an int8 TFLite kernel that the writer and the integer reference both support.
# (int8 SUM under BUILTIN_REF reads its input as uint8 in LiteRT; the reference reproduces
# that, and the default XNNPACK path is correct.)
INT8_OPS = {
    "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "ADD", "SUB", "MUL",
    "AVERAGE_POOL_2D", "MAX_POOL_2D", "MEAN", "SUM", "REDUCE_MAX", "RESHAPE", "SQUEEZE",
    "TRANSPOSE", "TILE", "CONCATENATION", "PAD", "STRIDED_SLICE", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH",
    "RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR", "GATHER", "MAXIMUM", "MINIMUM", "SOFTMAX",
    "LOGISTIC", "TANH", "HARD_SWISH", "RELU", "RELU6", "RELU_N1_TO_1", "LEAKY_RELU", "PRELU",
    "QUANTIZE", "DEQUANTIZE",
}
# Ops whose output may simply inherit the input params when no FAKE_QUANT follows.
INHERIT = SAME_SCALE | {"RELU", "IDENTITY"}
CLOSE_RTOL = 0.01
MIN_SCALE = 1e-30
INT32_MAX = 2**31 - 1


def is_quantized(graph: Graph) -> bool:
    """True when the graph has FAKE_QUANT nodes (not yet lowered)."""
    return any(n.op == "FAKE_QUANT" for n in graph.nodes)


def is_lowered(graph: Graph) -> bool:
    """True for an int8 graph in the lowered form (no FAKE_QUANT, int8 tensors with quant)."""
    if is_quantized(graph):
        return False
    return any(t.quant is not None and t.dtype == np.int8 and not t.is_const
               for t in graph.tensors.values())


def lower(graph: Graph, io: str = "int8") -> Graph:
    """Return a lowered copy of ``graph`` (see the module docstring); the input is untouched."""
    if io not in IO_MODES:
        raise ExportError(f"io must be one of {IO_MODES}, got {io!r}")
    g = graph.clone()
    _check_finite(g)
    _legalize_ir_only(g)
    if is_quantized(g):
        _lower_fake_quant(g)
    elif not is_lowered(g):
        _add_float_bias(g)
        return g  # a float graph stays float
    apply_io(g, io)
    g.eliminate_dead_code()
    _check_lowered(g)
    _check_litert_limits(g)
    g.verify()
    return g


# --------------------------------------------------------------------- checks
def _check_finite(g: Graph) -> None:
    for t in g.tensors.values():
        if t.is_const and t.data.dtype.kind == "f" and not np.all(np.isfinite(t.data)):
            raise NumericsError(f"constant %{t.name} holds NaN or Inf")


_CLIP_AS = {(0.0, 6.0): "RELU6", (0.0, None): "RELU", (-1.0, 1.0): "RELU_N1_TO_1"}


def _legalize_ir_only(g: Graph) -> None:
    """Rewrite the IR-only ops TFLite has a builtin for; refuse the rest."""
    for node in list(g.nodes):
        if node.op == "CLIP":
            lo, hi = node.attrs.get("min"), node.attrs.get("max")
            key = (None if lo is None else float(lo), None if hi is None else float(hi))
            if key not in _CLIP_AS:
                raise ExportError(f"node {node.name!r}: CLIP({lo}, {hi}) has no TFLite builtin "
                                  "(only 0..6, 0..inf, -1..1)")
            node.op = _CLIP_AS[key]
            node.attrs = {}
        elif node.op in ("BATCH_NORM", "HARD_SIGMOID"):
            raise ExportError(f"node {node.name!r}: {node.op} must be folded/lowered by the "
                              "passes before export")


def _add_float_bias(g: Graph) -> None:
    """Conv-like ops get an explicit zero bias (LiteRT's float kernels expect one)."""
    for node in list(g.nodes):
        if node.op in WEIGHT_OPS and (len(node.inputs) < 3 or node.inputs[2] is None):
            w = node.inputs[1]
            n = w.shape[WEIGHT_OPS[node.op] or 0]
            bias = g.const(np.zeros(n, w.dtype), name=f"{node.name}_bias")
            if len(node.inputs) < 3:
                node.add_input(bias)
            else:
                node.set_input(2, bias)


# ---------------------------------------------------------------- the lowering
def _close(a: QuantParams, b: QuantParams, rtol: float = 0.0) -> bool:
    """Equal params, or within ``rtol`` in scale and one step in zero point when rtol > 0."""
    if len(a.scale) != len(b.scale):
        return False
    zdiff = max(abs(x - y) for x, y in zip(a.zero_point, b.zero_point))
    if zdiff > (1 if rtol > 0 else 0):
        return False
    sa, sb = np.asarray(a.scale), np.asarray(b.scale)
    return bool(np.all(np.abs(sa - sb) <= rtol * np.maximum(np.abs(sa), np.abs(sb))))


def act_params(scale: float, zp: int) -> QuantParams:
    """Per-tensor int8 activation parameters."""
    return QuantParams((float(np.float32(scale)),), (int(zp),), None, 8, False, "int8")


def _rename(g: Graph, t: Tensor, name: str) -> None:
    if t.name == name:
        return
    if name in g.tensors:
        raise ExportError(f"cannot rename %{t.name} to %{name}: name in use")
    del g.tensors[t.name]
    t.name = name
    g.tensors[name] = t


def _fq_consumers(t: Tensor) -> list[Node]:
    return [u for u in t.users if u.op == "FAKE_QUANT" and u.inputs[0] is t]


def _lower_fake_quant(g: Graph) -> None:
    g.toposort()
    # Weights and other constants first: they are independent of the walk order.
    for node in list(g.nodes):
        if node.op == "FAKE_QUANT" and node.inputs[0].is_const:
            _lower_const_fq(g, node)
    for node in list(g.nodes):
        if node.graph is not g:
            continue
        if node.op == "FAKE_QUANT":
            _lower_act_fq(g, node)
        else:
            _assign_output_params(node)
    for node in list(g.nodes):
        if node.op in WEIGHT_OPS:
            _lower_weight_op(g, node)
    for node in list(g.nodes):
        if node.op in SAME_SCALE:
            _unify_same_scale(g, node)
    g.toposort()
    _check_int8_region(g)
    _relax_saturated_clamps(g)
    _warn_xnnpack_ratios(g)


# (op, lowest, highest) scale ratio XNNPACK's int8 kernels accept (params-init asserts)
#: XNNPACK's limit on a conv/FC requantization scale (measured: 255 loads, 256 fails)
XNN_MAX_REQUANT = 256.0
#: LiteRT's builtin int8 ADD needs 2·max(input scale) / (2^20 · output scale) < 1
#: (measured: a ratio of 2^19 aborts the process, just below it runs)
ADD_MAX_RATIO = 2.0**19
_XNN_RATIO = {"ADD": (2.0**-10, 2.0**8), "SUB": (2.0**-10, 2.0**8), "MUL": (2.0**-16, 2.0**8),
              "LEAKY_RELU": (2.0**-8, 2.0**7)}


def _warn_xnnpack_ratios(g: Graph) -> None:
    """Warn (naming the nodes) where the ranges put an op outside XNNPACK's scale limits:
    XNNPACK then leaves it to LiteRT's builtin kernel, which for ADD/SUB with extreme
    ratios was measured to overflow."""
    bad = []
    for node in g.nodes:
        if node.op not in _XNN_RATIO or node.outputs[0].quant is None:
            continue
        so = node.outputs[0].quant.scale[0]
        ins = [t.quant.scale[0] for t in node.inputs if t is not None and t.quant is not None]
        ratios = [ins[0] * ins[1] / so] if node.op == "MUL" and len(ins) == 2 else \
            [s / so for s in ins]
        lo, hi = _XNN_RATIO[node.op]
        if any(not lo <= r < hi for r in ratios):
            bad.append(f"{node.name!r} ({node.op}, ratio {max(ratios, key=lambda r: abs(np.log2(r))):.3g})")
    if bad:
        warnings.warn("scale ratios outside XNNPACK's limits, these nodes will run on LiteRT's "
                      f"builtin kernels: {', '.join(bad)}", stacklevel=3)


def _check_lowered(g: Graph) -> None:
    """The quantization spec's rules on a lowered graph (its own lowering keeps them; an
    imported int8 model may not): quantized int8 activations, int32 biases of int8
    conv/FC nodes, one grid through same-scale ops, the fixed outputs."""
    for node in g.nodes:
        ins = [t for t in node.inputs if t is not None]
        for t in [*ins, *node.outputs]:
            if t.dtype == np.int8 and t.quant is None:
                raise ExportError(f"node {node.name!r} ({node.op}): int8 tensor %{t.name} has no "
                                  "quantization parameters")
        out = node.outputs[0]
        if node.op == "QUANTIZE" and (out.dtype.kind not in "iu" or out.quant is None):
            raise ExportError(f"node {node.name!r} (QUANTIZE): output %{out.name} must be a "
                              f"quantized integer tensor, not {out.dtype}")
        if not any(t.dtype == np.int8 for t in ins):
            continue
        if node.op in WEIGHT_OPS and node.inputs[0].dtype == np.int8:
            w = node.inputs[1]
            if w is None or w.dtype != np.int8 or not w.is_const:
                raise ExportError(f"node {node.name!r} ({node.op}): the weights of an int8 node "
                                  f"must be a quantized int8 constant, not "
                                  f"{'none' if w is None else w.dtype}")
            b = node.inputs[2] if len(node.inputs) > 2 else None
            if b is not None and (b.dtype != np.int32 or b.quant is None):
                raise ExportError(f"node {node.name!r} ({node.op}): the bias %{b.name} of an int8 "
                                  f"node must be quantized int32, not {b.dtype}")
        elif node.op in SAME_SCALE and node.op not in ("CONCATENATION", "MAXIMUM", "MINIMUM") \
                and out.dtype == np.int8 and not _close(node.inputs[0].quant, out.quant):
            raise ExportError(f"node {node.name!r} ({node.op}): input {node.inputs[0].quant} and "
                              f"output {out.quant} quantization differ; the TFLite spec requires "
                              "them equal (XNNPACK refuses the model otherwise)")
        elif node.op in FIXED_OUTPUT and out.dtype == np.int8:
            scale, zp = FIXED_OUTPUT[node.op]
            if out.quant.zero_point != (zp,) or \
                    not np.isclose(out.quant.scale[0], scale, rtol=1e-6, atol=0):
                raise ExportError(f"node {node.name!r} ({node.op}): output quantization "
                                  f"{out.quant}; the TFLite spec fixes it at scale {scale:g}, "
                                  f"zero point {zp}")


def _check_litert_limits(g: Graph) -> None:
    """Refuse scale ratios LiteRT cannot load: a conv/FC requantization scale XNNPACK
    rejects (it then fails the whole model at load, not just the node), and an ADD whose
    input/output scale ratio makes LiteRT's builtin ADD kernel abort the process."""
    for node in g.nodes:
        if node.op in WEIGHT_OPS and len(node.inputs) >= 2:
            x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
            if x.quant is None or w.quant is None or y.quant is None or x.dtype != np.int8:
                continue
            ratio = (np.float32(x.quant.scale[0]) * np.asarray(w.quant.scale, np.float32)
                     / np.float32(y.quant.scale[0]))
            if np.any(ratio >= XNN_MAX_REQUANT):
                c = int(np.argmax(ratio))
                raise ExportError(
                    f"node {node.name!r} ({node.op}): input scale x weight scale / output scale "
                    f"= {float(ratio[c]):.4g} (channel {c}) is not below {XNN_MAX_REQUANT:g}; "
                    "XNNPACK, LiteRT's default CPU path, refuses such a node and with it the "
                    "whole model. The output range is too narrow for these weights: calibrate "
                    "it or widen it")
        elif node.op == "ADD" and node.outputs[0].quant is not None \
                and node.outputs[0].dtype == np.int8:
            ins = [t.quant.scale[0] for t in node.inputs if t is not None and t.quant is not None]
            ratio = max(ins, default=0.0) / node.outputs[0].quant.scale[0]
            if ratio >= ADD_MAX_RATIO:
                raise ExportError(
                    f"node {node.name!r} (ADD): input scale / output scale = {ratio:.4g} is not "
                    f"below {ADD_MAX_RATIO:g}; LiteRT's int8 ADD kernel aborts the process on "
                    "it. The output range is far too narrow for the inputs: calibrate or widen it")


def _relax_saturated_clamps(g: Graph) -> None:
    """A RELU6 / RELU_N1_TO_1 bound outside the output's int8 range clamps nothing; drop it.

    Exact (the kernel would clamp at 127/-128 anyway), and needed: LiteRT refuses
    to prepare a node whose bound overflows int32 on a tiny output scale.
    """
    for node in g.nodes:
        act = node.attrs.get("fused_activation")
        if act not in ("RELU6", "RELU_N1_TO_1") and node.op not in ("RELU6",):
            continue
        out = node.outputs[0]
        if out.quant is None or out.dtype != np.int8:
            continue
        s, z = np.float32(out.quant.scale[0]), out.quant.zero_point[0]
        hi = 6.0 if (act == "RELU6" or node.op == "RELU6") else 1.0
        if z + float(np.float32(hi) / s) < 127.5:
            continue
        if node.op == "RELU6":
            node.op = "RELU"
        elif act == "RELU6":
            node.attrs["fused_activation"] = "RELU"
        elif z + float(np.float32(-1.0) / s) <= -128.5:
            node.attrs["fused_activation"] = "NONE"


def _fq_int_values(node: Node, data: np.ndarray) -> tuple[np.ndarray, QuantParams]:
    """Integer values (int8 domain) exactly as TF's fake-quant rounds ``data``."""
    p = params_for(node)
    lo, hi = node.inputs[1].data, node.inputs[2].data
    bits, narrow = int(node.attrs["bits"]), bool(node.attrs["narrow_range"])
    scale, _, nmin, nmax = nudged_params(lo, hi, bits, narrow)
    axis = p.axis
    x = data.astype(np.float32)
    if axis is not None:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, nmin, nmax = (np.reshape(v, shape) for v in (scale, nmin, nmax))
    clamped = np.clip(x, nmin, nmax)
    inv = np.float32(1.0) / scale
    q = np.floor((clamped - nmin) * inv + np.float32(0.5)).astype(np.int64)
    q += (1 if narrow else 0) - (1 << (bits - 1))
    return q, p


def _lower_const_fq(g: Graph, node: Node) -> None:
    const, out = node.inputs[0], node.outputs[0]
    bits = int(node.attrs["bits"])
    if bits > 8:
        raise ExportError(f"node {node.name!r}: {bits}-bit constant %{const.name} has no int8 "
                          "TFLite kernel")
    q, p = _fq_int_values(node, const.data)
    q, p = _zero_channels_symmetric(node, const, q, p)
    for user, idx in out.uses:
        if user.op in WEIGHT_OPS and idx == 1:
            want = WEIGHT_OPS[user.op]
            if any(z != 0 for z in p.zero_point):
                raise ExportError(f"node {node.name!r}: weight %{const.name} of {user.name!r} "
                                  f"is not symmetric (zero points {sorted(set(p.zero_point))})")
            if p.axis != want:
                raise ExportError(f"node {node.name!r}: weight %{const.name} of {user.name!r} "
                                  f"({user.op}) is quantized on axis {p.axis}, TFLite needs "
                                  f"{'per-tensor' if want is None else f'axis {want}'}")
    if bits < 8 and any(z != 0 for z in p.zero_point):
        raise ExportError(f"node {node.name!r}: {bits}-bit constant %{const.name} must be symmetric")
    qp = QuantParams(p.scale, p.zero_point, p.axis, bits, p.narrow_range or bits < 8, "int8")
    new = g.const(q.astype(np.int8), name=out.name, quant=qp)
    g.replace_all_uses_with(out, new)
    g.erase(node)
    if out.name not in g.tensors and new.name != out.name:
        _rename(g, new, out.name)


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
                  f"{np.flatnonzero(zero).tolist()}; their zero points are set to 0", stacklevel=4)
    shape = [1] * const.data.ndim
    shape[p.axis] = -1
    q = np.where(np.reshape(zero, shape), 0, q)
    zps = tuple(0 if z else zp for z, zp in zip(zero, p.zero_point))
    return q, QuantParams(p.scale, zps, p.axis, p.bits, p.narrow_range, p.dtype)


def _lower_act_fq(g: Graph, node: Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    p = params_for(node)
    if int(node.attrs["bits"]) != 8:
        raise ExportError(f"node {node.name!r}: {node.attrs['bits']}-bit activation %{x.name} "
                          "has no TFLite int8 kernel (activations must be 8-bit)")
    if p.axis is not None:
        raise ExportError(f"node {node.name!r}: per-channel activation quantization of "
                          f"%{x.name} is not supported by TFLite")
    p = act_params(p.scale[0], p.zero_point[0])
    if x.quant is None:
        if x.dtype != np.float32:
            raise ExportError(f"node {node.name!r}: cannot quantize {x.dtype} tensor %{x.name}")
        x.quant, x.dtype = p, np.dtype(np.int8)
        src = x
    elif x.dtype == np.int8 and _close(x.quant, p, CLOSE_RTOL if _fixed(x) else 0.0):
        src = x
    else:
        req = g.add_node("QUANTIZE", [x], {"dtype": "int8"}, name=f"{node.name}_requant",
                         outputs=[g.unique_name(out.name + "_rq")])
        req.output.quant = p
        src = req.output
    out_name = out.name
    g.replace_all_uses_with(out, src)
    g.erase(node)
    if any(t is src for t in g.outputs) and src.producer is not None:
        _rename(g, src, out_name)


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
        if x is not None and x.quant is not None:
            out.quant, out.dtype = act_params(*FIXED_OUTPUT[node.op]), np.dtype(np.int8)
        return
    if _fq_consumers(out):
        return
    if node.op in INHERIT:
        srcs = [t for t in node.inputs if t is not None and t.quant is not None
                and not t.is_const]
        if node.op == "CONCATENATION" and len({t.quant for t in srcs}) > 1:
            return  # left float: _check_int8_region reports it
        if srcs and srcs[0].dtype == np.int8:
            out.quant, out.dtype = srcs[0].quant, np.dtype(np.int8)


def _lower_weight_op(g: Graph, node: Node) -> None:
    x, w = node.inputs[0], node.inputs[1]
    if x.quant is None:
        return  # float region; reported by _check_int8_region
    if not w.is_const or w.dtype != np.int8 or w.quant is None:
        raise ExportError(f"node {node.name!r} ({node.op}): weight %{w.name} is not a "
                          "fake-quantized constant")
    out_ch = w.shape[WEIGHT_OPS[node.op] or 0]
    b = node.inputs[2] if len(node.inputs) > 2 else None
    bias = np.zeros(out_ch, np.float32) if b is None else b.data
    if b is not None and (not b.is_const or b.dtype != np.float32):
        if b.is_const and b.dtype == np.int32 and b.quant is not None:
            return  # already lowered
        raise ExportError(f"node {node.name!r}: bias %{b.name} must be a float constant")
    in_s = np.float32(x.quant.scale[0])
    w_s = np.asarray(w.quant.scale, np.float32)
    w_s = _fix_zero_channels(node, w, w_s, bias, in_s)
    b_s = (in_s * w_s).astype(np.float32)
    if np.any(b_s < MIN_SCALE):
        warnings.warn(f"node {node.name!r}: bias scale of %{w.name} below {MIN_SCALE}; clamped",
                      stacklevel=3)
        b_s = np.maximum(b_s, np.float32(MIN_SCALE))
    out_q = node.outputs[0].quant
    if out_q is not None:  # LiteRT's prepare check (kernel_util.cc GetQuantizedConvolutionMultipler)
        gap = np.abs(b_s.astype(np.float64) - np.float64(in_s) * w_s.astype(np.float64))
        if np.any(gap > 0.02 * np.float64(out_q.scale[0])):
            raise ExportError(
                f"node {node.name!r} ({node.op}): bias scale differs from input x weight scale "
                f"by {gap.max():.3g}, over 2% of the output scale {out_q.scale[0]:.3g} that "
                "LiteRT accepts (weights far too large for the output range; calibrate first)")
    qb = _round_half_away(bias.astype(np.float64) / b_s.astype(np.float64))
    if np.any(np.abs(qb) > INT32_MAX):
        warnings.warn(f"node {node.name!r}: bias %{'zeros' if b is None else b.name} "
                      "overflows int32; clipped", stacklevel=3)
        qb = np.clip(qb, -INT32_MAX, INT32_MAX)
    per_ch = w.quant.axis is not None
    qp = QuantParams(tuple(b_s.tolist()), (0,) * b_s.size, 0 if per_ch else None, 32, False,
                     "int32")
    name = f"{node.name}_bias" if b is None else b.name
    new = g.const(qb.astype(np.int32), name=name, quant=qp)
    if len(node.inputs) < 3:
        node.add_input(new)
    else:  # fills an absent (None) bias slot as well as replacing a float bias
        node.set_input(2, new)


def _fix_zero_channels(node: Node, w: Tensor, w_s: np.ndarray, bias: np.ndarray,
                       in_s: np.float32) -> np.ndarray:
    """All-zero weight channels get a scale that keeps their bias inside int32."""
    axis = w.quant.axis
    if axis is None:
        return w_s
    red = tuple(i for i in range(w.data.ndim) if i != axis)
    zero = ~np.any(w.data != 0, axis=red)
    if not np.any(zero):
        return w_s
    need = (np.abs(bias.astype(np.float64)) / (float(in_s) * (2**30))).astype(np.float32)
    fixed = np.where(zero, np.maximum(np.maximum(w_s, need), np.float32(1e-8)), w_s)
    fixed = fixed.astype(np.float32)
    if not np.array_equal(fixed, w_s):
        warnings.warn(f"node {node.name!r}: weight %{w.name} has all-zero channels; their "
                      "scales were raised", stacklevel=4)
        w.quant = QuantParams(tuple(fixed.tolist()), w.quant.zero_point, axis, w.quant.bits,
                              w.quant.narrow_range, w.quant.dtype)
    return fixed


def _round_half_away(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _unify_same_scale(g: Graph, node: Node) -> None:
    """Requantize inputs whose params differ from the output's (same-scale ops)."""
    out = node.outputs[0]
    if out.quant is None:
        return
    data_inputs = range(len(node.inputs)) if node.op in ("CONCATENATION", "MAXIMUM", "MINIMUM") \
        else range(1)
    for i in data_inputs:
        t = node.inputs[i]
        if t is None or t.quant is None or _close(t.quant, out.quant):
            continue
        if t.is_const:
            raise ExportError(f"node {node.name!r}: constant %{t.name} is not on the output grid")
        req = g.add_node("QUANTIZE", [t], {"dtype": "int8"}, name=f"{node.name}_requant{i}",
                         outputs=[g.unique_name(f"{t.name}_rq")])
        req.output.quant = out.quant
        node.set_input(i, req.output)


_AUX_INPUTS = {"GATHER": (1,)}


def _check_int8_region(g: Graph) -> None:
    bad: list[str] = []
    no_kernel = [f"{n.name!r} ({n.op})" for n in g.nodes if n.op not in INT8_OPS
                 and any(t is not None and t.dtype == np.int8 for t in n.inputs)]
    if no_kernel:
        raise ExportError("no int8 kernel (qatir writer + integer reference) for node(s) "
                          f"{', '.join(no_kernel)}; keep them out of the quantized region")
    bad_act = [f"{n.name!r} ({n.op}, {n.attrs['fused_activation']})" for n in g.nodes
               if n.attrs.get("fused_activation", "NONE") != "NONE"
               and (n.attrs["fused_activation"] == "TANH" or n.op == "CONCATENATION")
               and any(t is not None and t.dtype == np.int8 for t in n.inputs)]
    if bad_act:
        raise ExportError(f"fused activation without an int8 kernel on {', '.join(bad_act)}; "
                          "use a separate activation op")
    for node in g.nodes:
        ins = list(node.inputs)
        if node.op in WEIGHT_OPS:
            ins = ins[:1]
        skip = _AUX_INPUTS.get(node.op, ())
        tensors = [t for i, t in enumerate(ins) if t is not None and i not in skip]
        if node.op not in ("QUANTIZE", "DEQUANTIZE"):
            tensors += list(node.outputs)
        for t in tensors:
            if t.dtype != np.int8 or t.quant is None:
                bad.append(f"%{t.name} ({node.op} {node.name!r})")
    if bad:
        raise ExportError("unquantized tensor(s) inside the int8 region (add FAKE_QUANT or "
                          f"quantize the whole graph): {', '.join(dict.fromkeys(bad))}")


# ---------------------------------------------------------------------- edges
def apply_io(g: Graph, io: str) -> None:
    """Normalize a lowered graph's edges to ``io`` (see the module docstring)."""
    _strip_edges(g)
    if io == "int8":
        return
    for i, t in enumerate(list(g.inputs)):
        if t.dtype != np.int8 or t.quant is None:
            continue
        name = t.name
        _rename(g, t, g.unique_name(f"{name}_int8"))
        dtype, qp = _edge_type(io, t.quant)
        new = g.add_tensor(Tensor(name, t.shape, dtype, quant=qp, source_layout=t.source_layout))
        g.inputs[i] = new
        g.add_node("QUANTIZE", [new], {"dtype": "int8"}, name=f"{name}_quantize", outputs=[t])
    for i, t in enumerate(list(g.outputs)):
        if t.dtype != np.int8 or t.quant is None:
            continue
        name = t.name
        _rename(g, t, g.unique_name(f"{name}_int8"))
        dtype, qp = _edge_type(io, t.quant)
        op = "DEQUANTIZE" if io == "float" else "QUANTIZE"
        node = g.add_node(op, [t], {"dtype": np.dtype(dtype).name}, name=f"{name}_{op.lower()}",
                          outputs=[name])
        node.output.quant = qp
        g.outputs[i] = node.output
    g.toposort()


def _edge_type(io: str, q: QuantParams) -> tuple[type, QuantParams | None]:
    if io == "float":
        return np.float32, None
    return np.uint8, QuantParams(q.scale, (q.zero_point[0] + 128,), None, 8, False, "uint8")


def _strip_edges(g: Graph) -> None:
    """Turn QUANTIZE-at-input / DEQUANTIZE-at-output edges back into int8 edges."""
    for i, t in enumerate(list(g.inputs)):
        users = t.users
        if t.dtype == np.int8 or not users:
            continue
        if not all(u.op == "QUANTIZE" and u.output.dtype == np.int8 for u in users):
            continue
        qp = users[0].output.quant
        if qp is None or any(u.output.quant != qp for u in users[1:]):
            continue
        name = t.name
        new = g.add_tensor(Tensor(g.unique_name(f"{name}_int8"), t.shape, np.int8, quant=qp,
                                  source_layout=t.source_layout))
        for u in users:
            g.replace_all_uses_with(u.output, new)
        g.erase_many(users)
        g.inputs[i] = new
        del g.tensors[name]
        _rename(g, new, name)
    for i, t in enumerate(list(g.outputs)):
        p = t.producer
        if p is None or t.uses or sum(o is t for o in g.outputs) > 1:
            continue
        src = p.inputs[0]
        if src.dtype != np.int8 or src.quant is None:
            continue
        if not (p.op == "DEQUANTIZE" or (p.op == "QUANTIZE" and t.dtype == np.uint8)):
            continue
        name = t.name
        g.outputs[i] = src
        g.erase(p)
        if src.producer is not None and not any(o is src for j, o in enumerate(g.outputs) if j != i):
            _rename(g, src, name)

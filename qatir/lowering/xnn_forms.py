"""Step ``xnn_forms``: exact rewrites of int8 nodes XNNPACK refuses into forms it takes.

- A CONCATENATION of more than 5 inputs (``xnnpack_delegate.cc`` VisitConcatenationNode
  takes 2 to 5: CheckNumInputsAndOutputs) becomes a tree of CONCATENATIONs of at most 5
  along the same axis, every one on the output's grid (the inputs already are, after
  ``same_scale``), the fused activation on the last: pure data movement, exact.
- A standalone int8 RELU / RELU6 / RELU_N1_TO_1 (VisitUnaryNode takes them in float only,
  CheckTensorFloatType) becomes ``ADD(x, 0)`` with that fused activation, the zero on
  the input's scale. With equal input and output grids both of LiteRT's ADD kernels
  return ``x`` exactly before the clamp (XNNPACK: multiplier 2^20 on a 20-bit shift;
  builtin: 1/2 then 2^-19, both exact), so the result equals the activation's bit for
  bit; otherwise the ADD requantizes as the integer reference models it.
- A 4-D int8 STRIDED_SLICE with strides ``[1, b, b, 1]``, ``b >= 2``, over H and W that
  ``b`` divides (Swin's patch merging ``x[:, i::2, j::2, :]``, YOLOX's Focus, which ONNX
  spells as two slices of one axis each, composed here; VisitStridedSliceNode takes
  stride 1 only) becomes ``SPACE_TO_DEPTH(b)`` (VisitSpaceToDepthNode takes int8) and a
  stride-1 STRIDED_SLICE of its output: input row ``r = a + k·b`` is row ``r // b`` of
  phase ``r % b``, and phase ``(p_h, p_w)`` holds channels ``[(p_h·b + p_w)·C, +C)``. The
  slices of one input share one SPACE_TO_DEPTH. Pure data movement, exact.
- An int8 RESIZE_NEAREST_NEIGHBOR that doubles H and W (VisitNode has no case for it; FPN
  and U-Net upsampling) becomes ``DEPTH_TO_SPACE(2)`` (VisitDepthToSpaceNode takes int8)
  of ``CONCATENATION(x, x, x, x)`` on channels, taken only where LiteRT's index map
  (:func:`qatir.reference_kernels.nearest_index`) is ``o // 2`` on both axes (every
  setting but ``align_corners`` with ``half_pixel_centers``): output ``(2h + dy, 2w + dx, c)`` reads channel ``(2·dy + dx)·C + c``
  of the concatenation, which is ``x[h, w, c]``. Pure data movement, exact.
- An int8 GATHER of constant indices (VisitNode has no case for it) whose indices are at
  most 5 ascending runs ``k, k+1, ...`` becomes stride-1 STRIDED_SLICEs of those runs
  along its axis, joined by one CONCATENATION when there are several (``torch.roll``),
  and a RESHAPE for a scalar index (``qkv[0]``: Swin's and ViT's attention). Exact.
- An int8 SQUEEZE (VisitNode has no case for it) becomes the RESHAPE to its output shape
  (VisitReshapeNode takes int8). Exact.
- A PAD by a value below the zero point (a max-pool's ``-inf``, written as PADV2, which
  VisitNode has no case for) of a tensor whose producer clamps it at its zero point (a
  fused RELU / RELU6: CalculateActivationRangeQuantized's floor is ``q(0)``, the zero
  point), read only by MAX_POOL_2Ds whose every window holds an input element (padding
  under the filter size), pads with the zero point instead (a PAD, which XNNPACK takes):
  each window's maximum is an input element at or above the zero point either way, so
  the pool's output is unchanged. DenseNet's stem, whose ReLU output shares the dense
  block's grid (zero point above -128).
- An int8 AVERAGE_POOL_2D (VisitAveragePool2DNode takes float only) with VALID padding and
  an odd window count ``n = fh·fw`` (3x3 stride 2, 1x1 stride 2: NASNet's reductions)
  becomes a DEPTHWISE_CONV_2D with every weight 127 on the scale ``1/(127·n)`` and a zero
  bias (as ``exact_mean`` writes 1/C). The pool returns ``round(Σq / n)`` half away from
  zero (``(acc ± n/2) / n``); the conv requantizes ``127·Σ(q - z)`` by ``1/(127·n)`` and
  adds ``z``. An odd ``n`` has no ties (``Σq / n`` is at least ``1/(2n)`` from a
  half-integer), and both requantizations err far less: XNNPACK's float32 product, and
  BUILTIN_REF's double rounding, whose first rounding is ``2^-10`` of an output step with
  the factor 127 (with weight 1 it is ``1/16``, above ``1/18``: checked exhaustively).
  So both round to the pool's integer. Not for an even ``n`` (ties round half to even in
  fp32, half away in the pool: DenseNet's 2x2 transitions) nor SAME padding (the pool
  divides by the in-bounds count at the borders).
- Any other int8 PAD by a value that does not quantize to the zero point (a PADV2) becomes
  one CONCATENATION per padded axis of the input and constant blocks filled with that
  value as the writer quantizes it (:func:`qatir.numerics.quantized_fill`), on the
  input's grid (XNNPACK takes a CONCATENATION with static inputs, measured). EfficientViT's
  ``F.pad(v, value=1)``. Exact.

Each form is named in :data:`FORMS`; :data:`DEFAULT_FORMS` are those the step applies
(every one measured not slower, ``tools/bench_xnn_forms.py``); ``xnn_forms(g, forms=...)``
applies others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from qatir.ir import Graph, Node, QuantParams, Tensor
from qatir.lowering.common import act_params
from qatir.lowering.xnn_ratios import per_tensor_int8
from qatir.numerics import quantized_fill
from qatir.reference_kernels import nearest_index
from qatir.target import xnn_ratios_ok

#: VisitConcatenationNode's CheckNumInputsAndOutputs(node, 2, 5, 1)
XNN_CONCAT_MAX_INPUTS = 5
_CLAMPS = ("RELU", "RELU6", "RELU_N1_TO_1")


def _int8_act(t) -> bool:
    return per_tensor_int8(t) and not t.is_const


def _split_concat(g: Graph, node: Node) -> None:
    ins, out, k = list(node.inputs), node.outputs[0], XNN_CONCAT_MAX_INPUTS
    level = 0
    while len(ins) > k:
        parts = []
        for j in range(0, len(ins), k):
            group = ins[j:j + k]
            if len(group) == 1:
                parts.append(group[0])
                continue
            sub = g.add_node("CONCATENATION", group,
                             {"axis": node.attrs["axis"], "fused_activation": "NONE"},
                             name=g.unique_name(f"{node.name}_part{level}_{j // k}"),
                             outputs=[g.unique_name(f"{out.name}_part{level}_{j // k}")])
            sub.output.quant, sub.output.dtype = out.quant, out.dtype
            parts.append(sub.output)
        ins, level = parts, level + 1
    _set_inputs(node, ins)


def _set_inputs(node: Node, ins: list) -> None:
    node.drop_inputs()
    for t in ins:
        node.add_input(t)


def _clamp_as_add(g: Graph, node: Node) -> bool:
    x, out = node.inputs[0], node.outputs[0]
    if not xnn_ratios_ok("ADD", [x.quant.scale[0]], out.quant.scale[0]):
        return False
    zero = g.const(np.zeros([1], np.int8), name=g.unique_name(f"{node.name}_zero"),
                   quant=act_params(x.quant.scale[0], 0))
    node.attrs = {"fused_activation": node.op}
    node.op = "ADD"
    _set_inputs(node, [x, zero])
    return True


def _slice_ranges(node: Node) -> list[range] | None:
    """The index range a STRIDED_SLICE takes along each axis (None: dynamic, or shrinks)."""
    x = node.inputs[0]
    if node.attrs.get("shrink_axis") or any(d is None for d in x.shape):
        return None
    return [range(*slice(int(lo), int(hi), int(s)).indices(int(d))) for d, lo, hi, s in
            zip(x.shape, node.attrs["begin"], node.attrs["end"], node.attrs["strides"])]


def _slice_source(node: Node) -> tuple[Tensor, list[range]] | None:
    """The tensor this STRIDED_SLICE reads through a chain of forward STRIDED_SLICEs on its
    grid (ONNX slices one axis per node: x[:, ::2] then [:, :, ::2]), and the composed
    ranges on it: ``inner[outer]`` per axis."""
    ranges = _slice_ranges(node)
    if ranges is None:
        return None
    x = node.inputs[0]
    while x.producer is not None and x.producer.op == "STRIDED_SLICE" \
            and x.producer.inputs[0].quant == x.quant:
        inner = _slice_ranges(x.producer)
        if inner is None or any(r.step < 0 for r in (*inner, *ranges)):
            break
        ranges = [a[b.start:b.stop:b.step] for a, b in zip(inner, ranges)]
        x = x.producer.inputs[0]
    return x, ranges


def _s2d_plan(node: Node) -> tuple[Tensor, int, list[int], list[int]] | None:
    """(source, block size, begin, end) of the stride-1 slice of ``SPACE_TO_DEPTH(b)`` of
    the source that equals this STRIDED_SLICE, or None when it has no such form."""
    found = _slice_source(node)
    if found is None or found[0].rank != 4:
        return None
    x, ranges = found
    steps = [r.step for r in ranges]
    b = steps[1]
    if steps[0] != 1 or steps[3] != 1 or steps[2] != b or b < 2 \
            or x.shape[1] % b or x.shape[2] % b or any(len(r) == 0 for r in ranges):
        return None
    (n, h, w, c), ch = ranges, x.shape[3]
    phase = (h.start % b) * b + w.start % b
    begin = [n.start, h.start // b, w.start // b, phase * ch + c.start]
    end = [n.start + len(n), begin[1] + len(h), begin[2] + len(w), phase * ch + c.start + len(c)]
    return x, b, begin, end


def _s2d_of(g: Graph, x: Tensor, b: int, made: dict) -> Tensor:
    """The (shared) ``SPACE_TO_DEPTH(b)`` of ``x``, on ``x``'s grid."""
    key = (x.name, b)
    if key not in made:
        s2d = g.add_node("SPACE_TO_DEPTH", [x], {"block_size": b},
                         name=g.unique_name(f"{x.name}_s2d{b}"),
                         outputs=[g.unique_name(f"{x.name}_s2d{b}")])
        s2d.output.quant, s2d.output.dtype = x.quant, x.dtype
        made[key] = s2d.output
    return made[key]


def _strided_as_s2d(g: Graph, node: Node, made: dict) -> bool:
    plan = _s2d_plan(node)
    if plan is None:
        return False
    x, b, begin, end = plan
    node.set_input(0, _s2d_of(g, x, b, made))
    node.attrs = {**node.attrs, "begin": begin, "end": end, "strides": [1, 1, 1, 1]}
    g.reinfer(node)
    return True


#: the resize factor the nearest-neighbour form handles: 2x2 copies fit one CONCATENATION
_NEAREST_FACTOR = 2


def _nearest_factor(node: Node) -> int | None:
    """The integer factor k of a RESIZE_NEAREST_NEIGHBOR equal to D2S(k) of k·k copies."""
    x = node.inputs[0]
    if x.rank != 4 or any(d is None for d in x.shape):
        return None
    k = _NEAREST_FACTOR
    align, half = bool(node.attrs["align_corners"]), bool(node.attrs["half_pixel_centers"])
    for out, size in zip(node.attrs["size"], x.shape[1:3]):
        if out != k * size or not np.array_equal(nearest_index(out, size, align, half),
                                                 np.arange(out) // k):
            return None
    return k


def _nearest_form(g: Graph, node: Node, made: dict) -> bool:
    if node.op != "RESIZE_NEAREST_NEIGHBOR" or not _int8_act(node.inputs[0]) \
            or node.inputs[0].quant != node.outputs[0].quant:
        return False
    k = _nearest_factor(node)
    if k is None:
        return False
    x = node.inputs[0]
    cat = g.add_node("CONCATENATION", [x] * (k * k), {"axis": 3, "fused_activation": "NONE"},
                     name=g.unique_name(f"{node.name}_copies"),
                     outputs=[g.unique_name(f"{x.name}_copies")])
    cat.output.quant, cat.output.dtype = x.quant, x.dtype
    _set_inputs(node, [cat.output])
    node.op, node.attrs = "DEPTH_TO_SPACE", {"block_size": k}
    return True


def _index_runs(idx: np.ndarray, dim: int) -> list[tuple[int, int]]:
    """The ascending runs ``(start, length)`` of consecutive indices, in order."""
    runs: list[tuple[int, int]] = []
    for i in (int(v) + dim if v < 0 else int(v) for v in idx.reshape(-1)):
        if runs and runs[-1][0] + runs[-1][1] == i:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


def _axis_slice(g: Graph, x: Tensor, axis: int, start: int, length: int, name: str) -> Tensor:
    begin, end = [0] * x.rank, [int(d) for d in x.shape]
    begin[axis], end[axis] = start, start + length
    sl = g.add_node("STRIDED_SLICE", [x], {"begin": begin, "end": end, "strides": [1] * x.rank},
                    name=g.unique_name(name), outputs=[g.unique_name(name)])
    sl.output.quant, sl.output.dtype = x.quant, x.dtype
    return sl.output


def _gather_form(g: Graph, node: Node, made: dict) -> bool:
    if node.op != "GATHER" or not _int8_act(node.inputs[0]) or not node.inputs[1].is_const \
            or node.inputs[0].quant != node.outputs[0].quant or node.inputs[1].data.ndim > 1:
        return False
    x, idx = node.inputs
    if any(d is None for d in x.shape):
        return False
    axis = int(node.attrs["axis"]) % x.rank
    runs = _index_runs(idx.data, int(x.shape[axis]))
    if not runs or len(runs) > XNN_CONCAT_MAX_INPUTS:
        return False
    if idx.data.ndim == 1 and len(runs) == 1:  # one run: the node is that slice
        (a, n), = runs
        begin, end = [0] * x.rank, [int(d) for d in x.shape]
        begin[axis], end[axis] = a, a + n
        node.op, node.attrs = "STRIDED_SLICE", {"begin": begin, "end": end,
                                                "strides": [1] * x.rank, "shrink_axis": []}
        _set_inputs(node, [x])
        return True
    parts = [_axis_slice(g, x, axis, a, n, f"{node.name}_run{i}") for i, (a, n) in
             enumerate(runs)]
    if idx.data.ndim == 0:
        node.op, node.attrs = "RESHAPE", {"new_shape": [int(d) for d in node.outputs[0].shape]}
    else:
        node.op, node.attrs = "CONCATENATION", {"axis": axis, "fused_activation": "NONE"}
    _set_inputs(node, parts)
    return True


def _squeeze_form(g: Graph, node: Node, made: dict) -> bool:
    out = node.outputs[0]
    if node.op != "SQUEEZE" or not _int8_act(node.inputs[0]) or not _int8_act(out) \
            or sum(d is None for d in out.shape) > 1:
        return False
    node.op, node.attrs = "RESHAPE", {"new_shape": [-1 if d is None else int(d)
                                                    for d in out.shape]}
    return True


def _windows_hold_input(pool: Node, pads: list) -> bool:
    """Every window of this VALID MAX_POOL_2D over the padded tensor holds an input element."""
    return pool.op == "MAX_POOL_2D" and pool.attrs["padding"] == "VALID" \
        and all(0 <= p < f for (a, b), f in zip(pads[1:3], pool.attrs["filter"]) for p in (a, b))


def _maxpool_pad_form(g: Graph, node: Node, made: dict) -> bool:
    x, out = node.inputs[0], node.outputs[0]
    if node.op != "PAD" or not _int8_act(x) or x.quant != out.quant or out in g.outputs \
            or x.producer is None or x.producer.attrs.get("fused_activation") not in \
            ("RELU", "RELU6") or len(x.producer.outputs) != 1:
        return False
    pads = [list(p) for p in node.attrs["paddings"]]
    value = float(node.attrs.get("constant_value", 0.0))
    if x.rank != 4 or value >= 0.0 or any(pads[i] != [0, 0] for i in (0, 3)) \
            or not out.users or not all(_windows_hold_input(u, pads) for u in out.users):
        return False
    node.attrs = {**node.attrs, "constant_value": 0.0}
    return True


#: the weight value that stands for 1 in the average-pool form (its scale 1/(127·n))
_POOL_ONE = 127


def _avgpool_form(g: Graph, node: Node, made: dict) -> bool:
    if node.op != "AVERAGE_POOL_2D":
        return False
    x, out = node.inputs[0], node.outputs[0]
    fh, fw = (int(f) for f in node.attrs["filter"])
    if not _int8_act(x) or x.quant != out.quant or node.attrs["padding"] != "VALID" \
            or (fh * fw) % 2 == 0 or x.shape[3] is None:
        return False
    c, ws = int(x.shape[3]), float(np.float32(1.0 / (_POOL_ONE * fh * fw)))
    w = g.const(np.full((1, fh, fw, c), _POOL_ONE, np.int8),
                name=g.unique_name(f"{node.name}_ones"),
                quant=QuantParams((ws,) * c, (0,) * c, 3, 8, True, "int8"))
    bs = float(np.float32(np.float32(x.quant.scale[0]) * np.float32(ws)))
    b = g.const(np.zeros(c, np.int32), name=g.unique_name(f"{node.name}_bias"),
                quant=QuantParams((bs,) * c, (0,) * c, 0, 32, False, "int32"))
    act = node.attrs.get("fused_activation", "NONE")
    node.op = "DEPTHWISE_CONV_2D"
    node.attrs = {"stride": list(node.attrs["stride"]), "dilation": [1, 1], "padding": "VALID",
                  "fused_activation": act, "depth_multiplier": 1}
    _set_inputs(node, [x, w, b])
    return True


def _pad_block(g: Graph, like: Tensor, axis: int, n: int, fill: int, name: str) -> Tensor:
    shape = [int(d) for d in like.shape]
    shape[axis] = n
    return g.const(np.full(shape, fill, np.int8), name=g.unique_name(name), quant=like.quant)


def _pad_as_concat(g: Graph, node: Node, made: dict) -> bool:
    x, out = node.inputs[0], node.outputs[0]
    if node.op != "PAD" or not _int8_act(x) or x.quant != out.quant \
            or any(d is None for d in x.shape):
        return False
    q = x.quant
    fill = quantized_fill(float(node.attrs.get("constant_value", 0.0)), q.scale[0],
                          q.zero_point[0], x.dtype)
    axes = [(a, int(lo), int(hi)) for a, (lo, hi) in enumerate(node.attrs["paddings"])
            if lo or hi]
    if fill == int(q.zero_point[0]) or not axes or any(lo < 0 or hi < 0 for _, lo, hi in axes):
        return False
    cur = x
    for k, (axis, lo, hi) in enumerate(axes):
        parts = ([_pad_block(g, cur, axis, lo, fill, f"{node.name}_fill")] if lo else []) + \
            [cur] + ([_pad_block(g, cur, axis, hi, fill, f"{node.name}_fill")] if hi else [])
        if k == len(axes) - 1:
            node.op, node.attrs = "CONCATENATION", {"axis": axis, "fused_activation": "NONE"}
            _set_inputs(node, parts)
        else:
            cat = g.add_node("CONCATENATION", parts, {"axis": axis, "fused_activation": "NONE"},
                             name=g.unique_name(f"{node.name}_axis{axis}"),
                             outputs=[g.unique_name(f"{out.name}_axis{axis}")])
            cat.output.quant, cat.output.dtype = q, x.dtype
            cur = cat.output
    return True


def _concat_matches(node: Node) -> bool:
    return node.op == "CONCATENATION" and len(node.inputs) > XNN_CONCAT_MAX_INPUTS \
        and _int8_act(node.outputs[0]) \
        and all(t.quant == node.outputs[0].quant for t in node.inputs)


def _concat_form(g: Graph, node: Node, made: dict) -> bool:
    if not _concat_matches(node):
        return False
    _split_concat(g, node)
    return True


def _clamp_form(g: Graph, node: Node, made: dict) -> bool:
    return node.op in _CLAMPS and _int8_act(node.inputs[0]) and _int8_act(node.outputs[0]) \
        and _clamp_as_add(g, node)


def _slice_form(g: Graph, node: Node, made: dict) -> bool:
    return node.op == "STRIDED_SLICE" and _int8_act(node.inputs[0]) \
        and _int8_act(node.outputs[0]) and node.inputs[0].quant == node.outputs[0].quant \
        and _strided_as_s2d(g, node, made)


#: name -> rewrite(graph, node, shared) -> whether it rewrote the node (module docstring);
#: tried in this order, the first that rewrites a node wins (``maxpool_pad_at_zero``, one
#: PAD, before ``pad_as_concat``).
FORMS: dict[str, Callable[[Graph, Node, dict], bool]] = {
    "concat_tree": _concat_form, "clamp_as_add": _clamp_form,
    "strided_slice_s2d": _slice_form, "nearest_as_d2s": _nearest_form,
    "squeeze_as_reshape": _squeeze_form, "gather_as_slices": _gather_form,
    "maxpool_pad_at_zero": _maxpool_pad_form, "pad_as_concat": _pad_as_concat,
    "avgpool_as_dwconv": _avgpool_form,
}
#: the forms the ``xnn_forms`` step applies, each measured not slower with an interleaved
#: timing (``tools/bench_xnn_forms.py``). ``nearest_as_d2s`` is left out: it copies the
#: upsampled tensor twice (CONCATENATION, then DEPTH_TO_SPACE) where LiteRT's builtin
#: nearest resize copies it once, and measured slower (on/off 1.21 on a 40x40x64 -> 80x80
#: FPN step, 1.01 on ddddocr's detector, 2026-12-02).
#: ``maxpool_pad_at_zero`` is left out too: with ``pad_as_concat`` taking the same PADV2,
#: the single PAD measured no faster than the constant blocks (on/off 1.008 and 1.041 on
#: torchvision DenseNet-121, noise 0.985 and 0.979, 2026-12-02).
#: ``gather_as_slices`` is left out: not faster on Swin-T's 36 ``qkv[i]`` GATHERs (on/off
#: 1.021, 0.987 and 1.058, noise 1.017, 1.003 and 1.006, 2026-12-02).
DEFAULT_FORMS: frozenset[str] = frozenset(FORMS) - {"nearest_as_d2s", "maxpool_pad_at_zero",
                                                    "gather_as_slices"}


def xnn_forms(g: Graph, forms: Iterable[str] | None = None) -> None:
    """Rewrite the nodes listed in the module docstring, with ``forms`` (names in
    :data:`FORMS`; default :data:`DEFAULT_FORMS`)."""
    names = set(DEFAULT_FORMS if forms is None else forms)
    chosen = [form for name, form in FORMS.items() if name in names]  # in FORMS' order
    changed, made = False, {}
    for node in list(g.nodes):
        for form in chosen:
            if form(g, node, made):
                changed = True
                break
    if changed:
        g.toposort()

"""ONNX frontend: import an ONNX model as a qatir IR graph in NHWC layout.

Opsets 7-21 are read as they are; opsets 1-6 are first upgraded to 7
(:mod:`qatir.frontends.onnx_legacy`).

4-D graph inputs and outputs become NHWC (``tensor.source_layout == "NCHW"``);
weights are transposed once (OHWI, 1HWO); static shape arithmetic is folded.
See :mod:`qatir.frontends.onnx_ctx` for how layouts are tracked.

Ops on activations (``CONVERTERS``): Conv (1-D/2-D, grouped, depthwise), ConvTranspose,
BatchNormalization, Relu, LeakyRelu, PRelu, Clip, Sigmoid, Tanh, HardSigmoid, HardSwish,
Exp, Abs, Neg, Sqrt, Gelu, LayerNormalization, InstanceNormalization, GroupNormalization
(1 or C groups), Softmax, Add, Sub, Mul, Div, Sum, Max, Min, Gemm, MatMul, Einsum
(two-operand products, :mod:`qatir.frontends.onnx_einsum`), MaxPool,
AveragePool, GlobalAveragePool, GlobalMaxPool, ReduceMean/Max/Sum, Reshape, Flatten,
Squeeze, Unsqueeze, Transpose, Concat, Split, Pad, Slice, Gather, Resize, Upsample,
DepthToSpace, SpaceToDepth, Tile, Expand (RESHAPE + TILE), Identity, Dropout, Cast, Pow, LRN,
LSTM, GRU (:mod:`qatir.frontends.onnx_misc`, :mod:`qatir.frontends.onnx_rnn`); onnxruntime's
dynamic quantization is undone first (:mod:`qatir.frontends.onnx_dynq`). Ops folded when all
their inputs are constant (``FOLDERS``) add Constant, ConstantOfShape, Shape, Size, Range,
Expand, Tile, Where, Equal/Less/Greater/Not, Floor/Ceil/Round, Pow, Reciprocal, ReduceProd,
Mod, ScatterND, Einsum (Swin's shifted-window mask and relative position index are such
constant subgraphs).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qatir.errors import (
    ModelFormatError,
    QatirError,
    ShapeError,
    UnsupportedOpError,
    VerifyError,
)
from qatir.frontends import (  # noqa: F401  (register the converters)
    onnx_einsum,
    onnx_misc,
    onnx_nn,
    onnx_norm,
    onnx_ops,
    onnx_pool,
    onnx_rnn,
    onnx_shape_ops,
)
from qatir.frontends.onnx_ctx import (
    BATCH,
    CONVERTERS,
    Ctx,
    Dim,
    Val,
    channel_last,
    ident,
)
from qatir.frontends.onnx_dynq import dequantize_dynamic
from qatir.frontends.onnx_fold import FOLDERS, fold_node
from qatir.frontends.onnx_gelu import fuse_gelu, is_fused
from qatir.frontends.onnx_groupnorm import fuse_group_norm, is_group_norm
from qatir.frontends.onnx_io import (
    apply_input_shapes,
    opset_of,
    read_model,
    tensor_to_array,
    topo_order,
    value_info_shape,
)
from qatir.frontends.onnx_legacy import default_opset, upgrade_legacy
from qatir.ir import Graph

# Python exceptions a malformed node may trigger inside a converter; reported as the node's fault.
_NODE_FAULTS = (ValueError, TypeError, IndexError, KeyError, ZeroDivisionError, OverflowError,
                ArithmeticError)


def load_onnx(path: str | os.PathLike,
              input_shapes: Mapping[str, Sequence[int]] | None = None) -> Graph:
    """Import the ONNX model at ``path``; ``input_shapes`` (source layout) fixes dynamic dims."""
    path = os.fspath(path)
    raw = read_model(path)
    model = upgrade_legacy(raw, path)  # opsets 1-6 -> 7
    opset = opset_of(model, path)
    onnx_graph = model.graph
    fuse_gelu(onnx_graph)  # exporters' Erf/Tanh spellings of GELU -> Gelu
    dequantize_dynamic(onnx_graph, path)  # onnxruntime's dynamic quantization -> float ops
    fuse_group_norm(onnx_graph)  # Reshape -> InstanceNormalization -> Reshape -> GroupNorm1
    _check_supported(onnx_graph, path)

    graph = Graph(onnx_graph.name or os.path.splitext(os.path.basename(path))[0])
    ctx = Ctx(graph, path, opset)
    inits = _load_initializers(ctx, onnx_graph)
    _add_inputs(ctx, onnx_graph, inits, input_shapes)

    nodes = list(onnx_graph.node)
    ctx.consumed = {i for n in nodes for i in n.input} | {o.name for o in onnx_graph.output}
    for idx in topo_order(nodes, set(ctx.vals), path):
        _convert_node(ctx, nodes[idx], idx)
    _set_outputs(ctx, onnx_graph)
    graph.eliminate_dead_code()
    graph.metadata.update({
        "source_format": "onnx",
        "source_file": os.path.basename(path),
        "opset": opset,
        "source_opset": default_opset(raw),
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
    })
    try:
        graph.verify()
    except VerifyError as e:
        raise VerifyError(f"{path}: the imported graph is inconsistent: {e}") from None
    return graph


def _check_supported(onnx_graph: Any, path: str) -> None:
    """Raise one UnsupportedOpError listing every unsupported op with counts and node names."""
    counts: Counter[str] = Counter()
    names: dict[str, list[str]] = {}
    for i, n in enumerate(onnx_graph.node):
        key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
        if n.domain in ("", "ai.onnx") and (n.op_type in CONVERTERS or n.op_type in FOLDERS):
            continue
        counts[key] += 1
        names.setdefault(key, []).append(n.name or f"#{i}")
    if counts:
        detail = "; ".join(f"{op}: nodes {', '.join(repr(x) for x in names[op][:5])}"
                           + (" ..." if len(names[op]) > 5 else "") for op in sorted(names))
        raise UnsupportedOpError(path, dict(counts), detail)


def _load_initializers(ctx: Ctx, onnx_graph: Any) -> set[str]:
    names = set()
    for t in onnx_graph.initializer:
        if not t.name:
            raise ModelFormatError(f"{ctx.path}: an initializer has no name")
        if t.name in names:
            raise ModelFormatError(f"{ctx.path}: initializer {t.name!r} is defined twice")
        ctx.vals[t.name] = Val(const=tensor_to_array(t, ctx.path))
        names.add(t.name)
    return names


def _add_inputs(ctx: Ctx, onnx_graph: Any, inits: set[str],
                input_shapes: Mapping[str, Sequence[int]] | None) -> None:
    """Graph inputs (not initializers); 4-D ones become NHWC with source layout NCHW."""
    declared: dict[str, list[int | None] | None] = {}
    dtypes: dict[str, np.dtype] = {}
    for vi in onnx_graph.input:
        if vi.name in inits:
            continue
        if not vi.name or vi.name in declared:
            raise ModelFormatError(f"{ctx.path}: graph input {vi.name!r} is unnamed or repeated")
        if not vi.type.HasField("tensor_type"):
            raise ModelFormatError(f"{ctx.path}: graph input {vi.name!r} is not a tensor")
        declared[vi.name], dtypes[vi.name] = value_info_shape(vi)
    apply_input_shapes(ctx.path, declared, input_shapes)
    ctx.graph.metadata["source_inputs"] = {n: None if s is None else list(s)
                                           for n, s in declared.items()}
    for name, shape in declared.items():
        if shape is None:
            raise ShapeError(f"{ctx.path}: graph input {name!r} declares no shape; give it "
                             "with input_shapes=")
        perm = channel_last(4) if len(shape) == 4 else ident(len(shape))
        ir_shape = [shape[p] for p in perm]
        t = ctx.graph.add_input(name, ir_shape, dtypes[name],
                                source_layout="NCHW" if len(shape) == 4 else None)
        ctx.vals[name] = Val(tensor=t, perm=perm)


def _symbolic_shape(v: Val, name: str) -> np.ndarray:
    dims = [d if d is not None else (BATCH if i == 0 else Dim((name, i)))
            for i, d in enumerate(v.shape)]
    arr = np.empty(len(dims), dtype=object)
    arr[:] = dims
    return arr


def _fold_inputs(ctx: Ctx, node: Any) -> list[Any] | None:
    """Constant inputs of ``node`` for folding, or None if some input is an activation."""
    ins: list[Any] = []
    for i in range(len(node.input)):
        v = ctx.inp(i)
        if v is None:
            ins.append(None)
        elif node.op_type == "Shape" and i == 0:
            shape = _symbolic_shape(v, node.input[0])
            attrs = {a.name: a.i for a in node.attribute if a.name in ("start", "end")}
            ins.append(shape[slice(attrs.get("start", 0), attrs.get("end"))])
        elif node.op_type == "Size" and i == 0 and None not in v.shape:
            ins.append(np.asarray(v.shape, dtype=np.int64))
        elif v.is_const:
            ins.append(v.const)
        else:
            return None
    return ins


_SCHEMAS: dict[tuple[str, int], tuple] = {}  # (op, opset) -> arity bounds and attribute types


def _schema_facts(ctx: Ctx, op_type: str) -> tuple:
    import onnx.defs

    facts = _SCHEMAS.get((op_type, ctx.opset))
    if facts is None:
        try:
            sc = onnx.defs.get_schema(op_type, ctx.opset, "")
        except onnx.defs.SchemaError:
            raise ModelFormatError(f"{ctx.where()}: {op_type} is not defined in opset "
                                   f"{ctx.opset}") from None
        facts = (sc.min_input, sc.max_input, sc.min_output, sc.max_output,
                 {k: int(v.type) for k, v in sc.attributes.items()})
        _SCHEMAS[(op_type, ctx.opset)] = facts
    return facts


def _check_schema(ctx: Ctx, node: Any) -> None:
    """Input/output counts and attribute types must fit the op's schema at the model's opset."""
    if is_fused(node) or is_group_norm(node):  # written by the fusions above
        return
    min_in, max_in, min_out, max_out, attr_types = _schema_facts(ctx, node.op_type)
    n_in, n_out = len(node.input), len(node.output)
    if not min_in <= n_in <= max_in:
        raise ModelFormatError(f"{ctx.where()}: {n_in} inputs, the schema allows "
                               f"{min_in}..{max_in}")
    if not min_out <= n_out <= max_out:
        raise ModelFormatError(f"{ctx.where()}: {n_out} outputs, the schema allows "
                               f"{min_out}..{max_out}")
    for a in node.attribute:
        expected = attr_types.get(a.name)
        if expected is not None and expected != a.type:
            raise ModelFormatError(f"{ctx.where()}: attribute {a.name!r} has type {a.type}, "
                                   f"expected {expected}")


def _convert_node(ctx: Ctx, node: Any, index: int) -> None:
    ctx.node = node
    ctx.node_name = node.name or f"{node.op_type.lower()}_{index}"
    try:
        _check_schema(ctx, node)
        ins = _fold_inputs(ctx, node)
        if ins is not None and fold_node(ctx, ins):
            return
        fn = CONVERTERS.get(node.op_type)
        if fn is None:
            raise ctx.unsupported("only supported when all its inputs are constant")
        if ins is not None and ins and ins[0] is not None:
            _run_on_constant_data(ctx, fn, node)
        else:
            fn(ctx)
        for o in node.output:
            if o and o not in ctx.vals and o in ctx.consumed:  # an unused output may be left
                raise ctx.unsupported(f"output {o!r} is not supported")
    except UnsupportedOpError:
        raise
    except ShapeError as e:
        msg = str(e)
        raise ShapeError(msg if ctx.path in msg else f"{ctx.where()}: {msg}") from None
    except QatirError as e:
        msg = str(e)
        raise type(e)(msg if ctx.path in msg else f"{ctx.where()}: {msg}") from None
    except _NODE_FAULTS as e:
        raise ModelFormatError(f"{ctx.where()}: invalid node ({type(e).__name__}: {e})") from None


def _run_on_constant_data(ctx: Ctx, fn: Any, node: Any) -> None:
    """Convert a node whose data input is a constant with no folder (e.g. Softmax of a
    constant): the data becomes a constant IR tensor for this node only (passes may fold it)."""
    name = node.input[0]
    const_val = ctx.vals[name]
    ctx.vals[name] = ctx.act(ctx.const_tensor(const_val.const, name))
    try:
        fn(ctx)
    finally:
        ctx.vals[name] = const_val


def _set_outputs(ctx: Ctx, onnx_graph: Any) -> None:
    """Graph outputs keep their ONNX names; 4-D ones are NHWC (source layout NCHW)."""
    graph = ctx.graph
    outs = []
    seen: set[str] = set()
    for vi in onnx_graph.output:
        name = vi.name
        if name in seen:
            raise ModelFormatError(f"{ctx.path}: graph output {name!r} is listed twice")
        seen.add(name)
        v = ctx.vals.get(name)
        if v is None:
            raise ModelFormatError(f"{ctx.path}: graph output {name!r} is never computed")
        perm = channel_last(4) if v.rank == 4 else ident(v.rank)
        ctx.node_name, ctx.node = f"output_{name}", _OutputNode
        t = ctx.as_tensor(v, perm)
        is_input = any(t is i for i in graph.inputs)
        already_out = any(t is o for o in outs)
        if t.name == name and not already_out and (t.producer is not None or is_input):
            pass  # already the right tensor (a pass-through graph input keeps its name)
        else:
            holder = graph.tensors.get(name)
            if holder is not None and holder is not t:
                graph.rename_tensor(holder, graph.unique_name(name + "__inner"))
            if t.producer is None or already_out:
                t = ctx.emit("IDENTITY", [t], name=name)
            else:
                graph.rename_tensor(t, name)
        if v.rank == 4:
            t.source_layout = "NCHW"
        outs.append(t)
    graph.outputs = outs


class _OutputNode:
    """Stands in for a NodeProto while graph outputs are materialized."""

    op_type = "output"
    input: list[str] = []
    output: list[str] = []

"""Reading ONNX files safely: parse, opset range, tensors, graph inputs, node order."""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qatir.errors import ModelFormatError, QatirError, ShapeError
from qatir.frontends.onnx_ctx import MAX_RANK

MIN_OPSET, MAX_OPSET = 7, 21
MAX_STORED_ELEMENTS = 1 << 34  # more than a 2 GB protobuf can hold
_PLAIN_TYPES = {1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13}  # one numpy item per element in raw_data


def read_model(path: str) -> Any:
    """Parse ``path`` as an ONNX ModelProto; anything unreadable is a ModelFormatError."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read file ({e.strerror})") from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError, UnicodeDecodeError) as e:
        raise ModelFormatError(f"{path}: not a valid ONNX model (truncated or corrupt: {e})") from None
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise ModelFormatError(f"{path}: not an ONNX model (no graph found)")
    _check_names(model, path)
    return model


def _check_names(model: Any, path: str) -> None:
    """Every name and op type must be text (protobuf hands back invalid UTF-8 as bytes)."""
    g = model.graph
    fields: list[Any] = [g.name]
    fields += [op.domain for op in model.opset_import]
    fields += [v.name for v in g.input] + [v.name for v in g.output]
    fields += [t.name for t in g.initializer]
    for n in g.node:
        fields += [n.name, n.op_type, n.domain, *n.input, *n.output]
        fields += [a.name for a in n.attribute]
    for f in fields:
        if not isinstance(f, str):
            raise ModelFormatError(f"{path}: corrupt model: a name is not valid UTF-8 ({f!r:.60})")


def opset_of(model: Any, path: str) -> int:
    """The default-domain opset, checked against the supported range."""
    versions = [op.version for op in model.opset_import if op.domain in ("", "ai.onnx")]
    if not versions:
        raise QatirError(f"{path}: the model imports no default-domain opset "
                         f"(supported: {MIN_OPSET}..{MAX_OPSET})")
    opset = int(versions[0])
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise QatirError(f"{path}: opset {opset} is out of the supported range "
                         f"{MIN_OPSET}..{MAX_OPSET}")
    return opset


def tensor_to_array(proto: Any, where: str) -> np.ndarray:
    """A TensorProto as a numpy array; external or malformed data is a ModelFormatError."""
    from onnx import TensorProto, helper, numpy_helper

    name = proto.name or "<unnamed>"
    if proto.data_location == TensorProto.EXTERNAL:
        raise ModelFormatError(f"{where}: tensor {name!r} uses external data, which qatir "
                               "does not load")
    if proto.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        raise ModelFormatError(f"{where}: tensor {name!r} has unsupported data type "
                               f"{proto.data_type}")
    count = 1
    for d in proto.dims:
        count *= d
        if d < 0 or count > MAX_STORED_ELEMENTS:
            raise ModelFormatError(f"{where}: tensor {name!r} declares an impossible shape "
                                   f"{list(proto.dims)}")
    if proto.HasField("raw_data") and proto.data_type in _PLAIN_TYPES:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(proto.data_type)).itemsize
        if len(proto.raw_data) != count * itemsize:
            raise ModelFormatError(f"{where}: tensor {name!r} declares dims {list(proto.dims)} "
                                   f"({count * itemsize} bytes) but holds "
                                   f"{len(proto.raw_data)} bytes")
    try:
        arr = numpy_helper.to_array(proto)  # the data is in the file: its size bounds memory
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError, OverflowError) as e:
        raise ModelFormatError(f"{where}: tensor {name!r} is malformed ({e})") from None
    if arr.dtype.kind not in "fiub":
        raise ModelFormatError(f"{where}: tensor {name!r} has unsupported dtype {arr.dtype}")
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def value_info_shape(vi: Any) -> tuple[list[int | None] | None, np.dtype]:
    """Declared shape (None for symbolic/missing dims; None if the rank is unknown) and dtype."""
    from onnx import helper

    tt = vi.type.tensor_type
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
    except (KeyError, ValueError, TypeError):
        raise ModelFormatError(f"graph input {vi.name!r} has unsupported element type "
                               f"{tt.elem_type}") from None
    if len(tt.shape.dim) > MAX_RANK:
        raise ModelFormatError(f"graph input {vi.name!r} has rank {len(tt.shape.dim)} "
                               f"(more than {MAX_RANK})")
    if not tt.HasField("shape"):
        return None, dtype
    dims: list[int | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_value") and d.dim_value == 0:
            dims.append(0)
        else:
            dims.append(None)
    return dims, dtype


def apply_input_shapes(path: str, declared: dict[str, list[int | None] | None],
                       input_shapes: Mapping[str, Sequence[int]] | None) -> None:
    """Fix dynamic dims from ``input_shapes`` (source layout), checking names and ranks."""
    if not input_shapes:
        return
    for name, shape in input_shapes.items():
        if name not in declared:
            raise QatirError(f"{path}: input_shapes names {name!r}, which is not a graph input "
                             f"(inputs: {', '.join(sorted(declared)) or 'none'})")
        old = declared[name]
        try:
            shape = [None if d is None or int(d) == -1 else int(d) for d in shape]
        except (TypeError, ValueError):
            raise QatirError(f"{path}: input_shapes[{name!r}] = {shape!r} is not a list of "
                             "ints") from None
        if old is not None and len(old) != len(shape):
            raise ShapeError(f"{path}: input_shapes[{name!r}] = {shape} has rank {len(shape)}, "
                             f"the model declares rank {len(old)} ({old})")
        merged = []
        for d_old, d_new in zip([None] * len(shape) if old is None else old, shape):
            if d_new is not None and (d_new <= 0 or (d_old is not None and d_old != d_new)):
                raise ShapeError(f"{path}: input_shapes[{name!r}] = {shape} conflicts with the "
                                 f"declared shape {old}")
            merged.append(d_old if d_new is None else d_new)
        declared[name] = merged


def topo_order(nodes: Sequence[Any], known: set[str], path: str) -> list[int]:
    """Indices of ``nodes`` in a topological order (stable); cycles and undefined names fail."""
    producer: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            if not o:
                continue
            if o in producer or o in known:
                raise ModelFormatError(f"{path}: tensor {o!r} is defined more than once "
                                       f"(node {n.name or n.op_type!r})")
            producer[o] = i
    indeg = [0] * len(nodes)
    users: list[list[int]] = [[] for _ in nodes]
    for i, n in enumerate(nodes):
        deps = set()
        for name in n.input:
            if not name or name in known:
                continue
            if name not in producer:
                raise ModelFormatError(f"{path}: node {n.name or n.op_type!r} uses {name!r}, "
                                       "which no node, initializer or graph input defines")
            deps.add(producer[name])
        indeg[i] = len(deps)
        for d in deps:
            users[d].append(i)
    heap = [i for i in range(len(nodes)) if indeg[i] == 0]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        i = heapq.heappop(heap)
        order.append(i)
        for u in users[i]:
            indeg[u] -= 1
            if indeg[u] == 0:
                heapq.heappush(heap, u)
    if len(order) != len(nodes):
        stuck = [nodes[i].name or nodes[i].op_type for i in range(len(nodes)) if indeg[i] > 0]
        raise ModelFormatError(f"{path}: the graph has a cycle through nodes {stuck[:5]}")
    return order


def splice_nodes(graph: Any, dropped: set[int], replaced: Mapping[int, Any]) -> int:
    """Rewrite ``graph.node`` in place: nodes whose ``id`` is in ``dropped`` go, except that
    a node ``replaced`` maps takes the place of its replacement (the spelling fusions'
    one edit); returns how many nodes were replaced."""
    if not replaced:
        return 0
    kept = [replaced.get(id(n), n) for n in graph.node if id(n) not in dropped or id(n) in replaced]
    del graph.node[:]
    graph.node.extend(kept)
    return len(replaced)

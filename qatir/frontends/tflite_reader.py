"""Read a .tflite flatbuffer into plain Python records, validating as it goes.

The generated readers of the ``tflite`` package do no bounds checking: a corrupt
offset makes them read garbage, raise a low-level exception, or report a vector
length in the billions. Everything the importer needs is therefore copied out
here, once, into small dataclasses: every vector length is checked against the
file size before it is walked, every index against the table it points into,
and every low-level exception becomes a :class:`ModelFormatError` that names the
file and the record being read. Nothing is allocated from a declared size.
"""

from __future__ import annotations

import importlib
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qatir.errors import ModelFormatError

# Low-level failures of the generated readers on corrupt bytes.
LOW_LEVEL_ERRORS = (struct.error, IndexError, ValueError, TypeError, OverflowError,
                    UnicodeDecodeError, KeyError, AttributeError, RecursionError)

PLACEHOLDER_FOR_GREATER_OP_CODES = 127

# TensorType enum -> numpy dtype (the types qatir can hold).
TENSOR_TYPES: dict[int, np.dtype] = {
    0: np.dtype(np.float32), 1: np.dtype(np.float16), 2: np.dtype(np.int32),
    3: np.dtype(np.uint8), 4: np.dtype(np.int64), 6: np.dtype(np.bool_),
    7: np.dtype(np.int16), 9: np.dtype(np.int8), 10: np.dtype(np.float64),
    12: np.dtype(np.uint64), 15: np.dtype(np.uint32), 16: np.dtype(np.uint16),
}
TENSOR_TYPE_NAMES = {5: "STRING", 8: "COMPLEX64", 11: "COMPLEX128", 13: "RESOURCE",
                     14: "VARIANT", 17: "INT4", 18: "BFLOAT16"}


def describe(e: BaseException) -> str:
    """A low-level exception as 'Type: message' (struct.error reads as struct.error)."""
    name = "struct.error" if isinstance(e, struct.error) else type(e).__name__
    return f"{name}: {e}"


def _mod(name: str) -> Any:
    """A generated module of the ``tflite`` package (module-qualified: the package's
    star imports shadow module names with class names)."""
    return importlib.import_module(f"tflite.{name}")


@dataclass
class SparseDim:
    """One level of a sparse tensor's DimensionMetadata."""

    dense: bool
    dense_size: int = 0
    segments: np.ndarray | None = None
    indices: np.ndarray | None = None


@dataclass
class Sparsity:
    traversal_order: list[int]
    block_map: list[int]
    dims: list[SparseDim]


@dataclass
class TQuant:
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int


@dataclass
class TTensor:
    index: int
    name: str
    shape: tuple[int, ...]
    signature: tuple[int, ...] | None
    dtype: np.dtype
    buffer: int
    quant: TQuant | None
    sparsity: Sparsity | None
    is_variable: bool


@dataclass
class TOp:
    index: int
    code: int
    name: str
    version: int
    custom_code: str | None
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options_type: int
    options_table: Any  # flatbuffers Table of the builtin options, or None
    custom_options: bytes = b""  # a custom op's raw options (layout defined by the op)


@dataclass
class TModel:
    path: str
    size: int
    version: int
    num_subgraphs: int
    tensors: list[TTensor]
    buffers: list[np.ndarray | None]
    ops: list[TOp]
    inputs: list[int]
    outputs: list[int]
    signature_inputs: dict[int, str] = field(default_factory=dict)
    signature_outputs: dict[int, str] = field(default_factory=dict)
    signature_key: str | None = None
    description: str = ""


class Reader:
    """Copies one model out of its bytes; ``where`` names the record being read."""

    def __init__(self, path: str, buf: bytes):
        self.path = path
        self.buf = buf
        self.size = len(buf)
        self.where = "header"

    def fail(self, msg: str) -> ModelFormatError:
        return ModelFormatError(f"{self.path}: {self.where}: {msg}")

    def count(self, n: int, elem_size: int, what: str) -> int:
        """A declared vector length, refused unless the file could hold it."""
        if n < 0 or n * elem_size > self.size:
            raise self.fail(f"{what} declares {n} entries, more than a {self.size}-byte "
                            "file can hold (corrupt or truncated)")
        return n

    def ints(self, arr: Any, n: int, what: str) -> list[int]:
        """A small int vector (``XxxAsNumpy``), length checked first."""
        self.count(n, 1, what)
        if n == 0:
            return []
        return [int(v) for v in np.asarray(arr).reshape(-1)[:n]]

    def text(self, raw: bytes | None) -> str:
        return "" if raw is None else raw.decode("utf-8", errors="replace")


def read_model(path: str, buf: bytes) -> TModel:
    """Validate and copy out subgraph 0 of a TFLite model held in ``buf``."""
    r = Reader(path, buf)
    try:
        return _read(r)
    except ModelFormatError:
        raise
    except LOW_LEVEL_ERRORS as e:
        raise r.fail(f"corrupt flatbuffer ({describe(e)})") from None
    except MemoryError:
        raise r.fail("corrupt flatbuffer (a declared size does not fit in memory)") from None


def _read(r: Reader) -> TModel:
    if r.size < 8:
        raise r.fail(f"not a TFLite flatbuffer ({r.size} bytes is too short)")
    model_mod = _mod("Model")
    if not model_mod.Model.ModelBufferHasIdentifier(r.buf, 0):
        ident = r.buf[4:8]
        raise r.fail(f"not a TFLite flatbuffer (file identifier {ident!r}, expected b'TFL3')")
    root = struct.unpack_from("<I", r.buf, 0)[0]
    if root + 4 > r.size:
        raise r.fail(f"root table offset {root} lies outside the {r.size}-byte file")
    model = model_mod.Model.GetRootAs(r.buf, 0)
    version = int(model.Version())
    if version != 3:
        raise r.fail(f"schema version {version}, expected 3")
    n_sub = r.count(model.SubgraphsLength(), 4, "subgraphs")
    if n_sub == 0:
        raise r.fail("model has no subgraphs")
    if n_sub > 1:
        warnings.warn(f"{r.path}: model has {n_sub} subgraphs; importing subgraph 0 only",
                      stacklevel=3)
    description = r.text(model.Description())
    buffers = _read_buffers(r, model)
    opcodes = _read_opcodes(r, model)
    r.where = "subgraph 0"
    sub = model.Subgraphs(0)
    tensors = [_read_tensor(r, sub, i, len(buffers))
               for i in range(r.count(sub.TensorsLength(), 4, "tensors"))]
    r.where = "subgraph 0"
    inputs = _check_indices(r, r.ints(sub.InputsAsNumpy(), sub.InputsLength(), "inputs"),
                            len(tensors), "graph input")
    outputs = _check_indices(r, r.ints(sub.OutputsAsNumpy(), sub.OutputsLength(), "outputs"),
                             len(tensors), "graph output")
    ops = [_read_op(r, sub, i, opcodes, len(tensors))
           for i in range(r.count(sub.OperatorsLength(), 4, "operators"))]
    tm = TModel(r.path, r.size, version, n_sub, tensors, buffers, ops, inputs, outputs,
                description=description)
    _read_signature(r, model, tm)
    return tm


def _check_indices(r: Reader, idx: list[int], n: int, what: str) -> list[int]:
    for i in idx:
        if not 0 <= i < n:
            raise r.fail(f"{what} tensor index {i} out of range (subgraph has {n} tensors)")
    return idx


def _read_buffers(r: Reader, model: Any) -> list[np.ndarray | None]:
    out: list[np.ndarray | None] = []
    for i in range(r.count(model.BuffersLength(), 4, "buffers")):
        r.where = f"buffer {i}"
        b = model.Buffers(i)
        offset = int(b.Offset())
        if offset > 1:  # data stored after the flatbuffer (models over 2 GB)
            size = int(b.Size())
            if offset + size > r.size:
                raise r.fail(f"external data [{offset}, {offset + size}) lies outside the "
                             f"{r.size}-byte file (truncated?)")
            out.append(np.frombuffer(r.buf, np.uint8, count=size, offset=offset))
            continue
        n = b.DataLength()
        if n == 0:
            out.append(None)
            continue
        r.count(n, 1, "buffer data")
        out.append(b.DataAsNumpy())
    return out


def _read_opcodes(r: Reader, model: Any) -> list[tuple[int, int, str | None]]:
    """(builtin code, version, custom code) per operator code entry."""
    codes = []
    for i in range(r.count(model.OperatorCodesLength(), 4, "operator codes")):
        r.where = f"operator code {i}"
        oc = model.OperatorCodes(i)
        # The PyPI reader's BuiltinCode() answers the deprecated field for codes < 127;
        # read the raw int32 field (slot 10) and take the larger of the two, as TF does.
        o = oc._tab.Offset(10)
        builtin = oc._tab.Get(_flags().Int32Flags, o + oc._tab.Pos) if o else 0
        code = max(int(builtin), int(oc.DeprecatedBuiltinCode()))
        custom = oc.CustomCode()
        codes.append((code, int(oc.Version()), None if custom is None else r.text(custom)))
    return codes


def _flags() -> Any:
    import flatbuffers.number_types

    return flatbuffers.number_types


def _read_tensor(r: Reader, sub: Any, i: int, n_buffers: int) -> TTensor:
    r.where = f"tensor {i}"
    t = sub.Tensors(i)
    name = r.text(t.Name())
    r.where = f"tensor {i} ({name!r})"
    shape = tuple(r.ints(t.ShapeAsNumpy(), t.ShapeLength(), "shape"))
    if len(shape) > 16:
        raise r.fail(f"rank {len(shape)} is not supported (at most 16)")
    if any(d < 0 for d in shape):
        raise r.fail(f"negative dimension in shape {list(shape)}")
    sig = None
    if t.ShapeSignatureLength() > 0:
        sig = tuple(r.ints(t.ShapeSignatureAsNumpy(), t.ShapeSignatureLength(), "shape_signature"))
        if len(sig) != len(shape) or any(d < -1 for d in sig):
            raise r.fail(f"shape_signature {list(sig)} does not fit shape {list(shape)}")
    ttype = int(t.Type())
    if ttype not in TENSOR_TYPES:
        raise r.fail(f"tensor type {TENSOR_TYPE_NAMES.get(ttype, ttype)} is not supported")
    buffer = int(t.Buffer())
    if not 0 <= buffer < max(n_buffers, 1):
        raise r.fail(f"buffer index {buffer} out of range (model has {n_buffers} buffers)")
    quant = _read_quant(r, t, shape)
    sparsity = _read_sparsity(r, t) if t.Sparsity() is not None else None
    return TTensor(i, name, shape, sig, TENSOR_TYPES[ttype], buffer, quant, sparsity,
                   bool(t.IsVariable()))


def _read_quant(r: Reader, t: Any, shape: tuple[int, ...]) -> TQuant | None:
    q = t.Quantization()
    if q is None or q.ScaleLength() == 0:
        return None
    n = r.count(q.ScaleLength(), 4, "quantization scale")
    scale = np.array(q.ScaleAsNumpy(), dtype=np.float32).reshape(-1)[:n]
    nz = r.count(q.ZeroPointLength(), 8, "quantization zero_point")
    zp = (np.array(q.ZeroPointAsNumpy(), dtype=np.int64).reshape(-1)[:nz] if nz
          else np.zeros(n, np.int64))
    if zp.size != scale.size:
        raise r.fail(f"{scale.size} scales but {zp.size} zero points")
    axis = int(q.QuantizedDimension())
    if scale.size > 1 and not (0 <= axis < len(shape) and shape[axis] == scale.size):
        raise r.fail(f"{scale.size} per-channel scales do not fit quantized dimension {axis} "
                     f"of shape {list(shape)}")
    if not np.all(np.isfinite(scale)):
        raise r.fail("quantization scale is not finite")
    return TQuant(scale, zp, axis)


def _read_sparsity(r: Reader, t: Any) -> Sparsity:
    sp = t.Sparsity()
    order = r.ints(sp.TraversalOrderAsNumpy(), sp.TraversalOrderLength(), "traversal_order")
    block_map = r.ints(sp.BlockMapAsNumpy(), sp.BlockMapLength(), "block_map")
    dims = []
    vec_types = {1: ("Int32Vector", 4), 2: ("Uint16Vector", 2), 3: ("Uint8Vector", 1)}
    for k in range(r.count(sp.DimMetadataLength(), 4, "dim_metadata")):
        dm = sp.DimMetadata(k)
        if int(dm.Format()) == 0:
            dims.append(SparseDim(True, int(dm.DenseSize())))
            continue
        arrays = []
        for typ, tab in ((dm.ArraySegmentsType(), dm.ArraySegments()),
                         (dm.ArrayIndicesType(), dm.ArrayIndices())):
            if int(typ) not in vec_types or tab is None:
                raise r.fail(f"sparse dim {k}: missing or unknown index vector type {typ}")
            cls_name, width = vec_types[int(typ)]
            vec = getattr(_mod(cls_name), cls_name)()
            vec.Init(tab.Bytes, tab.Pos)
            n = r.count(vec.ValuesLength(), width, f"sparse dim {k} vector")
            arrays.append(np.array(vec.ValuesAsNumpy(), dtype=np.int64).reshape(-1)[:n]
                          if n else np.zeros(0, np.int64))
        dims.append(SparseDim(False, 0, arrays[0], arrays[1]))
    return Sparsity(order, block_map, dims)


def _read_op(r: Reader, sub: Any, i: int, opcodes: list[tuple[int, int, str | None]],
             n_tensors: int) -> TOp:
    r.where = f"operator {i}"
    op = sub.Operators(i)
    idx = int(op.OpcodeIndex())
    if not 0 <= idx < len(opcodes):
        raise r.fail(f"opcode index {idx} out of range (model has {len(opcodes)} operator codes)")
    code, version, custom = opcodes[idx]
    name = builtin_name(code) if custom is None or code != 32 else f"CUSTOM:{custom}"
    r.where = f"operator {i} ({name})"
    inputs = tuple(r.ints(op.InputsAsNumpy(), op.InputsLength(), "inputs"))
    outputs = tuple(r.ints(op.OutputsAsNumpy(), op.OutputsLength(), "outputs"))
    for t in inputs:
        if not -1 <= t < n_tensors:
            raise r.fail(f"input tensor index {t} out of range (subgraph has {n_tensors} tensors)")
    for t in outputs:
        if not 0 <= t < n_tensors:
            raise r.fail(f"output tensor index {t} out of range "
                         f"(subgraph has {n_tensors} tensors)")
    custom_options = b""
    if custom is not None and op.CustomOptionsLength():
        custom_options = bytes(op.CustomOptionsAsNumpy().tobytes())
    return TOp(i, code, name, version, custom, inputs, outputs, int(op.BuiltinOptionsType()),
               op.BuiltinOptions(), custom_options)


def builtin_name(code: int) -> str:
    names = _builtin_names()
    return names.get(code, f"BUILTIN_{code}")


_NAMES: dict[int, str] = {}


def _builtin_names() -> dict[int, str]:
    if not _NAMES:
        enum = _mod("BuiltinOperator").BuiltinOperator
        for k, v in vars(enum).items():
            if not k.startswith("_") and isinstance(v, int):
                _NAMES.setdefault(v, k)
    return _NAMES


def options(op: TOp, class_name: str) -> Any:
    """The op's builtin options as ``class_name`` (e.g. "Conv2DOptions"), or None when
    absent or of another type (the runtime then uses the defaults, and so do we)."""
    enum = _mod("BuiltinOptions").BuiltinOptions
    if op.options_table is None or op.options_type != getattr(enum, class_name):
        return None
    obj = getattr(_mod(class_name), class_name)()
    obj.Init(op.options_table.Bytes, op.options_table.Pos)
    return obj


def _read_signature(r: Reader, model: Any, tm: TModel) -> None:
    """Names from the first SignatureDef of subgraph 0, keyed by tensor index."""
    r.where = "signature_defs"
    for k in range(r.count(model.SignatureDefsLength(), 4, "signature_defs")):
        sd = model.SignatureDefs(k)
        if int(sd.SubgraphIndex()) != 0:
            continue
        for length, get, target in ((sd.InputsLength(), sd.Inputs, tm.signature_inputs),
                                    (sd.OutputsLength(), sd.Outputs, tm.signature_outputs)):
            for j in range(r.count(length, 4, "signature tensors")):
                m = get(j)
                idx = int(m.TensorIndex())
                name = r.text(m.Name())
                if 0 <= idx < len(tm.tensors) and name:
                    target[idx] = name
        tm.signature_key = r.text(sd.SignatureKey())
        return

"""The TFLite flatbuffer writer: a lowered int8 (or float) graph -> ``.tflite`` bytes.

Built with the ``flatbuffers`` Builder and the PyPI ``tflite`` package's
generated builder functions (module-qualified; the package has no object
API). Schema version 3, file identifier ``TFL3``, an empty sentinel buffer 0,
constant data 16-byte aligned (the generated Python ignores ``force_align``,
so the vectors are started by hand), both op-code fields, op versions from
:mod:`qatir.tflite_writer_ops`, ``min_runtime_version`` metadata (a 16-byte
buffer) and one SignatureDef ``serving_default`` with the graph's input and
output names. Constants that do not fit in 2 GB are written after the
flatbuffer and addressed by ``Buffer.offset``/``size`` (16-byte aligned), the
schema's layout for large models; a flatbuffer that would still exceed 2 GB is
refused by :func:`check_size` with the size in the message.
"""

from __future__ import annotations

import importlib
from typing import Any

import flatbuffers
import numpy as np

from qatir.errors import ExportError, QatirError, UnsupportedOpError
from qatir.ir import Graph, QuantParams, Tensor
from qatir.limits import check_fits
from qatir.lower import is_lowered, is_quantized, lower
from qatir.lowering.islands import FloatIslandWarning, report_islands
from qatir.lowering.litert import check_dims
from qatir.target import MAX_FLATBUFFER, min_runtime_version
from qatir.tflite_writer_ops import EMITTERS, Ctx, OpSpec, emit

__all__ = ["MAX_FLATBUFFER", "FloatIslandWarning", "check_size", "report_islands", "to_tflite"]
SIGNATURE_KEY = "serving_default"
_TYPES = {"float32": 0, "float16": 1, "int32": 2, "uint8": 3, "int64": 4, "bool": 6,
          "int16": 7, "int8": 9}


def _mod(name: str) -> Any:
    return importlib.import_module(f"tflite.{name}")


def _enum(module: str, name: str) -> int:
    return getattr(getattr(_mod(module), module), name)


def check_size(nbytes: int) -> None:
    """Refuse models the 32-bit flatbuffer offsets cannot address (over 2 GB)."""
    if nbytes > MAX_FLATBUFFER:
        raise ExportError(f"model needs {nbytes / 2**30:.2f} GiB ({nbytes} bytes); flatbuffers "
                          "without offset buffers are limited to 2 GiB")


def to_tflite(graph: Graph, io: str = "int8", batch_size: int = 1,
              offset_buffers: bool | None = None, print_ir_after: Any = None,
              ir_out: Any = None, strict_int8: bool = False, mode: str = "int8",
              **opts: Any) -> bytes:
    """Lower ``graph`` if needed and write it as a TFLite flatbuffer.

    A graph with FAKE_QUANT nodes (or already lowered) becomes an int8 model with
    ``io`` edges ("int8", "float" or "uint8"); a float graph becomes a float32
    model. Dynamic dims of size ``None`` become ``batch_size``.
    ``offset_buffers``: put constant data after the flatbuffer, addressed by
    each Buffer's ``offset``/``size`` (the schema's layout for models over 2 GB);
    ``None`` chooses it only when the constants do not fit in 2 GB.
    ``print_ir_after`` / ``ir_out``: dump the IR after lowering steps (see
    :func:`qatir.lowering.lower`).

    Nodes of a quantized graph that the table keeps float, or that have no int8
    kernel, become float islands (float ops between DEQUANTIZE and QUANTIZE): one
    :class:`FloatIslandWarning` lists them with their op and MAC share.
    ``strict_int8=True`` refuses such a graph instead (``ExportError`` naming them).

    ``mode``: "int8" (the above), "float" (float32 throughout), "dynamic" (int8 weights,
    float activations: LiteRT's hybrid kernels) or "float16" (float16 weights behind
    DEQUANTIZE); the last three have float edges whatever ``io`` says (:mod:`qatir.modes`).
    """
    from qatir.modes import check_mode, lower_mode

    if opts:
        raise ExportError(f"unknown to_tflite option(s): {sorted(opts)}")
    check_mode(mode)
    # the lowered clone, its quantized constants and the flatbuffer each hold a copy
    check_fits(graph, copies=3, what="writing a TFLite model")
    dump = {"print_ir_after": print_ir_after, "ir_out": ir_out}
    if mode != "int8":
        if is_lowered(graph):
            raise ExportError(f"graph {graph.name!r} is already int8; mode={mode!r} needs its "
                              "float (or fake-quant) original")
        g = lower_mode(graph, mode, **dump)
    elif is_quantized(graph) or is_lowered(graph):
        g = lower(graph, io=io, **dump)
    else:
        g = lower(graph, **dump)
    report_islands(g, strict_int8)
    _fix_batch(g, batch_size)
    check_dims(g)
    return _Writer(g).build(offset_buffers)


def _align16(n: int) -> int:
    return (n + 15) // 16 * 16


def _raw(arr: np.ndarray) -> bytes:
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def _fix_batch(g: Graph, batch_size: int) -> None:
    """Dynamic leading (batch) dims become ``batch_size``; other dynamic dims are refused.

    Shapes are then inferred again from the now static inputs, so a node that only
    fits some batch sizes (a GATHER or RESHAPE along the batch) is refused here,
    naming it, instead of by LiteRT.
    """
    for t in g.inputs:
        if any(d is None for d in t.shape[1:]):
            raise ExportError(f"input %{t.name} has dynamic non-batch dims {list(t.shape)}; "
                              "fix them when loading (input_shapes=...)")
    dynamic = [t for t in g.inputs if t.shape[:1] == (None,)]
    if not dynamic:
        return
    for t in dynamic:
        t.shape = (batch_size,) + t.shape[1:]
    for node in g.nodes:
        try:
            g.reinfer(node)
        except QatirError as e:
            raise ExportError(f"node {node.name!r} ({node.op}) does not fit batch size "
                              f"{batch_size}: {e}") from None
    for t in g.tensors.values():
        if any(d is None for d in t.shape):
            t.shape = tuple(batch_size if d is None else d for d in t.shape)


class _Writer:
    def __init__(self, g: Graph):
        self.g = g
        self.tensors: list[tuple[str, tuple[int, ...], np.dtype, int, QuantParams | None]] = []
        self.index: dict[int, int] = {}
        self.buffers: list[np.ndarray | None] = [None]
        self.ops: list[OpSpec] = []

    # ------------------------------------------------------------- collection
    def tensor(self, t: Tensor) -> int:
        k = id(t)
        if k not in self.index:
            buf = 0
            if t.is_const:
                buf = self._buffer(t.data)
            if t.dtype.name not in _TYPES:
                raise ExportError(f"tensor %{t.name}: dtype {t.dtype} has no TFLite type")
            self.index[k] = len(self.tensors)
            self.tensors.append((t.name, tuple(int(d) for d in t.shape), t.dtype, buf, t.quant))
        return self.index[k]

    def const(self, arr: np.ndarray, name: str, quant: QuantParams | None) -> int:
        idx = len(self.tensors)
        self.tensors.append((name, tuple(arr.shape), arr.dtype, self._buffer(arr), quant))
        return idx

    def _buffer(self, data: np.ndarray) -> int:
        self.buffers.append(np.ascontiguousarray(data))
        return len(self.buffers) - 1

    def collect(self) -> None:
        missing: dict[str, int] = {}
        for node in self.g.nodes:
            if node.op not in EMITTERS:
                missing[node.op] = missing.get(node.op, 0) + 1
        if missing:
            raise UnsupportedOpError(f"graph {self.g.name!r} (TFLite export)", missing)
        for t in self.g.inputs:
            self.tensor(t)
        ctx = Ctx(self.tensor, self.const)
        for node in self.g.nodes:
            self.ops.append(emit(node, ctx))
        for t in self.g.outputs:
            self.tensor(t)

    # -------------------------------------------------------------- assembly
    def build(self, offset_buffers: bool | None = None) -> bytes:
        self.collect()
        data_bytes = sum(int(b.nbytes) for b in self.buffers if b is not None)
        if offset_buffers is None:
            offset_buffers = data_bytes + 64 * len(self.tensors) + 1024 > MAX_FLATBUFFER
        if not offset_buffers:
            check_size(data_bytes + 64 * len(self.tensors) + 1024)
        codes = sorted({(op.code, op.version) for op in self.ops})
        runtime = min_runtime_version(set(codes))
        self.meta_buf = len(self.buffers)
        self.buffers.append(np.frombuffer(runtime.encode().ljust(16, b"\0"), np.uint8))
        if not offset_buffers:
            out = self._serialize(codes, None)
            check_size(len(out))
            return out
        # Offsets do not change the layout (every offset field is present), so one pass
        # with placeholders gives the flatbuffer's size, a second one the real offsets.
        big = [i for i, a in enumerate(self.buffers) if a is not None and i != self.meta_buf]
        size = len(self._serialize(codes, {i: (2, 2) for i in big}))
        locs, pos = {}, _align16(size)
        for i in big:
            locs[i] = (pos, int(self.buffers[i].nbytes))
            pos = _align16(pos + int(self.buffers[i].nbytes))
        head = self._serialize(codes, locs)
        check_size(len(head))
        parts = [head]
        for i in big:
            parts.append(b"\0" * (locs[i][0] - sum(len(p) for p in parts)))
            parts.append(_raw(self.buffers[i]))
        return b"".join(parts)

    def _serialize(self, codes: list[tuple[str, int]],
                   offsets: dict[int, tuple[int, int]] | None) -> bytes:
        """The flatbuffer; buffers listed in ``offsets`` get (offset, size) instead of data."""
        code_index = {c: i for i, c in enumerate(codes)}
        inline = sum(int(a.nbytes) for i, a in enumerate(self.buffers)
                     if a is not None and not (offsets and i in offsets))
        # sized for the data, its alignment and the tables, so the builder never regrows
        b = flatbuffers.Builder(inline + 16 * len(self.buffers) + 256 * len(self.tensors)
                                + 128 * len(self.ops) + 65536)
        buffers = [self._write_buffer(b, None, offsets[i]) if offsets and i in offsets
                   else self._write_buffer(b, arr) for i, arr in enumerate(self.buffers)]
        tensors = [self._write_tensor(b, *t) for t in self.tensors]
        operators = [self._write_operator(b, op, code_index[(op.code, op.version)])
                     for op in self.ops]
        subgraph = self._write_subgraph(b, tensors, operators)
        opcodes = [self._write_opcode(b, code, version) for code, version in codes]
        signature = self._write_signature(b)
        metadata = self._write_metadata(b, "min_runtime_version", self.meta_buf)
        desc = b.CreateString("qatir")

        M = _mod("Model")
        vecs = {name: self._table_vector(b, M.ModelStart.__module__, name, items)
                for name, items in (("OperatorCodes", opcodes), ("Subgraphs", [subgraph]),
                                    ("Buffers", buffers), ("SignatureDefs", [signature]),
                                    ("Metadata", [metadata]))}
        M.ModelStart(b)
        M.ModelAddVersion(b, 3)
        M.ModelAddOperatorCodes(b, vecs["OperatorCodes"])
        M.ModelAddSubgraphs(b, vecs["Subgraphs"])
        M.ModelAddDescription(b, desc)
        M.ModelAddBuffers(b, vecs["Buffers"])
        M.ModelAddMetadata(b, vecs["Metadata"])
        M.ModelAddSignatureDefs(b, vecs["SignatureDefs"])
        b.Finish(M.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())

    @staticmethod
    def _table_vector(b: flatbuffers.Builder, module: str, field: str, items: list[int]) -> int:
        mod = importlib.import_module(module)
        prefix = module.rsplit(".", 1)[1]
        getattr(mod, f"{prefix}Start{field}Vector")(b, len(items))
        for off in reversed(items):
            b.PrependUOffsetTRelative(off)
        return b.EndVector()

    @staticmethod
    def _write_buffer(b: flatbuffers.Builder, arr: np.ndarray | None,
                      location: tuple[int, int] | None = None) -> int:
        B = _mod("Buffer")
        data = None
        if arr is not None:
            raw = _raw(arr)
            b.StartVector(1, len(raw), 16)
            b.head = b.head - len(raw)
            b.Bytes[b.head:b.head + len(raw)] = raw
            data = b.EndVector()
        B.BufferStart(b)
        if data is not None:
            B.BufferAddData(b, data)
        if location is not None:
            B.BufferAddOffset(b, location[0])
            B.BufferAddSize(b, location[1])
        return B.BufferEnd(b)

    @staticmethod
    def _write_quant(b: flatbuffers.Builder, q: QuantParams) -> int:
        Q = _mod("QuantizationParameters")
        scale = b.CreateNumpyVector(np.asarray(q.scale, np.float32))
        zp = b.CreateNumpyVector(np.asarray(q.zero_point, np.int64))
        Q.QuantizationParametersStart(b)
        Q.QuantizationParametersAddScale(b, scale)
        Q.QuantizationParametersAddZeroPoint(b, zp)
        Q.QuantizationParametersAddQuantizedDimension(b, int(q.axis or 0))
        return Q.QuantizationParametersEnd(b)

    def _write_tensor(self, b: flatbuffers.Builder, name: str, shape: tuple[int, ...],
                      dtype: np.dtype, buf: int, quant: QuantParams | None) -> int:
        T = _mod("Tensor")
        name_off = b.CreateString(name)
        shape_off = b.CreateNumpyVector(np.asarray(shape, np.int32))
        q_off = self._write_quant(b, quant) if quant is not None else None
        T.TensorStart(b)
        T.TensorAddShape(b, shape_off)
        T.TensorAddType(b, _TYPES[np.dtype(dtype).name])
        T.TensorAddBuffer(b, buf)
        T.TensorAddName(b, name_off)
        if q_off is not None:
            T.TensorAddQuantization(b, q_off)
        return T.TensorEnd(b)

    @staticmethod
    def _write_options(b: flatbuffers.Builder, name: str, fields: dict[str, Any]) -> int:
        mod = _mod(name)
        vectors = {}
        for k, v in fields.items():
            if isinstance(v, (list, tuple)):
                vectors[k] = b.CreateNumpyVector(np.asarray(v, np.int32))
        getattr(mod, f"{name}Start")(b)
        for k, v in fields.items():
            getattr(mod, f"{name}Add{k}")(b, vectors.get(k, v))
        return getattr(mod, f"{name}End")(b)

    def _write_operator(self, b: flatbuffers.Builder, op: OpSpec, code_index: int) -> int:
        Op = _mod("Operator")
        ins = b.CreateNumpyVector(np.asarray(op.inputs, np.int32))
        outs = b.CreateNumpyVector(np.asarray(op.outputs, np.int32))
        opts = self._write_options(b, op.options, op.fields) if op.options else None
        Op.OperatorStart(b)
        Op.OperatorAddOpcodeIndex(b, code_index)
        Op.OperatorAddInputs(b, ins)
        Op.OperatorAddOutputs(b, outs)
        if opts is not None:
            Op.OperatorAddBuiltinOptionsType(b, _enum("BuiltinOptions", op.options))
            Op.OperatorAddBuiltinOptions(b, opts)
        return Op.OperatorEnd(b)

    def _write_subgraph(self, b: flatbuffers.Builder, tensors: list[int],
                        operators: list[int]) -> int:
        S = _mod("SubGraph")
        mod = S.SubGraphStart.__module__
        t_vec = self._table_vector(b, mod, "Tensors", tensors)
        o_vec = self._table_vector(b, mod, "Operators", operators)
        ins = b.CreateNumpyVector(np.asarray([self.index[id(t)] for t in self.g.inputs], np.int32))
        outs = b.CreateNumpyVector(np.asarray([self.index[id(t)] for t in self.g.outputs],
                                              np.int32))
        name = b.CreateString(self.g.name)
        S.SubGraphStart(b)
        S.SubGraphAddTensors(b, t_vec)
        S.SubGraphAddInputs(b, ins)
        S.SubGraphAddOutputs(b, outs)
        S.SubGraphAddOperators(b, o_vec)
        S.SubGraphAddName(b, name)
        return S.SubGraphEnd(b)

    @staticmethod
    def _write_opcode(b: flatbuffers.Builder, code_name: str, version: int) -> int:
        C = _mod("OperatorCode")
        code = _enum("BuiltinOperator", code_name)
        C.OperatorCodeStart(b)
        C.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
        C.OperatorCodeAddBuiltinCode(b, code)
        C.OperatorCodeAddVersion(b, version)
        return C.OperatorCodeEnd(b)

    def _tensor_maps(self, b: flatbuffers.Builder, tensors: list[Tensor]) -> list[int]:
        TM = _mod("TensorMap")
        out = []
        for t in tensors:
            name = b.CreateString(t.name)
            TM.TensorMapStart(b)
            TM.TensorMapAddName(b, name)
            TM.TensorMapAddTensorIndex(b, self.index[id(t)])
            out.append(TM.TensorMapEnd(b))
        return out

    def _write_signature(self, b: flatbuffers.Builder) -> int:
        SD = _mod("SignatureDef")
        mod = SD.SignatureDefStart.__module__
        ins = self._table_vector(b, mod, "Inputs", self._tensor_maps(b, self.g.inputs))
        outs = self._table_vector(b, mod, "Outputs", self._tensor_maps(b, self.g.outputs))
        key = b.CreateString(SIGNATURE_KEY)
        SD.SignatureDefStart(b)
        SD.SignatureDefAddInputs(b, ins)
        SD.SignatureDefAddOutputs(b, outs)
        SD.SignatureDefAddSignatureKey(b, key)
        SD.SignatureDefAddSubgraphIndex(b, 0)
        return SD.SignatureDefEnd(b)

    @staticmethod
    def _write_metadata(b: flatbuffers.Builder, name: str, buffer: int) -> int:
        MD = _mod("Metadata")
        name_off = b.CreateString(name)
        MD.MetadataStart(b)
        MD.MetadataAddName(b, name_off)
        MD.MetadataAddBuffer(b, buffer)
        return MD.MetadataEnd(b)

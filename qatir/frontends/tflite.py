"""Import a .tflite model (float, fp16-weight, dynamic-range or full int8) into the IR.

Subgraph 0 becomes a :class:`qatir.Graph`. Operators map one to one onto IR
ops (``tflite_ops``, ``tflite_shape_ops``); constant plumbing the converter leaves behind is folded
here: fp16 weights behind DEQUANTIZE become float32 constants, sparse weights
behind DENSIFY are densified, int8 weights of dynamic-range ("hybrid") models
are dequantized exactly, ``(q - zp) * scale`` per channel, and shape plumbing
on constants (SHAPE, PACK, STRIDED_SLICE, ...) is evaluated.

An already-quantized model keeps its integer form: int8 activations and
weights, int32 biases, scales and zero points on every tensor
(``Tensor.quant``, per-channel axis included) and the QUANTIZE / DEQUANTIZE
nodes at its edges.

Graph input/output names come from the model's SignatureDef when it has one.
Every problem with the file raises a QatirError naming the file and the
operator or tensor; unknown operators are listed all at once, with counts.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from qatir.errors import ModelFormatError, QatirError, ShapeError, UnsupportedOpError
from qatir.frontends import tflite_custom as _custom_ops  # noqa: F401  (registers converters)
from qatir.frontends import tflite_fold as tfold
from qatir.frontends import tflite_ops as tops
from qatir.frontends import tflite_shape_ops as _shape_ops  # noqa: F401  (registers converters)
from qatir.frontends.tflite_quant import dequantize, lowered_weights, quant_params
from qatir.frontends.tflite_reader import (
    LOW_LEVEL_ERRORS,
    TModel,
    TOp,
    TTensor,
    describe,
    options,
    read_model,
)
from qatir.frontends.tflite_sparse import densify
from qatir.ir import Graph, QuantParams, Tensor
from qatir.ops import fact_map

MAX_FILE_BYTES = 1 << 33
# IR weight ops -> output-channel axis of their weights (the ops' channel_axis facts).
WEIGHT_OPS = fact_map("channel_axis")


def load_tflite(path: str | os.PathLike) -> Graph:
    """Read ``path`` and return subgraph 0 as an IR graph (verified)."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise ModelFormatError(f"{path}: {size} bytes is larger than qatir reads "
                                   f"({MAX_FILE_BYTES} bytes)")
        with open(path, "rb") as f:
            buf = f.read()
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read: {e}") from None
    return load_tflite_bytes(buf, path)


def load_tflite_bytes(buf: bytes, source: str = "<bytes>") -> Graph:
    """Import a model held in memory; ``source`` names it in error messages."""
    model = read_model(source, bytes(buf))
    return _Importer(model).run()


class _Importer:
    """Builds the graph operator by operator; the ``ctx`` of the op converters."""

    def __init__(self, model: TModel):
        self.m = model
        self.path = model.path
        self.g = Graph(_graph_name(model.path))
        self.g.metadata["source"] = {"format": "tflite", "file": Path(model.path).name}
        if model.signature_key:
            self.g.metadata["source"]["signature"] = model.signature_key
        self.names = self._tensor_names()
        self.reserved = set(self.names)
        self.values: dict[int, Tensor] = {}          # TFLite index -> IR tensor
        self.consts: dict[int, np.ndarray] = {}      # TFLite index -> constant value
        self.ir_consts: dict[tuple[int, str], Tensor] = {}
        self.symbolic: set[int] = set()              # shape vectors holding -1 for dynamic dims
        self.where = "graph"

    # --------------------------------------------------------------- driver
    def run(self) -> Graph:
        try:
            self._check_supported()
            self._load_constants()
            for t in self.m.inputs:
                self._add_input(t)
            for op in self.m.ops:
                self.where = f"operator {op.index} ({op.name})"
                self._convert(op)
            self.where = "graph outputs"
            self.g.outputs = [self._output(t) for t in self.m.outputs]
            self.g.verify()
        except QatirError:
            raise
        except (*LOW_LEVEL_ERRORS, ArithmeticError) as e:
            raise ModelFormatError(f"{self.path}: {self.where}: corrupt or inconsistent model "
                                   f"({describe(e)})") from None
        except MemoryError:
            raise ModelFormatError(f"{self.path}: {self.where}: a declared size does not fit "
                                   "in memory") from None
        return self.g

    def _check_supported(self) -> None:
        bad: Counter[str] = Counter()
        where: dict[str, list[int]] = {}
        for op in self.m.ops:
            if op.name not in tops.CONVERTERS and op.name not in tops.FOLDERS:
                bad[op.name] += 1
                where.setdefault(op.name, []).append(op.index)
        if bad:
            detail = "; ".join(f"{k} at operator index {', '.join(map(str, v[:10]))}"
                               f"{' ...' if len(v) > 10 else ''}" for k, v in sorted(where.items()))
            calls = sorted(set(bad) & {"WHILE", "IF", "CALL", "CALL_ONCE"})
            if calls:
                detail += (f"; subgraph 0 calls other subgraphs through {', '.join(calls)} "
                           "(control flow is not supported)")
            raise UnsupportedOpError(self.path, dict(bad), detail)

    def _tensor_names(self) -> list[str]:
        """Unique IR names for every TFLite tensor; signature names take precedence."""
        sig = {**self.m.signature_inputs, **self.m.signature_outputs}
        taken = set(sig.values())
        names = []
        for t in self.m.tensors:
            if t.index in sig:
                names.append(sig[t.index])
                continue
            base = t.name or f"t{t.index}"
            name, k = base, 0
            while name in taken:
                k += 1
                name = f"{base}_{k}"
            taken.add(name)
            names.append(name)
        return names

    # ------------------------------------------------------------ constants
    def _load_constants(self) -> None:
        for t in self.m.tensors:
            data = self.m.buffers[t.buffer] if t.buffer > 0 and t.buffer < len(self.m.buffers) else None
            if data is None or t.index in self.m.inputs:
                continue
            self.where = f"tensor {t.index} ({t.name!r})"
            raw = np.frombuffer(data.tobytes(), dtype=np.uint8)
            if t.sparsity is not None:
                if raw.size % t.dtype.itemsize:
                    raise self.fail_t(t, f"sparse data of {raw.size} bytes is not a whole "
                                         f"number of {t.dtype} values")
                self.consts[t.index] = raw.view(t.dtype).copy()  # compressed values
                continue
            count = int(np.prod([int(d) for d in t.shape], dtype=object)) if t.shape else 1
            if count * t.dtype.itemsize != raw.size:
                raise self.fail_t(t, f"buffer {t.buffer} holds {raw.size} bytes, shape "
                                     f"{list(t.shape)} of {t.dtype} needs {count * t.dtype.itemsize}")
            self.consts[t.index] = raw.view(t.dtype).reshape(t.shape).copy()

    def fail_t(self, t: TTensor, msg: str) -> ModelFormatError:
        return ModelFormatError(f"{self.path}: tensor {t.index} ({t.name!r}): {msg}")

    def const_tensor(self, idx: int, mode: str = "raw") -> Tensor:
        """The IR constant for TFLite tensor ``idx`` (``mode="deq"``: dequantized float)."""
        key = (idx, mode)
        if key in self.ir_consts:
            return self.ir_consts[key]
        t = self.m.tensors[idx]
        if t.sparsity is not None:
            raise ModelFormatError(f"{self.path}: {self.where}: sparse tensor {idx} "
                                   f"({t.name!r}) is used without DENSIFY")
        arr = self.consts[idx]
        quant = None
        if mode == "deq":
            arr = self.dequantized(idx, arr)
        else:
            quant = self.quant_of(t, arr.dtype)
        base = self.names[idx] if (idx, "raw") not in self.ir_consts else self.names[idx] + "_deq"
        tensor = self.g.const(arr, name=self.fresh(base), quant=quant)
        self.ir_consts[key] = tensor
        return tensor

    def fresh(self, base: str) -> str:
        """``base``, or ``base_k``, free in the graph and among the reserved tensor names."""
        reserved = self.reserved
        name, k = base, 0
        while name in self.g.tensors or (name in reserved and name != base):
            k += 1
            name = f"{base}_{k}"
        return name

    def quant_of(self, t: TTensor, dtype: np.dtype, producer: str | None = None
                 ) -> QuantParams | None:
        """``t``'s parameters as the IR holds them; ``producer``: the IR op writing ``t``."""
        return quant_params(self.path, t, dtype, producer)

    def dequantized(self, idx: int, arr: np.ndarray) -> np.ndarray:
        """Float32 value of a constant: fp16 widened; int8/int16 as ``(q - zp) * scale``."""
        return dequantize(f"{self.path}: {self.where}", idx, self.m.tensors[idx], arr)

    def real_value(self, idx: int, arr: np.ndarray) -> float:
        """A scalar constant as a real number (dequantized when it is quantized)."""
        t = self.m.tensors[idx]
        if arr.dtype.kind in "iu" and t.quant is not None:
            return float(self.dequantized(idx, arr).reshape(-1)[0])
        return float(arr.reshape(-1)[0])

    def densified(self, op: TOp, idx: int) -> np.ndarray:
        t = self.m.tensors[idx]
        if t.sparsity is None:
            return self.consts[idx]
        try:
            dense = densify(self.consts[idx], t.shape, t.sparsity, self.m.size,
                            f"tensor {idx} ({t.name!r})")
        except ValueError as e:
            raise self.fail(op, str(e)) from None
        return dense

    # ------------------------------------------------------- ctx for tflite_ops
    def opts(self, op: TOp, class_name: str) -> Any:
        return options(op, class_name)

    def tensor(self, idx: int) -> TTensor:
        return self.m.tensors[idx]

    def shape(self, idx: int) -> tuple[int | None, ...]:
        if idx in self.values:
            return self.values[idx].shape
        if idx in self.consts:
            return tuple(self.consts[idx].shape)
        return self._declared_shape(self.m.tensors[idx])

    def const(self, op: TOp, k: int, what: str) -> np.ndarray:
        idx = op.inputs[k] if k < len(op.inputs) else -1
        if idx < 0 or idx not in self.consts or self.m.tensors[idx].sparsity is not None:
            raise UnsupportedOpError(self.path, {op.name: 1},
                                     f"operator {op.index}: {what} (input {k}) must be a constant")
        if idx in self.symbolic and not (op.name == "RESHAPE" and k == 1):
            raise self.unsupported(op, f"{what} (input {k}) depends on a dynamic dimension")
        return self.consts[idx]

    def ints(self, arr: Any, n: int, what: str) -> list[int]:
        if n < 0 or n > self.m.size:
            raise ModelFormatError(f"{self.path}: {self.where}: {what} declares {n} entries")
        return [int(v) for v in np.asarray(arr).reshape(-1)[:n]] if n else []

    def fail(self, op: TOp, msg: str) -> ModelFormatError:
        return ModelFormatError(f"{self.path}: operator {op.index} ({op.name}): {msg}")

    def unsupported(self, op: TOp, detail: str) -> UnsupportedOpError:
        return UnsupportedOpError(self.path, {op.name: 1}, f"operator {op.index}: {detail}")

    # ----------------------------------------------------------- the graph
    def _declared_shape(self, t: TTensor) -> tuple[int | None, ...]:
        if t.signature is None:
            return t.shape
        return tuple(None if s == -1 else d for d, s in zip(t.shape, t.signature))

    def _add_input(self, idx: int) -> None:
        t = self.m.tensors[idx]
        if idx in self.values:
            raise ModelFormatError(f"{self.path}: tensor {idx} is listed twice as a graph input")
        x = self.g.add_input(self.names[idx], self._declared_shape(t), t.dtype)
        x.quant = self.quant_of(t, t.dtype)
        self.values[idx] = x

    def _value(self, op: TOp, idx: int, float_consumer: bool) -> Tensor:
        if idx in self.values:
            return self.values[idx]
        if idx in self.consts:
            t = self.m.tensors[idx]
            hybrid = (float_consumer and self.consts[idx].dtype.kind in "iu"
                      and t.quant is not None)
            return self.const_tensor(idx, "deq" if hybrid else "raw")
        raise ModelFormatError(f"{self.path}: operator {op.index} ({op.name}) reads tensor {idx} "
                               f"({self.m.tensors[idx].name!r}) before any operator writes it")

    def _convert(self, op: TOp) -> None:
        for o in op.outputs:
            if o in self.values or o in self.consts:
                raise self.fail(op, f"output tensor {o} is already defined")
        if self._try_fold(op):
            return
        if op.name not in tops.CONVERTERS:
            raise self.unsupported(op, "only supported on constant inputs (it is converter "
                                       "plumbing), but an input is computed at run time")
        emit = tops.CONVERTERS[op.name](self, op)
        expect = emit.attrs.pop("_expect_shape", None)
        inputs = list(emit.inputs)
        while inputs and inputs[-1] < 0:
            inputs.pop()
        if any(i < 0 for i in inputs):
            raise self.fail(op, "a required input is absent (-1)")
        first = self.values.get(inputs[0]) if inputs else None
        float_consumer = first is not None and first.dtype.kind == "f"
        ins = [self._value(op, i, float_consumer) for i in inputs]
        perm = emit.attrs.pop("_weight_perm", None)
        if perm is not None:  # a weight read in another layout (grouped CONV_2D -> depthwise)
            w = ins[1]
            ins[1] = self.g.const(np.ascontiguousarray(w.data.transpose(perm)),
                                  name=self.fresh(w.name + "_dw"))
        if emit.op in WEIGHT_OPS and not float_consumer:
            ins = lowered_weights(self, op, emit.op, ins)
        outs = [self.names[o] for o in op.outputs]
        try:
            node = self.g.add_node(emit.op, ins, emit.attrs, name=f"{emit.op.lower()}_{op.index}",
                                   outputs=outs)
        except ShapeError as e:
            raise self.fail(op, str(e)) from None
        if len(node.outputs) != len(op.outputs):
            raise self.fail(op, f"has {len(op.outputs)} outputs, {emit.op} makes "
                                f"{len(node.outputs)}")
        for o, t in zip(op.outputs, node.outputs):
            self._check_output(op, o, t)
            t.quant = self.quant_of(self.m.tensors[o], t.dtype, producer=emit.op)
            self.values[o] = t
        if expect is not None and list(node.outputs[0].shape) != expect:
            raise self.unsupported(op, f"output_shape {expect} differs from the "
                                       f"{emit.attrs['padding']} shape "
                                       f"{list(node.outputs[0].shape)} (output padding)")

    def _check_output(self, op: TOp, idx: int, t: Tensor) -> None:
        decl = self.m.tensors[idx]
        shape = self._declared_shape(decl)
        agree = len(shape) == len(t.shape) and all(
            a is None or b is None or a == b for a, b in zip(shape, t.shape))
        if not agree:
            raise self.fail(op, f"output {idx} ({decl.name!r}) is declared {list(shape)}, "
                                f"but {op.name} gives {list(t.shape)}")
        if decl.dtype != t.dtype:
            raise self.fail(op, f"output {idx} ({decl.name!r}) is declared {decl.dtype}, "
                                f"but {op.name} gives {t.dtype}")

    def _try_fold(self, op: TOp) -> bool:
        """Evaluate ``op`` at import when it is plumbing on constants. True if folded."""
        fold = tops.FOLDERS.get(op.name)
        if fold is None:
            return False
        if any(i < 0 for i in op.inputs):
            raise self.fail(op, "a required input is absent (-1)")
        ins = list(op.inputs)
        all_const = bool(ins) and all(i in self.consts for i in ins)
        if not all_const and op.name not in tfold.FOLD_ANY_INPUT:
            return False
        if any(self.m.tensors[i].sparsity is not None for i in ins) and op.name != "DENSIFY":
            raise self.fail(op, "reads a sparse tensor directly (only DENSIFY may)")
        symbolic = any(i in self.symbolic for i in ins) or (
            op.name == "SHAPE" and None in self.shape(ins[0]))
        if symbolic and op.name not in tfold.SYMBOLIC_OK:
            raise self.unsupported(op, "computes on the shape of a tensor with a dynamic dim")
        vals = [self.consts.get(i) for i in op.inputs if i >= 0]
        results = fold(self, op, vals)
        if not results:
            return False
        if len(results) != len(op.outputs):
            raise self.fail(op, f"has {len(op.outputs)} outputs, expected {len(results)}")
        for o, arr in zip(op.outputs, results):
            decl = self.m.tensors[o]
            shape = self._declared_shape(decl)
            if len(shape) != arr.ndim or any(a is not None and a != b
                                             for a, b in zip(shape, arr.shape)):
                raise self.fail(op, f"output {o} ({decl.name!r}) is declared {list(shape)}, "
                                    f"folding gives {list(arr.shape)}")
            self.consts[o] = np.array(arr, order="C")  # keeps 0-d arrays 0-d
            if symbolic:
                self.symbolic.add(o)
        return True

    def _output(self, idx: int) -> Tensor:
        if idx in self.values:
            return self.values[idx]
        if idx in self.consts:
            return self.const_tensor(idx)
        raise ModelFormatError(f"{self.path}: graph output tensor {idx} "
                               f"({self.m.tensors[idx].name!r}) is never computed")


def _graph_name(path: str) -> str:
    stem = Path(path).stem
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in stem) or "main"

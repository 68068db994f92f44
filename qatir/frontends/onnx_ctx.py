"""Import state of the ONNX frontend: values, layouts, symbolic dims and IR emission helpers.

Every ONNX value maps to a :class:`Val`: either a numpy constant in ONNX layout
(possibly an object array holding symbolic :class:`Dim` entries, for shape
arithmetic that depends on a dynamic batch), or an IR tensor plus a permutation
``perm`` such that ``ir_tensor == onnx_value.transpose(perm)``. 4-D activations
live channel-last (perm ``(0, 2, 3, 1)``); an ONNX ``Transpose`` only changes the
recorded permutation, and a TRANSPOSE is emitted only where a consumer needs a
layout the value does not have (and a RESHAPE instead when only size-1 dims move).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qatir.errors import ModelFormatError, ShapeError, UnsupportedOpError
from qatir.ir import Graph, Tensor
from qatir.limits import CONST_MEMORY_FRACTION, max_const_elements
from qatir.numerics import normalize_axes, normalize_axis

INT32_MAX = (1 << 31) - 1
MAX_RANK = 16  # deeper tensors are refused: rank-quadratic bookkeeping must stay cheap

_fresh = itertools.count()


class Dim:
    """A dimension unknown at import time (e.g. the dynamic batch), used in shape arithmetic.

    Two ``Dim`` compare equal when their keys match; arithmetic on a ``Dim`` yields a
    fresh unknown ``Dim`` except for the identities ``d + 0``, ``d * 1``, ``d // 1``.
    """

    __slots__ = ("key",)

    def __init__(self, key: Any = None):
        self.key = key if key is not None else ("fresh", next(_fresh))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dim) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"Dim({self.key!r})"

    def _arith(self, other: Any, identity: int) -> Dim:
        if not isinstance(other, Dim) and other == identity:
            return self
        return Dim()

    def __add__(self, o):
        return self._arith(o, 0)

    __radd__ = __add__

    def __sub__(self, o):
        return self._arith(o, 0)

    def __rsub__(self, o):
        return Dim()

    def __mul__(self, o):
        return self._arith(o, 1)

    __rmul__ = __mul__

    def __floordiv__(self, o):
        return self._arith(o, 1)

    def __rfloordiv__(self, o):
        return Dim()

    __truediv__ = __floordiv__
    __rtruediv__ = __rfloordiv__

    def __neg__(self):
        return Dim()


BATCH = Dim("batch")


def has_dims(arr: np.ndarray) -> bool:
    return arr.dtype == object and any(isinstance(v, Dim) for v in arr.reshape(-1))


def normalize_const(arr: np.ndarray) -> np.ndarray:
    """Object arrays without symbolic entries become int64 arrays."""
    if arr.dtype == object and not has_dims(arr):
        return np.asarray(arr.tolist(), dtype=np.int64).reshape(arr.shape)
    return arr


def check_size(shape: Sequence[int], what: str) -> None:
    """Refuse constants that cannot fit in memory (:func:`qatir.limits.max_const_elements`)
    before allocating them."""
    if len(shape) > MAX_RANK:
        raise ShapeError(f"{what}: rank {len(shape)} exceeds {MAX_RANK}")
    n = 1
    for d in shape:
        d = int(d)
        if d < 0:
            raise ShapeError(f"{what}: negative dimension {d} in {list(shape)}")
        n *= d
    if n > 1 << 24 and n > (cap := max_const_elements()):  # small ones never ask /proc
        raise ShapeError(f"{what}: constant of shape {list(shape)} ({n} elements) exceeds "
                         f"{cap} elements, {CONST_MEMORY_FRACTION:.0%} of the memory "
                         "available now at 8 bytes an element")


def ident(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


def channel_last(rank: int) -> tuple[int, ...]:
    """The IR layout of a rank-``rank`` ONNX activation with channels at axis 1."""
    if rank < 3:
        return ident(rank)
    return (0, *range(2, rank), 1)


@dataclass
class Val:
    """An ONNX value: a constant (ONNX layout) or an IR tensor with its layout permutation."""

    tensor: Tensor | None = None
    perm: tuple[int, ...] = ()
    const: np.ndarray | None = None

    @property
    def is_const(self) -> bool:
        return self.const is not None

    @property
    def rank(self) -> int:
        return self.const.ndim if self.const is not None else self.tensor.rank

    @property
    def shape(self) -> tuple[int | None, ...]:
        """The value's shape in ONNX layout (None for unknown dims)."""
        if self.const is not None:
            return tuple(self.const.shape)
        out: list[int | None] = [None] * self.tensor.rank
        for i, p in enumerate(self.perm):
            out[p] = self.tensor.shape[i]
        return tuple(out)


def onnx_attrs(node: Any) -> dict[str, Any]:
    """Decode a NodeProto's attributes into plain Python values (bytes decoded to str)."""
    from onnx import helper

    out: dict[str, Any] = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [x.decode("utf-8", "replace") for x in v]
        out[a.name] = v
    return out


class Ctx:
    """Conversion state: the IR graph under construction and the ONNX name -> Val map."""

    def __init__(self, graph: Graph, path: str, opset: int):
        self.graph = graph
        self.path = path
        self.opset = opset
        self.vals: dict[str, Val] = {}
        self._converted: dict[tuple[int, tuple[int, ...]], Tensor] = {}
        self.node: Any = None  # the NodeProto being converted
        self.consumed: set[str] = set()  # names some node or a graph output reads
        self.node_name = ""

    # -------------------------------------------------------------- lookups
    def where(self) -> str:
        return f"{self.path}: node {self.node_name!r} ({self.node.op_type})"

    def unsupported(self, detail: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"{self.path}: node {self.node_name!r}",
                                  {self.node.op_type: 1}, detail)

    def shape_error(self, msg: str) -> ShapeError:
        return ShapeError(f"{self.where()}: {msg}")

    def axis(self, axis: int, rank: int, what: str = "axis", allow_end: bool = False) -> int:
        """:func:`qatir.numerics.normalize_axis`, the error naming this node."""
        try:
            return normalize_axis(axis, rank, what, allow_end)
        except ShapeError as e:
            raise self.shape_error(str(e)) from None

    def axes(self, axes: Sequence[int], rank: int, what: str = "axis",
             unique: bool = False) -> list[int]:
        """:func:`qatir.numerics.normalize_axes` (sorted, distinct), the error naming this node."""
        try:
            return normalize_axes(axes, rank, what, unique)
        except ShapeError as e:
            raise self.shape_error(str(e)) from None

    def inp(self, i: int) -> Val | None:
        """The i-th input (None when absent or given as the empty name)."""
        if i >= len(self.node.input) or not self.node.input[i]:
            return None
        name = self.node.input[i]
        try:
            return self.vals[name]
        except KeyError:
            raise ModelFormatError(f"{self.where()}: input {name!r} is not defined") from None

    def need(self, i: int) -> Val:
        v = self.inp(i)
        if v is None:
            raise ModelFormatError(f"{self.where()}: required input {i} is missing")
        return v

    def const_in(self, i: int, what: str, optional: bool = False) -> np.ndarray | None:
        """A numeric constant input (folded value); activations are refused."""
        v = self.inp(i)
        if v is None:
            if optional:
                return None
            raise ModelFormatError(f"{self.where()}: required input {i} ({what}) is missing")
        if not v.is_const:
            raise self.unsupported(f"{what} must be a constant")
        if has_dims(v.const):
            raise self.shape_error(f"{what} depends on a dynamic dimension; "
                                   "fix it with input_shapes=")
        return v.const

    def out_name(self, i: int = 0) -> str:
        if i < len(self.node.output) and self.node.output[i]:
            return self.node.output[i]
        return f"{self.node_name}:{i}"

    def set_out(self, val: Val, i: int = 0) -> None:
        if i < len(self.node.output) and self.node.output[i]:
            self.vals[self.node.output[i]] = val

    def set_const(self, arr: np.ndarray, i: int = 0) -> None:
        self.set_out(Val(const=normalize_const(np.asarray(arr))), i)

    # ------------------------------------------------------------- emission
    def emit(self, op: str, inputs: Sequence[Tensor | None], attrs: dict[str, Any] | None = None,
             name: str | None = None, suffix: str = "") -> Tensor:
        """Add one IR node; its output tensor is named after the ONNX output (plus suffix)."""
        out = name if name is not None else self.out_name() + suffix
        inputs = list(inputs)
        while inputs and inputs[-1] is None:  # an absent optional input (bias) is left out
            inputs.pop()
        if any(t is not None and t.rank > MAX_RANK for t in inputs):
            raise self.shape_error(f"tensor rank exceeds {MAX_RANK}")
        node = self.graph.add_node(op, inputs, attrs, name=self.node_name + suffix, outputs=[out])
        return node.output

    def const_tensor(self, arr: np.ndarray, name: str, dtype: Any = None) -> Tensor:
        arr = np.asarray(arr)
        if has_dims(arr):
            raise self.shape_error(f"value {name!r} depends on a dynamic dimension and cannot be "
                                   "used as data; fix it with input_shapes=")
        return self.graph.const(arr, name=name, dtype=dtype)

    def reshape(self, t: Tensor, shape: Sequence[int | None], suffix: str = "__reshape",
                name: str | None = None) -> Tensor:
        """RESHAPE ``t`` to ``shape`` (None -> -1, at most one); merges RESHAPE chains."""
        if sum(d is None or d == -1 for d in shape) > 1:
            raise self.shape_error(f"cannot reshape {list(t.shape)} to {list(shape)}: more than "
                                   "one unknown dimension; fix them with input_shapes=")
        new = [-1 if d is None else int(d) for d in shape]
        if name is None and list(t.shape) == new:
            return t
        src = t
        if src.producer is not None and src.producer.op == "RESHAPE" and not src.is_const:
            src = src.producer.inputs[0]
        return self.emit("RESHAPE", [src], {"new_shape": new}, name=name,
                         suffix="" if name is not None else suffix)

    def transpose(self, t: Tensor, perm: Sequence[int], suffix: str = "__transpose",
                  name: str | None = None) -> Tensor:
        """TRANSPOSE ``t`` by ``perm``; composes with a producing TRANSPOSE."""
        perm = [int(p) for p in perm]
        src = t
        if src.producer is not None and src.producer.op == "TRANSPOSE":
            inner = src.producer.attrs["perm"]
            perm = [inner[p] for p in perm]
            src = src.producer.inputs[0]
        if perm == list(range(len(perm))) and name is None:
            return src
        return self.emit("TRANSPOSE", [src], {"perm": perm}, name=name,
                         suffix="" if name is not None else suffix)

    def as_tensor(self, v: Val, perm: Sequence[int] | None = None, dtype: Any = None) -> Tensor:
        """``v`` as an IR tensor in layout ``perm`` (default: its own, or identity for constants)."""
        if v.is_const:
            arr = v.const
            if perm is not None:
                arr = np.transpose(arr, perm)
            return self.const_tensor(arr, self.out_name() + "__const", dtype=dtype)
        if perm is None or tuple(perm) == v.perm:
            return v.tensor
        return self.relayout(v, tuple(perm))

    def relayout(self, v: Val, perm: tuple[int, ...]) -> Tensor:
        """Convert an activation to layout ``perm`` (cached per value and layout)."""
        key = (id(v.tensor), perm)
        hit = self._converted.get(key)
        if hit is not None:
            return hit
        rel = [v.perm.index(p) for p in perm]
        ir = v.tensor.shape
        moved = [i for i in rel if ir[i] != 1]
        new_shape = [ir[i] for i in rel]
        if moved == sorted(moved) and sum(d is None for d in new_shape) <= 1:
            out = self.reshape(v.tensor, new_shape, suffix="__relayout")
        else:
            out = self.transpose(v.tensor, rel, suffix="__relayout")
        self._converted[key] = out
        return out

    def act(self, t: Tensor, perm: Sequence[int] | None = None) -> Val:
        return Val(tensor=t, perm=tuple(perm) if perm is not None else ident(t.rank))


def broadcast_const(arr: np.ndarray, rank: int, perm: Sequence[int]) -> np.ndarray:
    """A constant aligned (numpy broadcasting) to ``rank`` and laid out by ``perm``."""
    arr = np.asarray(arr)
    if arr.ndim > rank:
        raise ShapeError(f"constant of rank {arr.ndim} does not broadcast to rank {rank}")
    arr = arr.reshape((1,) * (rank - arr.ndim) + arr.shape)
    return np.transpose(arr, perm)


def prod_known(dims: Sequence[int | None]) -> int | None:
    if any(d is None for d in dims):
        return None
    return math.prod(int(d) for d in dims)


Converter = Callable[[Ctx], None]
CONVERTERS: dict[str, Converter] = {}


def converter(*op_types: str) -> Callable[[Converter], Converter]:
    """Register a function converting ONNX nodes of ``op_types`` (default domain)."""

    def deco(fn: Converter) -> Converter:
        for op in op_types:
            CONVERTERS[op] = fn
        return fn

    return deco

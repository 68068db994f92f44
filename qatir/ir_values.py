"""The values of the qatir IR: quantization parameters, tensors and nodes.

A :class:`Tensor` knows its producer and its uses; a :class:`Node` sets its inputs
through ``set_input`` so that the use lists stay current. :class:`qatir.ir.Graph`
owns both; everything here is re-exported from :mod:`qatir.ir`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from qatir.ir import Graph

Shape = tuple[int | None, ...]

FUSED_ACTIVATIONS = ("NONE", "RELU", "RELU_N1_TO_1", "RELU6", "TANH")

_DTYPE_SHORT = {
    "float32": "f32",
    "float16": "f16",
    "float64": "f64",
    "int8": "i8",
    "uint8": "u8",
    "int16": "i16",
    "int32": "i32",
    "int64": "i64",
    "bool": "bool",
}


def _plain(values: Any, kinds: str, cast: type) -> list:
    """Python floats/ints from a sequence; numeric arrays convert in one C loop."""
    arr = np.asarray(values) if isinstance(values, (np.ndarray, list, tuple)) else None
    if arr is not None and arr.ndim == 1 and arr.dtype.kind in kinds:
        return arr.astype(np.float64 if cast is float else np.int64).tolist()
    return [cast(v) for v in values]


@dataclass(frozen=True)
class QuantParams:
    """Affine quantization: real = (q - zero_point) * scale.

    Per-tensor when ``axis`` is None, otherwise one scale/zero point per slice
    along ``axis``. ``dtype`` is the integer storage type ("int8", "int32", ...).
    """

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None
    bits: int = 8
    narrow_range: bool = False
    dtype: str = "int8"

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(_plain(self.scale, "fiu", float)))
        object.__setattr__(self, "zero_point", tuple(_plain(self.zero_point, "iu", int)))
        if len(self.scale) != len(self.zero_point):
            raise ValueError("scale and zero_point must have the same length")
        if self.axis is None and len(self.scale) != 1:
            raise ValueError("per-tensor quantization needs exactly one scale")

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def qrange(self) -> tuple[int, int]:
        """The integer range the stored values may take."""
        if self.dtype.startswith("u"):
            return 0, (1 << self.bits) - 1
        lo = -(1 << (self.bits - 1))
        return (lo + 1 if self.narrow_range else lo), (1 << (self.bits - 1)) - 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "scale": list(self.scale),
            "zero_point": list(self.zero_point),
            "axis": self.axis,
            "bits": self.bits,
            "narrow_range": self.narrow_range,
            "dtype": self.dtype,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantParams:
        return cls(
            scale=tuple(d["scale"]),
            zero_point=tuple(d["zero_point"]),
            axis=d.get("axis"),
            bits=d.get("bits", 8),
            narrow_range=d.get("narrow_range", False),
            dtype=d.get("dtype", "int8"),
        )

    def __str__(self) -> str:
        if self.axis is None:
            return f"q({self.scale[0]:.6g}, {self.zero_point[0]})"
        return f"q[axis={self.axis}, n={len(self.scale)}]({min(self.scale):.4g}..{max(self.scale):.4g})"


class Tensor:
    """A value: produced by at most one node, or a graph input, or a constant."""

    __slots__ = ("name", "shape", "dtype", "data", "quant", "source_layout", "producer", "_uses")

    def __init__(
        self,
        name: str,
        shape: Sequence[int | None],
        dtype: Any = np.float32,
        data: np.ndarray | None = None,
        quant: QuantParams | None = None,
        source_layout: str | None = None,
    ):
        self.name = name
        self.shape: Shape = tuple(None if d is None else int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.data = data
        self.quant = quant
        self.source_layout = source_layout
        self.producer: Node | None = None
        self._uses: list[tuple[Node, int]] = []

    @property
    def is_const(self) -> bool:
        return self.data is not None

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def uses(self) -> list[tuple[Node, int]]:
        """A snapshot of (node, input index) pairs; safe to edit the graph while iterating."""
        return list(self._uses)

    @property
    def users(self) -> list[Node]:
        """Distinct consuming nodes, in first-use order (a snapshot)."""
        seen: dict[int, Node] = {}
        for node, _ in self._uses:
            seen.setdefault(id(node), node)
        return list(seen.values())

    def __repr__(self) -> str:
        return f"Tensor(%{self.name}: {type_str(self)})"


class Node:
    """One operation. Inputs are set through the node so use lists stay current."""

    __slots__ = ("op", "name", "attrs", "_inputs", "_outputs", "graph")

    def __init__(self, op: str, name: str, attrs: dict[str, Any] | None = None):
        self.op = op
        self.name = name
        self.attrs: dict[str, Any] = dict(attrs or {})
        self._inputs: list[Tensor | None] = []
        self._outputs: list[Tensor] = []
        self.graph: Graph | None = None

    @property
    def inputs(self) -> tuple[Tensor | None, ...]:
        return tuple(self._inputs)

    @property
    def outputs(self) -> tuple[Tensor, ...]:
        return tuple(self._outputs)

    @property
    def output(self) -> Tensor:
        return self._outputs[0]

    def set_input(self, index: int, tensor: Tensor | None) -> None:
        old = self._inputs[index]
        if old is not None:
            old._uses.remove((self, index))
        self._inputs[index] = tensor
        if tensor is not None:
            tensor._uses.append((self, index))

    def add_input(self, tensor: Tensor | None) -> None:
        self._inputs.append(None)
        self.set_input(len(self._inputs) - 1, tensor)

    def drop_inputs(self) -> None:
        for i in range(len(self._inputs)):
            self.set_input(i, None)
        self._inputs = []

    def __repr__(self) -> str:
        return f"Node({self.op} {self.name!r})"


def type_str(t: Tensor) -> str:
    dims = ",".join("?" if d is None else str(d) for d in t.shape)
    return f"{_DTYPE_SHORT.get(t.dtype.name, t.dtype.name)}[{dims}]"

"""Numpy evaluators for constant folding: op name -> fn(node, *input arrays) -> output array.

Only ops whose result is fully determined by constant inputs and attributes are
listed; an op without an entry is never folded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from qatir.ir import Node

Evaluator = Callable[..., np.ndarray]
EVALUATORS: dict[str, Evaluator] = {}

_ACT: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "NONE": lambda x: x,
    "RELU": lambda x: np.maximum(x, 0),
    "RELU6": lambda x: np.clip(x, 0, 6),
    "RELU_N1_TO_1": lambda x: np.clip(x, -1, 1),
    "TANH": np.tanh,
}


def evaluator(*ops: str) -> Callable[[Evaluator], Evaluator]:
    def deco(fn: Evaluator) -> Evaluator:
        for op in ops:
            EVALUATORS[op] = fn
        return fn
    return deco


def _act(node: Node, y: np.ndarray) -> np.ndarray:
    return _ACT[node.attrs.get("fused_activation", "NONE")](y)


_BINARY = {"ADD": np.add, "SUB": np.subtract, "MUL": np.multiply, "DIV": np.divide,
           "MAXIMUM": np.maximum, "MINIMUM": np.minimum,
           "SQUARED_DIFFERENCE": lambda a, b: np.square(a - b)}
_UNARY: dict[str, Callable[[np.ndarray], Any]] = {
    "RELU": _ACT["RELU"], "RELU6": _ACT["RELU6"], "RELU_N1_TO_1": _ACT["RELU_N1_TO_1"],
    "RELU_0_TO_1": lambda x: np.clip(x, 0, 1), "TANH": np.tanh,
    "LOGISTIC": lambda x: 1.0 / (1.0 + np.exp(-x)), "EXP": np.exp, "ABS": np.abs,
    "NEG": np.negative, "SQRT": np.sqrt, "RSQRT": lambda x: 1.0 / np.sqrt(x),
    "IDENTITY": lambda x: x,
    "HARD_SWISH": lambda x: x * np.clip(x / 6.0 + 0.5, 0, 1),
}


@evaluator(*_BINARY)
def _binary(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if node.op == "DIV" and np.issubdtype(a.dtype, np.integer):
        return _act(node, np.floor_divide(a, b))
    return _act(node, _BINARY[node.op](a, b))


@evaluator(*_UNARY)
def _unary(node: Node, x: np.ndarray) -> np.ndarray:
    return _UNARY[node.op](x)


@evaluator("LEAKY_RELU")
def _leaky(node: Node, x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, x, x * node.attrs["alpha"])


@evaluator("PRELU")
def _prelu(node: Node, x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, x, x * alpha)


@evaluator("CLIP")
def _clip(node: Node, x: np.ndarray) -> np.ndarray:
    lo, hi = node.attrs["min"], node.attrs["max"]
    return np.clip(x, -np.inf if lo is None else lo, np.inf if hi is None else hi)


@evaluator("HARD_SIGMOID")
def _hard_sigmoid(node: Node, x: np.ndarray) -> np.ndarray:
    return np.clip(x * node.attrs["alpha"] + node.attrs["beta"], 0, 1)


@evaluator("RESHAPE")
def _reshape(node: Node, x: np.ndarray) -> np.ndarray:
    return x.reshape(node.output.shape)


@evaluator("SQUEEZE")
def _squeeze(node: Node, x: np.ndarray) -> np.ndarray:
    return x.reshape(node.output.shape)


@evaluator("TRANSPOSE")
def _transpose(node: Node, x: np.ndarray) -> np.ndarray:
    return np.transpose(x, node.attrs["perm"])


@evaluator("CONCATENATION")
def _concat(node: Node, *xs: np.ndarray) -> np.ndarray:
    return _act(node, np.concatenate(xs, axis=node.attrs["axis"]))


@evaluator("PAD")
def _pad(node: Node, x: np.ndarray) -> np.ndarray:
    return np.pad(x, [tuple(int(v) for v in p) for p in node.attrs["paddings"]],
                  constant_values=node.attrs["constant_value"])


@evaluator("CAST", "DEQUANTIZE")
def _cast(node: Node, x: np.ndarray) -> np.ndarray:
    if node.op == "DEQUANTIZE" and node.inputs[0].quant is not None:
        q = node.inputs[0].quant
        if q.axis is not None:
            shape = [1] * x.ndim
            shape[q.axis] = -1
            scale = np.reshape(q.scale, shape)
            zp = np.reshape(q.zero_point, shape)
        else:
            scale, zp = q.scale[0], q.zero_point[0]
        return (x.astype(np.float64) - zp) * scale
    return x


@evaluator("SHAPE")
def _shape(node: Node, x: np.ndarray) -> np.ndarray:
    return np.asarray(x.shape, np.int32)


@evaluator("GATHER")
def _gather(node: Node, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.take(x, idx, axis=node.attrs["axis"])


@evaluator("STRIDED_SLICE")
def _strided_slice(node: Node, x: np.ndarray) -> np.ndarray:
    a = node.attrs
    y = x[tuple(slice(b, e, s) for b, e, s in zip(a["begin"], a["end"], a["strides"]))]
    return y.reshape(node.output.shape)


@evaluator("MEAN", "SUM", "REDUCE_MAX")
def _reduce(node: Node, x: np.ndarray) -> np.ndarray:
    fn = {"MEAN": np.mean, "SUM": np.sum, "REDUCE_MAX": np.max}[node.op]
    axes = node.attrs["axis"]
    axes = tuple([axes] if isinstance(axes, int) else axes)
    return fn(x, axis=axes, keepdims=bool(node.attrs["keep_dims"]))


@evaluator("FULLY_CONNECTED")
def _fc(node: Node, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    y = x.reshape(-1, w.shape[1]) @ w.T
    if b is not None:
        y = y + b
    return _act(node, y.reshape(node.output.shape))


@evaluator("BATCH_MATMUL")
def _bmm(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if node.attrs["adj_x"]:
        a = np.swapaxes(a, -1, -2)
    if node.attrs["adj_y"]:
        b = np.swapaxes(b, -1, -2)
    return a @ b

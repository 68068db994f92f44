"""The one LiteRT runner: build an interpreter, feed it float data, read float results.

Every place qatir runs a ``.tflite`` (the compile evaluation, the parity
report, ``qatir bench``, the LiteRT calibration engine) builds its
interpreter with :func:`interpreter` and, where it feeds float data,
quantizes and dequantizes int8 edges with :func:`quantize_input` /
:func:`dequantize_output`. No TensorFlow is imported.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qatir.errors import QatirError
from qatir.reference_math import round_half_away

RESOLVERS = ("default", "ref")


def all_threads() -> int:
    """The cores this process may use (LiteRT's thread count for throughput work)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def interpreter(buf: bytes, resolver: str = "default", threads: int | None = None,
                preserve_all: bool = False) -> Any:
    """An allocated ``ai_edge_litert`` Interpreter for the flatbuffer ``buf``.

    ``resolver``: ``"default"`` (built-in kernels plus the XNNPACK delegate) or
    ``"ref"`` (``BUILTIN_REF``, LiteRT's reference kernels). ``threads=None``
    leaves LiteRT's own default. ``preserve_all`` keeps every intermediate
    tensor readable (LiteRT then applies no default delegate).
    """
    if resolver not in RESOLVERS:
        raise QatirError(f"resolver must be one of {RESOLVERS}, got {resolver!r}")
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = OpResolverType.BUILTIN_REF if resolver == "ref" else OpResolverType.AUTO
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*preserve_all_tensors.*")
        it = Interpreter(model_content=bytes(buf), num_threads=threads,
                         experimental_op_resolver_type=kind,
                         experimental_preserve_all_tensors=preserve_all)
    it.allocate_tensors()
    return it


def quantize_input(detail: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
    """A float array as an input tensor wants it (int8 edges: rounded half away, clamped)."""
    x = np.asarray(x, np.float32).reshape(detail["shape"])
    if np.dtype(detail["dtype"]).kind == "f":
        return x.astype(detail["dtype"], copy=False)
    scale, zp = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    q = round_half_away(x / np.float32(scale)) + zp
    return np.clip(q, info.min, info.max).astype(detail["dtype"])


def dequantize_output(detail: Mapping[str, Any], y: np.ndarray) -> np.ndarray:
    """An output tensor's values as float32 (int8 edges dequantized)."""
    if np.dtype(detail["dtype"]).kind == "f":
        return np.array(y, np.float32)
    scale, zp = detail["quantization"]
    return (y.astype(np.float32) - zp) * np.float32(scale)


class LiteRTRunner:
    """One interpreter, fed by input name (or in input order) with float arrays."""

    def __init__(self, buf: bytes, resolver: str = "default", threads: int | None = None,
                 preserve_all: bool = False):
        self.interp = interpreter(buf, resolver, threads, preserve_all)
        self.inputs = self.interp.get_input_details()
        self.outputs = self.interp.get_output_details()

    def set_inputs(self, feed: Mapping[str, np.ndarray] | Sequence[np.ndarray],
                   quantize: bool = True) -> None:
        """By tensor name where the file kept the feed's names, else in input order.

        ``quantize=False`` hands the arrays over as they are (already int8).
        """
        if isinstance(feed, Mapping):
            by_name = all(d["name"] in feed for d in self.inputs)
            arrays = [feed[d["name"]] for d in self.inputs] if by_name else list(feed.values())
        else:
            arrays = list(feed)
        if len(arrays) != len(self.inputs):
            raise QatirError(f"LiteRT model has {len(self.inputs)} inputs, given {len(arrays)}")
        for d, x in zip(self.inputs, arrays):
            x = quantize_input(d, x) if quantize else np.asarray(x, d["dtype"])
            self.interp.set_tensor(d["index"], np.ascontiguousarray(x))

    def run(self, feed: Mapping[str, np.ndarray] | Sequence[np.ndarray],
            dequantize: bool = True) -> list[np.ndarray]:
        """Outputs in the file's output order (float unless ``dequantize=False``)."""
        self.set_inputs(feed)
        self.interp.invoke()
        if not dequantize:
            return [self.interp.get_tensor(d["index"]) for d in self.outputs]
        return [dequantize_output(d, self.interp.get_tensor(d["index"])) for d in self.outputs]


def run_litert(buf: bytes, feeds: Sequence[Mapping[str, np.ndarray]],
               resolver: str = "default") -> list[list[np.ndarray]]:
    """Run a .tflite one feed at a time in LiteRT; float in, dequantized float out."""
    runner = LiteRTRunner(buf, resolver)
    return [runner.run(feed) for feed in feeds]

"""The public entry points. Heavy modules (tensorflow, onnx) are imported on first use."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qatir.errors import ModelFormatError, QatirError
from qatir.ir import Graph


def _suffix(path: str | os.PathLike) -> str:
    return Path(path).suffix.lower()


def load(path: str | os.PathLike | Any,
         input_shapes: Mapping[str, Sequence[int]] | None = None) -> Graph:
    """Import a model (.onnx, .tflite, a keras.Model, .keras, .h5) or reload a saved IR
    (.qatir, .json)."""
    if not isinstance(path, (str, os.PathLike)):
        from qatir.frontends.keras import is_keras_model, load_keras

        if is_keras_model(path):
            return load_keras(path, input_shapes=input_shapes)
        raise ModelFormatError(f"qatir.load: expected a path or a keras.Model, got "
                               f"{type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFormatError(f"{path}: no such file")
    suffix = _suffix(path)
    if suffix in (".keras", ".h5"):
        from qatir.frontends.keras import load_keras

        return load_keras(path, input_shapes=input_shapes)
    if suffix == ".onnx":
        from qatir.frontends.onnx import load_onnx

        return load_onnx(path, input_shapes=input_shapes)
    if suffix == ".tflite":
        from qatir.frontends.tflite import load_tflite

        graph = load_tflite(path)
        if input_shapes:
            fix_input_shapes(graph, input_shapes, path)
        return graph
    if suffix == ".qatir":
        from qatir.serialize import load_qatir

        return load_qatir(path)
    if suffix == ".json":
        from qatir.serialize import load_json

        return load_json(path)
    raise ModelFormatError(f"{path}: unknown model suffix {suffix!r} "
                           "(expected .onnx, .tflite, .keras, .h5, .qatir or .json)")


def fix_input_shapes(graph: Graph, input_shapes: Mapping[str, Sequence[int]], source: str) -> None:
    """Pin dynamic input dims (the graph's own layout) and re-infer every shape downstream."""
    from qatir.errors import ShapeError

    by_name = {t.name: t for t in graph.inputs}
    for name, shape in input_shapes.items():
        t = by_name.get(name)
        if t is None:
            raise ShapeError(f"{source}: input_shapes names {name!r}, but the inputs are "
                             f"{sorted(by_name)}")
        shape = tuple(int(d) for d in shape)
        if len(shape) != t.rank or any(d <= 0 for d in shape) or any(
                old is not None and old != new for old, new in zip(t.shape, shape)):
            raise ShapeError(f"{source}: input {name!r} has shape {list(t.shape)}; "
                             f"{list(shape)} does not fit it")
        t.shape = shape
    for node in graph.nodes:
        try:
            graph.reinfer(node)
        except QatirError as e:
            raise ShapeError(f"{source}: node {node.name!r} ({node.op}): {e}") from None


def save(graph: Graph, path: str | os.PathLike, **kwargs: Any) -> None:
    """Save by suffix: .tflite (flatbuffer), .qatir (lossless IR), .json (dump). Atomic."""
    from qatir.fileio import atomic_write

    suffix = _suffix(path)
    if suffix == ".qatir":
        from qatir.serialize import save_qatir_bytes

        data = save_qatir_bytes(graph)
    elif suffix == ".json":
        data = graph.to_json(**kwargs).encode()
    elif suffix == ".tflite":
        data = to_tflite(graph, **kwargs)
    else:
        raise QatirError(f"{path}: unknown output suffix {suffix!r} (expected .tflite, .qatir, .json)")
    atomic_write(path, data)


def run(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Execute the graph in TensorFlow (float, or fake-quant if it has FAKE_QUANT nodes)."""
    from qatir.tf.executor import run as tf_run

    return tf_run(graph, feeds)


def quantize(graph: Graph, table: str | os.PathLike | None = None,
             passes: Sequence[str] | None = None, **options: Any) -> Graph:
    """Run the quantization pipeline on a copy of ``graph``; the input is untouched."""
    from qatir.pipeline import quantize as _quantize

    return _quantize(graph, table=table, passes=passes, **options)


def calibrate(graph: Graph, batches: Iterable[Any], **options: Any) -> Graph:
    """Set activation ranges of a quantized graph from representative data (in place).

    ``batches`` is streamed: a list, a generator, a ``tf.data.Dataset`` or a callable
    returning a fresh iterable (:func:`qatir.calibration.calibrate`)."""
    from qatir.calibration import calibrate as _calibrate

    return _calibrate(graph, batches, **options)


def fit(graph: Graph, dataset: Any, loss: Any = None, optimizer: Any = "adam", epochs: int = 1,
        strategy: Any = None, **options: Any) -> dict[str, list[float]]:
    """Train the graph (float, or QAT when it has FAKE_QUANT nodes); values written back."""
    from qatir.tf.train import fit as _fit

    return _fit(graph, dataset, loss=loss, optimizer=optimizer, epochs=epochs, strategy=strategy,
                **options)


def to_tflite(graph: Graph, io: str = "int8", batch_size: int = 1, strict_int8: bool = False,
              mode: str = "int8", **options: Any) -> bytes:
    """Write the graph as a TFLite flatbuffer (int8 when quantized, float otherwise).

    Nodes kept float by the table, or without an int8 kernel, are exported as float
    islands between DEQUANTIZE and QUANTIZE, with one warning listing them;
    ``strict_int8=True`` refuses them instead. ``mode="dynamic"`` writes int8 weights
    with float activations (LiteRT's hybrid kernels), ``mode="float16"`` float16
    weights, ``mode="float"`` float32; none needs calibration (:mod:`qatir.modes`).
    """
    from qatir.tflite_writer import to_tflite as _to_tflite

    return _to_tflite(graph, io=io, batch_size=batch_size, strict_int8=strict_int8, mode=mode,
                      **options)


def analyze(graph: Graph, calib: Iterable[Mapping[str, np.ndarray]], **options: Any) -> Any:
    """Per-node sensitivity of a float graph to int8 (a :class:`qatir.sensitivity.Report`:
    ranked ``rows``, ``suggest(target_sqnr)`` for a table that reaches a target)."""
    from qatir.sensitivity import analyze as _analyze

    return _analyze(graph, calib, **options)


def run_reference(graph: Graph, feeds: Mapping[str, np.ndarray],
                  kernels: str = "reference") -> dict[str, np.ndarray]:
    """Run the quantized graph with integer arithmetic, bit-exact with LiteRT."""
    from qatir.reference import run_reference as _run_reference

    return _run_reference(graph, feeds, kernels=kernels)

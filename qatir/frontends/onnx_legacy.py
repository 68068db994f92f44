"""Models older than qatir's lowest opset: upgraded with ``onnx.version_converter``.

Opsets 1-6 spell several ops differently (BatchNormalization's ``consumed_inputs`` and
``is_test``, Reshape's ``shape`` attribute before opset 5, Dropout's ``is_test``); the
ONNX package's version converter rewrites them into the opset-:data:`MIN_OPSET` forms the
converters know, so qatir keeps one converter per op instead of one per spelling.
"""

from __future__ import annotations

from typing import Any

from qatir.errors import ModelFormatError
from qatir.frontends.onnx_io import MIN_OPSET

LEGACY_OPSETS = range(1, MIN_OPSET)  # upgraded on import


def _convert_faults() -> tuple[type[BaseException], ...]:
    """The exceptions onnx's C++ converter and its shape inference raise, plus Python's own."""
    from onnx.onnx_cpp2py_export import shape_inference, version_converter

    return (version_converter.ConvertError, shape_inference.InferenceError, RuntimeError,
            ValueError, TypeError, IndexError, KeyError)


def default_opset(model: Any) -> int | None:
    """The model's default-domain opset (None when it imports none)."""
    versions = [op.version for op in model.opset_import if op.domain in ("", "ai.onnx")]
    return int(versions[0]) if versions else None


def upgrade_legacy(model: Any, path: str) -> Any:
    """``model`` itself, or, for opsets 1-6, the model upgraded to opset ``MIN_OPSET``.

    A conversion the ONNX converter cannot do (an op without an adapter, a malformed
    graph) raises a :class:`ModelFormatError` naming the file and both opsets.
    """
    old = default_opset(model)
    if old is None or old not in LEGACY_OPSETS:
        return model
    from onnx import version_converter

    try:
        new = version_converter.convert_version(model, MIN_OPSET)
    except _convert_faults() as e:
        raise ModelFormatError(f"{path}: opset {old} is below qatir's lowest opset {MIN_OPSET} "
                               f"and onnx.version_converter could not upgrade it "
                               f"({type(e).__name__}: {str(e).strip()[:300]})") from None
    return new

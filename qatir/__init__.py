"""qatir: a graph compiler for quantization-aware training and direct int8 TFLite export."""

from qatir import ops as _ops  # noqa: F401  (registers the built-in ops)
from qatir.api import analyze, calibrate, fit, load, quantize, run, run_reference, save, to_tflite
from qatir.errors import (
    ExportError,
    ModelFormatError,
    NumericsError,
    PassError,
    QatirError,
    ShapeError,
    TableError,
    UnsupportedOpError,
    VerifyError,
)
from qatir.ir import Graph, Node, QuantParams, Tensor
from qatir.ops.registry import register_op
from qatir.pipeline import register_pass
from qatir.table_fusions import register_fusion_kind

__version__ = "0.1.0"

__all__ = [
    "ExportError", "Graph", "ModelFormatError", "Node", "NumericsError", "PassError",
    "QatirError", "QuantParams", "ShapeError", "TableError", "Tensor", "UnsupportedOpError",
    "VerifyError", "analyze", "calibrate", "fit", "load", "quantize", "register_fusion_kind", "register_op",
    "register_pass", "run", "run_reference", "save", "to_tflite",
]

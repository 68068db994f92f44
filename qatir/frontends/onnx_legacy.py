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


# The converter runs in a child process: it is C++ and crashes (SIGSEGV) on some malformed
# files (an attribute whose declared type does not match its value), and a crash must
# become an error naming the file, not the end of the caller's process.
_CHILD = """
import sys
import onnx
from onnx import version_converter
model = onnx.load_from_string(sys.stdin.buffer.read())
try:
    out = version_converter.convert_version(model, int(sys.argv[1]))
except Exception as e:  # reported to the parent on stderr
    sys.stderr.write(f"{type(e).__name__}: {str(e).strip()[:300]}")
    sys.exit(3)
sys.stdout.buffer.write(out.SerializeToString())
"""
CONVERT_TIMEOUT_S = 300


def _convert_isolated(model: Any, target: int, path: str, old: int) -> Any:
    """``onnx.version_converter.convert_version(model, target)`` in a child process."""
    import subprocess
    import sys

    import onnx
    from google.protobuf.message import DecodeError

    def fail(why: str) -> ModelFormatError:
        return ModelFormatError(f"{path}: opset {old} is below qatir's lowest opset {target} "
                                f"and onnx.version_converter could not upgrade it ({why})")

    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(target)],
                              input=model.SerializeToString(), capture_output=True,
                              timeout=CONVERT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise fail(f"no answer within {CONVERT_TIMEOUT_S} s") from None
    if proc.returncode < 0:
        raise fail(f"the converter crashed with signal {-proc.returncode}")
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise fail(tail[-1] if tail else f"exit status {proc.returncode}")
    try:
        return onnx.load_from_string(proc.stdout)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise fail(f"unreadable result: {type(e).__name__}") from None


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
    return _convert_isolated(model, MIN_OPSET, path, old)

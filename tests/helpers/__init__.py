"""Shared test scaffolding; test modules import from here, never from one another.

- :class:`QB`: the one builder of hand-made quantized graphs (FAKE_QUANT conventions
  of ``qatir/quant.py``), with :func:`int8_feed` for random int8 inputs;
- :func:`litert_run`: the one LiteRT runner (BUILTIN_REF or the default XNNPACK
  resolver, one thread), :func:`compare_all` (LiteRT vs ``run_reference``), :func:`worst_lsb`
  (LiteRT vs any reference) and :func:`file_ops` (a file's operators and tensor types);
- :data:`CASES` / :data:`XNNPACK_INT8` (``tests/helpers/cases.py``): the single-op
  and small-graph cases the reference, writer, XNNPACK and parity tests share;
- ``tests/helpers/graphs.py``: float graphs for the pass tests and a small QAT MLP;
- ``tests/helpers/onnx_models.py``: the ONNX model builder and onnxruntime comparison
  (imports onnx); ``tests/helpers/keras_models.py``: Keras models converted by
  TF's converter (imports TensorFlow). Neither is imported here, to keep this light.
"""

from __future__ import annotations

from tests.helpers.cases import CASES, XNNPACK_INT8

# QB & co. still live in tests/helpers/qbuild.py (being rewritten elsewhere); they move here at merge.
from tests.helpers.qbuild import (
                                  QB,
                                  WEIGHT_AXIS,
                                  compare_all,
                                  file_ops,
                                  int8_feed,
                                  litert_run,
                                  worst_lsb,
)

__all__ = ["CASES", "QB", "WEIGHT_AXIS", "XNNPACK_INT8", "compare_all", "file_ops", "int8_feed",
           "litert_run", "worst_lsb"]

"""The one place qatir imports TensorFlow, and the setting that keeps it from crashing.

TensorFlow 2.21's oneDNN graph rewrite (``MklLayoutRewritePass``) ends the
process with a segmentation fault on a pattern MediaPipe models are full of:
``bias_add(conv2d(x, k), b) + pad(x)`` (BlazeFace's channel-padded residual),
once grappler's remapper has fused the conv, bias and add into one node. A
segfault cannot be caught, so qatir removes the trigger: when the imported
TensorFlow runs oneDNN (TF's default on x86 Linux), :func:`import_tensorflow`
switches grappler's remapper off for the process
(``tf.config.optimizer.set_experimental_options({"remapping": False})``),
whether TF was imported before qatir or not.

Why this and not ``TF_ENABLE_ONEDNN_OPTS=0``: both avoid the crash, but
without oneDNN ``tools/bench_train.py`` training steps took 1.6-2.1x as long
(2 shared AVX-512 cores, 2026-12-01; float / QAT ms/step 145.5 / 188.5 against
84.8 / 97.9), while the remapper's absence cost nothing above the noise: timed
interleaved in one process (``--remapper``), off vs on was 84.8 vs 84.9 float
and 94.1 vs 97.0 QAT. A user who prefers TF's Eigen kernels sets ``TF_ENABLE_ONEDNN_OPTS=0``
before TF is imported; the remapper then stays on. A user who switched the
remapper on explicitly is left alone, with a warning naming the risk.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType

_ENV = "TF_ENABLE_ONEDNN_OPTS"
_checked = False


def import_tensorflow() -> ModuleType:
    """Import and return ``tensorflow``, with the remapper off when oneDNN is on.

    Every qatir module that needs TensorFlow gets it from here.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    global _checked
    if not _checked:
        _checked = True
        if onednn_enabled():
            _disable_remapper(tf)
    return tf


def onednn_enabled() -> bool:
    """Whether the imported TensorFlow runs oneDNN (MKL) kernels and graph rewrites."""
    try:
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # private API moved: TF's own default rule
        return os.environ.get(_ENV, "1").strip().lower() not in ("0", "false")


def _disable_remapper(tf: ModuleType) -> None:
    current = tf.config.optimizer.get_experimental_options().get("remapping")
    if current is None:
        tf.config.optimizer.set_experimental_options({"remapping": False})
    elif current:
        warnings.warn(
            "qatir: TensorFlow runs with oneDNN and grappler's remapper was switched on "
            "explicitly; conv+bias+add of a padded input (BlazeFace-style blocks) then ends "
            "the process with a segmentation fault in oneDNN's graph rewrite. Leave the "
            "remapper unset (qatir switches it off) or set TF_ENABLE_ONEDNN_OPTS=0 before "
            "TensorFlow is imported.", RuntimeWarning, stacklevel=3)

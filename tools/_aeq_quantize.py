"""Quantize a float TFLite file with ai-edge-quantizer's static int8 recipe.

Runs under ``tools/.venv-aeq`` (ai-edge-quantizer pins its own packages, so it
lives in a venv of its own; ``tools/README.md`` says how to create it) and
imports nothing of qatir. ``tools/compare_peers.py`` calls it as

    tools/.venv-aeq/bin/python tools/_aeq_quantize.py FLOAT.tflite CALIB.npz OUT.tflite

``CALIB.npz`` holds ``{input_name}__{k}`` arrays: calibration sample k of the
signature input ``input_name`` (the float file's ``serving_default`` signature).
"""

from __future__ import annotations

import collections
import contextlib
import io
import sys

import numpy as np


def calibration_samples(path: str) -> list[dict[str, np.ndarray]]:
    """The npz as a list of per-sample feeds (keys ``name__k``)."""
    data = np.load(path)
    by_k: dict[int, dict[str, np.ndarray]] = collections.defaultdict(dict)
    for key in data.files:
        name, k = key.rsplit("__", 1)
        by_k[int(k)][name] = data[key]
    return [by_k[k] for k in sorted(by_k)]


def main(float_path: str, calib_path: str, out_path: str) -> None:
    from ai_edge_quantizer import quantizer, recipe

    qt = quantizer.Quantizer(float_path)
    qt.load_quantization_recipe(recipe.static_wi8_ai8())
    samples = calibration_samples(calib_path)
    with contextlib.redirect_stdout(io.StringIO()):
        calib = qt.calibrate({"serving_default": samples}, num_threads=1)
        result = qt.quantize(calib, enable_progress_report=False)
    result.export_model(out_path, overwrite=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])

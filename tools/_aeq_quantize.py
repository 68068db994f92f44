"""Quantize a float TFLite file with one of ai-edge-quantizer's recipes.

Runs under ``tools/.venv-aeq`` (ai-edge-quantizer pins its own packages, so it
lives in a venv of its own; ``tools/README.md`` says how to create it) and
imports nothing of qatir. ``tools/compare_peers.py`` and ``tools/bench_modes.py``
call it as

    tools/.venv-aeq/bin/python tools/_aeq_quantize.py FLOAT.tflite CALIB.npz OUT.tflite [RECIPE]

``RECIPE`` (default ``static_wi8_ai8``) is one of :data:`RECIPES`:

- ``static_wi8_ai8``: ``recipe.static_wi8_ai8()``, int8 weights and activations,
  calibrated on ``CALIB.npz``;
- ``dynamic_wi8_afp32``: ``recipe.dynamic_wi8_afp32()``, int8 channelwise weights,
  float activations (hybrid kernels); no calibration (``CALIB.npz`` may be ``-``);
- ``weight_only_wf16_afp32``: float16 weights behind DEQUANTIZE. ai-edge-quantizer
  0.10.0 has no float16 function in ``recipe.py``; this is its ``float_casting``
  algorithm through ``RecipeManager.add_weight_only_config(num_bits=16,
  algorithm_key=FLOAT_CASTING)``, as its own fp16 tests configure it, for every op
  that algorithm supports (FULLY_CONNECTED, CONV_2D, DEPTHWISE_CONV_2D,
  TRANSPOSE_CONV, EMBEDDING_LOOKUP: other constants stay float32); no calibration.

``CALIB.npz`` holds ``{input_name}__{k}`` arrays: calibration sample k of the
signature input ``input_name`` (the float file's ``serving_default`` signature).
"""

from __future__ import annotations

import collections
import contextlib
import io
import sys

import numpy as np

RECIPES = ("static_wi8_ai8", "dynamic_wi8_afp32", "weight_only_wf16_afp32")


def calibration_samples(path: str) -> list[dict[str, np.ndarray]]:
    """The npz as a list of per-sample feeds (keys ``name__k``)."""
    data = np.load(path)
    by_k: dict[int, dict[str, np.ndarray]] = collections.defaultdict(dict)
    for key in data.files:
        name, k = key.rsplit("__", 1)
        by_k[int(k)][name] = data[key]
    return [by_k[k] for k in sorted(by_k)]


def load_recipe(name: str):
    """ai-edge-quantizer's recipe called ``name`` (one of :data:`RECIPES`)."""
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe, recipe_manager

    if name == "static_wi8_ai8":
        return recipe.static_wi8_ai8()
    if name == "dynamic_wi8_afp32":
        return recipe.dynamic_wi8_afp32()
    if name == "weight_only_wf16_afp32":
        rm = recipe_manager.RecipeManager()
        rm.add_weight_only_config(regex=".*",
                                  operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                  num_bits=16,
                                  algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING)
        return rm.get_quantization_recipe()
    raise SystemExit(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")


def main(float_path: str, calib_path: str, out_path: str,
         recipe_name: str = "static_wi8_ai8") -> None:
    from ai_edge_quantizer import quantizer

    qt = quantizer.Quantizer(float_path)
    qt.load_quantization_recipe(load_recipe(recipe_name))
    with contextlib.redirect_stdout(io.StringIO()):
        calib = None
        if qt.need_calibration:
            samples = calibration_samples(calib_path)
            calib = qt.calibrate({"serving_default": samples}, num_threads=1)
        result = qt.quantize(calib, enable_progress_report=False)
    result.export_model(out_path, overwrite=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])

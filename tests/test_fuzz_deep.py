"""A short ``tools/fuzz.py --deep`` campaign: mutated models that import are quantized,
exported and run in LiteRT; every case must end in success or a QatirError.

The seeds and case counts cover the cases where the long campaigns first found
LiteRT refusing or aborting on qatir's exports (ONNX case 598 of seed 0, TFLite
case 170 of seed 1).
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("_qatir_tool_fuzz", ROOT / "tools" / "fuzz.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


@pytest.mark.parametrize("frontend, seed, cases", [("onnx", 0, 700), ("tflite", 1, 400)])
def test_deep_campaign_exports_only_models_litert_runs(fuzz, tmp_path, frontend, seed, cases):
    source = {"onnx": fuzz.onnx_cases, "tflite": fuzz.tflite_cases}[frontend]
    outcomes: Counter[str] = Counter()
    path = tmp_path / f"case.{frontend}"
    for i, (buf, desc) in enumerate(itertools.islice(source(seed), cases)):
        path.write_bytes(buf)
        outcome, detail = fuzz.classify(str(path), 10.0, deep=True)
        outcomes[outcome] += 1
        assert not outcome.startswith(("CRASH", "HANG")), f"case {i} ({desc}): {detail[-1500:]}"
    exported = sum(n for k, n in outcomes.items() if k.startswith("ok+export"))
    assert exported >= cases // 50, outcomes  # the campaign reaches the writer and LiteRT

"""Seconds per stage of ``qatir compile`` on a MediaPipe-size model, in fresh processes.

Model (unless ``--model`` names one): a face-landmark-like CNN built with Keras
(192x192x3 input; a stride-2 conv, then depthwise-separable blocks with
residual adds, ReLU only, down to 3x3; heads of 1404 landmark coordinates and
one face score; about 0.6 M parameters), random init, converted to a float
TFLite with ``tf.lite.TFLiteConverter`` and kept in ``--workdir`` (built once:
TensorFlow is imported here only for that). Calibration data: ``--calib N``
smooth synthetic images saved as ``.npz``.

Each measured run is a new Python process that runs ``qatir compile`` through
the CLI's ``main`` and reports the per-stage seconds qatir prints, the wall
time of the whole process (interpreter start and imports included) and
whether ``tensorflow`` ended up in ``sys.modules``. Runs: plain compile and
``--report``, ``--repeat`` times each; the median per stage is printed.

Usage: ``python tools/bench_compile.py [--model m.tflite] [--repeat 3] [--calib 16]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from qatir.cli import main
rc = main(sys.argv[1:])
print("BENCH " + json.dumps({"rc": rc, "tf": "tensorflow" in sys.modules,
                              "main_s": time.perf_counter() - t0}))
"""


def build_face_landmark_like(path: str) -> None:
    """A 192x192 landmark regressor of MediaPipe face-mesh size, as a float .tflite."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    L = tf.keras.layers
    init = tf.keras.initializers.HeNormal(seed=0)
    x = inp = L.Input((192, 192, 3), batch_size=1, name="image")
    x = L.Conv2D(16, 3, strides=2, padding="same", activation="relu", kernel_initializer=init)(x)
    for ch, n in ((32, 2), (64, 2), (128, 3), (192, 3), (192, 3)):
        x = L.DepthwiseConv2D(3, strides=2, padding="same", depthwise_initializer=init)(x)
        x = L.Conv2D(ch, 1, activation="relu", kernel_initializer=init)(x)
        for _ in range(n):
            y = L.DepthwiseConv2D(3, padding="same", depthwise_initializer=init)(x)
            y = L.Conv2D(ch, 1, kernel_initializer=init)(y)
            x = L.ReLU()(L.Add()([x, y]))
    x = L.Conv2D(192, 3, activation="relu", kernel_initializer=init)(x)  # 3x3 -> 1x1
    landmarks = L.Conv2D(1404, 1, kernel_initializer=init)(x)
    landmarks = L.Reshape((1404,), name="landmarks")(landmarks)
    score = L.Reshape((1,), name="score")(L.Conv2D(1, 1, kernel_initializer=init)(x))
    model = tf.keras.Model(inp, [landmarks, score])
    with contextlib.redirect_stdout(io.StringIO()):  # the converter prints its signatures
        buf = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    with open(path, "wb") as f:
        f.write(buf)
    print(f"built {path}: {model.count_params() / 1e6:.2f} M parameters, "
          f"{len(buf) / 2**20:.2f} MiB float TFLite")


def write_calib(model: str, path: str, n: int) -> None:
    """``n`` smooth synthetic images per input, keyed by qatir's input names."""
    import qatir

    g = qatir.load(model)
    rng = np.random.default_rng(0)
    arrays = {}
    for t in g.inputs:
        shape = [n] + [int(d) for d in t.shape[1:]]
        low = rng.uniform(-1, 1, [n] + [max(1, d // 16) for d in shape[1:-1]] + [shape[-1]])
        img = low
        for ax in range(1, len(shape) - 1):
            img = np.repeat(img, shape[ax] // img.shape[ax] + 1, axis=ax)
        img = img[tuple(slice(0, d) for d in shape)]
        arrays[t.name] = (img + rng.normal(0, 0.1, shape)).astype(np.float32)
    np.savez(path, **arrays)


def run_once(args: list[str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    bench = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")]
    if proc.returncode or not bench:
        sys.exit(f"qatir compile failed:\n{proc.stdout}\n{proc.stderr}")
    res = json.loads(bench[-1][6:])
    if res["rc"]:
        sys.exit(f"qatir compile exited {res['rc']}:\n{proc.stdout}\n{proc.stderr}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith("time:"))
    res["stages"] = {k: float(v) for k, v in re.findall(r"([\w\- ()]+?) ([\d.]+)s", line[7:])
                     if k.strip() != "(total"}
    res["stages"] = {k.strip(): v for k, v in res["stages"].items()}
    res["process_s"] = wall
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a float .tflite/.onnx (default: build the landmark CNN)")
    ap.add_argument("--workdir", default="/tmp/qatir-bench-compile")
    ap.add_argument("--calib", type=int, default=16, help="calibration images")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="also write the medians here")
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    model = a.model or os.path.join(a.workdir, "face_landmark_like.tflite")
    if not os.path.exists(model):
        build_face_landmark_like(model)
    calib = os.path.join(a.workdir, f"calib{a.calib}.npz")
    if not os.path.exists(calib):
        write_calib(model, calib, a.calib)
    out = os.path.join(a.workdir, "out_int8.tflite")
    results = {}
    for label, extra in (("compile", []), ("compile --report", ["--report"])):
        runs = [run_once(["compile", model, "-o", out, "--calib", calib, "--no-progress", *extra])
                for _ in range(a.repeat)]
        stages = {k: statistics.median(r["stages"].get(k, 0.0) for r in runs)
                  for k in runs[0]["stages"]}
        results[label] = {
            "stages": stages, "stage_total_s": sum(stages.values()),
            "main_s": statistics.median(r["main_s"] for r in runs),
            "process_s": statistics.median(r["process_s"] for r in runs),
            "tensorflow_imported": any(r["tf"] for r in runs)}
    print(f"model: {model} ({os.path.getsize(model) / 2**20:.2f} MiB), calib {a.calib} images, "
          f"median of {a.repeat} fresh processes, {os.cpu_count()} CPUs")
    for label, r in results.items():
        print(f"\nqatir {label}:  tensorflow imported: {r['tensorflow_imported']}")
        for k, v in r["stages"].items():
            print(f"  {k:<22}{v:>8.2f} s")
        print(f"  {'stages total':<22}{r['stage_total_s']:>8.2f} s")
        print(f"  {'main() incl. imports':<22}{r['main_s']:>8.2f} s")
        print(f"  {'whole process':<22}{r['process_s']:>8.2f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": model, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()

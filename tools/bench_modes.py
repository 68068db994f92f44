"""qatir's four file modes (float32, float16, dynamic range, int8) on three corpus models,
next to TF's converter (the Keras model) or ai-edge-quantizer (the ONNX ones) in the same modes.

Models (``tools/corpus/models``): ``tv_mobilenet_v2.onnx`` and ``tv_resnet18.onnx``
(torchvision, random init), and ``keras_resnet50`` rebuilt by the corpus recipe
(``keras.applications.ResNet50(weights=None, input_shape=(128, 128, 3))``, seed 0) with
``classifier_activation=None`` and batch-norm statistics from 32 synthetic images, so
that the SQNR is taken on logits that are not all but zero. Its float file is the
converter's float export, which qatir loads like the corpus file.

- qatir: ``to_tflite(g, mode="float" | "float16" | "dynamic")``; int8 = ``quantize`` +
  ``calibrate`` (``--calib`` synthetic samples) + ``to_tflite(io="float")``;
- converter (Keras model only): ``TFLiteConverter.from_keras_model`` plain (float32),
  ``target_spec.supported_types=[tf.float16]`` (float16), ``optimizations=[DEFAULT]``
  (dynamic range) and DEFAULT + representative dataset + ``TFLITE_BUILTINS_INT8`` (int8);
- ai-edge-quantizer (ONNX models: no converter runs on them), on qatir's float32 file of
  the model, as ``tools/compare_peers.py`` does, in its own venv (``tools/.venv-aeq``,
  ``tools/_aeq_quantize.py``): ``weight_only_wf16_afp32`` (float16: it has no float16
  recipe function; its ``float_casting`` algorithm as a weight-only config, which stores
  the weights of FULLY_CONNECTED / CONV_2D / DEPTHWISE_CONV_2D / TRANSPOSE_CONV as
  float16 and leaves other constants, biases included, float32), ``dynamic_wi8_afp32``
  (dynamic) and ``static_wi8_ai8`` on the same ``--calib`` samples (int8);
- size in bytes; LiteRT latency: default resolver (XNNPACK), 1 thread, median of
  ``--runs`` invokes, a model's files taking turns invoke by invoke; SQNR of each file's
  output against the float32 file's on ``--holdout`` held-out samples; for qatir's
  float16 and dynamic files, the largest difference between LiteRT's output and qatir's
  reference (``run_mode_reference``, default-resolver kernels) on the first sample
  (``--no-reference`` skips it: numpy runs the whole network).

Usage: ``python tools/bench_modes.py [--models a,b] [--calib 8] [--holdout 4] [--runs 30]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CORPUS = Path(__file__).resolve().parent / "corpus" / "models"
MODELS = ("tv_mobilenet_v2", "keras_resnet50", "tv_resnet18")
MODES = ("float32", "float16", "dynamic", "int8")
#: ai-edge-quantizer's recipe (``tools/_aeq_quantize.py``) for each quantized mode
AEQ_RECIPES = {"float16": "weight_only_wf16_afp32", "dynamic": "dynamic_wi8_afp32",
               "int8": "static_wi8_ai8"}


@contextlib.contextmanager
def quiet():
    """Silence the converter's Python-level prints (SavedModel signatures)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def samples(shape: tuple[int, ...], n: int, seed: int) -> np.ndarray:
    """Smooth random images in [-1, 1] (blurred noise plus fine noise), NHWC, batch n."""
    rng = np.random.default_rng(seed)
    h, w = shape[1], shape[2]
    low = rng.uniform(-1, 1, (n, max(1, h // 16), max(1, w // 16), shape[3])).astype(np.float32)
    img = np.repeat(np.repeat(low, 16, axis=1), 16, axis=2)[:, :h, :w]
    img = img + rng.normal(0, 0.15, img.shape).astype(np.float32)
    return np.clip(img, -1, 1).astype(np.float32)


def keras_resnet50(stats: np.ndarray):
    """The corpus recipe's ResNet50, logits out, batch-norm statistics set from ``stats``."""
    import tensorflow as tf
    from bench_vs_converter import set_bn_statistics

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.applications.ResNet50(weights=None, input_shape=(128, 128, 3),
                                           classifier_activation=None)
    set_bn_statistics(model, stats)
    return model


def converter_files(model, calib: np.ndarray) -> dict[str, bytes]:
    """The TF converter's file in each mode."""
    import tensorflow as tf

    def convert(**settings) -> bytes:
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        for key, value in settings.items():
            if key == "supported_types":
                conv.target_spec.supported_types = value
            elif key == "supported_ops":
                conv.target_spec.supported_ops = value
            else:
                setattr(conv, key, value)
        with quiet():
            return conv.convert()

    def rep():
        return ([calib[i:i + 1]] for i in range(len(calib)))

    return {"float32": convert(), "float16": convert(optimizations=[tf.lite.Optimize.DEFAULT],
                                                      supported_types=[tf.float16]),
            "dynamic": convert(optimizations=[tf.lite.Optimize.DEFAULT]),
            "int8": convert(optimizations=[tf.lite.Optimize.DEFAULT], representative_dataset=rep,
                            supported_ops=[tf.lite.OpsSet.TFLITE_BUILTINS_INT8])}


def qatir_files(path: str, calib: np.ndarray) -> tuple[dict[str, bytes], dict[str, float]]:
    """qatir's file in each mode, and the seconds each took from the loaded graph."""
    import qatir

    g = qatir.load(path)
    name = g.inputs[0].name
    files, secs = {}, {}
    for mode, m in (("float32", "float"), ("float16", "float16"), ("dynamic", "dynamic")):
        t0 = time.perf_counter()
        files[mode] = qatir.to_tflite(g, mode=m)
        secs[mode] = time.perf_counter() - t0
    t0 = time.perf_counter()
    q = qatir.quantize(g)
    qatir.calibrate(q, [{name: calib[i:i + 1]} for i in range(len(calib))], progress=False)
    files["int8"] = qatir.to_tflite(q, io="float")
    secs["int8"] = time.perf_counter() - t0
    return files, secs


def aeq_files(float_path: str, input_name: str, calib: np.ndarray, tmp: str,
              timeout: float = 900.0) -> dict[str, bytes]:
    """ai-edge-quantizer's file in each quantized mode, from qatir's float32 file."""
    from compare_peers import aeq_quantize

    feeds = [{input_name: calib[i:i + 1]} for i in range(len(calib))]
    stem = os.path.join(tmp, Path(float_path).stem)
    return {mode: aeq_quantize(float_path, feeds, f"{stem}.aeq_{mode}.tflite", timeout, recipe)
            for mode, recipe in AEQ_RECIPES.items()}


def run(buf: bytes, xs: np.ndarray) -> np.ndarray:
    from qatir.litert_run import LiteRTRunner

    r = LiteRTRunner(buf, threads=1)
    return np.concatenate([np.ravel(r.run([x[None]])[0]) for x in xs])


def latencies_ms(bufs: dict[str, bytes], x: np.ndarray, runs: int) -> dict[str, float]:
    """Median invoke time per file, the files taking turns (order rotating each turn)."""
    from qatir.bench import interleaved_latency_ms

    return interleaved_latency_ms(bufs, runs, feeds={label: [x[None]] for label in bufs})


def reference_diff(path: str, buf: bytes, mode: str, x: np.ndarray) -> float:
    """max |LiteRT - qatir's reference| of a float16 / dynamic file on one sample."""
    import qatir
    from qatir.modes import run_mode_reference

    g = qatir.load(path)
    want = run_mode_reference(g, {g.inputs[0].name: x[None]}, mode, "xnnpack")
    got = run(buf, x[None])
    return float(np.abs(np.ravel(list(want.values())[0]).astype(np.float64) - got).max())


def bench_model(name: str, args, tmp: str) -> list[tuple]:
    """Rows (model, tool, mode, bytes, ms, SQNR dB, reference diff) for one model."""
    from qatir.metrics import sqnr_db

    if name == "keras_resnet50":
        model = keras_resnet50(samples((1, 128, 128, 3), 32, 2))
        shape = (1, 128, 128, 3)
        calib = samples(shape, args.calib, 0)
        conv = converter_files(model, calib)
        path = os.path.join(tmp, "keras_resnet50.tflite")
        Path(path).write_bytes(conv["float32"])
        peer = "converter"
    else:
        path = str(CORPUS / f"{name}.onnx")
        import qatir

        inp = qatir.load(path).inputs[0]
        shape = tuple(inp.shape)
        calib = samples(shape, args.calib, 0)
        peer = "ai-edge-quantizer"
    mine, _ = qatir_files(path, calib)
    if peer == "ai-edge-quantizer":
        float_path = os.path.join(tmp, f"{name}.float.tflite")
        Path(float_path).write_bytes(mine["float32"])
        conv = aeq_files(float_path, inp.name, calib, tmp)
    held = samples(shape, args.holdout, 1)
    ref = run(mine["float32"], held)
    bufs = {("qatir", m): b for m, b in mine.items()}
    bufs.update({(peer, m): b for m, b in conv.items()})
    lat = latencies_ms({f"{t}/{m}": b for (t, m), b in bufs.items()}, held[0], args.runs)
    rows = []
    for (tool, mode), buf in bufs.items():
        db = sqnr_db(ref, run(buf, held)) if not (tool == "qatir" and mode == "float32") else None
        diff = None
        if args.reference and tool == "qatir" and mode in ("float16", "dynamic"):
            diff = reference_diff(path, buf, mode, held[0])
        rows.append((name, tool, mode, len(buf), lat[f"{tool}/{mode}"], db, diff))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--calib", type=int, default=8)
    ap.add_argument("--holdout", type=int, default=4)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--no-reference", dest="reference", action="store_false")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows += bench_model(name.strip(), args, tmp)
    print(f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{sys.version.split()[0]}; LiteRT default resolver (XNNPACK), 1 thread, median of "
          f"{args.runs} invokes, a model's files taking turns; SQNR against the float32 file "
          f"on {args.holdout} held-out synthetic samples; int8 calibrated on {args.calib}")
    print(f"| {'model':<16} | {'file':<25} | {'size (MiB)':>10} | {'latency (ms)':>12} | "
          f"{'SQNR vs float (dB)':>18} | {'vs qatir reference':>18} |")
    print(f"|{'-' * 18}|{'-' * 27}|{'-' * 12}|{'-' * 14}|{'-' * 20}|{'-' * 20}|")
    for name, tool, mode, size, ms, db, diff in rows:
        dbs = "reference" if db is None else ("exact" if db == float("inf") else f"{db:.1f}")
        ds = "" if diff is None else ("bit-exact" if diff == 0 else f"max {diff:.2g}")
        print(f"| {name:<16} | {tool + ' ' + mode:<25} | {size / 2**20:>10.2f} | {ms:>12.2f} | "
              f"{dbs:>18} | {ds:>18} |")


if __name__ == "__main__":
    main()

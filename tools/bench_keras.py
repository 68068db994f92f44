"""qatir.load(keras_model) vs tf.lite.TFLiteConverter PTQ int8 on keras.applications models.

Models: MobileNetV2, MobileNetV3Small, EfficientNetB0, ResNet50 and ConvNeXtTiny
from ``keras.applications`` (Keras 3), ``weights=None`` (random init, no download),
224x224, ``classifier_activation=None`` so the SQNR is taken on logits. Each
network's batch-norm statistics are set by one training-mode pass over 32
synthetic images (momentum 0); without it random-init activations vanish.

Per model, both paths get the same ``--calib`` synthetic images:
- qatir: ``qatir.load(model)`` + ``quantize`` + ``calibrate`` + ``to_tflite(io="float")``;
- converter: ``TFLiteConverter.from_keras_model`` with ``Optimize.DEFAULT``, the
  representative dataset and int8 builtins only.
Printed: time to the int8 flatbuffer, its size, SQNR of each int8 model's logits in
LiteRT against ``model(x, training=False)`` on ``--holdout`` other images, and whether
qatir's file loads and runs in LiteRT on both kernel paths (XNNPACK and the builtin
reference kernels). A model qatir refuses is reported with the reason.

Usage: ``python tools/bench_keras.py [--models MobileNetV2,ResNet50] [--calib 16] [--holdout 8]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from bench_vs_converter import converter_int8, run_model, set_bn_statistics, sqnr_db  # noqa: E402

MODELS = ["MobileNetV2", "MobileNetV3Small", "EfficientNetB0", "ResNet50", "ConvNeXtTiny"]


def images(n: int, seed: int) -> np.ndarray:
    """Smooth random images in [0, 1] (blurred noise), NHWC 224x224x3."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 1, (n, 14, 14, 3)).astype(np.float32)
    img = np.repeat(np.repeat(low, 16, axis=1), 16, axis=2)
    img += rng.normal(0, 0.07, img.shape).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


def to_model_range(name: str, x: np.ndarray) -> np.ndarray:
    """The input range each application expects (its own preprocessing layers aside)."""
    if name == "MobileNetV2":
        return x * 2 - 1                       # tf-style [-1, 1]
    if name == "ResNet50":
        return x * 255 - 128                   # caffe-style, mean subtracted
    return x * 255                             # preprocessing inside the model


def build(name: str, stats: np.ndarray):
    import keras

    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(224, 224, 3),
                                              classifier_activation=None)
    set_bn_statistics(model, stats)
    return model


def qatir_int8(model, calib: np.ndarray) -> tuple[bytes, float, dict[str, float]]:
    import qatir

    t0 = time.perf_counter()
    g = qatir.load(model)
    t1 = time.perf_counter()
    q = qatir.quantize(g)
    t2 = time.perf_counter()
    name = g.inputs[0].name
    qatir.calibrate(q, [{name: calib[i:i + 1]} for i in range(len(calib))], progress=False)
    t3 = time.perf_counter()
    buf = qatir.to_tflite(q, io="float")
    t4 = time.perf_counter()
    return buf, t4 - t0, {"load": t1 - t0, "quantize": t2 - t1, "calibrate": t3 - t2,
                          "write": t4 - t3}


def runs_on_reference_kernels(buf: bytes, x: np.ndarray) -> bool:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_content=buf,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x[:1])
    it.invoke()
    return bool(np.all(np.isfinite(it.get_tensor(it.get_output_details()[0]["index"]))))


def bench(name: str, calib_n: int, holdout_n: int) -> str:
    import qatir

    stats = to_model_range(name, images(32, 2))
    calib = to_model_range(name, images(calib_n, 0))
    held = to_model_range(name, images(holdout_n, 1))
    model = build(name, stats)
    ref = np.asarray(model(held, training=False))
    try:
        qbuf, qsecs, stages = qatir_int8(model, calib)
    except qatir.QatirError as e:
        msg = str(e)
        head = msg[:msg.find(";")] if ";" in msg else msg[:300]
        return (f"{name:<17} refused by qatir: {head} (way out: float TFLite from the "
                "converter, then qatir.load)")
    q_sqnr = sqnr_db(ref, run_model(qbuf, held))
    ref_ok = runs_on_reference_kernels(qbuf, held)
    try:
        cbuf, csecs = converter_int8(model, calib)
        conv = f"{csecs:>8.2f} {len(cbuf):>10d} {sqnr_db(ref, run_model(cbuf, held)):>8.2f}"
        speed = f"{csecs / qsecs:>6.1f}x"
    except Exception as e:  # noqa: BLE001 - reported in the table
        conv, speed = f"converter failed: {type(e).__name__}: {str(e)[:80]}", ""
    return (f"{name:<17} {qsecs:>8.2f} {len(qbuf):>10d} {q_sqnr:>8.2f} {conv} {speed} "
            f"{'yes' if ref_ok else 'NO':>6}   "
            + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--calib", type=int, default=16)
    ap.add_argument("--holdout", type=int, default=8)
    args = ap.parse_args()
    import keras
    import tensorflow as tf

    print(f"keras {keras.__version__}, tensorflow {tf.__version__}; weights=None, 224x224, "
          f"BN statistics from 32 synthetic images; {args.calib} calibration / {args.holdout} "
          "held-out synthetic images; SQNR of int8 logits in LiteRT (XNNPACK) vs Keras float")
    print(f"{'model':<17} {'qatir s':>8} {'bytes':>10} {'SQNR dB':>8} {'conv. s':>8} "
          f"{'bytes':>10} {'SQNR dB':>8} {'speed':>7} {'ref ok':>6}   qatir stages (s)")
    for name in args.models.split(","):
        print(bench(name.strip(), args.calib, args.holdout), flush=True)


if __name__ == "__main__":
    main()

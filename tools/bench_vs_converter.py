"""qatir vs tf.lite.TFLiteConverter post-training int8 on a Keras MobileNetV2.

Model: ``tf.keras.applications.MobileNetV2(alpha=1.0, input 224, weights=None)``
(random init, no download; ``classifier_activation=None`` so the SQNR is taken
on logits, not on a near-uniform softmax), exported to a float ``.tflite``.
Both paths get the same calibration data (``--calib`` synthetic images) and
are measured on the same held-out images:

- time to an int8 flatbuffer: qatir = ``load(float.tflite)`` + ``quantize`` +
  ``calibrate`` + ``to_tflite``; converter = ``TFLiteConverter.from_keras_model``
  with ``Optimize.DEFAULT``, a representative dataset and int8 builtins only;
- model size in bytes;
- LiteRT latency: default resolver (XNNPACK), 1 thread, median of ``--runs`` invokes,
  the models taking turns invoke by invoke;
- SQNR of the int8 model's output against the float model's, on held-out inputs.

Both int8 models keep float input/output edges. Prints one table.
Usage: ``python tools/bench_vs_converter.py [--calib 16] [--holdout 8] [--runs 200]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from qatir.metrics import sqnr_db  # noqa: E402


def synthetic_images(n: int, seed: int) -> np.ndarray:
    """Smooth random images in MobileNetV2's [-1, 1] input range (blurred noise + gradients)."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(-1, 1, (n, 14, 14, 3)).astype(np.float32)
    img = np.repeat(np.repeat(low, 16, axis=1), 16, axis=2)
    img += rng.normal(0, 0.15, img.shape).astype(np.float32)
    return np.clip(img, -1, 1).astype(np.float32)


def set_bn_statistics(model, images: np.ndarray) -> None:
    """Give a randomly initialized network sane activations: one training-mode pass with
    momentum 0 sets every batch norm's moving mean/variance to the statistics it sees
    (without this, random MobileNetV2 logits are ~1e-11 and every int8 model reads 0)."""
    import tensorflow as tf

    bns = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.BatchNormalization)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    model(images, training=True)
    for bn, m in zip(bns, saved):
        bn.momentum = m


def build_float_model(path: str, stats_images: np.ndarray):
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.applications.MobileNetV2(alpha=1.0, input_shape=(224, 224, 3),
                                              weights=None, classifier_activation=None)
    set_bn_statistics(model, stats_images)
    with quiet():
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        buf = conv.convert()
    with open(path, "wb") as f:
        f.write(buf)
    return model


@contextlib.contextmanager
def quiet():
    """Silence the converter's Python-level prints (SavedModel signatures)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


STAGES: dict[str, float] = {}


def qatir_int8(float_path: str, calib: np.ndarray) -> tuple[bytes, float]:
    import qatir

    t0 = time.perf_counter()
    g = qatir.load(float_path)
    t1 = time.perf_counter()
    name = g.inputs[0].name
    q = qatir.quantize(g)
    t2 = time.perf_counter()
    qatir.calibrate(q, [{name: calib[i:i + 1]} for i in range(len(calib))])
    t3 = time.perf_counter()
    buf = qatir.to_tflite(q, io="float")
    t4 = time.perf_counter()
    STAGES.update(load=t1 - t0, quantize=t2 - t1, calibrate=t3 - t2, to_tflite=t4 - t3)
    return buf, t4 - t0


def converter_int8(model, calib: np.ndarray) -> tuple[bytes, float]:
    import tensorflow as tf

    t0 = time.perf_counter()
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([calib[i:i + 1]] for i in range(len(calib)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with quiet():
        buf = conv.convert()
    return buf, time.perf_counter() - t0


def run_model(buf: bytes, images: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=buf, num_threads=1)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    ys = []
    for x in images:
        it.set_tensor(inp["index"], x[None].astype(inp["dtype"]))
        it.invoke()
        ys.append(it.get_tensor(out["index"]).astype(np.float32).copy())
    return np.concatenate(ys)


def latencies_ms(bufs: dict[str, bytes], runs: int) -> dict[str, float]:
    """Median invoke time per model (XNNPACK, 1 thread, the models taking turns invoke by
    invoke: :func:`qatir.bench.interleaved_latency_ms`) on one synthetic image."""
    from qatir.bench import interleaved_latency_ms

    x = synthetic_images(1, 99)
    return interleaved_latency_ms(bufs, runs, feeds={label: [x] for label in bufs})


def operator_counts(buf: bytes) -> dict[tuple[str, int], int]:
    """{(builtin name, version): count} of the model's first subgraph."""
    import tflite

    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    m = tflite.Model.GetRootAsModel(buf, 0)
    sg = m.Subgraphs(0)
    counts: dict[tuple[str, int], int] = {}
    for i in range(sg.OperatorsLength()):
        code = m.OperatorCodes(sg.Operators(i).OpcodeIndex())
        key = (names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())], code.Version())
        counts[key] = counts.get(key, 0) + 1
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib", type=int, default=16)
    ap.add_argument("--holdout", type=int, default=8)
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    calib = synthetic_images(args.calib, 0)
    held = synthetic_images(args.holdout, 1)
    with tempfile.TemporaryDirectory() as tmp:
        float_path = os.path.join(tmp, "mobilenet_v2_float.tflite")
        model = build_float_model(float_path, synthetic_images(32, 2))
        with open(float_path, "rb") as f:
            float_buf = f.read()
        ref = run_model(float_buf, held)
        results: dict[str, object] = {}
        bufs = {"float": float_buf}
        for label, fn in (("TFLiteConverter", lambda: converter_int8(model, calib)),
                          ("qatir", lambda: qatir_int8(float_path, calib))):
            try:
                buf, secs = fn()
            except Exception as e:  # noqa: BLE001 - reported in the table
                results[label] = f"failed: {type(e).__name__}: {str(e)[:200]}"
                continue
            bufs[label] = buf
            results[label] = [secs, len(buf), 0.0, sqnr_db(ref, run_model(buf, held))]
        if "TFLiteConverter" in bufs:  # a second interpreter of the same file: the noise floor
            bufs["converter, again"] = bufs["TFLiteConverter"]
        lat = latencies_ms(bufs, args.runs)
        for label, r in results.items():
            if not isinstance(r, str):
                r[2] = lat[label]
    print(f"MobileNetV2 1.0/224 (random init, batch-norm statistics from 32 synthetic images), "
          f"{args.calib} calibration / {args.holdout} held-out synthetic images; LiteRT XNNPACK, "
          f"1 thread; float model {len(float_buf)} B, {lat['float']:.2f} ms; SQNR on logits")
    print(f"{'path':<16} {'time to int8 (s)':>17} {'size (B)':>10} {'latency (ms)':>13} "
          f"{'SQNR vs float (dB)':>19}")
    for label, r in results.items():
        if isinstance(r, str):
            print(f"{label:<16} {r}")
        else:
            print(f"{label:<16} {r[0]:>17.2f} {r[1]:>10d} {r[2]:>13.2f} {r[3]:>19.2f}")
    if STAGES:
        print("qatir stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in STAGES.items()))
    if all(not isinstance(r, str) for r in results.values()):
        q, c = results["qatir"], results["TFLiteConverter"]
        print(f"speed-up to int8 file: {c[0] / q[0]:.1f}x; latency ratio qatir/converter: "
              f"{q[2] / c[2]:.3f} (the converter's model against itself: "
              f"{lat['converter, again'] / c[2]:.3f}); SQNR difference: {q[3] - c[3]:+.2f} dB")
        ops = {label: operator_counts(bufs[label]) for label in ("qatir", "TFLiteConverter")}
        same = ops["qatir"] == ops["TFLiteConverter"]
        print("operators (builtin, version): " + ("identical in both models: " if same else
              f"DIFFER; converter {sorted(ops['TFLiteConverter'].items())}, qatir: ")
              + ", ".join(f"{n} v{v} x{k}" for (n, v), k in sorted(ops["qatir"].items())))


if __name__ == "__main__":
    main()

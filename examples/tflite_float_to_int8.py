"""Quantize a float TFLite model with qatir (no TensorFlow converter in the int8 path).

    python examples/tflite_float_to_int8.py [MODEL.tflite] [--out DIR]

Without MODEL, a small float Keras CNN is trained on scikit-learn's digits and
converted to a float .tflite by TensorFlow's own converter, standing in for
"a float model you were given". qatir imports the flatbuffer, quantizes and
calibrates it (on real digits), writes a fully int8 .tflite itself, and
compares float and int8 predictions in LiteRT. With your own MODEL, the
calibration data are random (pass real samples in your own script: see
docs/getting-started.md).

The same from the shell:

    qatir compile model.tflite -o model_int8.tflite --calib calib.npz
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import qatir  # noqa: E402
from qatir.compile import random_batches, run_litert, sqnr_db  # noqa: E402
from qatir.demo import load_digits_nchw  # noqa: E402


def float_digits_tflite(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Train a float Keras CNN on digits, convert it with TF's converter; return test data."""
    import tensorflow as tf

    x_tr, y_tr, x_te, y_te = load_digits_nchw()
    x_tr, x_te = x_tr.transpose(0, 2, 3, 1), x_te.transpose(0, 2, 3, 1)
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([
        tf.keras.Input((8, 8, 1), batch_size=1, name="image"),
        tf.keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        tf.keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6"),
        tf.keras.layers.Conv2D(32, 1, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.GlobalAveragePooling2D(),
        tf.keras.layers.Dense(10),
    ])
    train = tf.keras.Sequential([tf.keras.Input((8, 8, 1)), *model.layers])  # any batch size
    train.compile(tf.keras.optimizers.Adam(3e-3),
                  tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    train.fit(x_tr, y_tr, epochs=40, batch_size=32, verbose=0)
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return x_te, y_te


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", help="a float .tflite (default: one made here)")
    ap.add_argument("--out", default="tflite-example")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.model:
        src = Path(args.model)
        g = qatir.load(src)
        samples = random_batches(g, 32)
        labels = None
    else:
        src = out / "digits_float.tflite"
        x_te, labels = float_digits_tflite(src)
        g = qatir.load(src)
        samples = [{g.inputs[0].name: x_te[i:i + 1]} for i in range(len(x_te))]
    print(f"imported {src}: {len(g.nodes)} nodes, ops {sorted({n.op for n in g.nodes})}")

    q = qatir.quantize(g)
    qatir.calibrate(q, samples[:64], progress=False)
    dst = out / (src.stem.replace("_float", "") + "_int8.tflite")
    qatir.save(q, dst)

    float_out = run_litert(src.read_bytes(), samples)
    int8_out = run_litert(dst.read_bytes(), samples)
    f = np.concatenate([o[0].ravel() for o in float_out])
    i8 = np.concatenate([o[0].ravel() for o in int8_out])
    print(f"size: float {src.stat().st_size} bytes -> int8 {dst.stat().st_size} bytes")
    print(f"output SQNR int8 vs float (both in LiteRT): {sqnr_db(f, i8):.1f} dB")
    if labels is not None:
        acc_f = np.mean([np.argmax(o[0]) for o in float_out] == labels)
        acc_q = np.mean([np.argmax(o[0]) for o in int8_out] == labels)
        print(f"accuracy on {len(labels)} test digits: float {acc_f:.2%}, int8 {acc_q:.2%}")
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()

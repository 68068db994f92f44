"""Trained model vs its own int8 file: TFMOT + converter against qatir, on one Keras CNN.

TFMOT's QAT guide trains a fake-quantized Keras model and converts it with
``tf.lite.TFLiteConverter``; what a user then deploys is that int8 file, so the
figure that matters is how often the file's int8 outputs equal the trained
model's outputs quantized with the same output parameters. This script trains
the same small CNN (scikit-learn's 8x8 digits; two 3x3 convolutions, each with batch
norm and ReLU; a dense layer) both ways from the same float weights, on the same batches:

- TFMOT 0.8 (``quantize_model`` on the tf-keras 2 model, ``fit``, then the
  converter with ``Optimize.DEFAULT`` and int8 input/output);
- qatir (``qatir.load`` of the Keras 3 model with the same weights, ``quantize``,
  ``calibrate``, ``fit``, ``to_tflite``).

Printed per tool: test accuracy of the trained model and of the int8 file in
LiteRT (XNNPACK), the share of int8 logits equal to the trained model's, and the
largest difference in LSB.

TFMOT needs tf-keras, which qatir's environment does not have, so this runs in
its own venv (``tools/README.md``):

    python3 -m venv --system-site-packages tools/.venv-tfmot
    tools/.venv-tfmot/bin/pip install tf-keras==2.21.0 tensorflow-model-optimization==0.8.1
    tools/.venv-tfmot/bin/pip install --no-deps -e .
    TF_USE_LEGACY_KERAS=1 tools/.venv-tfmot/bin/python tools/bench_tfmot.py [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.keras is tf-keras 2, as TFMOT requires

import numpy as np  # noqa: E402


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits, NHWC in [0, 1]: 1437 training and 360 test images."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    x, y = x[idx], y[idx]
    return x[:1437], y[:1437], x[1437:], y[1437:]


def layers_of(k):
    """The CNN in any Keras (tf-keras 2 or Keras 3) namespace ``k``."""
    inp = k.Input((8, 8, 1), batch_size=None, name="image")
    h = inp
    for i, stride in ((1, 1), (2, 2)):
        h = k.layers.Conv2D(16, 3, strides=stride, padding="same", use_bias=False,
                            name=f"conv{i}")(h)
        h = k.layers.BatchNormalization(name=f"bn{i}")(h)
        h = k.layers.ReLU(name=f"relu{i}")(h)
    h = k.layers.Flatten(name="flat")(h)
    out = k.layers.Dense(10, name="logits")(h)
    return k.Model(inp, out)


def int8_outputs(buf: bytes, x: np.ndarray) -> tuple[np.ndarray, tuple[float, int]]:
    """The file's int8 logits for float images ``x`` (quantized with its input params)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=buf, num_threads=1)
    it.allocate_tensors()
    d, o = it.get_input_details()[0], it.get_output_details()[0]
    s, z = d["quantization"]
    xq = np.clip(np.round(x / s) + z, -128, 127).astype(np.int8)
    ys = []
    for i in range(len(x)):  # one image per invoke: qatir writes batch-1 files by default
        it.set_tensor(d["index"], xq[i:i + 1])
        it.invoke()
        ys.append(it.get_tensor(o["index"]).copy())
    return np.concatenate(ys), o["quantization"]


def agreement(trained: np.ndarray, deployed: np.ndarray, params) -> tuple[float, int]:
    """Share of logits where the deployed int8 value equals the trained model's output
    quantized with the file's output params, and the largest difference in LSB."""
    s, z = params
    want = np.clip(np.round(trained / s) + z, -128, 127).astype(np.int32)
    diff = np.abs(want - deployed.astype(np.int32))
    return float(np.mean(diff == 0)), int(diff.max())


def train_float(x, y, epochs: int):
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    m = layers_of(tf_keras)
    m.compile(tf_keras.optimizers.Adam(3e-3),
              tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    m.fit(x, y, batch_size=64, epochs=epochs, verbose=0, shuffle=False)
    return m


def tfmot_path(float_model, x, y, xt, epochs: int) -> dict:
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    q = tfmot.quantization.keras.quantize_model(float_model)
    q.compile(tf_keras.optimizers.Adam(1e-4),
              tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    q.fit(x, y, batch_size=64, epochs=epochs, verbose=0, shuffle=False)
    conv = tf.lite.TFLiteConverter.from_keras_model(q)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    buf = conv.convert()
    return {"trained": q.predict(xt, verbose=0), "buf": buf}


def qatir_path(float_model, x, y, xt, epochs: int) -> dict:
    import keras
    import tensorflow as tf

    import qatir

    k3 = layers_of(keras)
    k3.set_weights(float_model.get_weights())
    g = qatir.load(k3)
    q = qatir.quantize(g)
    qatir.calibrate(q, [{"image": x[i:i + 64]} for i in range(0, 256, 64)], progress=False)
    batches = [({"image": x[i:i + 64]}, y[i:i + 64]) for i in range(0, len(x), 64)]
    qatir.fit(q, batches, loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              optimizer=tf.keras.optimizers.Adam(1e-4), epochs=epochs, verbose=False)
    trained = qatir.run(q, {"image": xt})
    return {"trained": next(iter(trained.values())), "buf": qatir.to_tflite(q, io="int8")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--float-epochs", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=3, help="QAT epochs (both tools)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    x, y, xt, yt = digits()
    float_model = train_float(x, y, args.float_epochs)
    float_acc = float(np.mean(float_model.predict(xt, verbose=0).argmax(1) == yt))
    print(f"float model: test accuracy {100 * float_acc:.2f}% ({len(xt)} images)")
    print(f"{'tool':<26}{'trained acc':>12}{'int8 acc':>10}{'int8 == trained':>22}{'max LSB':>9}")
    for label, fn in (("TFMOT 0.8 + converter", tfmot_path), ("qatir", qatir_path)):
        r = fn(float_model, x, y, xt, args.epochs)
        deployed, params = int8_outputs(r["buf"], xt)
        share, worst = agreement(r["trained"], deployed, params)
        acc_t = np.mean(r["trained"].argmax(1) == yt)
        acc_d = np.mean(deployed.argmax(1) == yt)
        equal = f"{100 * share:.2f}% ({round(share * deployed.size)}/{deployed.size})"
        print(f"{label:<26}{100 * acc_t:>11.2f}%{100 * acc_d:>9.2f}%{equal:>22}{worst:>9d}")


if __name__ == "__main__":
    main()

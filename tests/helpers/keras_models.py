"""Keras models and TF's own converter, for the TFLite-frontend and pass tests (imports TF)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

L = tf.keras.layers


def mobilenet_like() -> tf.keras.Model:
    """MobileNetV2-style blocks plus most of the ops the frontend maps, three outputs."""
    inp = tf.keras.Input((16, 16, 3), batch_size=1, name="image")
    x = L.ZeroPadding2D(1)(inp)
    x = L.Conv2D(8, 3, strides=2, padding="valid")(x)
    x = L.ReLU(6.0)(L.BatchNormalization()(x))
    h = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(24, 1, use_bias=False)(x)))
    h = L.DepthwiseConv2D(3, padding="same", use_bias=False)(h)
    h = L.ReLU(6.0)(L.BatchNormalization()(h))
    h = L.BatchNormalization()(L.Conv2D(8, 1, use_bias=False)(h))
    x = L.Add()([x, h])  # inverted residual
    x = L.PReLU(shared_axes=[1, 2])(x)
    a = L.UpSampling2D(2, interpolation="bilinear")(x)
    b = L.Lambda(lambda t: tf.image.resize(t, (16, 16), method="nearest"))(x)
    x = L.Concatenate()([a, b])
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="valid", activation="relu")(x)
    x = L.Conv2DTranspose(8, 3, strides=2, padding="same")(x)
    x = L.Lambda(lambda t: tf.nn.depth_to_space(t, 2))(x)
    x = L.MaxPooling2D(2)(x)
    x = L.Lambda(lambda t: tf.nn.space_to_depth(t, 2))(x)
    x = L.AveragePooling2D(2, padding="same")(x)
    x = L.Activation("hard_swish")(x)
    s = L.Lambda(lambda t: t[:, 1:, ::2, :])(x)
    s = L.Lambda(lambda t: tf.transpose(t, [0, 2, 1, 3]))(s)
    s = L.Lambda(lambda t: tf.pad(t, [[0, 0], [1, 0], [0, 1], [0, 0]], constant_values=0.5))(s)
    u, v, w = L.Activation("sigmoid")(s), L.Activation("tanh")(s), L.LeakyReLU(0.1)(s)
    s = L.Subtract()([L.Multiply()([u, v]), w])
    feat = L.Lambda(lambda t: t[0] / (t[1] + 2.0), name="features")([s, u])
    g = L.Dense(10)(L.GlobalAveragePooling2D()(x))
    f = L.Dense(10, activation="relu")(L.Flatten()(x))
    logits = L.Add(name="logits")([f, g])
    prob = L.Softmax(name="prob")(logits)
    model = tf.keras.Model(inp, {"prob": prob, "logits": logits, "features": feat})
    rng = np.random.default_rng(7)
    for layer in model.layers:  # non-trivial batch-norm statistics and PReLU slopes
        if isinstance(layer, (L.BatchNormalization, L.PReLU)):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32) if i in (0, 3)
                               else rng.uniform(-0.2, 0.2, w.shape).astype(np.float32)
                               for i, w in enumerate(layer.get_weights())])
    return model


def convert(model: tf.keras.Model, mode: str) -> bytes:
    """TF's converter: ``mode`` is "float", "fp16", "dynamic" (range) or "sparse"."""
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode == "sparse":
        conv.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    return conv.convert()

"""qatir.load(keras.Model): every supported layer, nesting, sharing, files, refusals.

Each case builds a small Keras 3 model, imports it and checks that qatir's TF
execution of the IR gives ``model(x, training=False)`` within 1e-5 (relative to
the largest reference value), with no transposes (Keras is NHWC already).
"""

from __future__ import annotations

import numpy as np
import pytest

import qatir

keras = pytest.importorskip("keras")
from keras import layers, ops  # noqa: E402

RTOL = 1e-5


def _feeds(model, rng, batch=2):
    feeds = {}
    for kt in model.inputs:
        shape = [batch if d is None else d for d in kt.shape]
        feeds[kt.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _randomize_bn(model, rng):
    for layer in _all_layers(model):
        if isinstance(layer, layers.BatchNormalization):
            for var, positive in ((layer.gamma, True), (layer.beta, False),
                                  (layer.moving_mean, False), (layer.moving_variance, True)):
                if var is not None:
                    shape = tuple(var.shape)
                    var.assign((rng.uniform(0.5, 1.5, shape) if positive
                                else rng.normal(0, 0.3, shape)).astype(np.float32))


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def check(model, rng, batch=2, feeds=None):
    """Import ``model``, run both, compare every output; returns the graph."""
    _randomize_bn(model, rng)
    g = qatir.load(model)
    feeds = feeds or _feeds(model, rng, batch)
    ref = model([feeds[kt.name] for kt in model.inputs] if len(model.inputs) > 1
                else feeds[model.inputs[0].name], training=False)
    ref = [np.asarray(r) for r in (ref if isinstance(ref, (list, tuple)) else [ref])]
    out = qatir.run(g, feeds)
    assert len(g.outputs) == len(ref)
    for t, r in zip(g.outputs, ref):
        got = out[t.name]
        assert got.shape == r.shape, (t.name, got.shape, r.shape)
        scale = max(float(np.abs(r).max()), 1e-30)
        err = float(np.abs(got - r).max()) / scale
        assert err <= RTOL, f"{t.name}: relative error {err:.3g}"
    return g


def functional(shape, *stack, name="m"):
    x = inp = keras.Input(shape, name="x")
    for layer in stack:
        x = layer(x)
    return keras.Model(inp, x, name=name)


def ops_of(g):
    return [n.op for n in g.nodes]


# ------------------------------------------------------------------ weight layers
CONV_CASES = {
    "conv2d_same_s2": ((9, 9, 3), lambda: layers.Conv2D(4, 3, strides=2, padding="same")),
    "conv2d_valid_s2_k4": ((10, 11, 3), lambda: layers.Conv2D(4, 4, strides=2)),
    "conv2d_same_dilated": ((9, 9, 2), lambda: layers.Conv2D(3, 3, dilation_rate=2,
                                                              padding="same")),
    "conv2d_nobias_relu": ((6, 6, 2), lambda: layers.Conv2D(3, (1, 3), use_bias=False,
                                                             activation="relu")),
    "conv2d_groups_depthwise": ((7, 7, 4), lambda: layers.Conv2D(8, 3, groups=4,
                                                                  padding="same")),
    "conv2d_grouped": ((7, 7, 6), lambda: layers.Conv2D(9, 3, groups=3, padding="same")),
    "conv1d_same": ((12, 3), lambda: layers.Conv1D(5, 3, padding="same", activation="tanh")),
    "conv1d_causal_dilated": ((12, 3), lambda: layers.Conv1D(4, 3, padding="causal",
                                                              dilation_rate=2)),
    "conv1d_valid_s2": ((13, 2), lambda: layers.Conv1D(4, 3, strides=2)),
    "depthwise_m2_s2": ((9, 9, 3), lambda: layers.DepthwiseConv2D(3, strides=2,
                                                                   depth_multiplier=2,
                                                                   padding="same")),
    "depthwise_valid_relu6": ((8, 8, 3), lambda: layers.DepthwiseConv2D(
        (3, 2), activation="relu6")),
    "depthwise1d": ((10, 3), lambda: layers.DepthwiseConv1D(3, padding="same",
                                                             depth_multiplier=2)),
    "separable2d": ((8, 8, 3), lambda: layers.SeparableConv2D(5, 3, padding="same",
                                                              depth_multiplier=2,
                                                              activation="hard_swish")),
    "separable2d_nobias_s2": ((9, 9, 3), lambda: layers.SeparableConv2D(4, 3, strides=2,
                                                                         use_bias=False)),
    "separable1d": ((10, 3), lambda: layers.SeparableConv1D(4, 3)),
    "tconv_same_s2": ((5, 5, 3), lambda: layers.Conv2DTranspose(4, 3, strides=2,
                                                                 padding="same")),
    "tconv_valid_s2": ((5, 4, 3), lambda: layers.Conv2DTranspose(2, 3, strides=2)),
    "tconv_same_k4_s2_nobias": ((4, 4, 2), lambda: layers.Conv2DTranspose(
        3, 4, strides=2, padding="same", use_bias=False, activation="sigmoid")),
    "tconv1d": ((6, 3), lambda: layers.Conv1DTranspose(2, 3, strides=2, padding="same")),
    "dense_2d_softmax": ((7,), lambda: layers.Dense(4, activation="softmax")),
    "dense_3d": ((5, 7), lambda: layers.Dense(3)),
    "dense_4d_nobias": ((2, 3, 7), lambda: layers.Dense(3, use_bias=False, activation="swish")),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_weight_layers(case, rng):
    shape, make = CONV_CASES[case]
    layer = make()
    g = check(functional(shape, layer), rng)
    assert any(n.name == layer.name for n in g.nodes)
    assert g.inputs[0].shape[0] is None  # dynamic batch kept


def test_dense_nd_keeps_num_dims(rng):
    g = check(functional((2, 3, 7), layers.Dense(3, name="fc")), rng)
    fc = next(n for n in g.nodes if n.op == "FULLY_CONNECTED")
    assert fc.attrs["keep_num_dims"] and fc.output.shape == (None, 2, 3, 3)


def test_fused_activation_is_a_separate_node(rng):
    g = check(functional((6, 6, 2), layers.Conv2D(3, 3, activation="relu6", name="c")), rng)
    assert ops_of(g) == ["CONV_2D", "RELU6"]
    assert [n.name for n in g.nodes] == ["c", "c/relu6"]
    assert g.outputs[0].name == "c"        # the layer's output carries its name
    q = qatir.quantize(g)
    assert "RELU6" not in ops_of(q)        # the fuse pass fuses it


def test_separable_is_depthwise_then_pointwise(rng):
    g = check(functional((8, 8, 3), layers.SeparableConv2D(5, 3, name="sep")), rng)
    assert ops_of(g) == ["DEPTHWISE_CONV_2D", "CONV_2D"]
    dw, pw = g.nodes
    assert len(dw.inputs) == 3 and dw.inputs[2] is None  # bias only on the pointwise conv
    assert pw.inputs[1].shape == (5, 1, 1, 3)


def test_use_bias_false_has_no_bias_input(rng):
    g = check(functional((6, 6, 2), layers.Conv2D(3, 3, use_bias=False)), rng)
    conv = g.nodes[0]
    assert conv.inputs[1].shape == (3, 3, 3, 2)        # OHWI
    assert len(conv.inputs) < 3 or conv.inputs[2] is None


def test_batch_norm_is_batch_norm(rng):
    bn = layers.BatchNormalization(name="bn", epsilon=1e-2)
    g = check(functional((5, 5, 4), layers.Conv2D(4, 3), bn), rng)
    node = next(n for n in g.nodes if n.op == "BATCH_NORM")
    assert node.name == "bn" and node.attrs["epsilon"] == pytest.approx(1e-2)
    np.testing.assert_array_equal(node.inputs[3].data, bn.moving_mean.numpy())
    q = qatir.quantize(g)
    assert "BATCH_NORM" not in ops_of(q)              # folded


@pytest.mark.parametrize("center,scale", [(False, True), (True, False), (False, False)])
def test_batch_norm_without_center_or_scale(center, scale, rng):
    check(functional((6,), layers.BatchNormalization(center=center, scale=scale)), rng)


def test_fit_trains_batch_norm_statistics(rng):
    model = functional((6, 6, 2), layers.Conv2D(3, 3), layers.BatchNormalization(name="bn"),
                       layers.GlobalAveragePooling2D(), layers.Dense(2))
    g = qatir.load(model)
    bn = next(n for n in g.nodes if n.op == "BATCH_NORM")
    before = bn.inputs[3].data.copy()
    x = rng.standard_normal((16, 6, 6, 2)).astype(np.float32) * 3 + 2
    y = rng.standard_normal((16, 2)).astype(np.float32)
    qatir.fit(g, [({"x": x}, y)], loss="mse", optimizer="sgd", epochs=1, verbose=False)
    bn = next(n for n in g.nodes if n.op == "BATCH_NORM")
    assert not np.allclose(bn.inputs[3].data, before)


# ------------------------------------------------------------------ activations
ACTIVATIONS = ["relu", "relu6", "sigmoid", "tanh", "hard_swish", "hard_silu", "swish", "silu",
               "softmax", "linear", "hard_sigmoid", "leaky_relu", "exponential"]


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_layer(name, rng):
    check(functional((4, 5, 3), layers.Activation(name)), rng)


ACT_LAYERS = {
    "relu": lambda: layers.ReLU(),
    "relu_max6": lambda: layers.ReLU(max_value=6.0),
    "relu_max2": lambda: layers.ReLU(max_value=2.0),
    "relu_slope": lambda: layers.ReLU(negative_slope=0.1),
    "leaky": lambda: layers.LeakyReLU(negative_slope=0.3),
    "prelu": lambda: layers.PReLU(alpha_initializer=keras.initializers.RandomUniform(0, 1)),
    "prelu_shared": lambda: layers.PReLU(shared_axes=[1, 2],
                                         alpha_initializer=keras.initializers.Constant(0.25)),
    "softmax_axis1": lambda: layers.Softmax(axis=1),
    "softmax": lambda: layers.Softmax(),
}


@pytest.mark.parametrize("case", sorted(ACT_LAYERS))
def test_activation_layers(case, rng):
    g = check(functional((4, 5, 3), ACT_LAYERS[case]()), rng)
    assert g.nodes


def test_activation_ops_are_the_tflite_ones(rng):
    g = check(functional((4, 4, 3), layers.Activation("hard_swish"), layers.ReLU(6.0),
                         layers.Activation("sigmoid")), rng)
    assert ops_of(g) == ["HARD_SWISH", "RELU6", "LOGISTIC"]


# ------------------------------------------------------------------ merging
MERGES = {
    "add3": (layers.Add, 3), "subtract": (layers.Subtract, 2), "multiply": (layers.Multiply, 3),
    "average": (layers.Average, 3), "maximum": (layers.Maximum, 2),
    "minimum": (layers.Minimum, 2), "concat_last": (layers.Concatenate, 3),
    "concat_axis1": (lambda: layers.Concatenate(axis=1), 2),
}


@pytest.mark.parametrize("case", sorted(MERGES))
def test_merge_layers(case, rng):
    make, n = MERGES[case]
    ins = [keras.Input((4, 5, 3), name=f"in{i}") for i in range(n)]
    model = keras.Model(ins, make()(ins))
    check(model, rng)


# ------------------------------------------------------------------ pooling, shapes
SHAPE_CASES = {
    "maxpool_same_s2": ((7, 7, 3), lambda: layers.MaxPooling2D(3, strides=2, padding="same")),
    "maxpool_valid": ((8, 8, 3), lambda: layers.MaxPooling2D()),
    "avgpool_same_s2": ((7, 7, 3), lambda: layers.AveragePooling2D(3, strides=2,
                                                                    padding="same")),
    "avgpool_valid_2x3": ((8, 9, 3), lambda: layers.AveragePooling2D((2, 3))),
    "maxpool1d": ((9, 3), lambda: layers.MaxPooling1D(2, padding="same")),
    "avgpool1d": ((9, 3), lambda: layers.AveragePooling1D(3, strides=2)),
    "gap2d": ((5, 6, 3), lambda: layers.GlobalAveragePooling2D()),
    "gap2d_keepdims": ((5, 6, 3), lambda: layers.GlobalAveragePooling2D(keepdims=True)),
    "gmp2d": ((5, 6, 3), lambda: layers.GlobalMaxPooling2D()),
    "gap1d": ((7, 3), lambda: layers.GlobalAveragePooling1D()),
    "gmp1d_keepdims": ((7, 3), lambda: layers.GlobalMaxPooling1D(keepdims=True)),
    "reshape": ((4, 6, 2), lambda: layers.Reshape((8, 6))),
    "reshape_minus1": ((4, 6, 2), lambda: layers.Reshape((-1, 3))),
    "flatten": ((4, 6, 2), lambda: layers.Flatten()),
    "permute": ((4, 6, 2), lambda: layers.Permute((3, 1, 2))),
    "repeat_vector": ((5,), lambda: layers.RepeatVector(3)),
    "zeropad2d": ((4, 5, 2), lambda: layers.ZeroPadding2D(((1, 2), (0, 3)))),
    "zeropad2d_int": ((4, 5, 2), lambda: layers.ZeroPadding2D(1)),
    "zeropad1d": ((6, 2), lambda: layers.ZeroPadding1D((2, 1))),
    "crop2d": ((7, 8, 2), lambda: layers.Cropping2D(((1, 2), (0, 3)))),
    "crop1d": ((7, 2), lambda: layers.Cropping1D((2, 1))),
    "upsample2d_nearest": ((3, 4, 2), lambda: layers.UpSampling2D((2, 3))),
    "upsample2d_bilinear": ((3, 4, 2), lambda: layers.UpSampling2D(2, interpolation="bilinear")),
    "upsample1d": ((4, 2), lambda: layers.UpSampling1D(3)),
    "resizing_bilinear_up": ((5, 6, 2), lambda: layers.Resizing(9, 13)),
    "resizing_bilinear_down": ((12, 10, 2), lambda: layers.Resizing(5, 4)),
    "resizing_nearest": ((5, 6, 2), lambda: layers.Resizing(10, 12, interpolation="nearest")),
    "resizing_nearest_down": ((12, 10, 2), lambda: layers.Resizing(5, 7,
                                                                   interpolation="nearest")),
    "rescaling": ((4, 4, 3), lambda: layers.Rescaling(1 / 127.5, offset=-1.0)),
    "rescaling_vector": ((4, 4, 3), lambda: layers.Rescaling([0.5, 2.0, 1.0])),
    "dropout": ((4, 4, 3), lambda: layers.Dropout(0.5)),
    "spatial_dropout": ((4, 4, 3), lambda: layers.SpatialDropout2D(0.5)),
    "gaussian_noise": ((4, 4, 3), lambda: layers.GaussianNoise(1.0)),
}


@pytest.mark.parametrize("case", sorted(SHAPE_CASES))
def test_shape_and_pooling_layers(case, rng):
    shape, make = SHAPE_CASES[case]
    # a trailing ReLU keeps identity-only models from being an input copied to the output
    check(functional(shape, make(), layers.ReLU()), rng)


def test_normalization_adapted(rng):
    norm = layers.Normalization()
    data = (rng.standard_normal((64, 4, 4, 3)) * [1, 5, 0.1] + [3, -2, 0.5]).astype(np.float32)
    norm.adapt(data)
    g = check(functional((4, 4, 3), norm), rng, feeds={"x": data[:3]})
    assert ops_of(g) == ["ADD", "MUL"]


def test_identity_layers_add_no_node(rng):
    g = check(functional((4, 4, 3), layers.Conv2D(2, 1, name="c"), layers.Dropout(0.2),
                         layers.GaussianDropout(0.2)), rng)
    assert ops_of(g) == ["CONV_2D"] and g.outputs[0].name == "c"


def test_sequential_with_input_layer(rng):
    model = keras.Sequential([keras.Input((6, 6, 3), name="image"),
                              layers.Conv2D(4, 3, activation="relu", name="c"),
                              layers.Flatten(), layers.Dense(3, name="logits")], name="seq")
    g = check(model, rng)
    assert [t.name for t in g.inputs] == ["image"] and g.outputs[0].name == "logits"


# ------------------------------------------------------------------ keras.ops in functional models
def test_keras_ops(rng):
    x = inp = keras.Input((4, 6, 3), name="x")
    a = ops.relu(x * 2.0 + 1.0)
    b = ops.hard_silu(x - ops.sigmoid(x)) / 3.0
    c = ops.concatenate([a, b, ops.silu(x), ops.relu6(x), ops.tanh(x)], axis=-1)
    d = ops.mean(c, axis=(1, 2), keepdims=True)
    e = ops.reshape(c[:, 1:3, ::2, :], (-1, 6, 15))
    f = ops.transpose(e, (0, 2, 1))
    h = ops.softmax(ops.max(f, axis=-1))
    k = ops.clip(ops.maximum(x, 0.1), -1.0, 0.5) + ops.square(ops.minimum(x, 0.0))
    m = ops.expand_dims(ops.sum(x[..., 0], axis=(-1, -2)), -1) + ops.abs(-x[:, 0, 0, :])
    n = ops.matmul(ops.leaky_relu(x), np.ones((3, 2), "float32")) + ops.exp(-ops.square(x))[..., :2]
    model = keras.Model(inp, [d, h, k, m, n])
    g = check(model, rng)
    assert len(g.outputs) == 5


# ------------------------------------------------------------------ graph structure
def test_multiple_inputs_and_outputs(rng):
    img, vec = keras.Input((6, 6, 3), name="img"), keras.Input((4,), name="vec")
    f = layers.GlobalAveragePooling2D(name="gap")(layers.Conv2D(4, 3, name="c")(img))
    h = layers.Concatenate(name="cat")([f, layers.Dense(4, name="d")(vec)])
    out1, out2 = layers.Dense(2, name="head1")(h), layers.Dense(3, name="head2")(f)
    model = keras.Model([img, vec], [out1, out2, f])
    g = check(model, rng)
    assert [t.name for t in g.inputs] == ["img", "vec"]
    assert [t.name for t in g.outputs] == ["head1", "head2", "gap"]


def test_shared_layer(rng):
    a, b = keras.Input((5,), name="a"), keras.Input((5,), name="b")
    shared = layers.Dense(3, name="shared")
    model = keras.Model([a, b], layers.Subtract()([shared(a), shared(b)]))
    g = check(model, rng)
    names = [n.name for n in g.nodes if n.op == "FULLY_CONNECTED"]
    assert names == ["shared", "shared_call1"]


def test_shared_layer_chained(rng):
    x = keras.Input((4,), name="x")
    d = layers.Dense(4, activation="tanh", name="d")
    model = keras.Model(x, d(d(d(x))))
    g = check(model, rng)
    assert sum(n.op == "FULLY_CONNECTED" for n in g.nodes) == 3


def test_nested_models_are_flattened(rng):
    block = keras.Sequential([layers.Conv2D(4, 3, padding="same"), layers.BatchNormalization(),
                              layers.ReLU()], name="block")
    i2 = keras.Input((6, 6, 4))
    inner = keras.Model(i2, layers.Add()([i2, block(i2)]), name="residual")
    x = inp = keras.Input((6, 6, 3), name="x")
    x = layers.Conv2D(4, 1, name="stem")(x)
    x = inner(x)
    x = inner(x)                                 # a nested model called twice
    x = keras.Sequential([layers.GlobalAveragePooling2D(), layers.Dense(2)], name="head")(x)
    g = check(keras.Model(inp, x), rng)
    assert sum(n.op == "CONV_2D" for n in g.nodes) == 3
    assert not any(n.op == "IDENTITY" for n in g.nodes)


def test_keras_ops_on_two_inputs_share_nothing(rng):
    a, b = keras.Input((3, 4), name="a"), keras.Input((3, 4), name="b")
    model = keras.Model([a, b], [a * b, a + 1.0])
    g = check(model, rng)
    assert ops_of(g) == ["MUL", "ADD"]


def test_output_that_is_an_input(rng):
    x = keras.Input((3,), name="x")
    model = keras.Model(x, [layers.Dense(2)(x), x])
    check(model, rng)


def test_dynamic_batch_runs_at_any_batch(rng):
    model = functional((6, 6, 3), layers.Conv2D(4, 3), layers.Flatten(), layers.Dense(2))
    g = qatir.load(model)
    assert g.inputs[0].shape == (None, 6, 6, 3) and g.outputs[0].shape == (None, 2)
    for batch in (1, 5):
        check(model, rng, batch=batch)


def test_dynamic_spatial_dims(rng):
    model = functional((None, None, 3), layers.Conv2D(4, 3, strides=2, padding="same"),
                       layers.GlobalAveragePooling2D(), layers.Dense(2))
    g = qatir.load(model)
    assert g.inputs[0].shape == (None, None, None, 3)
    for hw in (8, 11):
        x = rng.standard_normal((1, hw, hw, 3)).astype(np.float32)
        check(model, rng, feeds={"x": x})


def test_input_shapes_pins_the_batch(rng):
    model = functional((6, 6, 3), layers.Conv2D(4, 3))
    g = qatir.load(model, input_shapes={"x": [1, 6, 6, 3]})
    assert g.inputs[0].shape == (1, 6, 6, 3) and g.outputs[0].shape == (1, 4, 4, 4)


# ------------------------------------------------------------------ files
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_load_file(suffix, tmp_path, rng):
    model = functional((6, 6, 3), layers.Conv2D(4, 3, activation="relu"),
                       layers.BatchNormalization(), layers.GlobalAveragePooling2D(),
                       layers.Dense(2, name="logits"))
    _randomize_bn(model, rng)
    path = tmp_path / f"m{suffix}"
    model.save(path)
    g = qatir.load(path)
    x = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    ref = np.asarray(model(x, training=False))
    np.testing.assert_allclose(qatir.run(g, {"x": x})[g.outputs[0].name], ref,
                               atol=RTOL * np.abs(ref).max())


def test_bad_file_is_named(tmp_path):
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(qatir.QatirError, match="broken.keras"):
        qatir.load(bad)


# ------------------------------------------------------------------ refusals
def test_unsupported_layers_are_all_named():
    class Custom(layers.Layer):
        def call(self, x):
            return x * 2

    x = inp = keras.Input((4, 8), name="x")
    x = layers.LayerNormalization(name="ln")(x)
    x = layers.Dense(8, activation="elu", name="fc_elu")(x)
    x = Custom(name="mine")(x)
    x = layers.UnitNormalization(name="unit")(x)
    x = layers.Lambda(lambda t: t + 1.0, name="lam")(x)
    x = layers.Dense(8, name="ok")(x)
    with pytest.raises(qatir.UnsupportedOpError) as e:
        qatir.load(keras.Model(inp, x))
    msg = str(e.value)
    for part in ("Dense", "'fc_elu'", "elu", "Custom", "'mine'",
                 "UnitNormalization", "'unit'", "Lambda", "'lam'", "Python code",
                 "TFLiteConverter", "qatir.load"):
        assert part in msg, (part, msg)
    assert "'ok'" not in msg and "'ln'" not in msg  # LayerNormalization is imported
    assert e.value.ops == {"Dense": 1, "Custom": 1, "UnitNormalization": 1, "Lambda": 1}


def test_unsupported_option_is_named():
    model = functional((8, 8, 3), layers.Conv2D(4, 3, padding="same", name="ok"),
                       layers.UpSampling2D(interpolation="bicubic", name="bicubic"))
    with pytest.raises(qatir.UnsupportedOpError, match="'bicubic'.*bicubic") as e:
        qatir.load(model)
    assert "'ok'" not in str(e.value)


def test_subclassed_model_is_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = layers.Dense(2)

        def call(self, x):
            return self.d(x)

    net = Net()
    net(np.zeros((1, 3), np.float32))
    with pytest.raises(qatir.UnsupportedOpError, match="subclassed model.*TFLiteConverter"):
        qatir.load(net)


def test_subclass_of_a_keras_layer_is_refused():
    class MyDense(layers.Dense):
        pass

    with pytest.raises(qatir.UnsupportedOpError, match="MyDense.*custom class"):
        qatir.load(functional((3,), MyDense(2, name="md")))


@pytest.mark.parametrize("obj", [object(), layers.Dense(2)], ids=["object", "bare_layer"])
def test_not_a_model(obj):
    with pytest.raises(qatir.QatirError, match="keras.Model"):
        qatir.load(obj)


def test_unknown_input_shapes_name():
    with pytest.raises(qatir.ShapeError, match="'nope'"):
        qatir.load(functional((3,), layers.Dense(2)), input_shapes={"nope": [1, 3]})


# ------------------------------------------------------------------ to int8
def test_keras_model_to_int8_tflite_runs_in_litert(rng, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    model = functional((16, 16, 3), layers.Rescaling(1 / 255.0),
                       layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False),
                       layers.BatchNormalization(), layers.ReLU(6.0),
                       layers.DepthwiseConv2D(3, padding="same", activation="relu"),
                       layers.Conv2D(8, 1, activation="hard_swish"),
                       layers.GlobalAveragePooling2D(), layers.Dense(4, name="logits"))
    _randomize_bn(model, rng)
    g = qatir.load(model)
    q = qatir.quantize(g)
    assert not {"BATCH_NORM", "RESHAPE"} & set(ops_of(q))
    data = [{"x": rng.uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)} for _ in range(4)]
    qatir.calibrate(q, data, progress=False)
    path = tmp_path / "m.tflite"
    qatir.save(q, path, io="float")
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    x = data[0]["x"][:1]
    it.set_tensor(inp["index"], x)
    it.invoke()
    got = it.get_tensor(out["index"])
    ref = np.asarray(model(x, training=False))
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 0.1 * np.abs(ref).max() + 1e-6


# ------------------------------------------------------------------ keras.applications
APPS = {
    "MobileNetV2": dict(alpha=0.35, input_shape=(96, 96, 3)),
    "MobileNetV3Small": dict(input_shape=(96, 96, 3)),
    "EfficientNetB0": dict(input_shape=(64, 64, 3)),
}


@pytest.mark.parametrize("name", sorted(APPS))
def test_keras_applications(name, rng):
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, classifier_activation=None,
                                              **APPS[name])
    x = rng.uniform(0, 255, (2, *APPS[name]["input_shape"])).astype(np.float32)
    g = check(model, rng, feeds={model.inputs[0].name: x})
    layer_names = {layer.name for layer in model.layers}
    weight_nodes = [n for n in g.nodes if n.op in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert weight_nodes and all(n.name in layer_names for n in weight_nodes)
    assert any(n.op == "BATCH_NORM" for n in g.nodes)


def test_convnext_imports_and_matches_keras():
    """keras.applications' ConvNeXtTiny: LayerNormalization (the int8 chain), Activation
    ("gelu") as GELU and its LayerScale layers as a MUL by gamma."""
    model = keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3),
                                            classifier_activation=None)
    g = qatir.load(model)
    ops = {n.op for n in g.nodes}
    assert {"GELU", "MUL", "SQUARED_DIFFERENCE", "RSQRT"} <= ops
    x = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    want = model(x, training=False).numpy()
    got = next(iter(qatir.run(g, {g.inputs[0].name: x}).values()))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_a_custom_layer_named_layer_scale_is_refused():
    class LayerScale(layers.Layer):  # the user's own, not keras.applications'
        def call(self, x):
            return x * 3.0

    inp = keras.Input((4,))
    with pytest.raises(qatir.UnsupportedOpError, match="LayerScale.*'mine'.*custom"):
        qatir.load(keras.Model(inp, LayerScale(name="mine")(inp)))


def test_unbuilt_sequential_is_refused():
    with pytest.raises(qatir.QatirError, match="no inputs yet"):
        qatir.load(keras.Sequential([layers.Dense(2)]))


def test_sequential_in_sequential(rng):
    inner = keras.Sequential([layers.Dense(4, activation="relu"), layers.Dense(3)], name="inner")
    model = keras.Sequential([keras.Input((5,), name="x"), inner, layers.Softmax()])
    g = check(model, rng)
    assert ops_of(g) == ["FULLY_CONNECTED", "RELU", "FULLY_CONNECTED", "SOFTMAX"]


def test_cli_dump_of_a_keras_file(tmp_path, capsys):
    from qatir.cli import main

    model = functional((6, 6, 3), layers.Conv2D(4, 3, name="stem"), layers.Flatten(),
                       layers.Dense(2, name="logits"))
    model.save(tmp_path / "m.keras")
    assert main(["dump", str(tmp_path / "m.keras")]) == 0
    out = capsys.readouterr().out
    assert "= CONV_2D(" in out and "# stem" in out and "# logits" in out


def test_shape_error_names_the_layer():
    x = keras.Input((None, 3), name="x")   # Flatten needs the dynamic length
    model = keras.Model(x, layers.Flatten(name="flat")(x))
    with pytest.raises(qatir.QatirError, match="'flat'.*dynamic"):
        qatir.load(model)


# ------------------------------------------------------------------ tf-keras (Keras 2) models
def _tf_keras_functional():
    import tf_keras

    tf_keras.utils.set_random_seed(3)
    inp = tf_keras.Input((8, 8, 3), name="image")
    h = tf_keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv")(inp)
    h = tf_keras.layers.BatchNormalization(name="bn")(h)
    h = tf_keras.layers.ReLU(name="relu")(h)
    h = tf_keras.layers.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(h)
    h = tf_keras.layers.GlobalAveragePooling2D(name="gap")(h)
    out = tf_keras.layers.Dense(4, name="head")(h)
    model = tf_keras.Model(inp, out, name="tfk")
    # non-trivial batch-norm statistics, so folding them is checked
    bn = model.get_layer("bn")
    bn.set_weights([w + np.linspace(0.1, 0.6, w.size).astype(np.float32)
                    for w in bn.get_weights()])
    return model


def test_tf_keras_functional_model_matches_its_output():
    """A tf-keras 2 model object loads (through its HDF5 form, read by Keras 3), keeps its
    layer names and matches model(x, training=False)."""
    model = _tf_keras_functional()
    g = qatir.load(model)
    assert {"conv", "bn", "dw", "head"} <= {n.name for n in g.nodes}
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
    want = model(x, training=False).numpy()
    got = next(iter(qatir.run(g, {g.inputs[0].name: x}).values()))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_tf_keras_sequential_model_loads():
    import tf_keras

    model = tf_keras.Sequential([tf_keras.Input((6,)), tf_keras.layers.Dense(5, activation="relu"),
                                 tf_keras.layers.Dense(2)])
    g = qatir.load(model)
    x = np.random.default_rng(1).normal(size=(3, 6)).astype(np.float32)
    got = next(iter(qatir.run(g, {g.inputs[0].name: x}).values()))
    np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_tf_keras_subclassed_model_is_refused_with_the_way_out():
    import tf_keras

    class Net(tf_keras.Model):
        def __init__(self):
            super().__init__()
            self.d = tf_keras.layers.Dense(2)

        def call(self, x):
            return self.d(x)

    net = Net()
    net(np.zeros((1, 3), np.float32))
    with pytest.raises(qatir.UnsupportedOpError, match="subclassed tf-keras model.*TFLite"):
        qatir.load(net)


def test_tf_keras_model_with_tf_ops_is_refused_with_the_way_out():
    """TF functions called on tf-keras tensors become TFOpLambda layers, which Keras 3 cannot
    read: a clear error that says how to get the model in (a float TFLite file)."""
    import tensorflow as tf
    import tf_keras

    inp = tf_keras.Input((4,))
    model = tf_keras.Model(inp, tf_keras.layers.Dense(2)(tf.nn.relu6(inp)))
    with pytest.raises(qatir.ModelFormatError, match="TFOpLambda.*TFLiteConverter"):
        qatir.load(model)

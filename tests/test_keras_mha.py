"""qatir.load(keras.Model) with MultiHeadAttention: self- and cross-attention, value_dim,
use_bias, output_shape, use_gate, image inputs, a ViT-like block; the int8 export of the
block bit-exact with LiteRT on both resolvers; the refusals (masks, scores, axes).

Float cases compare qatir's TF execution of the IR with ``model(x, training=False)``
within 1e-5 (relative to the largest reference value). Keras initialises biases to
zero, so every weight is redrawn at random first.
"""

from __future__ import annotations

import numpy as np
import pytest

import qatir

keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

from qatir.lower import lower  # noqa: E402
from qatir.lowering.islands import summary  # noqa: E402
from qatir.parity import xnnpack_coverage  # noqa: E402
from tests.helpers import compare_all  # noqa: E402

RTOL = 1e-5


def _randomize(model, rng):
    for w in model.weights:
        shape = tuple(w.shape)
        w.assign((rng.standard_normal(shape) / np.sqrt(max(shape[0], 1))).astype(np.float32)
                 if len(shape) > 1 else rng.normal(0, 0.3, shape).astype(np.float32))


def _feeds(model, rng, batch=2):
    return {kt.name: rng.standard_normal([batch if d is None else d for d in kt.shape])
            .astype(np.float32) for kt in model.inputs}


def check(model, rng):
    """Import ``model`` (weights redrawn), compare with Keras; returns the graph."""
    _randomize(model, rng)
    g = qatir.load(model)
    feeds = _feeds(model, rng)
    ref = np.asarray(model([feeds[kt.name] for kt in model.inputs] if len(model.inputs) > 1
                           else feeds[model.inputs[0].name], training=False))
    got = qatir.run(g, feeds)[g.outputs[0].name]
    assert got.shape == ref.shape
    err = float(np.abs(got - ref).max()) / float(np.abs(ref).max())
    assert err <= RTOL, f"relative error {err:.3g}"
    return g


def self_attention(shape=(6, 8), **options):
    x = keras.Input(shape, name="x")
    y = layers.MultiHeadAttention(name="mha", **{"num_heads": 2, "key_dim": 4, **options})(x, x)
    return keras.Model(x, y, name="self_attention")


def vit_block(n=6, d=8, heads=2):
    """Pre-norm transformer block: LN, MHA, residual; LN, Dense-gelu-Dense MLP, residual."""
    x = inp = keras.Input((n, d), name="x")
    h = layers.LayerNormalization(epsilon=1e-6, name="ln1")(x)
    h = layers.MultiHeadAttention(heads, d // heads, dropout=0.1, name="mha")(h, h)
    x = layers.Add(name="res1")([x, h])
    h = layers.LayerNormalization(epsilon=1e-6, name="ln2")(x)
    h = layers.Dense(2 * d, activation="gelu", name="mlp1")(h)
    h = layers.Dense(d, name="mlp2")(layers.Dropout(0.1)(h))
    return keras.Model(inp, layers.Add(name="res2")([x, h]), name="vit_block")


def ops_of(g):
    return [n.op for n in g.nodes]


# ------------------------------------------------------------------ float
def test_self_attention_matches_keras_and_names_the_sublayers(rng):
    g = check(self_attention(), rng)
    assert ops_of(g).count("BATCH_MATMUL") == 2 and ops_of(g).count("FULLY_CONNECTED") == 4
    names = {n.name: n.op for n in g.nodes}
    assert {"mha/query": "FULLY_CONNECTED", "mha/key": "FULLY_CONNECTED",
            "mha/value": "FULLY_CONNECTED", "mha/scores": "BATCH_MATMUL",
            "mha/scores/softmax": "SOFTMAX", "mha/attention": "BATCH_MATMUL",
            "mha/attention_output": "FULLY_CONNECTED"}.items() <= names.items()
    assert g.outputs[0].name == "mha"
    scale = next(n for n in g.nodes if n.op == "MUL").inputs[1].data  # 1/√key_dim, on q
    assert float(scale.reshape(-1)[0]) == np.float32(0.5)


def test_cross_attention_with_key_value_lengths_and_dims(rng):
    q, v = keras.Input((6, 8), name="q"), keras.Input((5, 12), name="v")
    k = keras.Input((5, 10), name="k")
    mha = layers.MultiHeadAttention(3, 4, name="cross")
    model = keras.Model([q, v, k], [mha(q, v, key=k)])
    g = check(model, rng)
    bmm = [n for n in g.nodes if n.op == "BATCH_MATMUL"]
    assert [tuple(n.output.shape[1:]) for n in bmm] == [(3, 6, 5), (3, 6, 4)]


def test_key_defaults_to_value(rng):
    q, v = keras.Input((4, 8), name="q"), keras.Input((7, 6), name="v")
    check(keras.Model([q, v], layers.MultiHeadAttention(2, 3, name="mha")(q, v)), rng)


@pytest.mark.parametrize("options", [
    {"value_dim": 6}, {"use_bias": False}, {"key_dim": 5, "value_dim": 3, "num_heads": 3},
    {"output_shape": 5}, {"output_shape": (2, 3)}, {"use_gate": True}, {"dropout": 0.2}],
    ids=["value_dim", "no_bias", "dims", "output_int", "output_2d", "gate", "dropout"])
def test_options(rng, options):
    g = check(self_attention(**options), rng)
    if options.get("use_bias") is False:
        assert all(n.inputs[2] is None for n in g.nodes if n.op == "FULLY_CONNECTED")


def test_image_input_attends_over_height_times_width(rng):
    g = check(self_attention((3, 4, 8)), rng)
    scores = next(n for n in g.nodes if n.name == "mha/scores")
    assert tuple(scores.output.shape[1:]) == (2, 12, 12)


def test_shared_layer_called_twice(rng):
    x = keras.Input((5, 8), name="x")
    mha = layers.MultiHeadAttention(2, 4, name="mha")
    g = check(keras.Model(x, mha(mha(x, x), x)), rng)
    assert {"mha/query", "mha_call1/query"} <= {n.name for n in g.nodes}


def test_vit_block_matches_keras(rng):
    g = check(vit_block(), rng)
    assert {"GELU", "SOFTMAX", "BATCH_MATMUL"} <= set(ops_of(g))


# ------------------------------------------------------------------ int8
def test_vit_block_int8_is_bit_exact_in_litert(rng):
    """quantize → calibrate → to_tflite: both BATCH_MATMULs int8 with a zero-point-0
    right-hand side (taken by XNNPACK), no float island, LiteRT (BUILTIN_REF and the
    default resolver) == run_reference bit for bit."""
    model = vit_block()
    g = check(model, rng)
    q = qatir.quantize(g)
    qatir.calibrate(q, [{"x": rng.standard_normal((4, 6, 8)).astype(np.float32)}
                        for _ in range(6)], progress=False)
    lg = lower(q)
    bmm = [n for n in lg.nodes if n.op == "BATCH_MATMUL"]
    assert len(bmm) == 2 and all(n.inputs[1].quant.zero_point == (0,) for n in bmm)
    assert all(n.inputs[0].dtype == np.int8 and n.outputs[0].dtype == np.int8 for n in bmm)
    assert summary(lg)["float"] == []
    cover = xnnpack_coverage(qatir.to_tflite(q))
    assert [taken for op, taken in cover if op == "BATCH_MATMUL"] == [True, True], cover
    assert compare_all(q, seeds=(1, 2, 3)) == {"reference": 0, "xnnpack": 0}


@pytest.mark.parametrize("shape,options", [
    ((3, 4, 8), {}), ((6, 8), {"use_gate": True, "output_shape": (2, 4), "value_dim": 3})],
    ids=["image", "gate_output_shape"])
def test_other_forms_int8_bit_exact(rng, shape, options):
    g = check(self_attention(shape, **options), rng)
    q = qatir.quantize(g)
    qatir.calibrate(q, [{"x": rng.standard_normal((2, *shape)).astype(np.float32)}
                        for _ in range(4)], progress=False)
    assert compare_all(q, seeds=(1, 2)) == {"reference": 0, "xnnpack": 0}


# ------------------------------------------------------------------ refusals
def _refused(model, *parts):
    with pytest.raises(qatir.UnsupportedOpError) as e:
        qatir.load(model)
    msg = str(e.value)
    for part in ("MultiHeadAttention", *parts):
        assert part in msg, (part, msg)
    return msg


def test_masks_are_refused_naming_layer_and_option():
    q = keras.Input((6, 8), name="q")
    m = keras.Input((6, 6), name="m", dtype="bool")
    y = layers.MultiHeadAttention(2, 4, name="masked")(q, q, attention_mask=m)
    _refused(keras.Model([q, m], y), "'masked'", "attention_mask")


@pytest.mark.parametrize("call,option", [
    ({"use_causal_mask": True}, "use_causal_mask=True"),
    ({"return_attention_scores": True}, "return_attention_scores=True")])
def test_call_options_are_refused(call, option):
    x = keras.Input((6, 8), name="x")
    y = layers.MultiHeadAttention(2, 4, name="att")(x, x, **call)
    _refused(keras.Model(x, y), "'att'", option)


@pytest.mark.parametrize("options,why", [
    ({"attention_axes": (2,)}, "attention_axes=(2,)"),
    ({"sliding_window": 2}, "sliding_window=2")])
def test_layer_options_are_refused(options, why):
    x = keras.Input((3, 4, 8), name="x")
    y = layers.MultiHeadAttention(2, 4, name="att", **options)(x, x)
    _refused(keras.Model(x, y), "'att'", why)


def test_default_attention_axes_given_explicitly_are_imported(rng):
    check(self_attention((3, 4, 8), attention_axes=(1, 2)), rng)


def test_every_refused_attention_layer_is_listed_at_once():
    x = keras.Input((6, 8), name="x")
    a = layers.MultiHeadAttention(2, 4, name="causal")(x, x, use_causal_mask=True)
    b = layers.MultiHeadAttention(2, 4, name="fine")(a, a)
    msg = _refused(keras.Model(x, b), "'causal'")
    assert "'fine'" not in msg


def test_dynamic_sequence_length_is_refused_naming_the_layer():
    x = keras.Input((None, 8), name="x")
    y = layers.MultiHeadAttention(2, 4, name="att")(x, x)
    with pytest.raises(qatir.UnsupportedOpError, match="'att'.*dynamic dims"):
        qatir.load(keras.Model(x, y))


def test_saved_keras_file(rng, tmp_path):
    model = vit_block()
    _randomize(model, rng)
    model.save(tmp_path / "vit.keras")
    g = qatir.load(tmp_path / "vit.keras")
    x = rng.standard_normal((2, 6, 8)).astype(np.float32)
    ref = np.asarray(model(x, training=False))
    got = qatir.run(g, {"x": x})[g.outputs[0].name]
    assert float(np.abs(got - ref).max()) <= RTOL * float(np.abs(ref).max())


def test_a_keras_mask_on_the_inputs_is_refused():
    x = keras.Input((6, 8), name="x")
    m = layers.Masking(name="masking")(x)
    y = layers.MultiHeadAttention(2, 4, name="att")(m, m)
    _refused(keras.Model(x, y), "'att'", "a Keras mask on the query", "'masking'")

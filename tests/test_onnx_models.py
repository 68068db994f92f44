"""CNN-style ONNX graphs: import, run vs onnxruntime, IR invariants, dump stability, save/load."""

from __future__ import annotations

import numpy as np
import pytest

import qatir
from tests.helpers.onnx_models import (
    compare_with_ort,
    digits_cnn_onnx,
    inception_like,
    mobilenet_like,
    resnet_like,
    save,
    to_nhwc,
)

MODELS = {
    "resnet": (resnet_like, "input", (3, 32, 32)),
    "mobilenet_v3": (mobilenet_like, "image", (3, 32, 32)),
    "mobilenet_v2_opset13": (lambda: mobilenet_like(opset=13), "image", (3, 32, 32)),
    "inception_dense": (inception_like, "x", (3, 24, 24)),
    "digits": (digits_cnn_onnx, "input", (1, 8, 8)),
}


def feed(name, chw, batch=2, seed=0):
    x = np.random.default_rng(seed).standard_normal((batch, *chw)).astype(np.float32)
    return {name: x}


@pytest.mark.parametrize("key", sorted(MODELS))
def test_model_matches_onnxruntime(key):
    build, name, chw = MODELS[key]
    g = compare_with_ort(build(), feed(name, chw, batch=3))
    assert g.inputs[0].name == name and g.inputs[0].shape[0] is None
    assert g.inputs[0].source_layout == "NCHW"
    ops = {n.op for n in g.nodes}
    assert not ops & {"SHAPE", "GATHER", "CAST"}, "shape plumbing must fold away"
    assert "TRANSPOSE" not in ops


def test_dynamic_batch_runs_at_other_batch_sizes():
    g = compare_with_ort(resnet_like(), feed("input", (3, 32, 32), batch=1))
    out = qatir.run(g, {"input": to_nhwc(feed("input", (3, 32, 32), batch=5)["input"])})
    assert out["logits"].shape == (5, 10)


def test_input_shapes_fix_the_batch(tmp_path):
    path = save(mobilenet_like(), tmp_path / "m.onnx")
    g = qatir.load(path, input_shapes={"image": [4, 3, 32, 32]})
    assert g.inputs[0].shape == (4, 32, 32, 3)
    assert g.outputs[0].shape == (4, 10)
    g.verify()


def test_mobilenet_structure():
    g = compare_with_ort(mobilenet_like(), feed("image", (3, 32, 32)))
    ops = [n.op for n in g.nodes]
    assert ops.count("DEPTHWISE_CONV_2D") == 3
    assert "HARD_SWISH" in ops and "HARD_SIGMOID" in ops and "CLIP" in ops
    se_muls = [n for n in g.nodes if n.op == "MUL" and n.inputs[1].shape[1:3] == (1, 1)]
    assert se_muls, "the SE block multiplies by a [N,1,1,C] gate"
    dw = next(n for n in g.nodes if n.op == "DEPTHWISE_CONV_2D")
    assert dw.inputs[1].shape[0] == 1  # 1HWO


@pytest.mark.parametrize("key", sorted(MODELS))
def test_dump_is_stable_across_imports(key, tmp_path):
    build, _, _ = MODELS[key]
    path = save(build(), tmp_path / "m.onnx")
    a, b = qatir.load(path), qatir.load(path)
    assert str(a) == str(b)
    assert a.to_json() == b.to_json()


@pytest.mark.parametrize("key", ["resnet", "inception_dense", "digits"])
def test_qatir_save_load_round_trip(key, tmp_path):
    build, name, chw = MODELS[key]
    g = qatir.load(save(build(), tmp_path / "m.onnx"))
    qatir.save(g, tmp_path / "m.qatir")
    h = qatir.load(tmp_path / "m.qatir")
    h.verify()
    assert str(g) == str(h)
    x = {name: to_nhwc(feed(name, chw)[name])}
    out_g, out_h = qatir.run(g, x), qatir.run(h, x)
    for k in out_g:
        np.testing.assert_array_equal(out_g[k], out_h[k])


def test_output_names_and_layouts_preserved():
    g = compare_with_ort(inception_like(), feed("x", (3, 24, 24)))
    assert [t.name for t in g.outputs] == ["scores"]
    assert g.metadata["source_format"] == "onnx" and g.metadata["opset"] == 13
    assert g.metadata["source_inputs"] == {"x": [None, 3, 24, 24]}


def test_four_d_output_is_nhwc():
    from tests.helpers.onnx_models import OnnxBuilder

    b = OnnxBuilder(13)
    x = b.input("x", ["N", 3, 8, 8])
    y = b.cbr(x, 3, 4)
    b.node("Identity", [y], out="features")
    b.node("Flatten", [b.node("GlobalAveragePool", [y])], out="pooled")
    b.output("features")
    b.output("pooled")
    g = compare_with_ort(b.model(), feed("x", (3, 8, 8)))
    feats = g.outputs[0]
    assert feats.name == "features" and feats.shape == (None, 8, 8, 4)
    assert feats.source_layout == "NCHW"
    assert g.outputs[1].name == "pooled" and g.outputs[1].source_layout is None


def test_dynamic_spatial_dims_import_without_input_shapes():
    from tests.helpers.onnx_models import OnnxBuilder

    b = OnnxBuilder(13)
    x = b.input("x", ["N", 3, "H", "W"])
    y = b.cbr(x, 3, 8)  # stride 1, pads 1: SAME at any size
    y = b.cbr(y, 8, 8, s=2)  # stride 2: explicit PAD + VALID
    y = b.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    y = b.node("AveragePool", [y], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1],
               count_include_pad=1)
    y = b.node("Flatten", [b.node("GlobalAveragePool", [y])])
    b.gemm(y, 8, 5, out="out")
    b.output("out")
    for hw in ((16, 16), (13, 21)):
        x_val = np.random.default_rng(1).standard_normal((2, 3, *hw)).astype(np.float32)
        g = compare_with_ort(b.model(), {"x": x_val})
    assert g.inputs[0].shape == (None, None, None, 3)


@pytest.mark.parametrize("opset", [7, 9, 11, 17, 21])
def test_models_across_opsets(opset):
    compare_with_ort(digits_cnn_onnx(opset=opset), feed("input", (1, 8, 8)))
    g = compare_with_ort(mobilenet_like(opset=opset), feed("image", (3, 32, 32)))
    assert g.metadata["opset"] == opset


def test_output_aliases_keep_their_names():
    from tests.helpers.onnx_models import OnnxBuilder

    b = OnnxBuilder(13)
    x = b.input("x", [1, 2, 3, 3])
    b.node("Identity", [x], out="x_copy")
    r = b.node("Relu", [x], out="r")
    b.node("Identity", [r], out="r_copy")
    b.node("Identity", [b.init(np.ones((2,), np.float32))], out="const_out")
    for name in ("x", "x_copy", "r", "r_copy", "const_out"):
        b.output(name)
    xv = feed("x", (2, 3, 3), batch=1)
    g = compare_with_ort(b.model(), xv)
    assert [t.name for t in g.outputs] == ["x", "x_copy", "r", "r_copy", "const_out"]
    assert len({id(t) for t in g.outputs}) == 5


# ------------------------------------------------------ random layout chains
def _random_chain(data, b, x, shape):
    """Append one layout-sensitive op to ``x`` (current ONNX shape ``shape``); numpy tracks it."""
    from hypothesis import strategies as st

    rank = len(shape)
    kind = data.draw(st.sampled_from(["transpose", "add", "reduce", "unsqueeze", "squeeze",
                                      "concat", "softmax", "slice", "conv", "flatten", "pad",
                                      "reshape", "pool", "gather", "matmul", "split"]))
    dummy = np.zeros(shape, np.float32)
    if kind == "transpose":
        perm = data.draw(st.permutations(range(rank)))
        return b.node("Transpose", [x], perm=list(perm)), dummy.transpose(perm).shape
    if kind == "add":
        k = data.draw(st.integers(0, rank))
        cshape = [data.draw(st.sampled_from([1, d])) for d in shape[rank - k:]]
        return b.node("Add", [x, b.init(b.randn(*cshape))]), shape
    if kind == "reduce" and rank > 1:
        ax = data.draw(st.integers(0, rank - 1))
        keep = data.draw(st.integers(0, 1))
        return (b.node("ReduceMean", [x], axes=[ax], keepdims=keep),
                dummy.mean(axis=ax, keepdims=bool(keep)).shape)
    if kind == "unsqueeze" and rank < 4:
        ax = data.draw(st.integers(0, rank))
        return b.unsqueeze(x, [ax]), np.expand_dims(dummy, ax).shape
    if kind == "squeeze" and 1 in shape and rank > 1:
        ax = shape.index(1)
        return b.node("Squeeze", [x, b.ints([ax])]), dummy.squeeze(ax).shape
    if kind == "concat":
        ax = data.draw(st.integers(0, rank - 1))
        return b.node("Concat", [x, b.node("Relu", [x])], axis=ax), \
            np.concatenate([dummy, dummy], ax).shape
    if kind == "softmax":
        ax = data.draw(st.integers(0, rank - 1))
        return b.node("Softmax", [x], axis=ax), shape
    if kind == "slice" and shape[-1] > 1:
        return b.node("Slice", [x, b.ints([1]), b.ints([1 << 40]), b.ints([rank - 1])]), \
            dummy[..., 1:].shape
    if kind == "conv" and rank == 4:
        c = shape[1]
        return b.conv(x, c, 3, k=3), (shape[0], 3, shape[2], shape[3])
    if kind == "flatten":
        ax = data.draw(st.integers(0, rank))
        return b.node("Flatten", [x], axis=ax), (int(np.prod(shape[:ax])),
                                                 int(np.prod(shape[ax:])))
    if kind == "pad":
        pads = [data.draw(st.integers(0, 1)) for _ in range(2 * rank)]
        return (b.node("Pad", [x, b.ints(pads), b.init(np.float32(0.5))]),
                tuple(d + pads[i] + pads[i + rank] for i, d in enumerate(shape)))
    if kind == "reshape":
        return b.node("Reshape", [x, b.ints([shape[0], -1])]), (shape[0], dummy[0].size)
    if kind == "pool" and rank == 4 and min(shape[2:]) >= 2:
        return (b.node("MaxPool", [x], kernel_shape=[2, 2], pads=[1, 0, 0, 1]),
                (shape[0], shape[1], shape[2], shape[3]))
    if kind == "gather":
        ax = data.draw(st.integers(0, rank - 1))
        return (b.node("Gather", [x, b.init(np.asarray([0, shape[ax] - 1], np.int64))], axis=ax),
                np.take(dummy, [0, shape[ax] - 1], axis=ax).shape)
    if kind == "matmul" and rank >= 2:
        return b.node("MatMul", [x, b.init(b.randn(shape[-1], 3))]), shape[:-1] + (3,)
    if kind == "split" and shape[-1] >= 2:
        a, _ = b.node("Split", [x, b.ints([1, shape[-1] - 1])], n_out=2, axis=rank - 1)
        return a, shape[:-1] + (1,)
    return b.node("Relu", [x]), shape


@pytest.mark.parametrize("batch", [2, "N"])
def test_random_layout_chains_match_onnxruntime(batch):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from tests.helpers.onnx_models import OnnxBuilder

    @settings(max_examples=20, deadline=None, derandomize=True)
    @given(st.data())
    def check(data):
        b = OnnxBuilder(13, seed=1)
        shape = (2, 3, 4, 5)
        x = b.input("x", [batch, *shape[1:]])
        for _ in range(data.draw(st.integers(1, 5))):
            x, shape = _random_chain(data, b, x, tuple(int(d) for d in shape))
        b.node("Identity", [x], out="y")
        b.output("y")
        xv = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
        compare_with_ort(b.model(), {"x": xv})

    check()


def test_import_time_grows_linearly(tmp_path):
    """Per-node import cost at 3,000 nodes stays within 4x of that at 300 (quadratic: ~10x)."""
    import time

    from tests.helpers.onnx_models import conv_chain

    per_node = []
    for blocks in (100, 1000):
        path = save(conv_chain(blocks, channels=2, size=4), tmp_path / f"c{blocks}.onnx")
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            qatir.load(path)
            best = min(best, time.perf_counter() - t0)
        per_node.append(best / (3 * blocks))
    assert per_node[1] < 4 * per_node[0], per_node

"""CNN-style ONNX graphs: import, run vs onnxruntime, IR invariants, dump stability, save/load."""

from __future__ import annotations

import numpy as np
import pytest

import qatir
from tests.onnx_models import (
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
    from tests.onnx_models import OnnxBuilder

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
    from tests.onnx_models import OnnxBuilder

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
    from tests.onnx_models import OnnxBuilder

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

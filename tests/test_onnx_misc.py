"""The rest of real ONNX files: legacy opsets, Dropout's mask, memory-derived size limits,
Pad with computed pads, Pow with a computed exponent, LRN (float islands in int8 graphs)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qatir
import qatir.limits
from qatir.errors import ModelFormatError, ShapeError, UnsupportedOpError
from tests.helpers.onnx_models import OnnxBuilder, compare_with_ort, ops_of, rnd, save


# ------------------------------------------------------------ opsets 1-6
def _legacy_model(opset: int, reshape_attr: bool) -> onnx.ModelProto:
    """Conv + BatchNormalization(consumed_inputs, is_test) + Relu + Reshape, as opset-6
    exporters (and the ONNX package's pytorch-converted tests) write them."""
    b = OnnxBuilder(opset)
    x = b.input("x", [1, 3, 6, 6])
    c = b.conv(x, 3, 4)
    old = {"consumed_inputs": [0, 0, 0, 1, 1]} if opset < 6 else {}  # gone in opset 6
    bn = b.node("BatchNormalization", [c] + [b.init(v, "bn") for v in (
        b.rng.uniform(0.5, 1.5, 4).astype(np.float32), b.randn(4, scale=0.1),
        b.randn(4, scale=0.1), b.rng.uniform(0.5, 1.5, 4).astype(np.float32))],
        is_test=1, epsilon=1e-5, **old)
    r = b.node("Relu", [bn], **({"consumed_inputs": [0]} if opset < 6 else {}))
    if reshape_attr:  # Reshape took its shape as an attribute before opset 5
        b.node("Reshape", [r], out="y", shape=[1, -1])
    else:
        b.node("Reshape", [r, b.ints([1, -1])], out="y")
    b.output("y")
    m = b.model()
    m.ir_version = 3  # initializers were graph inputs too before IR version 4
    m.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                         for t in m.graph.initializer)
    return m


@pytest.mark.parametrize("opset,reshape_attr", [(6, False), (4, True), (1, True)])
def test_legacy_opsets_are_upgraded_and_match_onnxruntime(tmp_path, opset, reshape_attr):
    model = _legacy_model(opset, reshape_attr)
    x = rnd(1, 3, 6, 6)
    upgraded = onnx.version_converter.convert_version(model, 7)  # onnxruntime runs opset 7+
    g = compare_with_ort(model, {"x": x}, tmp_dir=tmp_path, reference=upgraded)
    assert g.metadata["opset"] == 7 and g.metadata["source_opset"] == opset
    assert "CONV_2D" in ops_of(g) or "BATCH_NORM" in ops_of(g)


def test_legacy_opset_that_cannot_be_upgraded_names_the_file(tmp_path):
    model = _legacy_model(1, True)
    del model.graph.input[1:]  # a weight no graph input declares: the converter refuses
    path = save(model, tmp_path / "old_broken.onnx")
    with pytest.raises(ModelFormatError,
                       match=r"old_broken\.onnx: opset 1 is below qatir's lowest opset 7 and "
                             r"onnx.version_converter could not upgrade it"):
        qatir.load(path)


# --------------------------------------------------------------- Dropout
def _dropout_model(mask_use: str, opset: int = 13, training: bool | None = None,
                   batch: int | str = 1) -> onnx.ModelProto:
    b = OnnxBuilder(opset)
    x = b.input("x", [batch, 3, 4, 4])
    ins = [x]
    if training is not None:
        ins += [b.init(np.float32(0.3), "ratio"), b.init(np.asarray(training), "train")]
    y, mask = b.node("Dropout", ins, n_out=2, name="drop")
    r = b.node("Relu", [y], out="y" if mask_use == "none" else None)
    if mask_use == "mul":  # the mask scaled back in, as some exporters keep it
        b.node("Mul", [r, b.node("Cast", [mask], to=TensorProto.FLOAT)], out="y")
        b.output("y")
    elif mask_use == "graph":
        b.node("Identity", [r], out="y")
        b.output("y")
        b.outputs.append(helper.make_tensor_value_info(mask, TensorProto.BOOL, None))
    else:
        b.output("y")
    return b.model()


@pytest.mark.parametrize("mask_use,opset", [("none", 13), ("none", 7), ("none", 10),
                                            ("mul", 13), ("mul", 12), ("graph", 13)])
def test_dropout_with_mask_is_the_identity_at_inference(tmp_path, mask_use, opset):
    model = _dropout_model(mask_use, opset, training=False if opset >= 12 else None)
    g = compare_with_ort(model, {"x": rnd(1, 3, 4, 4)}, tmp_dir=tmp_path)
    assert ops_of(g)[:1] == ["RELU"] and "LOGISTIC" not in ops_of(g)
    if mask_use == "graph":
        mask = qatir.run(g, {"x": rnd(1, 4, 4, 3)})[model.graph.output[1].name]
        assert np.asarray(mask).dtype == bool and np.all(mask)


def test_dropout_unused_mask_with_a_dynamic_batch_is_dropped(tmp_path):
    g = compare_with_ort(_dropout_model("none", batch="N"), {"x": rnd(2, 3, 4, 4)},
                         tmp_dir=tmp_path)
    assert ops_of(g) == ["RELU"]


def test_dropout_used_mask_with_a_dynamic_batch_is_refused(tmp_path):
    path = save(_dropout_model("mul", batch="N"), tmp_path / "dyn.onnx")
    with pytest.raises(ShapeError, match=r"dyn\.onnx: node 'drop'.*mask output .* is used"):
        qatir.load(path)
    assert qatir.load(path, input_shapes={"x": [2, 3, 4, 4]}).inputs[0].shape == (2, 4, 4, 3)


@pytest.mark.parametrize("opset", [10, 11])
def test_dropout_mask_used_before_opset_12_is_refused(tmp_path, opset):
    path = save(_dropout_model("mul", opset), tmp_path / "old_mask.onnx")
    with pytest.raises(UnsupportedOpError, match=r"old_mask\.onnx: node 'drop'.*before opset 12"):
        qatir.load(path)


def test_dropout_in_training_mode_is_refused(tmp_path):
    path = save(_dropout_model("none", training=True), tmp_path / "train.onnx")
    with pytest.raises(UnsupportedOpError, match=r"'drop'.*training_mode=true"):
        qatir.load(path)


# ------------------------------------------------------------ size limits
def _vgg_classifier(k: int = 25088, n: int = 4096) -> onnx.ModelProto:
    """VGG's first classifier layer with its weight made by ConstantOfShape (n x k)."""
    b = OnnxBuilder(13)
    x = b.input("x", [1, k])
    w = b.node("ConstantOfShape", [b.ints([n, k])], name="weight_fill",
               value=numpy_helper.from_array(np.asarray([1e-3], np.float32)))
    b.node("Gemm", [x, w], out="y", transB=1)
    b.output("y")
    return b.model()


def test_vgg_classifier_weight_imports(tmp_path):
    model = _vgg_classifier()
    x = rnd(1, 25088)
    g = compare_with_ort(model, {"x": x}, tmp_dir=tmp_path)
    (fc,) = [n for n in g.nodes if n.op == "FULLY_CONNECTED"]
    assert fc.inputs[1].shape == (4096, 25088)


def test_size_cap_follows_available_memory(tmp_path, monkeypatch):
    path = save(_vgg_classifier(), tmp_path / "vgg_fc.onnx")
    monkeypatch.setattr(qatir.limits, "available_memory", lambda: 1 << 30)
    assert qatir.limits.max_const_elements() == (1 << 30) // 4 // 8
    with pytest.raises(ShapeError, match=r"vgg_fc\.onnx: node 'weight_fill'.*\[4096, 25088\]"
                                         r".*exceeds 33554432 elements, 25% of the memory"):
        qatir.load(path)

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
from tests.helpers import compare_all
from tests.helpers.islands import compare_islands, export_quiet, op_names
from tests.helpers.onnx_models import OnnxBuilder, compare_with_ort, ops_of, rnd, run_ort, save


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


def test_legacy_file_that_crashes_the_converter_is_an_error(tmp_path):
    """onnx's C++ converter segfaults on an attribute whose declared type lies (found by
    fuzzing); it runs in a child process, so the crash is a ModelFormatError."""
    model = _legacy_model(4, True)
    shape_attr = next(a for a in model.graph.node[-1].attribute if a.name == "shape")
    shape_attr.type = onnx.AttributeProto.TYPE_PROTO  # its ints stay: the converter misreads
    path = save(model, tmp_path / "lying_attr.onnx")
    with pytest.raises(ModelFormatError, match=r"lying_attr\.onnx: opset 4 .*could not upgrade"):
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


# ------------------------------------------------------ Pad from a Shape subgraph
def _torch_pad(batch: int | str = "N", w_param: bool = False) -> onnx.ModelProto:
    """``F.pad(x, (0, 8 - W, 1, 8 - H))`` as torch.onnx writes it (opset 11+): the pads
    come from Shape(x), are padded with ConstantOfShape, reshaped to pairs, flipped by a
    negative-step Slice, transposed and flattened."""
    b = OnnxBuilder(13)
    x = b.input("x", [batch, 3, 5, "W" if w_param else 6])
    shp = b.node("Shape", [x])
    h = b.node("Gather", [shp, b.init(np.asarray(2, np.int64), "i")], axis=0)
    w = b.node("Gather", [shp, b.init(np.asarray(3, np.int64), "i")], axis=0)
    eight = b.init(np.asarray(8, np.int64), "eight")
    pad = b.node("Concat", [b.ints([0]), b.unsqueeze(b.node("Sub", [eight, w]), [0]), b.ints([1]),
                            b.unsqueeze(b.node("Sub", [eight, h]), [0])], axis=0)
    ext = b.node("Sub", [b.node("Mul", [b.node("Size", [shp]), b.init(np.asarray(2, np.int64))]),
                         b.node("Size", [pad])])
    zeros = b.node("ConstantOfShape", [b.unsqueeze(ext, [0])],
                   value=numpy_helper.from_array(np.asarray([0], np.int64)))
    p = b.node("Reshape", [b.node("Concat", [pad, zeros], axis=0), b.ints([-1, 2])])
    p = b.node("Slice", [p, b.ints([-1]), b.ints([-(1 << 62)]), b.ints([0]), b.ints([-1])])
    p = b.node("Reshape", [b.node("Transpose", [p], perm=[1, 0]), b.ints([-1])])
    p = b.node("Cast", [p], to=TensorProto.INT64)
    pd = b.node("Pad", [x, p, b.init(np.asarray(0.5, np.float32), "v")], name="the_pad")
    b.node("Conv", [pd, b.init(b.randn(4, 3, 3, 3)), b.init(b.randn(4))], out="y",
           kernel_shape=[3, 3])
    b.output("y")
    return b.model()


def _timm_pad_same(batch: int | str = "N", k: int = 3, s: int = 2) -> onnx.ModelProto:
    """timm's ``pad_same``: pad = max((ceil(i / s) - 1)·s + k - i, 0) from Shape(x), split
    before/after, then a stride-2 conv."""
    b = OnnxBuilder(13)
    x = b.input("x", [batch, 3, 7, 9])
    hw = b.node("Slice", [b.node("Shape", [x]), b.ints([2]), b.ints([4])])
    c = b.node("Ceil", [b.node("Div", [b.node("Cast", [hw], to=TensorProto.FLOAT),
                                       b.init(np.asarray(s, np.float32), "s")])])
    c = b.node("Cast", [c], to=TensorProto.INT64)
    total = b.node("Sub", [b.node("Add", [b.node("Mul", [b.node("Sub", [c, b.ints([1])]),
                                                         b.ints([s])]), b.ints([k])]), hw])
    total = b.node("Max", [total, b.ints([0, 0])])
    lo = b.node("Div", [total, b.ints([2])])
    p = b.node("Concat", [b.ints([0, 0]), lo, b.ints([0, 0]), b.node("Sub", [total, lo])], axis=0)
    pd = b.node("Pad", [x, p], name="the_pad")
    b.node("Conv", [pd, b.init(b.randn(4, 3, k, k)), b.init(b.randn(4))], out="y",
           kernel_shape=[k, k], strides=[s, s])
    b.output("y")
    return b.model()


@pytest.mark.parametrize("build,shape", [(_torch_pad, (2, 3, 5, 6)),
                                         (_timm_pad_same, (2, 3, 7, 9))])
def test_pad_from_a_shape_subgraph_folds_with_a_dynamic_batch(tmp_path, build, shape):
    g = compare_with_ort(build(), {"x": rnd(*shape)}, tmp_dir=tmp_path)
    assert ops_of(g) == ["PAD", "CONV_2D"]


def test_pad_from_a_dynamic_width_names_the_fix(tmp_path):
    path = save(_torch_pad(w_param=True), tmp_path / "dynw.onnx")
    with pytest.raises(ShapeError, match=r"dynw\.onnx: node .*dynamic dimension.*input_shapes="):
        qatir.load(path)
    g = qatir.load(path, input_shapes={"x": [1, 3, 5, 6]})
    assert ops_of(g) == ["PAD", "CONV_2D"]


def test_pad_from_a_shape_subgraph_exports_int8_bit_exact(tmp_path):
    q = qatir.quantize(qatir.load(save(_timm_pad_same(batch=1), tmp_path / "ps.onnx")))
    rng = np.random.default_rng(0)
    qatir.calibrate(q, [{"x": rng.normal(size=(1, 7, 9, 3)).astype(np.float32)}
                        for _ in range(4)], progress=False)
    assert compare_all(q) == {"reference": 0, "xnnpack": 0}


# --------------------------------------------------------------------- Pow
def _pow_model(exponent: str, base_const: bool = False) -> onnx.ModelProto:
    """Pow(base, e): e a constant 1.7, a tensor (Tanh of a second input) or an int tensor."""
    b = OnnxBuilder(13)
    x = b.input("x", [1, 3, 4, 5])
    base = b.init(np.float32(1.5), "base") if base_const else b.node("Sigmoid", [x])
    if exponent == "const":
        e = b.init(np.float32(1.7), "e")
    elif exponent == "tensor":
        e = b.node("Tanh", [b.node("Relu", [x])])
    else:  # an int64 exponent tensor: the base's float type is kept
        e = b.node("Cast", [b.node("Relu", [x])], to=TensorProto.INT64)
    y = b.node("Pow", [base, e], name="the_pow")
    b.node("Conv", [y, b.init(b.randn(4, 3, 1, 1)), b.init(b.randn(4))], out="out",
           kernel_shape=[1, 1])
    b.output("out")
    return b.model()


@pytest.mark.parametrize("exponent,base_const", [("const", False), ("tensor", False),
                                                 ("tensor", True)])
def test_pow_becomes_tflite_pow_and_matches_onnxruntime(tmp_path, exponent, base_const):
    g = compare_with_ort(_pow_model(exponent, base_const), {"x": rnd(1, 3, 4, 5)},
                         tmp_dir=tmp_path)
    assert "POW" in ops_of(g)


def test_pow_of_an_integer_exponent_tensor_casts_it(tmp_path):
    model = _pow_model("int")
    g = qatir.load(save(model, tmp_path / "ip.onnx"))
    assert ops_of(g)[2:5] == ["CAST", "CAST", "POW"]  # the model's Cast to int64, then ours back
    x = rnd(1, 3, 4, 5)
    want = run_ort(model, {"x": x})[0]
    got = qatir.run(g, {"x": x.transpose(0, 2, 3, 1)})["out"].transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _calibrated(path: str, shape: tuple[int, ...]) -> qatir.Graph:
    q = qatir.quantize(qatir.load(path))
    rng = np.random.default_rng(0)
    qatir.calibrate(q, [{"x": rng.normal(size=shape).astype(np.float32)} for _ in range(4)],
                    progress=False)
    return q


def test_pow_is_a_float_island_in_int8_exports(tmp_path):
    q = _calibrated(save(_pow_model("tensor"), tmp_path / "pw.onnx"), (1, 4, 5, 3))
    assert "POW" in op_names(export_quiet(q))
    seen = compare_islands(q)
    assert seen["int8"] > 0 and seen["float"] > 0


# --------------------------------------------------------------------- LRN
def _lrn_model(size: int = 5, alpha: float = 1e-2, beta: float = 0.75, bias: float = 2.0,
               c: int = 8) -> onnx.ModelProto:
    """AlexNet's conv -> relu -> LRN -> maxpool, small."""
    b = OnnxBuilder(13)
    x = b.input("x", [1, 3, 8, 8])
    r = b.node("Relu", [b.conv(x, 3, c, k=3)])
    n = b.node("LRN", [r], name="the_lrn", size=size, alpha=alpha, beta=beta, bias=bias)
    b.node("MaxPool", [n], out="y", kernel_shape=[2, 2], strides=[2, 2])
    b.output("y")
    return b.model()


@pytest.mark.parametrize("size,alpha,beta,bias", [(5, 1e-4, 0.75, 1.0), (5, 0.5, 0.75, 2.0),
                                                  (3, 1.0, 0.5, 1.0), (1, 2.0, 1.0, 1.0)])
def test_lrn_matches_onnxruntime(tmp_path, size, alpha, beta, bias):
    g = compare_with_ort(_lrn_model(size, alpha, beta, bias), {"x": rnd(1, 3, 8, 8, scale=3)},
                         tmp_dir=tmp_path)
    (lrn,) = [n for n in g.nodes if n.op == "LOCAL_RESPONSE_NORMALIZATION"]
    assert lrn.attrs["radius"] == (size - 1) // 2
    assert lrn.attrs["alpha"] == pytest.approx(alpha / size)


def test_lrn_of_an_even_size_is_refused(tmp_path):
    with pytest.raises(UnsupportedOpError, match=r"'the_lrn'.*size=4 \(only odd sizes"):
        qatir.load(save(_lrn_model(size=4), tmp_path / "even.onnx"))


def test_lrn_is_a_float_island_in_int8_exports(tmp_path):
    q = _calibrated(save(_lrn_model(alpha=0.5), tmp_path / "lrn.onnx"), (1, 8, 8, 3))
    assert "LOCAL_RESPONSE_NORMALIZATION" in op_names(export_quiet(q))
    seen = compare_islands(q)
    assert seen["int8"] > 0 and seen["float"] > 0


def test_lrn_round_trips_through_the_tflite_frontend(tmp_path):
    g = qatir.load(save(_lrn_model(), tmp_path / "lrn.onnx"))
    path = tmp_path / "lrn.tflite"
    path.write_bytes(qatir.to_tflite(g))
    back = qatir.load(str(path))
    (lrn,) = [n for n in back.nodes if n.op == "LOCAL_RESPONSE_NORMALIZATION"]
    assert lrn.attrs["radius"] == 2 and lrn.attrs["alpha"] == pytest.approx(1e-2 / 5)
    x = rnd(1, 8, 8, 3)
    np.testing.assert_allclose(qatir.run(back, {"x": x})["y"], qatir.run(g, {"x": x})["y"],
                               rtol=1e-5, atol=1e-6)

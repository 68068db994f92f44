"""Bad ONNX input fails with a QatirError subclass whose message names the file and node."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import qatir
from qatir.errors import ModelFormatError, QatirError, ShapeError, UnsupportedOpError
from tests.helpers.onnx_models import OnnxBuilder, resnet_like, save, single_op_model


def write(tmp_path, data: bytes, name="bad.onnx"):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def test_truncated_file(tmp_path):
    data = resnet_like().SerializeToString()
    path = write(tmp_path, data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match="bad.onnx"):
        qatir.load(path)


@pytest.mark.parametrize("data", [b"", b"\x00" * 10, bytes(range(256)) * 4,
                                  np.random.default_rng(0).bytes(4096), b"not an onnx model"])
def test_random_bytes(tmp_path, data):
    with pytest.raises(ModelFormatError, match="bad.onnx"):
        qatir.load(write(tmp_path, data))


def test_unsupported_ops_listed_at_once_with_counts(tmp_path):
    b = OnnxBuilder(13)
    x = b.input("x", [2, 3])
    y = b.node("Det", [x], name="e1")
    y = b.node("Det", [y], name="e2")
    y = b.node("Relu", [y])
    y = b.node("Erf", [y], name="erf_node")
    b.nodes.append(helper.make_node("FusedThing", [y], ["z"], domain="com.example", name="ft"))
    b.output("z")
    path = save(b.model(), tmp_path / "unsup.onnx")
    with pytest.raises(UnsupportedOpError) as exc:
        qatir.load(path)
    msg = str(exc.value)
    assert "unsup.onnx" in msg
    assert "Det (x2)" in msg and "Erf (x1)" in msg and "com.example::FusedThing (x1)" in msg
    assert "'e1'" in msg and "'e2'" in msg and "'erf_node'" in msg
    assert exc.value.ops == {"Det": 2, "Erf": 1, "com.example::FusedThing": 1}


@pytest.mark.parametrize("opset", [0, 22])  # 1-6 are upgraded (test_onnx_misc.py)
def test_opset_out_of_range(tmp_path, opset):
    m = single_op_model("Relu", [[1, 2]], opset=13)
    m.opset_import[0].version = opset
    path = save(m, tmp_path / "old.onnx")
    with pytest.raises(QatirError, match=rf"old\.onnx: opset {opset} is out of the supported"):
        qatir.load(path)


def test_bad_input_shapes_name(tmp_path):
    path = save(resnet_like(), tmp_path / "r.onnx")
    with pytest.raises(QatirError, match="'images'.*inputs: input"):
        qatir.load(path, input_shapes={"images": [1, 3, 32, 32]})


@pytest.mark.parametrize("shape", [[1, 3, 32], [1, 4, 32, 32], [1, 3, 0, 32]])
def test_input_shapes_conflicting_with_model(tmp_path, shape):
    path = save(resnet_like(), tmp_path / "r.onnx")
    with pytest.raises(ShapeError, match="input_shapes"):
        qatir.load(path, input_shapes={"input": shape})


def test_shape_that_cannot_be_inferred_names_node(tmp_path):
    m = single_op_model("Add", [[2, 3], [4]])
    m.graph.node[0].name = "the_add"
    with pytest.raises(ShapeError, match="the_add"):
        qatir.load(save(m, tmp_path / "s.onnx"))


def test_conv_channel_mismatch_names_node(tmp_path):
    m = single_op_model("Conv", [[1, 3, 8, 8]], [np.zeros((4, 2, 3, 3), np.float32)],
                        kernel_shape=[3, 3])
    with pytest.raises(ShapeError, match=r"c\.onnx: node 'op' \(Conv\)"):
        qatir.load(save(m, tmp_path / "c.onnx"))


def test_reshape_with_two_unknowns_asks_for_input_shapes(tmp_path):
    b = OnnxBuilder(13)
    x = b.input("x", ["N", "C", 1])
    shape = b.node("Shape", [x])
    b.node("Reshape", [x, b.node("Slice", [shape, b.ints([0]), b.ints([2])])], out="y",
           name="rs")
    b.output("y")
    path = save(b.model(), tmp_path / "d.onnx")
    with pytest.raises(ShapeError, match="'rs'.*input_shapes"):
        qatir.load(path)
    g = qatir.load(path, input_shapes={"x": [2, 3, 1]})
    assert g.outputs[0].shape == (2, 3)


def test_undefined_tensor_and_cycle(tmp_path):
    m = single_op_model("Relu", [[1, 2]])
    m.graph.node[0].input[0] = "ghost"
    with pytest.raises(ModelFormatError, match="ghost"):
        qatir.load(save(m, tmp_path / "u.onnx"))
    b = OnnxBuilder(13)
    b.input("x", [1, 2])
    b.nodes.append(helper.make_node("Add", ["x", "b"], ["a"], name="n1"))
    b.nodes.append(helper.make_node("Relu", ["a"], ["b"], name="n2"))
    b.output("b")
    with pytest.raises(ModelFormatError, match="cycle"):
        qatir.load(save(b.model(), tmp_path / "cyc.onnx"))


def test_fold_only_op_on_activation_is_unsupported(tmp_path):
    m = single_op_model("Range", [[], []], [np.asarray(1, np.float32)])
    with pytest.raises(UnsupportedOpError, match="Range"):
        qatir.load(save(m, tmp_path / "r.onnx"))


def test_huge_constant_of_shape_is_refused(tmp_path):
    b = OnnxBuilder(13)
    x = b.input("x", [1])
    big = b.node("ConstantOfShape", [b.ints([1 << 20, 1 << 20])])
    b.node("Add", [x, big], out="y")
    b.output("y")
    with pytest.raises(ShapeError, match="exceeds"):
        qatir.load(save(b.model(), tmp_path / "big.onnx"))


def test_unsorted_nodes_are_accepted(tmp_path):
    m = resnet_like()
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(reversed(nodes))
    g = qatir.load(save(m, tmp_path / "rev.onnx"))
    assert g.outputs[0].name == "logits"
    onnx.checker.check_model(resnet_like())


def test_absurd_rank_is_refused_quickly(tmp_path):
    import time

    m = single_op_model("Unsqueeze", [[2, 3]], [np.arange(2, 200_002, dtype=np.int64)])
    path = save(m, tmp_path / "deep.onnx")
    t0 = time.perf_counter()
    with pytest.raises(ShapeError, match="rank"):
        qatir.load(path)
    assert time.perf_counter() - t0 < 5.0


def test_input_shapes_may_leave_dims_dynamic_and_rejects_junk(tmp_path):
    path = save(resnet_like(), tmp_path / "r.onnx")
    g = qatir.load(path, input_shapes={"input": [None, 3, 32, 32]})
    assert g.inputs[0].shape == (None, 32, 32, 3)
    g = qatir.load(path, input_shapes={"input": [-1, 3, 32, 32]})
    assert g.inputs[0].shape == (None, 32, 32, 3)
    with pytest.raises(QatirError, match="not a list of ints"):
        qatir.load(path, input_shapes={"input": ["a", 3, 32, 32]})


def test_input_without_declared_shape_needs_input_shapes(tmp_path):
    m = single_op_model("Relu", [None])
    path = save(m, tmp_path / "noshape.onnx")
    with pytest.raises(ShapeError, match="'x0' declares no shape"):
        qatir.load(path)
    g = qatir.load(path, input_shapes={"x0": [2, 3, 4, 5]})
    assert g.inputs[0].shape == (2, 4, 5, 3)


def test_huge_broadcast_of_small_constants_is_refused(tmp_path):
    b = OnnxBuilder(13)
    x = b.input("x", [1])
    big = b.node("Mul", [b.init(np.ones((1 << 20, 1), np.float32)),  # 2^40 elements
                         b.init(np.ones((1, 1 << 20), np.float32))], name="outer")
    b.node("Add", [x, big], out="y")
    b.output("y")
    with pytest.raises(ShapeError, match="'outer'.*exceeds"):
        qatir.load(save(b.model(), tmp_path / "bcast.onnx"))


def test_conv_transpose_with_empty_output_is_a_shape_error(tmp_path):
    m = single_op_model("ConvTranspose", [[1, 2, 2, 2]], [np.ones((2, 3, 3, 3), np.float32)],
                        kernel_shape=[3, 3], pads=[2, 2, 2, 2])
    with pytest.raises(ShapeError, match=r"'op' \(ConvTranspose\).*<= 0"):
        qatir.load(save(m, tmp_path / "ct.onnx"))

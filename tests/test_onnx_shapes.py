"""ONNX shape and layout ops, Resize, and import-time constant folding, vs onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.helpers.onnx_models import OnnxBuilder, compare_with_ort, ops_of, rnd, single_op_model

F = np.float32


# ----------------------------------------------------------------- shapes
@pytest.mark.parametrize("shape,target", [([2, 3, 4, 5], [2, -1]), ([2, 3, 4, 5], [0, 12, 5]),
                                          ([2, 3, 4, 5], [2, 3, 20, 1]), ([2, 12], [2, 3, 2, 2]),
                                          ([2, 3, 1, 1], [2, 3]), ([6, 4], [-1])])
def test_reshape(shape, target):
    m = single_op_model("Reshape", [shape], [np.asarray(target, np.int64)])
    compare_with_ort(m, {"x0": rnd(*shape)})


@pytest.mark.parametrize("axis", [0, 1, 2, 3, 4, -1])
def test_flatten(axis):
    m = single_op_model("Flatten", [[2, 3, 4, 5]], axis=axis)
    compare_with_ort(m, {"x0": rnd(2, 3, 4, 5)})


def test_flatten_after_global_pool_needs_no_transpose():
    b = OnnxBuilder(13)
    x = b.input("x", ["N", 8, 5, 5])
    b.node("Flatten", [b.node("GlobalAveragePool", [x])], out="y")
    b.output("y")
    g = compare_with_ort(b.model(), {"x": rnd(3, 8, 5, 5)})
    assert ops_of(g) == ["MEAN", "RESHAPE"]


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("shape,axes", [([2, 1, 4, 1], [1, 3]), ([2, 3, 1, 1], [2, 3]),
                                        ([1, 3, 4, 5], [0]), ([2, 1, 4, 1], None)])
def test_squeeze(opset, shape, axes):
    if axes is None:
        m = single_op_model("Squeeze", [shape], opset=opset)
    elif opset >= 13:
        m = single_op_model("Squeeze", [shape], [np.asarray(axes, np.int64)], opset=opset)
    else:
        m = single_op_model("Squeeze", [shape], opset=opset, axes=axes)
    compare_with_ort(m, {"x0": rnd(*shape)})


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("shape,axes", [([2, 3], [2, 3]), ([2, 3, 4], [1]), ([2, 3, 4, 5], [0]),
                                        ([2, 3, 4, 5], [-1]), ([5], [0, 2])])
def test_unsqueeze(opset, shape, axes):
    if opset >= 13:
        m = single_op_model("Unsqueeze", [shape], [np.asarray(axes, np.int64)], opset=opset)
    else:
        m = single_op_model("Unsqueeze", [shape], opset=opset, axes=axes)
    compare_with_ort(m, {"x0": rnd(*shape)})


@pytest.mark.parametrize("shape,perm", [([2, 3, 4, 5], [0, 2, 3, 1]), ([2, 3, 4, 5], [0, 3, 1, 2]),
                                        ([2, 3, 4, 5], [3, 2, 1, 0]), ([2, 3, 4], [0, 2, 1]),
                                        ([2, 3, 4, 5], None)])
def test_transpose(shape, perm):
    attrs = {} if perm is None else {"perm": perm}
    m = single_op_model("Transpose", [shape], **attrs)
    compare_with_ort(m, {"x0": rnd(*shape)})


def test_transpose_pair_cancels():
    b = OnnxBuilder(13)
    x = b.input("x", [1, 3, 4, 5])
    t = b.node("Transpose", [x], perm=[0, 2, 3, 1])
    y = b.node("Relu", [t])
    b.node("Transpose", [y], out="y", perm=[0, 3, 1, 2])
    b.output("y")
    g = compare_with_ort(b.model(), {"x": rnd(1, 3, 4, 5)})
    assert ops_of(g) == ["RELU"]


@pytest.mark.parametrize("axis", [1, 2, 3, -1, 0])
def test_concat(axis):
    m = single_op_model("Concat", [[2, 3, 4, 5], [2, 3, 4, 5]], [rnd(2, 3, 4, 5, seed=4)],
                        axis=axis)
    g = compare_with_ort(m, {"x0": rnd(2, 3, 4, 5), "x1": rnd(2, 3, 4, 5, seed=1)})
    assert "TRANSPOSE" not in ops_of(g)


@pytest.mark.parametrize("opset,pads,value", [(11, [0, 0, 1, 2, 0, 0, 2, 1], 0.0),
                                              (11, [0, 1, 0, 0, 0, 2, 0, 0], 1.5),
                                              (13, [1, 0, 0, 1, 0, 0, 0, 0], -2.0),
                                              (10, [0, 0, 1, 1, 0, 0, 1, 1], 0.5)])
def test_pad(opset, pads, value):
    if opset < 11:
        m = single_op_model("Pad", [[2, 3, 4, 5]], opset=opset, pads=pads, value=value)
    else:
        m = single_op_model("Pad", [[2, 3, 4, 5]], [np.asarray(pads, np.int64),
                                                    np.asarray(value, F)], opset=opset)
    compare_with_ort(m, {"x0": rnd(2, 3, 4, 5)})


@pytest.mark.parametrize("starts,ends,axes,steps", [([1], [3], [1], [1]),
                                                    ([0, 1], [2, -1], [2, 3], [1, 2]),
                                                    ([-1], [-100], [3], [-1]),
                                                    ([2], [1000], [2], [1]),
                                                    ([3, 0], [0, 2], [1, 0], [-2, 1])])
def test_slice_on_activation(starts, ends, axes, steps):
    consts = [np.asarray(v, np.int64) for v in (starts, ends, axes, steps)]
    m = single_op_model("Slice", [[2, 4, 5, 6]], consts)
    compare_with_ort(m, {"x0": rnd(2, 4, 5, 6)})


def test_gather_on_activation():
    for idx in (np.asarray(1, np.int64), np.asarray([2, 0], np.int64)):
        m = single_op_model("Gather", [[2, 4, 5, 6]], [idx], axis=1)
        compare_with_ort(m, {"x0": rnd(2, 4, 5, 6)})


# ----------------------------------------------------------------- resize
RESIZE_CASES = [("nearest", "asymmetric", "floor", [1, 1, 2, 2], None),
                ("nearest", "half_pixel", "round_prefer_floor", [1, 1, 2, 3], None),
                ("nearest", "half_pixel", "round_prefer_ceil", None, [2, 3, 7, 9]),
                ("nearest", "align_corners", "round_prefer_ceil", None, [2, 3, 9, 7]),
                ("linear", "half_pixel", "round_prefer_floor", None, [2, 3, 9, 11]),
                ("linear", "pytorch_half_pixel", "round_prefer_floor", [1, 1, 2, 2], None),
                ("linear", "align_corners", "round_prefer_floor", [1, 1, 2, 2], None),
                ("linear", "asymmetric", "round_prefer_floor", [1, 1, 3, 2], None),
                ("linear", "half_pixel", "round_prefer_floor", None, [2, 3, 2, 3])]


@pytest.mark.parametrize("mode,ctm,nearest,scales,sizes", RESIZE_CASES)
def test_resize(mode, ctm, nearest, scales, sizes):
    consts = [None, None if scales is None else np.asarray(scales, F),
              None if sizes is None else np.asarray(sizes, np.int64)]
    m = single_op_model("Resize", [[2, 3, 4, 5]], consts, mode=mode,
                        coordinate_transformation_mode=ctm, nearest_mode=nearest)
    compare_with_ort(m, {"x0": rnd(2, 3, 4, 5)})


@pytest.mark.parametrize("opset,mode", [(7, "nearest"), (9, "nearest"), (9, "linear")])
def test_upsample(opset, mode):
    scales = [1.0, 1.0, 2.0, 2.0]
    if opset < 9:
        m = single_op_model("Upsample", [[1, 2, 3, 4]], opset=opset, scales=scales, mode=mode)
    else:
        m = single_op_model("Upsample", [[1, 2, 3, 4]], [np.asarray(scales, F)], opset=opset,
                            mode=mode)
    compare_with_ort(m, {"x0": rnd(1, 2, 3, 4)})


# --------------------------------------------------------- misc / folding
@pytest.mark.parametrize("op", ["Identity", "Dropout"])
def test_identity_and_dropout(op):
    b = OnnxBuilder(13)
    x = b.input("x", [2, 3, 4, 4])
    b.node("Relu", [b.node(op, [x])], out="y")
    b.output("y")
    g = compare_with_ort(b.model(), {"x": rnd(2, 3, 4, 4)})
    assert ops_of(g) == ["RELU"]


def test_constant_constant_of_shape_and_cast_fold():
    b = OnnxBuilder(13)
    x = b.input("x", [2, 3])
    c = b.node("Constant", [], value=onnx.numpy_helper.from_array(rnd(2, 3), "c"))
    shp = b.node("Shape", [x])
    fill = b.node("ConstantOfShape", [shp], value=onnx.numpy_helper.from_array(
        np.asarray([0.25], F), "v"))
    half = b.node("Cast", [b.node("Cast", [fill], to=7)], to=1)  # 0.25 -> int 0 -> 0.0
    y = b.node("Add", [b.node("Add", [x, c]), fill])
    b.node("Add", [y, half], out="y")
    b.output("y")
    g = compare_with_ort(b.model(), {"x": rnd(2, 3, seed=1)})
    assert set(ops_of(g)) == {"ADD"} and "SHAPE" not in ops_of(g)


def test_dynamic_batch_shape_chain_folds_to_reshape():
    b = OnnxBuilder(13)
    x = b.input("x", ["batch", 4, 3, 3])
    shape = b.node("Shape", [x])
    n = b.node("Gather", [shape, b.init(np.asarray(0, np.int64))], axis=0)
    c = b.node("Gather", [shape, b.init(np.asarray(1, np.int64))], axis=0)
    hw = b.node("Mul", [b.node("Gather", [shape, b.init(np.asarray(2, np.int64))], axis=0),
                        b.node("Gather", [shape, b.init(np.asarray(3, np.int64))], axis=0)])
    target = b.node("Concat", [b.unsqueeze(n, [0]), b.unsqueeze(c, [0]), b.unsqueeze(hw, [0])],
                    axis=0)
    b.node("Reshape", [x, target], out="y")
    b.output("y")
    g = compare_with_ort(b.model(), {"x": rnd(5, 4, 3, 3)})
    assert g.inputs[0].shape[0] is None and g.outputs[0].shape == (None, 4, 9)
    assert "SHAPE" not in ops_of(g) and "RESHAPE" in ops_of(g)
    assert [n.attrs["new_shape"] for n in g.nodes if n.op == "RESHAPE"] == [[-1, 4, 9]]


def test_shape_slice_chain_and_cast():
    b = OnnxBuilder(13)
    x = b.input("x", ["batch", 2, 4, 6])
    shape = b.node("Cast", [b.node("Shape", [x])], to=7)
    spatial = b.node("Slice", [shape, b.ints([2]), b.ints([4])])
    target = b.node("Concat", [b.ints([-1]), spatial], axis=0)
    b.node("Reshape", [x, target], out="y")
    b.output("y")
    g = compare_with_ort(b.model(), {"x": rnd(3, 2, 4, 6)})
    assert g.outputs[0].shape == (None, 4, 6)


def test_cast_activation_float_is_alias():
    m = single_op_model("Cast", [[2, 3]], to=1)
    g = compare_with_ort(m, {"x0": rnd(2, 3)})
    assert ops_of(g) == ["IDENTITY"]


@pytest.mark.parametrize("opset,axis,split", [(11, 1, [1, 3]), (13, 2, [2, 2]), (13, 3, None),
                                              (11, 1, None)])
def test_split(opset, axis, split):
    n_out = 2
    if split is None:
        m = single_op_model("Split", [[2, 4, 4, 6]], opset=opset, n_out=n_out, axis=axis)
    elif opset >= 13:
        m = single_op_model("Split", [[2, 4, 4, 6]], [np.asarray(split, np.int64)], opset=opset,
                            n_out=n_out, axis=axis)
    else:
        m = single_op_model("Split", [[2, 4, 4, 6]], opset=opset, n_out=n_out, axis=axis,
                            split=split)
    compare_with_ort(m, {"x0": rnd(2, 4, 4, 6)})


@pytest.mark.parametrize("op,shape", [("DepthToSpace", [1, 8, 3, 2]),
                                      ("SpaceToDepth", [1, 2, 4, 6])])
def test_depth_space(op, shape):
    m = single_op_model(op, [shape], blocksize=2)
    compare_with_ort(m, {"x0": rnd(*shape)})


def test_channel_shuffle_5d_reshape_transpose():
    b = OnnxBuilder(13)
    x = b.input("x", [1, 6, 3, 3])
    y = b.node("Reshape", [x, b.ints([1, 2, 3, 3, 3])])
    y = b.node("Transpose", [y], perm=[0, 2, 1, 3, 4])
    y = b.node("Reshape", [y, b.ints([1, 6, 3, 3])])
    b.node("Conv", [y, b.init(rnd(4, 6, 1, 1))], out="y", kernel_shape=[1, 1])
    b.output("y")
    compare_with_ort(b.model(), {"x": rnd(1, 6, 3, 3)})


def test_resize_sizes_from_dynamic_shape_chain():
    b = OnnxBuilder(13)
    x = b.input("x", ["N", 3, 4, 5])
    nc = b.node("Slice", [b.node("Shape", [x]), b.ints([0]), b.ints([2])])
    sizes = b.node("Concat", [nc, b.ints([8, 10])], axis=0)
    b.node("Resize", [x, "", "", sizes], out="y", mode="nearest",
           coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    b.output("y")
    g = compare_with_ort(b.model(), {"x": rnd(2, 3, 4, 5)})
    assert ops_of(g) == ["RESIZE_NEAREST_NEIGHBOR"] and g.outputs[0].shape == (None, 8, 10, 3)


def test_layout_mix_of_transposes_reductions_and_broadcasts():
    b = OnnxBuilder(13)
    x = b.input("x", [2, 4, 5, 6])
    v = b.input("v", [6])
    t = b.node("Relu", [b.node("Transpose", [x], perm=[0, 2, 3, 1])])  # [2,5,6,4]
    m = b.node("ReduceMean", [t], axes=[3], keepdims=0)  # [2,5,6]
    m = b.node("Add", [m, v])  # rank-3 plain + rank-1 input
    u = b.unsqueeze(m, [1])  # [2,1,5,6]
    y = b.node("Mul", [x, u])  # broadcast over channels
    y = b.node("Conv", [y, b.init(rnd(3, 4, 3, 3))], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    s = b.node("Softmax", [b.node("Squeeze", [b.node("ReduceMax", [y], axes=[2], keepdims=1),
                                              b.ints([2])])], axis=1)  # [2,3,6]
    b.node("Concat", [b.node("Transpose", [s], perm=[0, 2, 1]), b.init(rnd(2, 6, 1))], axis=2,
           out="y")
    b.output("y")
    b.node("Identity", [t], out="t")
    b.output("t")
    compare_with_ort(b.model(), {"x": rnd(2, 4, 5, 6), "v": rnd(6, seed=3)})


def test_shape_and_size_of_constants_fold():
    b = OnnxBuilder(15)
    x = b.input("x", [2, 3])
    c = b.init(rnd(4, 2, 3))
    shp = b.node("Shape", [c], start=1)  # [2, 3]
    n = b.node("Cast", [b.node("Size", [c]), ], to=1)  # 24.0
    y = b.node("Reshape", [b.node("Gather", [c, b.init(np.asarray(0, np.int64))], axis=0), shp])
    b.node("Add", [b.node("Mul", [x, n]), y], out="y")
    b.output("y")
    g = compare_with_ort(b.model(), {"x": rnd(2, 3)})
    assert sorted(ops_of(g)) == ["ADD", "MUL"]


def test_ops_without_folder_run_on_constant_data():
    b = OnnxBuilder(13)
    x = b.input("x", [2, 5])
    s = b.node("Softmax", [b.init(rnd(2, 5, seed=4))], axis=1)
    b.node("Add", [x, b.node("Relu", [s])], out="y")
    b.output("y")
    compare_with_ort(b.model(), {"x": rnd(2, 5)})

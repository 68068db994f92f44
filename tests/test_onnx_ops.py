"""Every ONNX op the frontend imports, checked against onnxruntime (qatir.run, NHWC I/O)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from tests.helpers.onnx_models import OnnxBuilder, compare_with_ort, ops_of, rnd, single_op_model

F = np.float32
SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------ conv
@st.composite
def conv_case(draw):
    k = draw(st.sampled_from([1, 2, 3, 5]))
    dil = draw(st.sampled_from([1, 1, 2]))
    eff = (k - 1) * dil + 1
    h = draw(st.integers(eff, eff + 6))
    w = draw(st.integers(eff, eff + 6))
    kind = draw(st.sampled_from(["plain", "depthwise", "grouped", "dw_mult"]))
    cin = draw(st.sampled_from([2, 4]))
    if kind == "plain":
        group, cout = 1, draw(st.sampled_from([1, 3, 5]))
    elif kind == "depthwise":
        group, cout = cin, cin
    elif kind == "dw_mult":
        group, cout = cin, 2 * cin
    else:
        group, cout = 2, 6
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    if auto_pad.startswith("SAME"):
        dil = 1  # onnxruntime refuses dilation with auto_pad SAME
    pads = [draw(st.integers(0, 2)) for _ in range(4)]
    stride = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    bias = draw(st.booleans())
    return k, dil, h, w, cin, cout, group, auto_pad, pads, stride, bias


@SETTINGS
@given(conv_case())
@example(
    case=(1, 1, 1, 1, 2, 2, 2, 'NOTSET', [0, 0, 0, 0], [1, 2], False),
)  # unequal strides on a depthwise conv (TF's CPU kernel refuses them)
def test_conv2d_matches_onnxruntime(case):
    k, dil, h, w, cin, cout, group, auto_pad, pads, stride, bias = case
    attrs = dict(kernel_shape=[k, k], strides=stride, dilations=[dil, dil], group=group)
    if auto_pad == "NOTSET":
        attrs["pads"] = pads
    else:
        attrs["auto_pad"] = auto_pad
    consts = [rnd(cout, cin // group, k, k, seed=1)] + ([rnd(cout, seed=2)] if bias else [])
    m = single_op_model("Conv", [[2, cin, h, w]], consts, **attrs)
    g = compare_with_ort(m, {"x0": rnd(2, cin, h, w)})
    if group == cin and cout % cin == 0 and group > 1:
        assert "DEPTHWISE_CONV_2D" in ops_of(g)
    elif group > 1:
        assert ops_of(g) == ["CONV_2D"]  # one grouped CONV_2D: OHWI weight of one group's input
        assert g.nodes[0].inputs[1].shape[3] == cin // group


def test_conv_same_pads_become_same_padding():
    m = single_op_model("Conv", [[1, 3, 8, 8]], [rnd(4, 3, 3, 3)], kernel_shape=[3, 3],
                        pads=[1, 1, 1, 1])
    g = compare_with_ort(m, {"x0": rnd(1, 3, 8, 8)})
    assert ops_of(g) == ["CONV_2D"] and g.nodes[0].attrs["padding"] == "SAME"
    assert g.nodes[0].inputs[1].shape == (4, 3, 3, 3)  # OHWI


@pytest.mark.parametrize("k,s,p,d,group", [(3, 1, 1, 1, 1), (5, 2, 2, 1, 1), (3, 1, 2, 2, 4),
                                           (2, 2, 0, 1, 2)])
def test_conv1d(k, s, p, d, group):
    m = single_op_model("Conv", [[2, 4, 11]], [rnd(4, 4 // group, k), rnd(4)], kernel_shape=[k],
                        strides=[s], pads=[p, p], dilations=[d], group=group)
    compare_with_ort(m, {"x0": rnd(2, 4, 11)})


def test_conv_with_dynamic_batch_and_input_shapes():
    m = single_op_model("Conv", [["N", 3, 6, 6]], [rnd(2, 3, 3, 3)], kernel_shape=[3, 3],
                        pads=[0, 1, 2, 1])
    g = compare_with_ort(m, {"x0": rnd(3, 3, 6, 6)})
    assert g.inputs[0].shape == (None, 6, 6, 3) and g.inputs[0].source_layout == "NCHW"
    g2 = compare_with_ort(m, {"x0": rnd(2, 3, 6, 6)}, input_shapes={"x0": [2, 3, 6, 6]})
    assert g2.inputs[0].shape == (2, 6, 6, 3)


@pytest.mark.parametrize("k,s,pads,out_pad", [(3, 1, [0, 0, 0, 0], [0, 0]),
                                              (4, 2, [1, 1, 1, 1], [0, 0]),
                                              (3, 2, [1, 1, 1, 1], [1, 1]),
                                              (2, 2, [0, 0, 0, 0], [1, 0]),
                                              (3, 3, [2, 0, 1, 2], [0, 1])])
def test_conv_transpose(k, s, pads, out_pad):
    m = single_op_model("ConvTranspose", [[2, 3, 5, 4]], [rnd(3, 4, k, k), rnd(4)],
                        kernel_shape=[k, k], strides=[s, s], pads=pads, output_padding=out_pad)
    g = compare_with_ort(m, {"x0": rnd(2, 3, 5, 4)})
    assert "TRANSPOSE_CONV" in ops_of(g)


def test_conv_transpose_1d_and_no_bias():
    m = single_op_model("ConvTranspose", [[1, 2, 7]], [rnd(2, 3, 3)], kernel_shape=[3],
                        strides=[2], pads=[1, 1])
    compare_with_ort(m, {"x0": rnd(1, 2, 7)})


# ---------------------------------------------------------- normalization
@pytest.mark.parametrize("shape", [[2, 3, 5, 4], [4, 3], [2, 3, 6]])
def test_batch_norm(shape):
    c = shape[1]
    rng = np.random.default_rng(0)
    consts = [rng.uniform(0.5, 2, c).astype(F), rnd(c), rnd(c), rng.uniform(0.5, 2, c).astype(F)]
    m = single_op_model("BatchNormalization", [shape], consts, epsilon=1e-3)
    g = compare_with_ort(m, {"x0": rnd(*shape)})
    assert "BATCH_NORM" in ops_of(g)


# ----------------------------------------------------------- activations
@pytest.mark.parametrize("op,attrs,ir", [("Relu", {}, "RELU"), ("Sigmoid", {}, "LOGISTIC"),
                                         ("Tanh", {}, "TANH"),
                                         ("LeakyRelu", {"alpha": 0.3}, "LEAKY_RELU"),
                                         ("LeakyRelu", {}, "LEAKY_RELU"),
                                         ("HardSigmoid", {}, "HARD_SIGMOID"),
                                         ("HardSigmoid", {"alpha": 0.25, "beta": 0.4},
                                          "HARD_SIGMOID"),
                                         ("HardSwish", {}, "HARD_SWISH")])
def test_unary_activations(op, attrs, ir):
    m = single_op_model(op, [[2, 3, 4, 5]], opset=14, **attrs)
    g = compare_with_ort(m, {"x0": rnd(2, 3, 4, 5, scale=4)})
    assert ops_of(g) == [ir]


@pytest.mark.parametrize("slope_shape,x_shape", [([3, 1, 1], [2, 3, 4, 4]), ([1], [2, 3, 4, 4]),
                                                 ([3], [5, 3]), ([1, 1, 4], [2, 3, 4, 4])])
def test_prelu(slope_shape, x_shape):
    m = single_op_model("PRelu", [x_shape], [rnd(*slope_shape, seed=3)])
    compare_with_ort(m, {"x0": rnd(*x_shape, scale=3)})


@pytest.mark.parametrize("opset,lo,hi", [(10, 0.0, 6.0), (10, -1.0, None), (13, 0.0, 6.0),
                                         (13, None, 0.5), (13, -0.5, None), (11, None, None)])
def test_clip_attribute_and_input_forms(opset, lo, hi):
    if opset < 11:
        attrs = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None}
        m = single_op_model("Clip", [[2, 3, 4, 4]], opset=opset, **attrs)
    else:
        consts = [None if lo is None else np.asarray(lo, F), None if hi is None else
                  np.asarray(hi, F)]
        m = single_op_model("Clip", [[2, 3, 4, 4]], consts, opset=opset)
    g = compare_with_ort(m, {"x0": rnd(2, 3, 4, 4, scale=5)})
    assert g.nodes[0].attrs == {"min": lo, "max": hi}


@pytest.mark.parametrize("opset,shape,axis", [(13, [2, 3, 4, 4], 1), (13, [2, 5], -1),
                                              (13, [2, 3, 4, 4], 2), (11, [2, 3, 4, 4], 1),
                                              (11, [2, 3, 4, 4], 3), (11, [4, 6], 1),
                                              (13, [2, 3, 5], 1)])
def test_softmax(opset, shape, axis):
    m = single_op_model("Softmax", [shape], opset=opset, axis=axis)
    g = compare_with_ort(m, {"x0": rnd(*shape, scale=2)})
    if opset == 13 and axis == 1 and len(shape) == 4:
        assert ops_of(g) == ["SOFTMAX"]  # channel softmax is last-axis softmax in NHWC


# ----------------------------------------------------------- elementwise
BROADCASTS = [([2, 3, 4, 5], [2, 3, 4, 5], False), ([2, 3, 4, 5], [3, 1, 1], True),
              ([2, 3, 4, 5], [1], True), ([2, 3, 4, 5], [5], True),
              ([2, 3, 4, 5], [1, 3, 1, 1], True), ([2, 3, 4, 5], [4, 1], True),
              ([4, 6], [6], True), ([2, 3, 4, 5], [3, 4, 5], False), ([3, 1, 1], [2, 3, 4, 5],
                                                                        True)]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("a_shape,b_shape,b_const", BROADCASTS)
def test_binary_broadcasting(op, a_shape, b_shape, b_const):
    b_val = rnd(*b_shape, seed=5)
    if op == "Div":
        b_val = np.abs(b_val) + 0.5
    if b_const:
        if len(a_shape) < len(b_shape):  # constant first operand
            b = OnnxBuilder(13)
            x = b.input("x0", b_shape)
            b.node(op, [b.init(rnd(*a_shape, seed=6)), x], out="y")
            b.output("y")
            compare_with_ort(b.model(), {"x0": b_val})
            return
        m = single_op_model(op, [a_shape], [b_val])
        compare_with_ort(m, {"x0": rnd(*a_shape)})
    else:
        m = single_op_model(op, [a_shape, b_shape])
        compare_with_ort(m, {"x0": rnd(*a_shape), "x1": b_val})


def test_sum_max_min_variadic():
    for op in ("Sum", "Max", "Min"):
        m = single_op_model(op, [[2, 3, 4, 4], [2, 3, 4, 4]], [rnd(3, 1, 1, seed=9)])
        compare_with_ort(m, {"x0": rnd(2, 3, 4, 4), "x1": rnd(2, 3, 4, 4, seed=2)})


# ----------------------------------------------------------------- dense
@pytest.mark.parametrize("ta,tb,alpha,beta,c_shape", [(0, 1, 1.0, 1.0, [6]), (0, 0, 1.0, 1.0, [6]),
                                                      (1, 0, 0.5, 2.0, [1, 6]),
                                                      (0, 1, 1.0, 0.5, [4, 6]),
                                                      (0, 1, 2.0, 1.0, None),
                                                      (0, 1, 1.0, 1.0, [1])])
def test_gemm(ta, tb, alpha, beta, c_shape):
    a_shape = [5, 4] if ta else [4, 5]
    b_shape = [6, 5] if tb else [5, 6]
    consts = [rnd(*b_shape, seed=2)] + ([] if c_shape is None else [rnd(*c_shape, seed=3)])
    m = single_op_model("Gemm", [a_shape], consts, transA=ta, transB=tb, alpha=alpha, beta=beta)
    g = compare_with_ort(m, {"x0": rnd(*a_shape)})
    assert "FULLY_CONNECTED" in ops_of(g)


@pytest.mark.parametrize("a_shape", [[4, 5], [2, 3, 5], [2, 2, 3, 5]])
def test_matmul_const_weight_is_fully_connected(a_shape):
    m = single_op_model("MatMul", [a_shape], [rnd(5, 7, seed=1)])
    g = compare_with_ort(m, {"x0": rnd(*a_shape)})
    fc = [n for n in g.nodes if n.op == "FULLY_CONNECTED"]
    assert len(fc) == 1 and fc[0].attrs["keep_num_dims"] == (len(a_shape) > 2)


@pytest.mark.parametrize("a_shape,b_shape", [([2, 3, 5], [2, 5, 4]), ([3, 5], [5, 2]),
                                             ([2, 2, 3, 5], [2, 2, 5, 4])])
def test_matmul_two_activations(a_shape, b_shape):
    m = single_op_model("MatMul", [a_shape, b_shape])
    g = compare_with_ort(m, {"x0": rnd(*a_shape), "x1": rnd(*b_shape, seed=1)})
    assert "BATCH_MATMUL" in ops_of(g)


# ------------------------------------------------------------------ pools
@st.composite
def pool_case(draw):
    k = [draw(st.integers(1, 4)), draw(st.integers(1, 4))]
    s = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    pads = [draw(st.integers(0, k[i % 2] - 1)) for i in range(4)]
    h, w = draw(st.integers(k[0] + 1, 10)), draw(st.integers(k[1] + 1, 10))
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER",
                                     "VALID"]))
    if auto_pad.startswith("SAME"):
        s = [min(s[0], k[0]), min(s[1], k[1])]  # onnxruntime computes negative SAME pads otherwise
    ceil = draw(st.integers(0, 1)) if auto_pad == "NOTSET" else 0
    include = draw(st.integers(0, 1))
    return k, s, pads, h, w, auto_pad, ceil, include


def _pool_attrs(k, s, pads, auto_pad, ceil):
    attrs = dict(kernel_shape=k, strides=s, ceil_mode=ceil)
    if auto_pad == "NOTSET":
        attrs["pads"] = pads
    else:
        attrs["auto_pad"] = auto_pad
    return attrs


@SETTINGS
@given(pool_case())
def test_max_pool_matches_onnxruntime(case):
    k, s, pads, h, w, auto_pad, ceil, _ = case
    m = single_op_model("MaxPool", [[2, 3, h, w]], opset=12, **_pool_attrs(k, s, pads, auto_pad,
                                                                          ceil))
    compare_with_ort(m, {"x0": rnd(2, 3, h, w)})


@SETTINGS
@given(pool_case())
def test_average_pool_matches_onnxruntime(case):
    k, s, pads, h, w, auto_pad, ceil, include = case
    m = single_op_model("AveragePool", [[2, 3, h, w]], opset=12, count_include_pad=include,
                        **_pool_attrs(k, s, pads, auto_pad, ceil))
    compare_with_ort(m, {"x0": rnd(2, 3, h, w)})


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_pool_1d(op):
    m = single_op_model(op, [[2, 3, 9]], kernel_shape=[3], strides=[2], pads=[1, 1])
    compare_with_ort(m, {"x0": rnd(2, 3, 9)})


@pytest.mark.parametrize("op,ir", [("GlobalAveragePool", "MEAN"), ("GlobalMaxPool", "REDUCE_MAX")])
def test_global_pools(op, ir):
    m = single_op_model(op, [["N", 3, 5, 4]])
    g = compare_with_ort(m, {"x0": rnd(2, 3, 5, 4)})
    assert ops_of(g) == [ir] and g.nodes[0].attrs["keep_dims"] is True


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax", "ReduceSum"])
@pytest.mark.parametrize("axes,keep", [([2, 3], 1), ([2, 3], 0), ([1], 0), ([1], 1), ([-1], 0),
                                       (None, 0), ([0, 2], 1)])
def test_reductions(op, axes, keep):
    opset = 18
    consts = [] if axes is None else [np.asarray(axes, np.int64)]
    m = single_op_model(op, [[2, 3, 4, 5]], consts, opset=opset, keepdims=keep)
    compare_with_ort(m, {"x0": rnd(2, 3, 4, 5)})


def test_reduce_mean_attribute_axes():
    m = single_op_model("ReduceMean", [[2, 3, 4, 5]], opset=13, axes=[2, 3], keepdims=1)
    g = compare_with_ort(m, {"x0": rnd(2, 3, 4, 5)})
    assert g.nodes[0].attrs["axis"] == [1, 2]


@pytest.mark.parametrize("op,ir", [("Exp", "EXP"), ("Abs", "ABS"), ("Neg", "NEG"),
                                   ("Sqrt", "SQRT")])
def test_other_unary_ops(op, ir):
    m = single_op_model(op, [[2, 3, 4]])
    x = rnd(2, 3, 4)
    g = compare_with_ort(m, {"x0": np.abs(x) + 0.1 if op == "Sqrt" else x})
    assert ops_of(g) == [ir]


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 3), st.integers(0, 2), st.integers(0, 2),
       st.integers(0, 1), st.integers(2, 6))
def test_conv_transpose_matches_onnxruntime(k, s, p0, p1, op_h, size):
    out_pad = [min(op_h, s - 1), 0]
    pads = [min(p0, k - 1), min(p1, k - 1), min(p1, k - 1), min(p0, k - 1)]
    assume(s * (size - 1) + k - pads[0] - pads[2] > 0 and s * size + k - pads[1] - pads[3] > 0)
    m = single_op_model("ConvTranspose", [[1, 2, size, size + 1]], [rnd(2, 3, k, k), rnd(3)],
                        kernel_shape=[k, k], strides=[s, s], pads=pads, output_padding=out_pad)
    compare_with_ort(m, {"x0": rnd(1, 2, size, size + 1)})


@pytest.mark.parametrize("tb,alpha,beta,with_c", [(0, 1.0, 1.0, True), (1, 0.5, 2.0, True),
                                                  (1, 1.0, 1.0, False)])
def test_gemm_with_activation_b(tb, alpha, beta, with_c):
    b_shape = [6, 5] if tb else [5, 6]
    m = single_op_model("Gemm", [[4, 5], b_shape], [rnd(6, seed=3)] if with_c else [],
                        transB=tb, alpha=alpha, beta=beta)
    g = compare_with_ort(m, {"x0": rnd(4, 5), "x1": rnd(*b_shape, seed=1)})
    assert "BATCH_MATMUL" in ops_of(g)


@pytest.mark.parametrize("shape,repeats", [([1, 3, 4, 5], [1, 2, 3, 1]), ([2, 3, 4], [2, 1, 3]),
                                           ([2, 3, 4, 5], [1, 1, 1, 1])])
def test_tile_of_a_computed_tensor(shape, repeats):
    m = single_op_model("Tile", [shape], consts=[np.array(repeats, np.int64)])
    g = compare_with_ort(m, {"x0": rnd(*shape)})
    assert ("TILE" in ops_of(g)) == (set(repeats) != {1})  # all ones: no op

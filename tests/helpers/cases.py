"""The cases several test modules share: single ops and small graphs built with :class:`QB`.

``CASES[name](qb)`` adds a case to a fresh ``QB`` and returns its output tensor; the
reference, writer, XNNPACK, parity and TFLite-import tests all run them.
"""

from __future__ import annotations

import numpy as np

from tests.helpers.qbuild import QB


def _x(qb: QB, shape=(1, 9, 9, 8), lo=-1.3, hi=2.1, name="x"):
    return qb.input(name, list(shape), lo, hi)


def _prelu(qb):
    a = qb.fq(qb.g.const(np.linspace(0.05, 0.3, 8).astype(np.float32), name="alpha"), 0, 0.3)
    return qb.op("PRELU", [_x(qb), a], None, (-0.4, 2.2))


def _concat(qb):
    a, b = _x(qb), _x(qb, (1, 9, 9, 4), -0.5, 4, name="y")
    return qb.op("CONCATENATION", [a, b], {"axis": 3}, (-1.3, 4))


def _residual(qb):
    x = _x(qb, (1, 12, 12, 3), -1, 1)
    y = qb.conv(
        "CONV_2D", x, [8, 3, 3, 3], {"padding": "SAME", "fused_activation": "RELU6"}, (0, 6)
    )
    z = qb.conv(
        "DEPTHWISE_CONV_2D",
        y,
        [1, 3, 3, 8],
        {"padding": "SAME", "fused_activation": "RELU6"},
        (0, 6),
    )
    z = qb.conv("CONV_2D", z, [8, 1, 1, 8], {"padding": "VALID"}, (-4, 4))
    s = qb.op("ADD", [y, z], None, (-4, 8))
    p = qb.op("MEAN", [s], {"axis": [1, 2], "keep_dims": False}, (-2, 6))
    f = qb.conv("FULLY_CONNECTED", p, [10, 8], None, (-6, 6))
    return qb.op("SOFTMAX", [f], None, (0, 1))


def _unet(qb):
    x = _x(qb, (1, 8, 8, 4), -1, 1)
    d = qb.conv("CONV_2D", x, [8, 3, 3, 4], {"padding": "SAME", "stride": [2, 2]}, (-3, 3))
    d = qb.op("HARD_SWISH", [d], None, (-0.4, 3))
    u = qb.conv("TRANSPOSE_CONV", d, [4, 3, 3, 8], {"padding": "SAME", "stride": [2, 2]}, (-2, 2))
    r = qb.op("RESIZE_BILINEAR", [d], {"size": [8, 8]})
    c = qb.op("CONCATENATION", [u, r], {"axis": 3}, (-3, 3))
    c = qb.op("LEAKY_RELU", [c], {"alpha": 0.2}, (-0.6, 3))
    m = qb.op("MAX_POOL_2D", [c], {"filter": [2, 2], "stride": [2, 2]})
    a = qb.op("AVERAGE_POOL_2D", [m], {"filter": [2, 2], "stride": [2, 2], "padding": "SAME"})
    r = qb.op("RESHAPE", [a], {"new_shape": [1, -1]})
    return qb.op("LOGISTIC", [r], None, (0, 1))


def _add_const(qb):
    c = qb.fq(qb.g.const(np.linspace(-1, 1, 8).astype(np.float32), name="c"), -1, 1)
    return qb.op("ADD", [_x(qb), c], None, (-2, 3))


def _mul_scalar(qb):
    c = qb.fq(qb.g.const(np.float32(0.1666), name="c"), 0, 0.2)
    return qb.op("MUL", [_x(qb), c], None, (-0.3, 0.4))


def _rhs(qb: QB, shape, m: float = 1.7, name: str = "y"):
    """A right-hand matmul operand on a symmetric (zero point 0) grid, as the table puts it."""
    return qb.fq(qb.g.add_input(name, list(shape)), -m, m, narrow=True)


def _attention(qb):
    """Single-head attention core: softmax(q·kᵀ)·v, k and v symmetric."""
    q = _x(qb, (1, 2, 6, 8), -1.5, 1.5, name="q")
    s = qb.op("BATCH_MATMUL", [q, _rhs(qb, (1, 2, 6, 8), name="k")], {"adj_y": True}, (-6, 5))
    p = qb.op("SOFTMAX", [s], None, (0, 1))
    return qb.op("BATCH_MATMUL", [p, _rhs(qb, (1, 2, 6, 8), 2.0, name="v")], None, (-2, 2))


def _layer_norm(qb):
    """LayerNorm over the channels as qatir's frontends emit it (norm_chain)."""
    x = _x(qb, (1, 6, 5, 16), -3, 4)
    mean = qb.op("MEAN", [x], {"axis": [3], "keep_dims": True}, (-0.8, 1.5))
    sq = qb.op("SQUARED_DIFFERENCE", [x, mean], None, (0, 9))
    var = qb.op("MEAN", [sq], {"axis": [3], "keep_dims": True}, (0, 3))
    # ε on a grid near the variance's keeps the ADD inside XNNPACK's scale ratios (the
    # frontends' own ε grid is far finer: that ADD runs on the builtin kernel, see
    # tests/test_layernorm.py)
    eps = qb.fq(qb.g.const(np.full((1, 1, 1, 1), 1e-5, np.float32), name="eps"), -1, 1,
                narrow=True, kind="weight")
    inv = qb.op("RSQRT", [qb.op("ADD", [var, eps], None, (0, 3))], None, (0, 4))
    centred = qb.op("SUB", [x, mean], None, (-4, 4))
    gamma = qb.fq(qb.g.const(np.linspace(0.5, 1.5, 16).astype(np.float32).reshape(1, 1, 1, 16),
                             name="gamma"), -1.5, 1.5, narrow=True, kind="weight")
    y = qb.op("MUL", [qb.op("MUL", [centred, inv], None, (-3, 3)), gamma], None, (-4, 4))
    return y


CASES = {
    "conv_same_s2": lambda qb: qb.conv(
        "CONV_2D", _x(qb), [6, 3, 3, 8], {"padding": "SAME", "stride": [2, 2]}, (-2, 3)
    ),
    "conv_relu6_nobias": lambda qb: qb.conv(
        "CONV_2D", _x(qb), [6, 3, 3, 8], {"fused_activation": "RELU6"}, (0, 6), bias=False
    ),
    "conv_dilated": lambda qb: qb.conv(
        "CONV_2D", _x(qb), [4, 3, 3, 8], {"padding": "SAME", "dilation": [2, 2]}, (-2, 3)
    ),
    "dwconv": lambda qb: qb.conv(
        "DEPTHWISE_CONV_2D", _x(qb), [1, 3, 3, 8], {"padding": "SAME"}, (-2, 3)
    ),
    "conv_grouped4_s2": lambda qb: qb.conv(  # grouped CONV_2D (v6): 8 channels, 4 groups
        "CONV_2D", _x(qb), [12, 3, 3, 2], {"padding": "SAME", "stride": [2, 2]}, (-2, 3)
    ),
    "conv_grouped2_1x1_relu": lambda qb: qb.conv(
        "CONV_2D", _x(qb), [4, 1, 1, 4], {"fused_activation": "RELU"}, (0, 3)
    ),
    "dwconv_mult2_relu": lambda qb: qb.conv(
        "DEPTHWISE_CONV_2D",
        _x(qb),
        [1, 3, 3, 16],
        {"padding": "VALID", "depth_multiplier": 2, "fused_activation": "RELU"},
        (0, 3),
    ),
    "fc": lambda qb: qb.conv("FULLY_CONNECTED", _x(qb, (2, 32), -1, 1), [10, 32], None, (-3, 3)),
    "fc_per_tensor": lambda qb: qb.conv(
        "FULLY_CONNECTED", _x(qb, (2, 32), -1, 1), [10, 32], None, (-3, 3), per_channel=False
    ),
    "fc_keepdims": lambda qb: qb.conv(
        "FULLY_CONNECTED", _x(qb, (1, 3, 16), -1, 1), [5, 16], {"keep_num_dims": True}, (-3, 3)
    ),
    "tconv_same": lambda qb: qb.conv(
        "TRANSPOSE_CONV",
        _x(qb, (1, 5, 5, 8)),
        [4, 3, 3, 8],
        {"padding": "SAME", "stride": [2, 2]},
        (-3, 3),
    ),
    "tconv_valid": lambda qb: qb.conv(
        "TRANSPOSE_CONV",
        _x(qb, (1, 5, 5, 8)),
        [4, 3, 3, 8],
        {"padding": "VALID", "stride": [2, 2]},
        (-3, 3),
    ),
    "add": lambda qb: qb.op("ADD", [_x(qb), _x(qb, lo=-0.5, hi=4, name="y")], None, (-2, 5)),
    "add_broadcast_relu": lambda qb: qb.op(
        "ADD", [_x(qb), _x(qb, (1, 1, 1, 8), -0.5, 4, "y")], {"fused_activation": "RELU"}, (0, 5)
    ),
    "sub": lambda qb: qb.op("SUB", [_x(qb), _x(qb, lo=-0.5, hi=4, name="y")], None, (-5, 3)),
    "mul": lambda qb: qb.op("MUL", [_x(qb), _x(qb, lo=-0.5, hi=4, name="y")], None, (-4, 6)),
    "mul_broadcast": lambda qb: qb.op(
        "MUL", [_x(qb), _x(qb, (1, 1, 1, 8), -0.5, 4, "y")], None, (-4, 6)
    ),
    "avg_pool_same": lambda qb: qb.op(
        "AVERAGE_POOL_2D", [_x(qb)], {"filter": [3, 3], "stride": [2, 2], "padding": "SAME"}
    ),
    "max_pool_relu": lambda qb: qb.op(
        "MAX_POOL_2D", [_x(qb)], {"filter": [2, 2], "stride": [2, 2], "fused_activation": "RELU"}
    ),
    "mean_hw": lambda qb: qb.op("MEAN", [_x(qb)], {"axis": [1, 2], "keep_dims": True}, (-1, 1.5)),
    "mean_c": lambda qb: qb.op("MEAN", [_x(qb)], {"axis": [3], "keep_dims": False}, (-1, 1.5)),
    "softmax": lambda qb: qb.op("SOFTMAX", [_x(qb, (3, 10), -6, 5)], None, (0, 1)),
    "softmax_beta": lambda qb: qb.op("SOFTMAX", [_x(qb, (2, 7), -2, 2)], {"beta": 2.5}, (0, 1)),
    "logistic": lambda qb: qb.op("LOGISTIC", [_x(qb)], None, (0, 1)),
    "tanh": lambda qb: qb.op("TANH", [_x(qb)], None, (-1, 1)),
    "hard_swish": lambda qb: qb.op("HARD_SWISH", [_x(qb)], None, (-0.4, 2.2)),
    "gelu": lambda qb: qb.op("GELU", [_x(qb, lo=-4, hi=3)], None, (-0.2, 3)),
    "gelu_tanh": lambda qb: qb.op("GELU", [_x(qb, lo=-3, hi=5)], {"approximate": True}, (-0.2, 5)),
    "relu": lambda qb: qb.op("RELU", [_x(qb)], None, (0, 2.2)),
    "relu6": lambda qb: qb.op("RELU6", [_x(qb, lo=-4, hi=8)], None, (0, 6)),
    "leaky_relu": lambda qb: qb.op("LEAKY_RELU", [_x(qb)], {"alpha": 0.1}, (-0.2, 2.2)),
    "prelu": _prelu,
    "concat_requant": _concat,
    "reshape": lambda qb: qb.op("RESHAPE", [_x(qb)], {"new_shape": [1, 81, 8]}),
    "squeeze": lambda qb: qb.op("SQUEEZE", [_x(qb, (1, 1, 5, 8))], {"squeeze_dims": [1]}),
    "transpose": lambda qb: qb.op("TRANSPOSE", [_x(qb)], {"perm": [0, 2, 1, 3]}),
    "tile": lambda qb: qb.op("TILE", [_x(qb, (1, 3, 4, 2))], {"multiples": [1, 2, 3, 2]}),
    "pad": lambda qb: qb.op("PAD", [_x(qb)], {"paddings": [[0, 0], [1, 2], [2, 1], [0, 0]]}),
    "padv2": lambda qb: qb.op(
        "PAD", [_x(qb)], {"paddings": [[0, 0], [1, 2], [2, 1], [0, 0]], "constant_value": 1.0}
    ),
    "pad_min_before_maxpool": lambda qb: qb.op(  # -inf pad of a ReLU output: written as PAD
        "MAX_POOL_2D",
        [qb.op("PAD", [_x(qb, lo=0.0)], {"paddings": [[0, 0], [1, 1], [1, 1], [0, 0]],
                                          "constant_value": float(np.finfo(np.float32).min)})],
        {"filter": [3, 3], "stride": [2, 2], "padding": "VALID"},
    ),
    "strided_slice": lambda qb: qb.op(
        "STRIDED_SLICE",
        [_x(qb)],
        {"begin": [0, 1, 0, 0], "end": [1, 8, 9, 8], "strides": [1, 2, 1, 1]},
    ),
    "maximum": lambda qb: qb.op("MAXIMUM", [_x(qb), _x(qb, name="y")], None),
    "depth_to_space": lambda qb: qb.op("DEPTH_TO_SPACE", [_x(qb)], {"block_size": 2}),
    "space_to_depth": lambda qb: qb.op("SPACE_TO_DEPTH", [_x(qb, (1, 8, 8, 2))], {"block_size": 2}),
    "resize_nearest": lambda qb: qb.op("RESIZE_NEAREST_NEIGHBOR", [_x(qb)], {"size": [18, 18]}),
    "resize_bilinear": lambda qb: qb.op("RESIZE_BILINEAR", [_x(qb)], {"size": [18, 18]}),
    "resize_bilinear_half": lambda qb: qb.op(
        "RESIZE_BILINEAR", [_x(qb)], {"size": [13, 16], "half_pixel_centers": True}
    ),
    "resize_bilinear_align": lambda qb: qb.op(
        "RESIZE_BILINEAR", [_x(qb)], {"size": [17, 17], "align_corners": True}
    ),
    "sum_hw": lambda qb: qb.op("SUM", [_x(qb)], {"axis": [1, 2], "keep_dims": True}, (-20, 40)),
    "sum_c": lambda qb: qb.op("SUM", [_x(qb)], {"axis": [3], "keep_dims": False}, (-10, 15)),
    "reduce_max": lambda qb: qb.op("REDUCE_MAX", [_x(qb)], {"axis": [1, 2], "keep_dims": False}),
    "gather": lambda qb: qb.op(
        # 6 runs of one index: more than xnn_forms turns into slices, so it stays a GATHER
        "GATHER", [_x(qb), qb.g.const(np.array([6, 1, 4, 0, 7, 2], np.int32))], {"axis": 3}
    ),
    "minimum": lambda qb: qb.op("MINIMUM", [_x(qb), _x(qb, name="y")], None),
    "relu_n1_to_1": lambda qb: qb.op("RELU_N1_TO_1", [_x(qb)], None, (-1, 1)),
    # an input grid 256x the output's or more: an ADD(x, 0) would leave XNNPACK's
    # ratio limits, so the lowering keeps these as the builtin clamps
    "relu_kept": lambda qb: qb.op("RELU", [_x(qb, lo=-300, hi=300)], None, (0, 1)),
    "relu6_kept": lambda qb: qb.op("RELU6", [_x(qb, lo=-2000, hi=2000)], None, (0, 8)),
    "relu_n1_to_1_kept": lambda qb: qb.op("RELU_N1_TO_1", [_x(qb, lo=-300, hi=300)], None,
                                          (-1, 1)),
    "requantize": lambda qb: qb.fq(qb.op("RESHAPE", [_x(qb)], {"new_shape": [1, 81, 8]}), -2, 3),
    "squared_difference": lambda qb: qb.op(
        "SQUARED_DIFFERENCE", [_x(qb), _x(qb, lo=-0.5, hi=4, name="y")], None, (0, 12)
    ),
    "squared_difference_broadcast": lambda qb: qb.op(
        "SQUARED_DIFFERENCE", [_x(qb), _x(qb, (1, 9, 9, 1), -0.3, 0.9, "y")], None, (0, 5)
    ),
    "rsqrt": lambda qb: qb.op("RSQRT", [_x(qb, lo=0, hi=3)], None, (0, 9)),
    "rsqrt_small": lambda qb: qb.op("RSQRT", [_x(qb, lo=0, hi=0.05)], None, (0, 40)),
    "mean_last_keep": lambda qb: qb.op(
        "MEAN", [_x(qb, (1, 10, 16))], {"axis": [2], "keep_dims": True}, (-1, 1.5)
    ),
    "graph_layer_norm": _layer_norm,
    "add_const_operand": _add_const,
    "mul_const_scalar": _mul_scalar,
    "batch_matmul": lambda qb: qb.op(
        "BATCH_MATMUL", [_x(qb, (1, 3, 5, 8)), _rhs(qb, (1, 3, 8, 6))], None, (-5, 6)
    ),
    "batch_matmul_adj_bcast": lambda qb: qb.op(
        "BATCH_MATMUL", [_x(qb, (2, 3, 8, 5)), _rhs(qb, (3, 6, 8))],
        {"adj_x": True, "adj_y": True}, (-5, 6)
    ),
    "batch_matmul_asym_rhs": lambda qb: qb.op(  # zero point != 0: LiteRT's reference kernel
        "BATCH_MATMUL", [_x(qb, (1, 4, 8)), _x(qb, (1, 8, 6), -0.5, 2.5, name="y")], None, (-4, 9)
    ),
    "concat_const": lambda qb: qb.op(  # ViT's class token: the constant goes on the output grid
        "CONCATENATION", [_x(qb, (1, 5, 8)), qb.weight(np.linspace(-2, 2, 8).reshape(1, 1, 8), None,
                                                        name="cls")], {"axis": 1}, (-1.3, 2.1)
    ),
    "graph_attention": _attention,
    "graph_residual": _residual,
    "graph_unet": _unet,
}


# int8 ops the XNNPACK delegate in ai_edge_litert takes (measured; AVERAGE_POOL_2D, SOFTMAX,
# HARD_SWISH, RELU/RELU6/RELU_N1_TO_1, PRELU, PADV2, STRIDED_SLICE, MAXIMUM/MINIMUM, SQUEEZE,
# GATHER and RESIZE_NEAREST_NEIGHBOR stay with LiteRT's builtin int8 kernels).
XNNPACK_INT8 = {
    "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "ADD", "SUB", "MUL",
    "MAX_POOL_2D", "MEAN", "RESHAPE", "TRANSPOSE", "CONCATENATION", "PAD", "QUANTIZE",
    "DEQUANTIZE", "LEAKY_RELU", "LOGISTIC", "TANH", "RESIZE_BILINEAR", "DEPTH_TO_SPACE",
    "SPACE_TO_DEPTH", "SUM", "REDUCE_MAX",
}


# Random-parameter cases: qb, rng -> output tensor (reference vs LiteRT over many seeds).
def rr(rng, pos=False):
    """A random activation range (sometimes excluding 0 on the negative side)."""
    a = float(rng.uniform(0.05, 8))
    lo = 0.0 if pos else -float(rng.uniform(0, a * 1.5))
    return (lo, a)


RANDOM_CASES = {
    "conv": lambda qb, r: qb.conv(
        "CONV_2D",
        qb.input("x", [1, 7, 7, 5], *rr(r)),
        [4, 3, 3, 5],
        {
            "padding": "SAME",
            "stride": [int(r.integers(1, 3))] * 2,
            "fused_activation": str(r.choice(["NONE", "RELU", "RELU6"])),
        },
        rr(r),
        wscale=float(r.uniform(0.01, 1)),
    ),
    "grouped_conv": lambda qb, r: qb.conv(
        "CONV_2D",
        qb.input("x", [1, 7, 7, 6], *rr(r)),
        [6, 3, 3, 2],
        {"padding": str(r.choice(["SAME", "VALID"])), "stride": [int(r.integers(1, 3))] * 2},
        rr(r),
        wscale=float(r.uniform(0.01, 1)),
    ),
    "dw": lambda qb, r: qb.conv(
        "DEPTHWISE_CONV_2D",
        qb.input("x", [1, 7, 7, 5], *rr(r)),
        [1, 3, 3, 5],
        {"padding": "SAME"},
        rr(r),
        wscale=float(r.uniform(0.01, 1)),
    ),
    "fc": lambda qb, r: qb.conv(
        "FULLY_CONNECTED",
        qb.input("x", [3, 20], *rr(r)),
        [7, 20],
        {"fused_activation": str(r.choice(["NONE", "RELU"]))},
        rr(r),
        wscale=float(r.uniform(0.01, 1)),
    ),
    "fc_per_tensor": lambda qb, r: qb.conv(
        "FULLY_CONNECTED",
        qb.input("x", [3, 20], *rr(r)),
        [7, 20],
        {"fused_activation": str(r.choice(["NONE", "RELU"]))},
        rr(r),
        wscale=float(r.uniform(0.01, 1)),
        per_channel=False,
    ),
    "tconv": lambda qb, r: qb.conv(
        "TRANSPOSE_CONV",
        qb.input("x", [1, 4, 4, 5], *rr(r)),
        [3, 3, 3, 5],
        {"padding": "SAME", "stride": [2, 2]},
        rr(r),
        wscale=float(r.uniform(0.01, 1)),
    ),
    "add": lambda qb, r: qb.op(
        "ADD",
        [qb.input("x", [1, 5, 5, 4], *rr(r)), qb.input("y", [1, 5, 5, 4], *rr(r))],
        None,
        rr(r),
    ),
    "sub": lambda qb, r: qb.op(
        "SUB",
        [qb.input("x", [1, 5, 5, 4], *rr(r)), qb.input("y", [1, 5, 5, 4], *rr(r))],
        None,
        rr(r),
    ),
    "mul": lambda qb, r: qb.op(
        "MUL",
        [qb.input("x", [1, 5, 5, 4], *rr(r)), qb.input("y", [1, 5, 5, 4], *rr(r))],
        None,
        rr(r),
    ),
    "avg": lambda qb, r: qb.op(
        "AVERAGE_POOL_2D",
        [qb.input("x", [1, 7, 7, 4], *rr(r))],
        {"filter": [3, 3], "stride": [2, 2], "padding": "SAME"},
    ),
    "mean": lambda qb, r: qb.op(
        "MEAN", [qb.input("x", [1, 7, 7, 4], *rr(r))], {"axis": [1, 2], "keep_dims": True}, rr(r)
    ),
    "mean_last": lambda qb, r: qb.op(
        "MEAN", [qb.input("x", [1, 9, 24], *rr(r))], {"axis": [2], "keep_dims": True}, rr(r)
    ),
    "sqdiff": lambda qb, r: qb.op(
        "SQUARED_DIFFERENCE",
        [qb.input("x", [1, 5, 5, 4], *rr(r)), qb.input("y", [1, 5, 5, 1], *rr(r))],
        None,
        rr(r, pos=True),
    ),
    "rsqrt": lambda qb, r: qb.op("RSQRT", [qb.input("x", [4, 64], *rr(r, pos=True))], None,
                                 rr(r, pos=True)),
    "softmax": lambda qb, r: qb.op(
        "SOFTMAX", [qb.input("x", [4, 10], *rr(r))], {"beta": float(r.uniform(0.5, 2))}, (0, 1)
    ),
    "logistic": lambda qb, r: qb.op("LOGISTIC", [qb.input("x", [4, 64], *rr(r))], None, (0, 1)),
    "tanh": lambda qb, r: qb.op("TANH", [qb.input("x", [4, 64], *rr(r))], None, (-1, 1)),
    "hswish": lambda qb, r: qb.op("HARD_SWISH", [qb.input("x", [4, 64], *rr(r))], None, rr(r)),
    "gelu": lambda qb, r: qb.op(
        "GELU", [qb.input("x", [4, 64], *rr(r))], {"approximate": bool(r.integers(0, 2))}, rr(r)
    ),
    "bmm": lambda qb, r: _random_bmm(qb, r),
    "leaky": lambda qb, r: qb.op(
        "LEAKY_RELU",
        [qb.input("x", [4, 64], *rr(r))],
        {"alpha": float(r.uniform(0.01, 0.5))},
        rr(r),
    ),
    "relu": lambda qb, r: qb.op("RELU", [qb.input("x", [4, 64], *rr(r))], None, rr(r, True)),
    "requant": lambda qb, r: qb.fq(
        qb.op("RESHAPE", [qb.input("x", [4, 64], *rr(r))], {"new_shape": [256]}), *rr(r)
    ),
    "resize": lambda qb, r: qb.op(
        "RESIZE_BILINEAR",
        [qb.input("x", [1, 5, 6, 3], *rr(r))],
        {
            "size": [int(r.integers(3, 13)), int(r.integers(3, 13))],
            "half_pixel_centers": bool(r.integers(0, 2)),
        },
    ),
}


def _random_bmm(qb, r):
    """BATCH_MATMUL with random adjoints, broadcast batch dims, sizes and ranges; the
    right-hand side symmetric (XNNPACK's path) three times in four."""
    adj_x, adj_y = bool(r.integers(0, 2)), bool(r.integers(0, 2))
    m, k, n = (int(v) for v in r.integers(1, 40, size=3))
    lhs = [2, 3, k, m] if adj_x else [2, 3, m, k]
    rhs = ([1] if r.integers(0, 2) else []) + ([3, n, k] if adj_y else [3, k, n])
    a = qb.input("x", lhs, *rr(r))
    if r.integers(0, 4):
        b = _rhs(qb, rhs, float(r.uniform(0.1, 5)))
    else:
        b = qb.input("y", rhs, *rr(r))
    return qb.op("BATCH_MATMUL", [a, b], {"adj_x": adj_x, "adj_y": adj_y}, rr(r))

"""TF execution of the IR: every op against an independent numpy computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

import qatir
from qatir.errors import QatirError
from qatir.ir import Graph, QuantParams
from qatir.numerics import fake_quant as np_fake_quant
from qatir.numerics import round_half_away, same_padding
from qatir.ops.registry import all_ops, has_op, register_op
from qatir.tf import executor
from qatir.tf.kernels import has_kernel, tf_kernel


def one_op(op, inputs, attrs=None, const=()):
    """Graph with one node; inputs listed in ``const`` become constants. Returns (graph, feeds)."""
    g = Graph("t")
    ts, feeds = [], {}
    for i, arr in enumerate(inputs):
        if arr is None:
            ts.append(None)
        elif i in const:
            ts.append(g.const(arr, f"c{i}"))
        else:
            arr = np.asarray(arr)
            ts.append(g.add_input(f"x{i}", arr.shape, arr.dtype))
            feeds[f"x{i}"] = arr
    g.outputs = list(g.add_node(op, ts, attrs).outputs)
    g.verify()
    return g, feeds


def run1(op, inputs, attrs=None, const=()):
    g, feeds = one_op(op, inputs, attrs, const)
    return qatir.run(g, feeds)[g.outputs[0].name]


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------- numpy references
def np_window(x, kh, kw, stride, dilation, padding, fill=0.0):
    """Yield (a, b, patch) windows of NHWC x; patch[n, i, j, c] = x[n, i*s + a*d, j*s + b*d, c]."""
    (sh, sw), (dh, dw) = stride, dilation
    n, h, w, c = x.shape
    if padding == "SAME":
        oh, pt, pb = same_padding(h, kh, sh, dh)
        ow, pl, pr = same_padding(w, kw, sw, dw)
        x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=fill)
    else:
        oh, ow = (h - (kh - 1) * dh - 1) // sh + 1, (w - (kw - 1) * dw - 1) // sw + 1
    for a in range(kh):
        for b in range(kw):
            yield a, b, x[:, a * dh:a * dh + (oh - 1) * sh + 1:sh, b * dw:b * dw + (ow - 1) * sw + 1:sw]


def np_conv(x, w, b, stride=(1, 1), dilation=(1, 1), padding="VALID"):
    out = sum(np.einsum("nhwc,oc->nhwo", p, w[:, a, bb, :])
              for a, bb, p in np_window(x, w.shape[1], w.shape[2], stride, dilation, padding))
    return out + b


def np_dwconv(x, w, b, m, stride=(1, 1), dilation=(1, 1), padding="VALID"):
    out = sum(np.repeat(p, m, axis=-1) * w[0, a, bb, :]
              for a, bb, p in np_window(x, w.shape[1], w.shape[2], stride, dilation, padding))
    return out + b


def np_tconv(x, w, b, s, padding):
    n, h, wd, _ = x.shape
    o, kh, kw, _ = w.shape
    full = np.zeros((n, (h - 1) * s + kh, (wd - 1) * s + kw, o), np.float64)
    for i in range(h):
        for j in range(wd):
            full[:, i * s:i * s + kh, j * s:j * s + kw, :] += np.einsum("nc,ohwc->nhwo", x[:, i, j], w)
    if padding == "SAME":
        ph = max((h - 1) * s + kh - h * s, 0) // 2
        pw = max((wd - 1) * s + kw - wd * s, 0) // 2
        full = full[:, ph:ph + h * s, pw:pw + wd * s]
    return full + b


def np_resize(x, size, align, half, nearest):
    def coords(n_in, n_out):
        scale = (n_in - 1) / (n_out - 1) if align and n_out > 1 else n_in / n_out
        o = np.arange(n_out, dtype=np.float64)
        if nearest:
            f = (o + 0.5) * scale if half else o * scale
            idx = round_half_away(f) if align else np.floor(f)  # TfLiteRound, as TF
            return np.clip(idx, 0, n_in - 1).astype(int)
        f = (o + 0.5) * scale - 0.5 if half else o * scale
        lo = np.floor(f)
        return (np.clip(lo, 0, n_in - 1).astype(int), np.clip(lo + 1, 0, n_in - 1).astype(int),
                f - lo)

    ry, rx = coords(x.shape[1], size[0]), coords(x.shape[2], size[1])
    if nearest:
        return x[:, ry][:, :, rx]
    y0, y1, fy = ry
    x0, x1, fx = rx
    fy, fx = fy[None, :, None, None], fx[None, None, :, None]
    top = x[:, y0][:, :, x0] * (1 - fx) + x[:, y0][:, :, x1] * fx
    bot = x[:, y1][:, :, x0] * (1 - fx) + x[:, y1][:, :, x1] * fx
    return top * (1 - fy) + bot * fy


# ------------------------------------------------------------------- conv family
@pytest.mark.parametrize("padding,stride,dilation", [("SAME", (1, 1), (1, 1)), ("VALID", (2, 1), (1, 1)),
                                                     ("SAME", (2, 2), (1, 1)), ("SAME", (1, 1), (2, 2))])
def test_conv2d(rng, padding, stride, dilation):
    x, w, b = rand(rng, 2, 9, 8, 3), rand(rng, 5, 3, 2, 3), rand(rng, 5)
    y = run1("CONV_2D", [x, w, b], {"padding": padding, "stride": list(stride),
                                    "dilation": list(dilation)}, const=(1, 2))
    np.testing.assert_allclose(y, np_conv(x, w, b, stride, dilation, padding), atol=1e-4)


def test_conv2d_fused_relu6_no_bias(rng):
    x, w = rand(rng, 1, 5, 5, 2), 3 * rand(rng, 4, 3, 3, 2)
    y = run1("CONV_2D", [x, w], {"padding": "SAME", "fused_activation": "RELU6"}, const=(1,))
    np.testing.assert_allclose(y, np.clip(np_conv(x, w, 0, padding="SAME"), 0, 6), atol=1e-4)


@pytest.mark.parametrize("m,stride,padding", [(1, (1, 1), "SAME"), (2, (2, 2), "VALID"),
                                              (1, (2, 2), "SAME")])
def test_depthwise(rng, m, stride, padding):
    x, w, b = rand(rng, 2, 7, 6, 3), rand(rng, 1, 3, 3, 3 * m), rand(rng, 3 * m)
    y = run1("DEPTHWISE_CONV_2D", [x, w, b], {"depth_multiplier": m, "stride": list(stride),
                                              "padding": padding}, const=(1, 2))
    np.testing.assert_allclose(y, np_dwconv(x, w, b, m, stride, padding=padding), atol=1e-4)


def test_fully_connected(rng):
    x, w, b = rand(rng, 3, 2, 4), rand(rng, 5, 4), rand(rng, 5)
    flat = run1("FULLY_CONNECTED", [x, w, b], {}, const=(1, 2))
    np.testing.assert_allclose(flat, x.reshape(-1, 4) @ w.T + b, atol=1e-5)
    keep = run1("FULLY_CONNECTED", [x, w, b], {"keep_num_dims": True, "fused_activation": "RELU"},
                const=(1, 2))
    np.testing.assert_allclose(keep, np.maximum(x @ w.T + b, 0), atol=1e-5)


@pytest.mark.parametrize("padding,s", [("SAME", 2), ("VALID", 2), ("VALID", 1)])
def test_transpose_conv(rng, padding, s):
    x, w, b = rand(rng, 2, 3, 4, 3), rand(rng, 5, 3, 3, 3), rand(rng, 5)
    y = run1("TRANSPOSE_CONV", [x, w, b], {"padding": padding, "stride": [s, s]}, const=(1, 2))
    np.testing.assert_allclose(y, np_tconv(x, w, b, s, padding), atol=1e-4)


# ------------------------------------------------------------------ elementwise
@pytest.mark.parametrize("op,fn", [("ADD", np.add), ("SUB", np.subtract), ("MUL", np.multiply),
                                   ("DIV", np.divide), ("MAXIMUM", np.maximum),
                                   ("MINIMUM", np.minimum),
                                   ("SQUARED_DIFFERENCE", lambda a, b: (a - b) ** 2)])
def test_binary(rng, op, fn):
    a, b = rand(rng, 2, 3, 4), rand(rng, 4) + 3.0
    np.testing.assert_allclose(run1(op, [a, b]), fn(a, b), rtol=1e-6)


def test_pow(rng):
    a, b = np.abs(rand(rng, 2, 3, 4)) + 0.1, rand(rng, 4)
    np.testing.assert_allclose(run1("POW", [a, b]), np.power(a, b), rtol=1e-5)


def test_local_response_normalization(rng):
    """Channels [c - r, c + r] (TF's and LiteRT's default-path definition)."""
    x, r, bias, alpha, beta = 2 * rand(rng, 1, 3, 3, 7), 2, 1.5, 0.3, 0.75
    sq = np.pad(x * x, [(0, 0)] * 3 + [(r, r)])
    acc = sum(sq[..., k:k + 7] for k in range(2 * r + 1))
    y = run1("LOCAL_RESPONSE_NORMALIZATION", [x],
             {"radius": r, "bias": bias, "alpha": alpha, "beta": beta})
    np.testing.assert_allclose(y, x / (bias + alpha * acc) ** beta, rtol=1e-5)


def test_binary_fused_activation(rng):
    a, b = 4 * rand(rng, 2, 5), 4 * rand(rng, 2, 5)
    for act, ref in [("RELU", np.maximum(a + b, 0)), ("RELU6", np.clip(a + b, 0, 6)),
                     ("RELU_N1_TO_1", np.clip(a + b, -1, 1)), ("TANH", np.tanh(a + b))]:
        np.testing.assert_allclose(run1("ADD", [a, b], {"fused_activation": act}), ref, atol=1e-6)


UNARY = {
    "RELU": lambda x: np.maximum(x, 0), "RELU6": lambda x: np.clip(x, 0, 6),
    "RELU_N1_TO_1": lambda x: np.clip(x, -1, 1), "RELU_0_TO_1": lambda x: np.clip(x, 0, 1),
    "LOGISTIC": lambda x: 1 / (1 + np.exp(-x)), "TANH": np.tanh,
    "HARD_SWISH": lambda x: x * np.clip(x + 3, 0, 6) / 6, "IDENTITY": lambda x: x,
    "EXP": np.exp, "ABS": np.abs, "NEG": np.negative,
    "SQRT": lambda x: np.sqrt(np.abs(x)), "RSQRT": lambda x: 1 / np.sqrt(np.abs(x)),
    "GELU": lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2))),
}


@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary(rng, op):
    x = 4 * rand(rng, 3, 7)
    if op in ("SQRT", "RSQRT"):
        x = np.abs(x) + 0.1
    np.testing.assert_allclose(run1(op, [x]), UNARY[op](x), rtol=1e-5, atol=1e-6)


def test_leaky_prelu_softmax_clip_hardsigmoid(rng):
    x = 3 * rand(rng, 2, 4, 3)
    np.testing.assert_allclose(run1("LEAKY_RELU", [x], {"alpha": 0.1}), np.where(x >= 0, x, 0.1 * x),
                               rtol=1e-6)
    alpha = rng.random(3).astype(np.float32)
    np.testing.assert_allclose(run1("PRELU", [x, alpha], const=(1,)),
                               np.where(x >= 0, x, alpha * x), rtol=1e-6)
    e = np.exp(0.5 * x - (0.5 * x).max(-1, keepdims=True))
    np.testing.assert_allclose(run1("SOFTMAX", [x], {"beta": 0.5}), e / e.sum(-1, keepdims=True),
                               rtol=1e-5)
    np.testing.assert_allclose(run1("CLIP", [x], {"min": -1.0, "max": None}), np.maximum(x, -1),
                               rtol=1e-6)
    np.testing.assert_allclose(run1("HARD_SIGMOID", [x], {"alpha": 0.2, "beta": 0.5}),
                               np.clip(0.2 * x + 0.5, 0, 1), rtol=1e-6)


# ---------------------------------------------------------------------- pooling
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_pools(rng, padding):
    x = rand(rng, 2, 7, 6, 3)
    attrs = {"filter": [3, 3], "stride": [2, 2], "padding": padding}
    mx = np.max([p for _, _, p in np_window(x, 3, 3, (2, 2), (1, 1), padding, fill=-np.inf)], 0)
    av = np.nanmean([p for _, _, p in np_window(x, 3, 3, (2, 2), (1, 1), padding, fill=np.nan)], 0)
    np.testing.assert_allclose(run1("MAX_POOL_2D", [x], attrs), mx, rtol=1e-6)
    np.testing.assert_allclose(run1("AVERAGE_POOL_2D", [x], attrs), av, rtol=1e-5)


@pytest.mark.parametrize("op,fn", [("MEAN", np.mean), ("SUM", np.sum), ("REDUCE_MAX", np.max)])
def test_reductions(rng, op, fn):
    x = rand(rng, 2, 4, 5, 3)
    np.testing.assert_allclose(run1(op, [x]), fn(x, axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(run1(op, [x], {"axis": [-1], "keep_dims": True}),
                               fn(x, axis=-1, keepdims=True), rtol=1e-5)


# ------------------------------------------------------------------------ shape
def test_shape_ops(rng):
    x = rand(rng, 2, 4, 6, 3)
    np.testing.assert_array_equal(run1("RESHAPE", [x], {"new_shape": [2, -1]}), x.reshape(2, -1))
    np.testing.assert_array_equal(run1("TRANSPOSE", [x], {"perm": [0, 3, 1, 2]}),
                                  x.transpose(0, 3, 1, 2))
    y = rand(rng, 2, 1, 6, 1)
    np.testing.assert_array_equal(run1("SQUEEZE", [y], {"squeeze_dims": [1]}), y[:, 0])
    np.testing.assert_array_equal(run1("SQUEEZE", [y], {}), y[:, 0, :, 0])
    z = rand(rng, 2, 4, 2, 3)
    np.testing.assert_array_equal(run1("CONCATENATION", [x, z], {"axis": 2}),
                                  np.concatenate([x, z], 2))
    pads = [[0, 0], [1, 2], [0, 1], [0, 0]]
    np.testing.assert_array_equal(run1("PAD", [x], {"paddings": pads, "constant_value": 1.5}),
                                  np.pad(x, pads, constant_values=1.5))
    np.testing.assert_array_equal(run1("DEPTH_TO_SPACE", [rand(rng, 1, 2, 2, 8)], {"block_size": 2}).shape,
                                  (1, 4, 4, 2))
    s2d = run1("SPACE_TO_DEPTH", [x], {"block_size": 2})
    ref = x.reshape(2, 2, 2, 3, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 2, 3, 12)
    np.testing.assert_array_equal(s2d, ref)
    d2s = run1("DEPTH_TO_SPACE", [ref], {"block_size": 2})
    np.testing.assert_array_equal(d2s, x)


def test_strided_slice_gather_matmul_cast_shape(rng):
    x = rand(rng, 2, 5, 6, 3)
    attrs = {"begin": [0, 1, -1, 0], "end": [2, 5, 0, 3], "strides": [1, 2, -2, 1],
             "shrink_axis": []}
    np.testing.assert_array_equal(run1("STRIDED_SLICE", [x], attrs), x[0:2, 1:5:2, -1:0:-2, 0:3])
    attrs = {"begin": [0, 2, 0, 0], "end": [2, 3, 6, 3], "strides": [1, 1, 1, 1], "shrink_axis": [1]}
    np.testing.assert_array_equal(run1("STRIDED_SLICE", [x], attrs), x[:, 2])
    idx = np.array([2, 0, 2], np.int32)
    np.testing.assert_array_equal(run1("GATHER", [x, idx], {"axis": 2}, const=(1,)),
                                  np.take(x, idx, axis=2))
    a, b = rand(rng, 2, 3, 4), rand(rng, 5, 4)
    np.testing.assert_allclose(run1("BATCH_MATMUL", [a, b], {"adj_y": True}), a @ b.T, rtol=1e-5)
    np.testing.assert_array_equal(run1("CAST", [x], {"dtype": "int32"}), x.astype(np.int32))
    np.testing.assert_array_equal(run1("SHAPE", [x]), [2, 5, 6, 3])


@pytest.mark.parametrize("align,half", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("op", ["RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"])
def test_resize(rng, op, align, half):
    x = rand(rng, 2, 3, 4, 2)
    attrs = {"size": [7, 5], "align_corners": align, "half_pixel_centers": half}
    ref = np_resize(x.astype(np.float64), (7, 5), align, half, op == "RESIZE_NEAREST_NEIGHBOR")
    np.testing.assert_allclose(run1(op, [x], attrs), ref, atol=1e-5)


# ----------------------------------------------------------------- quantization
def test_quantize_dequantize():
    g = Graph("q")
    x = g.add_input("x", [None, 6])
    q = g.add_node("QUANTIZE", [x]).output
    q.quant = QuantParams((0.05,), (-3,))
    d = g.add_node("DEQUANTIZE", [q]).output
    g.outputs = [q, d]
    xv = np.array([[-10, -0.125, 0.075, 0.1, 1.0, 10]], np.float32)
    out = qatir.run(g, {"x": xv})
    want = np.clip(round_half_away(xv / np.float32(0.05)) - 3, -128, 127)
    np.testing.assert_array_equal(out[q.name], want.astype(np.int8))
    np.testing.assert_allclose(out[d.name], (want + 3) * 0.05, rtol=1e-6)


def test_batch_norm_inference(rng):
    x = rand(rng, 2, 3, 3, 4)
    gamma, beta, mean, var = rand(rng, 4), rand(rng, 4), rand(rng, 4), rng.random(4).astype(np.float32)
    y = run1("BATCH_NORM", [x, gamma, beta, mean, var], {"epsilon": 1e-3}, const=(1, 2, 3, 4))
    np.testing.assert_allclose(y, gamma * (x - mean) / np.sqrt(var + 1e-3) + beta, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("axis,narrow", [(None, False), (0, True), (3, True)])
def test_fake_quant_matches_nudged_grid(rng, axis, narrow):
    x = 3 * rand(rng, 4, 3, 3, 5)
    n = 1 if axis is None else x.shape[axis]
    lo = -rng.random(n).astype(np.float32) * 2 - 0.1
    hi = rng.random(n).astype(np.float32) * 3 + 0.1
    if axis is None:
        lo, hi = lo.reshape(()), hi.reshape(())
    y = run1("FAKE_QUANT", [x, lo, hi], {"axis": axis, "narrow_range": narrow}, const=(1, 2))
    np.testing.assert_allclose(y, np_fake_quant(x, lo, hi, 8, narrow, axis), atol=1e-5)


def test_bias_is_rounded_to_int32_grid_between_fake_quants(rng):
    g = Graph("qc")
    x = g.add_input("x", [None, 4])
    xq = g.add_node("FAKE_QUANT", [x, g.const(np.float32(-2.0)), g.const(np.float32(2.0))]).output
    w = rand(rng, 3, 4)
    m = np.abs(w).max(1)
    wq = g.add_node("FAKE_QUANT", [g.const(w, "w"), g.const(-m, "wmin"), g.const(m, "wmax")],
                    {"axis": 0, "narrow_range": True, "symmetric": True, "kind": "weight"}).output
    b = np.array([0.0123, -0.0456, 0.5], np.float32)
    y = g.add_node("FULLY_CONNECTED", [xq, wq, g.const(b, "b")]).output
    g.outputs = [y]
    xv = rand(rng, 5, 4)
    s_in = 4.0 / 255
    s_w = m / 127
    b_q = round_half_away(b / (s_in * s_w)) * s_in * s_w
    ref = np_fake_quant(xv, np.float32(-2), np.float32(2)) @ np_fake_quant(w, -m, m, 8, True, 0).T + b_q
    np.testing.assert_allclose(qatir.run(g, {"x": xv})[y.name], ref, atol=1e-5)
    assert not np.allclose(b_q, b)


# ------------------------------------------------------------------ executor
def small_graph(rng):
    g = Graph("small")
    x = g.add_input("x", [None, 6, 6, 2])
    w, b = g.const(rand(rng, 3, 3, 3, 2), "w"), g.const(rand(rng, 3), "b")
    y = g.add_node("CONV_2D", [x, w, b], {"padding": "SAME", "fused_activation": "RELU"}).output
    g.outputs = [g.add_node("MEAN", [y]).output]
    return g


def test_dynamic_batch_and_no_retrace(rng):
    g = small_graph(rng)
    prog = executor.program_for(g)
    outs = [qatir.run(g, {"x": rand(rng, n, 6, 6, 2)})["mean"] for n in (1, 4, 7)]
    assert [o.shape for o in outs] == [(1, 3), (4, 3), (7, 3)]
    assert executor.program_for(g) is prog
    assert prog.trace_count == 1


def test_parameters_are_variables_and_updates_are_seen(rng):
    g = small_graph(rng)
    prog = executor.program_for(g)
    assert prog.roles == {"w": "weight", "b": "bias"}
    assert all(v.trainable for v in prog.params.values())
    x = rand(rng, 2, 6, 6, 2)
    w, b = g.tensors["w"].data, g.tensors["b"].data
    ref = np.maximum(np_conv(x, w, b, padding="SAME"), 0).mean((1, 2))
    np.testing.assert_allclose(qatir.run(g, {"x": x})["mean"], ref, rtol=1e-4)
    g.tensors["b"].data = b + np.float32(100.0)  # a replaced array is copied into the variable
    ref = np.maximum(np_conv(x, w, b + 100, padding="SAME"), 0).mean((1, 2))
    np.testing.assert_allclose(qatir.run(g, {"x": x})["mean"], ref, rtol=1e-4)
    assert executor.program_for(g) is prog and prog.trace_count == 1


def test_structure_change_rebuilds(rng):
    g = small_graph(rng)
    prog = executor.program_for(g)
    g.nodes[0].attrs["fused_activation"] = "NONE"
    assert executor.program_for(g) is not prog
    prog2 = executor.program_for(g)
    executor.invalidate(g)
    assert executor.program_for(g) is not prog2


def test_feed_errors_name_the_input(rng):
    g = small_graph(rng)
    with pytest.raises(QatirError, match="missing input.*'x'"):
        qatir.run(g, {})
    with pytest.raises(QatirError, match="unknown input.*'y'"):
        qatir.run(g, {"x": rand(rng, 1, 6, 6, 2), "y": 1})
    with pytest.raises(QatirError, match=r"input 'x': shape \[1, 6, 5, 2\]"):
        qatir.run(g, {"x": rand(rng, 1, 6, 5, 2)})


def test_missing_kernel_names_op_and_node(rng):
    if not has_op("TEST_NO_KERNEL"):
        register_op("TEST_NO_KERNEL", lambda node: [(node.inputs[0].shape, node.inputs[0].dtype)])
    g = Graph("custom")
    x = g.add_input("x", [2])
    g.outputs = [g.add_node("TEST_NO_KERNEL", [x], name="mystery").output]
    with pytest.raises(QatirError, match="TEST_NO_KERNEL.*'mystery'"):
        qatir.run(g, {"x": np.zeros(2, np.float32)})


def test_custom_kernel_registration():
    if not has_op("TEST_SQUARE"):
        register_op("TEST_SQUARE", lambda node: [(node.inputs[0].shape, node.inputs[0].dtype)])
    if not has_kernel("TEST_SQUARE"):
        tf_kernel("TEST_SQUARE")(lambda ctx, node, ins: ins[0] * ins[0])
    y = run1("TEST_SQUARE", [np.arange(4, dtype=np.float32)])
    np.testing.assert_array_equal(y, [0, 1, 4, 9])


def test_every_builtin_op_has_a_kernel():
    missing = [op for op in all_ops() if not op.startswith("TEST_") and not has_kernel(op)]
    assert missing == []


def test_program_does_not_keep_graph_alive(rng):
    import gc
    import weakref

    g = small_graph(rng)
    qatir.run(g, {"x": rand(rng, 1, 6, 6, 2)})
    ref = weakref.ref(g)
    del g
    gc.collect()
    assert ref() is None


def test_quantized_parameters_and_calibration_reuse_the_program(rng):
    g = Graph("qp")
    x = g.add_input("x", [None, 4])
    xq = g.add_node("FAKE_QUANT", [x, g.const(np.float32(-1), "xmin"), g.const(np.float32(1), "xmax")],
                    {"quantizer": "learned"}).output
    w = rand(rng, 3, 4)
    m = np.abs(w).max(1)
    wq = g.add_node("FAKE_QUANT", [g.const(w, "w"), g.const(-m, "wmin"), g.const(m, "wmax")],
                    {"axis": 0, "narrow_range": True, "symmetric": True, "kind": "weight"}).output
    y = g.add_node("FULLY_CONNECTED", [xq, wq]).output
    g.outputs = [g.add_node("FAKE_QUANT", [y, g.const(np.float32(-1), "ymin"),
                                           g.const(np.float32(1), "ymax")]).output]
    prog = executor.program_for(g)
    assert prog.roles == {"xmin": "range", "xmax": "range", "w": "weight", "wmin": "range",
                          "wmax": "range", "ymin": "range", "ymax": "range"}
    trainable = {name for name, v in prog.params.items() if v.trainable}
    assert trainable == {"w", "xmin", "xmax"}  # learned input range, not the minmax output range
    feeds = {"x": rand(rng, 8, 4)}
    qatir.run(g, feeds)
    qatir.calibrate(g, [feeds], progress=False)
    out = qatir.run(g, feeds)[g.outputs[0].name]
    assert executor.program_for(g) is prog and prog.trace_count == 1
    ref = feeds["x"] @ w.T  # calibration observes the float graph
    lo, hi = g.tensors["ymin"].data, g.tensors["ymax"].data
    np.testing.assert_allclose([lo, hi], [ref.min(), ref.max()], rtol=1e-5)
    xq_ref = np_fake_quant(feeds["x"], g.tensors["xmin"].data, g.tensors["xmax"].data)
    assert g.tensors["xmin"].data == feeds["x"].min()  # a learned range starts from calibration
    ref = xq_ref @ np_fake_quant(w, -m, m, 8, True, 0).T
    np.testing.assert_allclose(out, np_fake_quant(ref, lo, hi), atol=1e-5)


def test_reshape_with_a_baked_batch_follows_the_dynamic_batch(rng):
    g = Graph("rs")
    x = g.add_input("x", [None, 2, 3])
    g.outputs = [g.add_node("RESHAPE", [x], {"new_shape": [1, 6]}).output]
    xv = rand(rng, 4, 2, 3)
    np.testing.assert_array_equal(qatir.run(g, {"x": xv})[g.outputs[0].name], xv.reshape(4, 6))


@pytest.mark.parametrize("lo,hi,narrow", [(-1.0, 1.0, False), (-0.3, 2.9, False), (0.2, 3.0, True),
                                          (-5.0, -0.5, False)])
def test_fast_fixed_range_fake_quant_matches_tf_op(rng, lo, hi, narrow):
    import tensorflow as tf

    from qatir.tf.fake_quant import fake_quant_fixed_range

    x = tf.constant(np.concatenate([4 * rand(rng, 2000), np.linspace(lo - 0.1, hi + 0.1, 997,
                                                                        dtype=np.float32)]))
    lo_t, hi_t = tf.constant(np.float32(lo)), tf.constant(np.float32(hi))
    dy = tf.constant(rand(rng, x.shape[0]))
    results = []
    for fn in (lambda v: tf.quantization.fake_quant_with_min_max_vars(v, lo_t, hi_t,
                                                                      narrow_range=narrow),
               lambda v: fake_quant_fixed_range(v, lo_t, hi_t, 8, narrow)):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        results.append((y.numpy(), tape.gradient(y, x, output_gradients=dy).numpy()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("size", [9, 10])
def test_depthwise_with_stride_and_dilation_together(padding, size):
    """tf.nn.depthwise_conv2d refuses stride>1 with dilation>1; the kernel must still be exact."""
    rng = np.random.default_rng(size)
    g = Graph()
    x = g.add_input("x", [1, size, size, 4])
    w = g.const(rng.standard_normal((1, 3, 3, 4)).astype(np.float32), "w")
    y = g.add_node("DEPTHWISE_CONV_2D", [x, w],
                   {"stride": [2, 2], "dilation": [2, 2], "padding": padding}).output
    g.outputs = [y]
    xv = rng.standard_normal((1, size, size, 4)).astype(np.float32)
    s, d, k = 2, 2, 3
    eff = (k - 1) * d + 1
    if padding == "SAME":
        out, *side = same_padding(size, k, s, d)
    else:
        out, side = (size - eff) // s + 1, [0, 0]
    xp = np.pad(xv, [[0, 0], side, side, [0, 0]])
    ref = np.zeros((1, out, out, 4), np.float32)
    for a in range(k):
        for b in range(k):
            ref += xp[:, a * d:a * d + (out - 1) * s + 1:s, b * d:b * d + (out - 1) * s + 1:s] \
                * w.data[0, a, b]
    np.testing.assert_allclose(qatir.run(g, {"x": xv})[y.name], ref, rtol=1e-5, atol=1e-5)

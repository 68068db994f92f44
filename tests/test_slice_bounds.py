"""Slice bounds beyond the dimension (the converters' "to the end" sentinels) are clamped
at import, so the model writes back as TFLite and runs in LiteRT as the source did."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qatir
from qatir.frontends.slice_bounds import INT32_MAX, INT32_MIN, clamp_bounds
from qatir.litert_run import run_litert

INT64_MAX, INT64_MIN = (1 << 63) - 1, -(1 << 63)
SENTINELS = [INT64_MAX, INT64_MIN, 1 << 31, -(1 << 31), INT32_MAX, 100, -100, 7, -7, 0, 3, -2, -1]


def test_clamp_bounds_selects_the_same_elements():
    rng = np.random.default_rng(0)
    for d in (1, 2, 5, 7):
        x = np.arange(d)
        for _ in range(400):
            b, e = (int(v) for v in rng.choice(SENTINELS + list(range(-d - 1, d + 2)), 2))
            s = int(rng.choice([1, 2, 3, -1, -2, -3, INT32_MAX, -INT32_MAX]))
            cb, ce = clamp_bounds(b, e, s, d)
            assert -(d + 1) <= cb <= d and -(d + 1) <= ce <= d
            np.testing.assert_array_equal(x[cb:ce:s], x[b:e:s], err_msg=f"{b}:{e}:{s} on {d}")
    assert clamp_bounds(1 << 31, INT64_MIN, 1, None) == (INT32_MAX, INT32_MIN)
    assert clamp_bounds(-100, INT64_MIN, -1, 5) == (-6, -6)  # empty, not "from the last"


def _slice_model(path, starts, ends, axes, steps, batch="N") -> str:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 6, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(np.array(v, np.int64), n)
             for n, v in (("s", starts), ("e", ends), ("a", axes), ("t", steps))]
    node = helper.make_node("Slice", ["x", "s", "e", "a", "t"], ["r"])
    relu = helper.make_node("Relu", ["r"], ["y"])
    graph = helper.make_graph([node, relu], "slice", [x], [y], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return str(path)


@pytest.mark.parametrize("starts, ends, axes, steps", [
    ([1, 0], [INT64_MAX, INT64_MAX], [2, 3], [1, 2]),          # "to the end"
    ([INT64_MAX, -1], [INT64_MIN, INT64_MIN], [2, 3], [-1, -2]),  # reversed, to the start
    ([0, -100], [INT64_MAX, INT64_MAX], [0, 1], [1, 1]),         # dynamic batch, begin < -d
    ([-2], [INT64_MIN], [1], [-1]),                              # reversed channels (NCHW)
])
def test_onnx_slice_sentinels_write_back_and_run(tmp_path, starts, ends, axes, steps):
    import onnxruntime as ort

    path = _slice_model(tmp_path / "m.onnx", starts, ends, axes, steps)
    g = qatir.load(path)
    for n in g.nodes:
        for k in ("begin", "end", "strides"):
            assert all(INT32_MIN <= v <= INT32_MAX for v in n.attrs.get(k, [])), n
    x = np.random.default_rng(1).standard_normal((1, 3, 6, 5)).astype(np.float32)
    want = ort.InferenceSession(path).run(None, {"x": x})[0]
    got = run_litert(qatir.to_tflite(g), [{"x": x.transpose(0, 2, 3, 1)}])[0][0]
    np.testing.assert_allclose(got, want.transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)


def test_tflite_strided_slice_sentinels_write_back_and_run(tmp_path):
    """TFLiteConverter output: masked crops and reversals on a dynamic batch (NASNet's
    cropping: "to the end" of a dynamic dim used to become 2^31), and explicit int32
    sentinels INT32_MAX / INT32_MIN (a reversed slice to the start)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 6, 5, 3], tf.float32)])
        def __call__(self, x):
            crop = x[:, 1:, :-1, :]  # begin/end masks on the dynamic batch
            flip = crop[::-1, :, ::-1, ::-1]  # negative strides with masks, batch included
            rev = tf.strided_slice(flip, [0, INT32_MAX, 0, 0],
                                   [INT32_MAX, INT32_MIN, INT32_MAX, INT32_MAX], [1, -1, 1, 1])
            return tf.nn.relu(rev) + 1.0

    m = M()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([m.__call__.get_concrete_function()], m)
    src = tmp_path / "m.tflite"
    src.write_bytes(conv.convert())
    g = qatir.load(src)
    assert any(n.op == "STRIDED_SLICE" for n in g.nodes)
    for n in g.nodes:
        for k in ("begin", "end", "strides"):
            assert all(INT32_MIN <= v <= INT32_MAX for v in n.attrs.get(k, [])), n
    x = np.random.default_rng(2).standard_normal((1, 6, 5, 3)).astype(np.float32)
    want = m(x).numpy()
    name = g.inputs[0].name
    got = run_litert(qatir.to_tflite(g), [{name: x}])[0][0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # and as int8: quantize, calibrate, write, run
    q = qatir.quantize(g)
    qatir.calibrate(q, [{name: x}], progress=False)
    got8 = run_litert(qatir.to_tflite(q, io="float"), [{name: x}])[0][0]
    assert got8.shape == want.shape and np.abs(got8 - want).max() < 0.1

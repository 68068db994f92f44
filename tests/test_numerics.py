"""Numerics edge cases through the public API: NaN/Inf, zero channels, constant
activations, tiny and huge scales. Every exported model must load and run in LiteRT
and match the integer reference bit for bit."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import qatir  # noqa: E402
from qatir.errors import NumericsError, QatirError, ShapeError  # noqa: E402
from qatir.ir import Graph  # noqa: E402
from tests.qbuild import litert_run  # noqa: E402


def conv_net(w0: np.ndarray | None = None, b0: np.ndarray | None = None,
             w1: np.ndarray | None = None, seed: int = 0) -> Graph:
    """x[1,6,6,3] -> CONV_2D 3x3 (4 ch) -> RELU -> FULLY_CONNECTED(144 -> 5)."""
    rng = np.random.default_rng(seed)
    g = Graph("numerics")
    x = g.add_input("x", [1, 6, 6, 3])
    w0 = rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32) if w0 is None else w0
    b0 = rng.normal(0, 0.1, 4).astype(np.float32) if b0 is None else b0
    y = g.add_node("CONV_2D", [x, g.const(w0, "w0"), g.const(b0, "b0")],
                   {"padding": "SAME"}, name="conv0").output
    y = g.add_node("RELU", [y], name="relu0").output
    y = g.add_node("RESHAPE", [y], {"new_shape": [1, 144]}, name="flat").output
    w1 = rng.normal(0, 0.1, (5, 144)).astype(np.float32) if w1 is None else w1
    y = g.add_node("FULLY_CONNECTED", [y, g.const(w1, "w1"), g.const(np.zeros(5, np.float32), "b1")],
                   name="fc1", outputs=["logits"]).output
    g.outputs = [y]
    g.verify()
    return g


def batches(n: int = 4, scale: float = 1.0, seed: int = 1, value: float | None = None):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = rng.normal(0, scale, (1, 6, 6, 3)).astype(np.float32)
        yield {"x": np.full_like(x, value) if value is not None else x}


def export_and_run(q: Graph) -> tuple[bytes, dict[str, np.ndarray]]:
    """Export int8; run in LiteRT (reference kernels and XNNPACK); both must equal run_reference."""
    buf = qatir.to_tflite(q, io="int8")
    feeds = {"x": np.random.default_rng(7).integers(-128, 128, (1, 6, 6, 3)).astype(np.int8)}
    want = qatir.run_reference(q, feeds)
    got, _ = litert_run(buf, feeds, ref=True)
    np.testing.assert_array_equal(got["logits"], want["logits"])
    got_x, _ = litert_run(buf, feeds, ref=False)
    assert np.abs(got_x["logits"].astype(int) - want["logits"].astype(int)).max() <= 1
    return buf, got


def scales_of(q: Graph) -> list[float]:
    return [s for t in q.tensors.values() if t.quant is not None for s in t.quant.scale]


# ------------------------------------------------------------------ NaN / Inf
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["w0", "b0", "w1"])
def test_non_finite_constant_refused_by_quantize(bad, where):
    g = conv_net()
    t = g.tensors[where]
    data = t.data.copy()
    data.flat[1] = bad
    t.data = data
    with pytest.raises(NumericsError, match=rf"%{where}\b") as info:
        qatir.quantize(g)
    assert isinstance(info.value, QatirError)
    assert "insert_fake_quant" in str(info.value)  # the pass that found it


def test_non_finite_constant_refused_by_float_export():
    g = conv_net()
    data = g.tensors["w1"].data.copy()
    data[0, 0] = np.nan
    g.tensors["w1"].data = data
    with pytest.raises(NumericsError, match=r"%w1\b"):
        qatir.to_tflite(g)


def test_nan_from_batch_norm_names_the_parameter():
    """A NaN batch-norm variance would poison the folded weight: the error names the BN tensor."""
    g = conv_net()
    conv_out = g.nodes[0].output
    relu = g.nodes[1]
    c = 4
    params = [np.ones(c), np.zeros(c), np.zeros(c), np.array([1.0, np.nan, 1.0, 1.0])]
    consts = [g.const(p.astype(np.float32), name=f"bn_{k}")
              for p, k in zip(params, ("gamma", "beta", "mean", "var"))]
    bn = g.add_node("BATCH_NORM", [conv_out, *consts], {"epsilon": 1e-3}, name="bn0").output
    relu.set_input(0, bn)
    g.toposort()
    g.verify()
    with pytest.raises(NumericsError, match=r"bn_var"):
        qatir.quantize(g)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_calibration_data_names_the_input(bad):
    q = qatir.quantize(conv_net())
    data = list(batches(3))
    data[1]["x"][0, 2, 2, 1] = bad
    with pytest.raises(NumericsError, match=r"(%x\b|'x')"):
        qatir.calibrate(q, data)


# ------------------------------------------------------------------ degenerate ranges
def test_all_zero_weight_channel_gets_valid_scale_and_runs():
    w0 = np.random.default_rng(3).normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
    w0[2] = 0.0
    q = qatir.quantize(conv_net(w0=w0))
    qatir.calibrate(q, batches())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_and_run(q)
    w_fq = next(n for n in q.nodes if n.op == "FAKE_QUANT" and n.inputs[0].name == "w0")
    scale = np.asarray(w_fq.output.quant.scale)
    assert scale.shape == (4,) and np.all(np.isfinite(scale)) and np.all(scale > 0)


def test_all_zero_weight_tensor_runs():
    q = qatir.quantize(conv_net(w0=np.zeros((4, 3, 3, 3), np.float32),
                                b0=np.array([0.5, -0.25, 0.0, 2.0], np.float32)))
    qatir.calibrate(q, batches())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, got = export_and_run(q)
    assert all(np.isfinite(s) and s > 0 for s in scales_of(q))
    # the conv output is its bias only: every spatial position is the same
    assert got["logits"].shape == (1, 5)


@pytest.mark.parametrize("value", [0.0, 3.5, -2.0])
def test_constant_activation_gets_valid_scale(value):
    q = qatir.quantize(conv_net())
    qatir.calibrate(q, batches(value=value))
    s = scales_of(q)
    assert s and all(np.isfinite(v) and v > 0 for v in s)
    x_fq = next(n for n in q.nodes if n.op == "FAKE_QUANT" and n.inputs[0].name == "x")
    lo, hi = float(x_fq.inputs[1].data), float(x_fq.inputs[2].data)
    assert lo <= min(value, 0.0) and hi >= max(value, 0.0)
    assert 0 < x_fq.output.quant.scale[0] < 1.0  # a zero range still gets a usable scale
    export_and_run(q)


# ------------------------------------------------------------------ tiny and huge scales
def test_bias_beyond_int32_is_clipped_with_a_warning_naming_it():
    """Tiny weight and input scales with a normal bias: bias / (s_in * s_w) > 2^31."""
    w0 = (np.random.default_rng(5).normal(0, 1, (4, 3, 3, 3)) * 1e-7).astype(np.float32)
    q = qatir.quantize(conv_net(w0=w0, b0=np.array([1.0, -1.0, 0.5, 0.0], np.float32)))
    qatir.calibrate(q, batches(scale=1e-3))
    with pytest.warns(UserWarning, match=r"%b0\b.*int32"):
        export_and_run(q)


def test_bias_scale_below_float_floor_is_clamped_with_a_warning_naming_the_weight():
    w0 = (np.random.default_rng(6).normal(0, 1, (4, 3, 3, 3)) * 1e-25).astype(np.float32)
    q = qatir.quantize(conv_net(w0=w0))
    qatir.calibrate(q, batches(scale=1e-9))
    with pytest.warns(UserWarning, match=r"%w0(_fq)?\b"):
        buf = qatir.to_tflite(q)
    assert buf[4:8] == b"TFL3"
    feeds = {"x": np.zeros((1, 6, 6, 3), np.int8)}
    got, _ = litert_run(buf, feeds, ref=True)
    assert got["logits"].shape == (1, 5)


def test_huge_dynamic_range_weights_export_and_run():
    """Per-channel weights spanning 1e-6 .. 1e6: every scale finite and positive, LiteRT runs it."""
    rng = np.random.default_rng(8)
    w0 = rng.normal(0, 1, (4, 3, 3, 3)).astype(np.float32)
    w0 *= np.array([1e-6, 1e-2, 1e2, 1e6], np.float32)[:, None, None, None]
    w1 = rng.normal(0, 1, (5, 144)).astype(np.float32)
    w1[:, ::2] *= 1e-6  # per-tensor FC: most weights round to 0, the rest are huge
    w1[:, 1::2] *= 1e6
    q = qatir.quantize(conv_net(w0=w0, w1=w1))
    qatir.calibrate(q, batches(scale=10.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_and_run(q)
    s = scales_of(q)
    assert all(np.isfinite(v) and v > 0 for v in s)
    assert max(s) / min(s) > 1e6


def test_overflow_inside_the_graph_during_calibration_names_the_tensor():
    """Finite inputs whose conv output overflows float32: the error names where Inf appeared."""
    w0 = np.full((4, 3, 3, 3), 1e30, np.float32)
    q = qatir.quantize(conv_net(w0=w0))
    with pytest.raises(NumericsError, match=r"NaN or Inf") as info:
        qatir.calibrate(q, batches(value=1e30))
    assert "%conv0" in str(info.value)


def test_non_finite_training_data_names_the_input():
    q = qatir.quantize(conv_net())
    qatir.calibrate(q, batches())
    x = np.random.default_rng(0).normal(size=(8, 6, 6, 3)).astype(np.float32)
    x[3, 1, 1, 1] = np.nan
    y = np.zeros((8, 5), np.float32)
    with pytest.raises(NumericsError, match=r"(%x\b|'x')"):
        qatir.fit(q, [({"x": x[i:i + 1]}, y[i:i + 1]) for i in range(8)], loss="mse", epochs=1,
                  verbose=False)


# ------------------------------------------------------------------ refuse, or write what LiteRT runs
# Graphs that `tools/fuzz.py --deep` reached from mutated files. Each must either be refused with
# a QatirError (naming the node or tensor) or export to a model LiteRT prepares and runs.
def refused_or_runs(g: Graph, needle: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = qatir.quantize(g)
            buf = qatir.to_tflite(q)
    except QatirError as e:
        assert needle in str(e), str(e)
        return
    feeds = {t.name: np.zeros([d or 1 for d in t.shape], np.int8) for t in q.inputs}
    litert_run(buf, feeds, ref=True)


def single(op: str, x_shape: list[int], consts: list[tuple[np.ndarray, str]],
           attrs: dict | None = None) -> Graph:
    g = Graph(op.lower())
    x = g.add_input("x", x_shape)
    ins = [x] + [g.const(a, n) for a, n in consts]
    y = g.add_node(op, ins, attrs, name="node", outputs=["y"]).output
    g.outputs = [y]
    g.verify()
    return g


def test_dims_beyond_int32_are_refused():
    """A declared input dim of 2^31 (TFLite stores dims as int32)."""
    refused_or_runs(single("RELU", [1, 2**31], []), "x")


def test_pad_amounts_beyond_int32_are_refused():
    g = single("PAD", [1, 4, 4, 2], [], {"paddings": [[0, 0], [2**30, 2**30], [0, 0], [0, 0]]})
    refused_or_runs(g, "node")


def test_bias_of_the_wrong_length_is_refused():
    # refused as soon as the node is built: shape inference checks the bias length
    with pytest.raises(ShapeError, match=r"%b has shape \[3\], expected \[4\]"):
        single("CONV_2D", [1, 4, 4, 2], [(np.ones((4, 1, 1, 2), np.float32), "w"),
                                         (np.zeros(3, np.float32), "b")])


def test_constant_gather_indices_out_of_range_are_refused():
    with pytest.raises(ShapeError, match=r"%idx range \[0, 99\] outside \[-8, 8\)"):
        single("GATHER", [1, 8], [(np.array([0, 99], np.int32), "idx")], {"axis": 1})


def test_effective_scale_litert_cannot_check_is_refused():
    """Weights of 1e15 with an uncalibrated output range: in_scale * w_scale / out_scale ~ 1e14,
    beyond LiteRT's |bias_scale - in_scale * w_scale| <= 0.02 * out_scale prepare check."""
    g = single("FULLY_CONNECTED", [1, 16], [(np.full((4, 16), 1e15, np.float32), "w")])
    refused_or_runs(g, "node")

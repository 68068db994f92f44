"""Lowering a FAKE_QUANT graph to the int8 form the writer and the reference share."""

from __future__ import annotations

import numpy as np
import pytest

from qatir.errors import ExportError, NumericsError
from qatir.lower import apply_io, is_lowered, lower
from qatir.numerics import round_half_away
from tests.helpers import QB, compare_all


def _conv_graph(axis: int | None = 0, bits: int = 8, act_bits: int = 8):
    qb = QB(seed=0)
    x = qb.input("x", [1, 6, 6, 3], -1, 1)
    w = qb.rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
    wq = qb.weight(w, axis, bits=bits)
    b = qb.g.const(np.array([0.1, -0.2, 0.3, 0.0], np.float32), name="b")
    y = qb.op("CONV_2D", [x, wq, b], {"padding": "SAME", "fused_activation": "RELU6"})
    y = qb.fq(y, 0, 6, bits=act_bits)
    return qb.output(y), w


def test_lowered_form_conv():
    g, w = _conv_graph()
    lg = lower(g)
    assert is_lowered(lg) and not any(n.op == "FAKE_QUANT" for n in lg.nodes)
    conv = next(n for n in lg.nodes if n.op == "CONV_2D")
    x, wt, b = conv.inputs
    out = conv.outputs[0]
    assert x.dtype == np.int8 and x.quant.zero_point[0] in range(-128, 128)
    assert out.dtype == np.int8 and out.quant.axis is None
    assert wt.dtype == np.int8 and wt.quant.axis == 0 and set(wt.quant.zero_point) == {0}
    assert wt.data.min() >= -127 and wt.data.max() <= 127
    # symmetric per-channel: each channel's max |w| maps to 127
    assert np.all(np.abs(wt.data).reshape(4, -1).max(axis=1) == 127)
    np.testing.assert_allclose(wt.data * np.asarray(wt.quant.scale)[:, None, None, None], w,
                               atol=max(wt.quant.scale) / 2 + 1e-7)
    assert b.dtype == np.int32 and b.quant.axis == 0
    expect = np.float32(x.quant.scale[0]) * np.asarray(wt.quant.scale, np.float32)
    np.testing.assert_array_equal(np.asarray(b.quant.scale, np.float32), expect)
    assert b.data.tolist() == round_half_away(np.array([0.1, -0.2, 0.3, 0.0]) / expect.astype(np.float64)).astype(int).tolist()
    # graph edges keep their names
    assert [t.name for t in lg.inputs] == ["x"] and lg.outputs[0].name == g.outputs[0].name


def test_input_graph_untouched():
    g, _ = _conv_graph()
    before = str(g)
    lower(g)
    assert str(g) == before


def test_fixed_output_params_and_tolerance():
    qb = QB()
    x = qb.input("x", [1, 10], -4, 4)
    s = qb.op("SOFTMAX", [x], None, (0, 1))  # FQ [0,1] = (1/255, -128): close to fixed
    t = qb.op("TANH", [x], None, (-3, 3))  # really different: requantized
    lg = lower(qb.output(s, t))
    sm = next(n for n in lg.nodes if n.op == "SOFTMAX").outputs[0]
    th = next(n for n in lg.nodes if n.op == "TANH").outputs[0]
    assert sm.quant.scale[0] == 1 / 256 and sm.quant.zero_point[0] == -128
    assert th.quant.scale[0] == 1 / 128 and th.quant.zero_point[0] == 0
    req = [n for n in lg.nodes if n.op == "QUANTIZE"]
    assert len(req) == 1 and req[0].inputs[0] is th


def test_concat_requantizes_only_differing_inputs():
    qb = QB()
    mn = qb.g.const(np.float32(-1), name="shared_min")
    mx = qb.g.const(np.float32(2), name="shared_max")
    a = qb.fq(qb.g.add_input("a", [1, 4, 4, 2]), None, None, shared=(mn, mx))
    b = qb.fq(qb.g.add_input("b", [1, 4, 4, 2]), None, None, shared=(mn, mx))
    c = qb.input("c", [1, 4, 4, 2], -3, 3)
    y = qb.op("CONCATENATION", [a, b, c], {"axis": 3})
    y = qb.fq(y, None, None, shared=(mn, mx))
    lg = lower(qb.output(y))
    cat = next(n for n in lg.nodes if n.op == "CONCATENATION")
    reqs = [n for n in lg.nodes if n.op == "QUANTIZE"]
    assert len(reqs) == 1 and reqs[0].inputs[0].name == "c"
    assert all(t.quant == cat.outputs[0].quant for t in cat.inputs)


def test_concat_of_a_constant_requantizes_it_offline():
    """ViT's class token: a constant concatenated with activations is stored on the output
    grid with the values the output's fake-quant gives it in training; bit-exact in LiteRT."""
    import qatir

    qb = QB(seed=1)
    cls = qb.fq(qb.g.const(qb.rng.normal(0, 0.7, (1, 1, 8)).astype(np.float32), name="cls"),
                -2, 2, narrow=True, kind="weight")
    x = qb.input("x", [1, 5, 8], -1, 3)
    y = qb.fq(qb.op("CONCATENATION", [cls, x], {"axis": 1}), -1.5, 3)
    g = qb.output(y)
    lg = lower(g)
    cat = next(n for n in lg.nodes if n.op == "CONCATENATION")
    assert cat.inputs[0].is_const and cat.inputs[0].quant == cat.outputs[0].quant
    assert [n.inputs[0].name for n in lg.nodes if n.op == "QUANTIZE"] == ["x"]
    q = cat.outputs[0].quant
    trained = qatir.run(g, {"x": np.zeros((1, 5, 8), np.float32)})[g.outputs[0].name][0, 0]
    stored = (cat.inputs[0].data.astype(np.float32) - q.zero_point[0]) * q.scale[0]
    np.testing.assert_allclose(stored.reshape(-1), trained, atol=1e-6)
    assert compare_all(g) == {"reference": 0, "xnnpack": 0}


def test_grid_ops_inherit_params():
    qb = QB()
    x = qb.input("x", [1, 4, 4, 2], -1, 2)
    y = qb.op("MAX_POOL_2D", [x], {"filter": [2, 2], "stride": [2, 2]})
    y = qb.op("RESHAPE", [y], {"new_shape": [1, 8]})
    lg = lower(qb.output(y))
    assert lg.outputs[0].quant == lg.inputs[0].quant and lg.outputs[0].dtype == np.int8


@pytest.mark.parametrize("io", ["int8", "float", "uint8"])
def test_io_modes(io):
    g, _ = _conv_graph()
    lg = lower(g, io=io)
    want = {"int8": np.int8, "float": np.float32, "uint8": np.uint8}[io]
    assert lg.inputs[0].dtype == want and lg.outputs[0].dtype == want
    assert lg.inputs[0].name == "x" and lg.outputs[0].name == g.outputs[0].name
    edge_ops = {n.op for n in lg.nodes} - {"CONV_2D"}
    assert edge_ops == ({"QUANTIZE", "DEQUANTIZE"} if io == "float" else
                        {"QUANTIZE"} if io == "uint8" else set())
    if io == "uint8":
        assert lg.inputs[0].quant.zero_point[0] == lower(g).inputs[0].quant.zero_point[0] + 128
    # edges round-trip back to int8
    apply_io(lg, "int8")
    assert lg.inputs[0].dtype == np.int8 and {n.op for n in lg.nodes} == {"CONV_2D"}


def test_float_graph_stays_float():
    qb = QB()
    x = qb.g.add_input("x", [1, 4])
    g = qb.output(qb.op("RELU", [x]))
    lg = lower(g)
    assert lg.inputs[0].dtype == np.float32 and not is_lowered(lg)


def test_refuses_4bit_activation():
    g, _ = _conv_graph(act_bits=4)
    with pytest.raises(ExportError, match="4-bit activation"):
        lower(g)


def test_4bit_weights_stored_as_int8():
    g, _ = _conv_graph(bits=4)
    lg = lower(g)
    w = next(n for n in lg.nodes if n.op == "CONV_2D").inputs[1]
    assert w.dtype == np.int8 and w.quant.bits == 4 and np.abs(w.data).max() == 7


def test_refuses_wrong_weight_axis():
    g, _ = _conv_graph(axis=3)
    with pytest.raises(ExportError, match="axis 3.*TFLite needs axis 0"):
        lower(g)


def test_refuses_float_tensor_in_int8_region():
    qb = QB()
    x = qb.input("x", [1, 4, 4, 2], -1, 2)
    y = qb.op("ADD", [x, x])  # no FAKE_QUANT on the output
    y = qb.op("RELU6", [y], None, (0, 6))
    with pytest.raises(ExportError, match=r"%add \(ADD 'add'\)"):
        lower(qb.output(y))


def test_refuses_nan_constant():
    g, _ = _conv_graph()
    g.tensors["b"].data[0] = np.nan
    with pytest.raises(NumericsError, match="%b"):
        lower(g)


def test_all_zero_channel_gets_usable_scale():
    qb = QB(seed=0)
    x = qb.input("x", [1, 4, 4, 2], -1, 1)
    w = qb.rng.normal(0, 0.3, (3, 1, 1, 2)).astype(np.float32)
    w[1] = 0
    b = qb.g.const(np.array([0.0, 5.0, 0.1], np.float32), name="b")
    y = qb.op("CONV_2D", [x, qb.weight(w, 0), b], None, (-6, 6))
    with pytest.warns(UserWarning, match="all-zero channels"):
        lg = lower(qb.output(y))
    conv = next(n for n in lg.nodes if n.op == "CONV_2D")
    bq = conv.inputs[2]
    assert abs(int(bq.data[1])) < 2**31 - 1
    assert abs(bq.data[1] * bq.quant.scale[1] - 5.0) < 1e-3
    with pytest.warns(UserWarning):
        assert compare_all(qb.g) == {"reference": 0, "xnnpack": 0}


def test_clip_becomes_relu6_and_batch_norm_is_refused():
    qb = QB()
    x = qb.input("x", [1, 4], -1, 8)
    g = qb.output(qb.op("CLIP", [x], {"min": 0.0, "max": 6.0}, (0, 6)))
    # a RELU6 (CLIP's lowering) on its own is written as ADD(x, 0) + fused RELU6, which
    # XNNPACK takes (step xnn_forms)
    assert [(n.op, n.attrs.get("fused_activation")) for n in lower(g).nodes] == \
        [("ADD", "RELU6")]
    qb = QB()
    x = qb.input("x", [1, 4], -1, 8)
    c = [qb.g.const(np.ones(4, np.float32)) for _ in range(4)]
    g = qb.output(qb.op("BATCH_NORM", [x, *c], None, (-1, 1)))
    with pytest.raises(ExportError, match="BATCH_NORM"):
        lower(g)


def test_op_without_int8_kernel_is_a_float_island_strict_refuses_it():
    qb = QB()
    x = qb.input("x", [1, 4], -1, 1)
    g = qb.output(qb.op("EXP", [x], None, (0, 3)))
    assert [n.op for n in lower(g).nodes] == ["DEQUANTIZE", "EXP", "QUANTIZE"]
    from qatir.tflite_writer import to_tflite

    with pytest.raises(ExportError, match=r"'exp' \(EXP\).*strict_int8"):
        to_tflite(g, strict_int8=True)


def test_saturated_relu6_bound_is_dropped():
    """On a tiny output scale 6/scale overflows int32 and LiteRT refuses the node; the bound
    clamps nothing there, so lowering drops it (RELU6 -> RELU) and the model runs exactly."""
    qb = QB(seed=0)
    x = qb.input("x", [1, 4, 4, 2], -1e-8, 1e-8)
    y = qb.conv("CONV_2D", x, [3, 1, 1, 2], {"fused_activation": "RELU6"}, (0, 1e-8), wscale=0.5)
    y = qb.conv("CONV_2D", y, [3, 1, 1, 3], {"fused_activation": "RELU6"}, (0, 8), wscale=0.5)
    g = qb.output(y)
    acts = [n.attrs["fused_activation"] for n in lower(g).nodes if n.op == "CONV_2D"]
    assert acts == ["RELU", "RELU6"]
    assert compare_all(g) == {"reference": 0, "xnnpack": 0}


def test_refuses_fused_activation_without_int8_kernel():
    qb = QB()
    x = qb.input("x", [1, 4], -1, 1)
    g = qb.output(qb.op("ADD", [x, x], {"fused_activation": "TANH"}, (-1, 1)))
    with pytest.raises(ExportError, match=r"'add' \(ADD, TANH\)"):
        lower(g)

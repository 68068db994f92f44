"""16x8: int16 activations, int8 weights, int64 biases, from ``[[int16]]`` table entries.

Single ops and small graphs bit for bit against LiteRT under BUILTIN_REF and the default
resolver (XNNPACK delegates no int16 op; the builtin kernels run them), mixed int8/int16
graphs with requantizing QUANTIZE nodes at the region edges, the op versions and options
the writer sets, QAT through a 16-bit region, and the errors a user can cause.
"""

from __future__ import annotations

import os
import tomllib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import qatir  # noqa: E402
from qatir.errors import ExportError, TableError  # noqa: E402
from qatir.int16 import INT16_OPS, INT16_VERSION  # noqa: E402
from qatir.lower import lower  # noqa: E402
from qatir.reference_int16 import KERNELS, mbqm64  # noqa: E402
from qatir.table import builtin_tables  # noqa: E402
from qatir.tflite_writer import to_tflite  # noqa: E402
from tests.helpers import QB, compare_all, file_ops  # noqa: E402
from tests.helpers.graphs import mobile_block  # noqa: E402


def fq16(qb: QB, t, m: float):
    """A 16-bit activation fake-quant as insert_fake_quant writes it (symmetric, narrow)."""
    return qb.fq(t, -m, m, bits=16, narrow=True)


def _single(which: str):
    qb = QB(0)
    x16 = fq16(qb, qb.input("x", [1, 8, 8, 4], -1.0, 1.3), 1.5)
    z16 = fq16(qb, qb.input("z", [1, 8, 8, 4], -2.0, 2.0), 2.2)
    same = {"padding": "SAME", "stride": [1, 1]}
    if which == "conv":
        y = fq16(qb, qb.conv("CONV_2D", x16, [6, 3, 3, 4], same, None), 4.0)
    elif which == "conv_relu6_strided":
        y = fq16(qb, qb.conv("CONV_2D", x16, [6, 3, 3, 4], {"padding": "SAME", "stride": [2, 2],
                                                            "fused_activation": "RELU6"}, None), 4.0)
    elif which == "depthwise":
        y = fq16(qb, qb.conv("DEPTHWISE_CONV_2D", x16, [1, 3, 3, 4],
                             {"padding": "SAME", "stride": [2, 2], "depth_multiplier": 1}, None), 3.0)
    elif which == "fc":
        r = qb.op("RESHAPE", [x16], {"new_shape": [1, 256]})
        y = fq16(qb, qb.conv("FULLY_CONNECTED", r, [10, 256], {}, None), 8.0)
    elif which == "add":
        y = fq16(qb, qb.op("ADD", [x16, z16]), 3.1)
    elif which == "sub":
        y = fq16(qb, qb.op("SUB", [x16, z16]), 3.1)
    elif which == "sub_broadcast":  # the broadcast kernels (five-fold / generic)
        r = fq16(qb, qb.op("MAX_POOL_2D", [z16], {"filter": [8, 8], "stride": [8, 8]}), 2.2)
        y = fq16(qb, qb.op("SUB", [r, x16], {"fused_activation": "RELU"}), 4.0)
    elif which == "mul":
        y = fq16(qb, qb.op("MUL", [x16, z16]), 2.5)
    elif which == "avg_pool":
        y = qb.op("AVERAGE_POOL_2D", [x16], {"filter": [3, 3], "stride": [2, 2], "padding": "SAME"})
        y = fq16(qb, y, 1.5)
    elif which == "max_pool":
        y = qb.op("MAX_POOL_2D", [x16], {"filter": [2, 2], "stride": [2, 2], "padding": "VALID"})
    elif which == "concat":
        z = fq16(qb, qb.input("w", [1, 8, 8, 4], -2, 2), 1.5)
        y = fq16(qb, qb.op("CONCATENATION", [x16, z], {"axis": 3}), 1.5)
    elif which == "pad":
        y = qb.op("PAD", [x16], {"paddings": [[0, 0], [1, 1], [2, 0], [0, 0]]})
    elif which == "padv2":
        y = qb.op("PAD", [x16], {"paddings": [[0, 0], [1, 1], [2, 0], [0, 0]],
                                 "constant_value": -0.75})
    elif which == "transpose":
        y = qb.op("TRANSPOSE", [x16], {"perm": [0, 2, 1, 3]})
    elif which == "strided_slice":
        y = qb.op("STRIDED_SLICE", [x16], {"begin": [0, 1, 0, 0], "end": [1, 7, 8, 4],
                                           "strides": [1, 2, 1, 1]})
    elif which == "squeeze":
        p = qb.op("MAX_POOL_2D", [x16], {"filter": [8, 8], "stride": [8, 8]})
        y = qb.op("SQUEEZE", [p], {"squeeze_dims": [1, 2]})
    elif which == "resize_nearest":
        y = qb.op("RESIZE_NEAREST_NEIGHBOR", [x16], {"size": [16, 12], "align_corners": False,
                                                     "half_pixel_centers": True})
    else:  # int16 conv whose output goes back to int8
        y = fq16(qb, qb.conv("CONV_2D", x16, [6, 1, 1, 4], same, None), 4.0)
        y = qb.fq(y, -0.5, 3.5)
    return qb.output(y)


SINGLE = ["conv", "conv_relu6_strided", "depthwise", "fc", "add", "sub", "sub_broadcast", "mul", "avg_pool", "max_pool",
          "concat", "pad", "padv2", "transpose", "strided_slice", "squeeze", "resize_nearest",
          "back_to_int8"]


@pytest.mark.parametrize("which", SINGLE)
def test_single_op_bit_exact_both_resolvers(which):
    g = _single(which)
    assert compare_all(g) == {"reference": 0, "xnnpack": 0}


def test_file_has_16x8_types_versions_and_options():
    ops, types = file_ops(to_tflite(_single("conv"), io="int8"))
    assert ops == [("QUANTIZE", 2), ("CONV_2D", 8)]
    vals = list(types.values())
    assert vals.count("INT16") == 2 and vals.count("INT64") == 1  # conv in/out, its bias
    ops, _ = file_ops(to_tflite(_single("add"), io="int8"))
    assert ("ADD", INT16_VERSION["ADD"]) in ops
    ops, _ = file_ops(to_tflite(_single("fc"), io="int8"))
    assert ("FULLY_CONNECTED", 11) in ops


def test_every_int16_op_has_a_kernel_and_a_version():
    from qatir.ops import get_op
    from qatir.reference_int16 import DATA_MOVEMENT

    for op in INT16_OPS:
        assert get_op(op).int16, f"{op}: LiteRT has no int16 kernel"
        assert op in KERNELS or op in DATA_MOVEMENT, f"{op}: no int16 reference kernel"
    for op in ("HARD_SWISH", "SPACE_TO_DEPTH"):  # LiteRT has no int16 kernel for them
        assert op not in INT16_OPS


def test_mbqm64_rounds_like_litert():
    # reduced multiplier (2^30 + 2^15) >> 16 = 2^14 + 0 (2^14 exactly after the shift),
    # total shift 15 - 0: x * 2^14 / 2^15 = x / 2, rounded half up
    qm = np.int64(1 << 30)
    assert mbqm64(np.array([3, -3, 5, -5]), qm, 0).tolist() == [2, -1, 3, -2]
    assert mbqm64(np.array([1 << 40]), np.int64(0x7FFF0000), 0).tolist() == [(1 << 40) * 0x7FFF >> 15]


def _table(int16):
    data = tomllib.loads(builtin_tables()["int8_default"].read_text())
    data["int16"] = int16
    return data


def _quantized(int16, seed=0):
    g = mobile_block(seed=seed, hw=8)
    q = qatir.quantize(g, table=_table(int16))
    rng = np.random.default_rng(seed)
    qatir.calibrate(q, [{"x": rng.normal(size=(1, 8, 8, 3)).astype(np.float32)}
                        for _ in range(4)])
    return q


def test_whole_model_16x8_bit_exact():
    q = _quantized([{"name": "."}])
    low = lower(q, io="int8")
    wide = {n.name for n in low.nodes if n.outputs[0].dtype == np.int16}
    assert {"conv0", "dw1", "conv2", "avg", "maxp", "cat", "flat", "fc3", "fc4"} <= wide
    # no int16 kernel: HARD_SWISH stays int8 between requantizing QUANTIZEs; SOFTMAX is int16
    kept = {n.op: n.outputs[0].dtype for n in low.nodes}
    assert kept["HARD_SWISH"] == np.int8 and kept["SOFTMAX"] == np.int16
    assert compare_all(q) == {"reference": 0, "xnnpack": 0}


def test_mixed_region_by_name_and_op():
    q = _quantized([{"name": "^dw1$"}, {"ops": ["FULLY_CONNECTED"]}])
    low = lower(q, io="int8")
    dtypes = {n.name: n.outputs[0].dtype for n in low.nodes}
    assert dtypes["dw1"] == np.int16 and dtypes["fc3"] == np.int16 and dtypes["fc4"] == np.int16
    assert dtypes["conv0"] == np.int8 and dtypes["conv2"] == np.int8
    req = [n for n in low.nodes if n.op == "QUANTIZE" and n.inputs[0].dtype != np.float32]
    pairs = {(n.inputs[0].dtype.name, n.outputs[0].dtype.name) for n in req}
    assert pairs == {("int8", "int16"), ("int16", "int8")}
    assert compare_all(q) == {"reference": 0, "xnnpack": 0}


def test_int16_add_of_a_constant_exports_bit_exact():
    """An int16 ADD of a constant (YOLOv8n's box decode): the constant's int8 values go onto
    the int16 grid (zero point 0, same scale), as LiteRT's int16 ADD reads both inputs."""
    from qatir.ir import Graph
    from qatir.recipes import table_with
    from qatir.table import load_table

    rng = np.random.default_rng(0)
    g = Graph("add_const")
    x = g.add_input("x", [1, 8, 8, 4])
    w = (rng.normal(size=(4, 1, 1, 4)) * 0.4).astype(np.float32)
    y = g.add_node("CONV_2D", [x, g.const(w, "w"), g.const(np.zeros(4, np.float32), "b")],
                   {"padding": "SAME"}, name="c1").output
    k = g.const(rng.normal(size=(1, 1, 1, 4)).astype(np.float32), "k")
    y = g.add_node("ADD", [k, y], name="add").output
    g.outputs = [g.add_node("CONV_2D", [y, g.const(w, "w2"), g.const(np.zeros(4, np.float32),
                                                                      "b2")],
                            {"padding": "SAME"}, name="c2").output]
    g.verify()
    q = qatir.quantize(g, table=table_with(dict(load_table(None).data), ["c1", "add", "c2"], []))
    qatir.calibrate(q, [{"x": rng.normal(size=(1, 8, 8, 4)).astype(np.float32)}
                        for _ in range(4)])
    low = lower(q, io="int8")
    add = next(n for n in low.nodes if n.op == "ADD")
    assert [t.dtype for t in add.inputs] == [np.int16, np.int16]
    assert add.inputs[0].is_const and add.inputs[0].quant.zero_point == (0,)
    assert compare_all(q) == {"reference": 0, "xnnpack": 0}


def test_int16_closer_to_float_than_int8():
    g = mobile_block(seed=3, hw=8)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 8, 8, 3)).astype(np.float32)
    want = qatir.run(g, {"x": x})["probs"]
    errs = {}
    for key, int16 in (("int8", []), ("int16", [{"name": "."}])):
        q = _quantized(int16, seed=3)
        low = lower(q, io="float")
        from qatir.reference import run_lowered

        errs[key] = float(np.abs(run_lowered(low, {"x": x})["probs"] - want).max())
    assert errs["int16"] < errs["int8"]


def test_qat_with_int16_region_exports():
    import keras

    q = _quantized([{"ops": ["CONV_2D", "DEPTHWISE_CONV_2D"]}], seed=1)
    fqs = [n for n in q.nodes if n.op == "FAKE_QUANT" and n.attrs["bits"] == 16]
    assert fqs and all(n.attrs["narrow_range"] and n.attrs["symmetric"] for n in fqs)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 8, 8, 3)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 16)]
    before = float(q.tensors["w0_bn"].data.sum()) if "w0_bn" in q.tensors else None
    qatir.fit(q, [({"x": x[i:i + 1]}, y[i:i + 1]) for i in range(16)], loss="categorical_crossentropy",
              optimizer=keras.optimizers.Adam(0.01), epochs=2, verbose=False)
    if before is not None:
        assert float(q.tensors["w0_bn"].data.sum()) != before
    for n in q.nodes:
        if n.op == "FAKE_QUANT" and n.attrs["bits"] == 16:
            assert n.outputs[0].quant.zero_point == (0,)
    assert compare_all(q) == {"reference": 0, "xnnpack": 0}


def test_asymmetric_16bit_activation_refused():
    qb = QB(0)
    x16 = qb.fq(qb.input("x", [1, 4, 4, 2], -1.0, 1.0), -1.0, 3.0, bits=16)
    g = qb.output(qb.op("MAX_POOL_2D", [x16], {"filter": [2, 2], "stride": [2, 2]}))
    with pytest.raises(ExportError, match="x_q_fq.*zero point -16384"):
        to_tflite(g)


def test_int16_entry_with_unknown_op_refused():
    with pytest.raises(TableError, match=r"int16\[0\]\.ops: unknown op 'CONVV'"):
        qatir.quantize(mobile_block(), table=_table([{"ops": ["CONVV"]}]))


def test_float_island_inside_an_int16_region():
    data = _table([{"name": "."}])
    data["exclude"] = [{"name": "^conv2$"}]
    g = mobile_block(seed=2, hw=8)
    q = qatir.quantize(g, table=data)
    rng = np.random.default_rng(2)
    qatir.calibrate(q, [{"x": rng.normal(size=(1, 8, 8, 3)).astype(np.float32)}
                        for _ in range(4)])
    low = lower(q, io="int8")
    conv2 = next(n for n in low.nodes if n.name == "conv2")
    assert conv2.outputs[0].dtype == np.float32
    assert conv2.inputs[0].producer.op == "DEQUANTIZE"
    assert conv2.inputs[0].producer.inputs[0].dtype == np.int16
    exits = [u for u in conv2.outputs[0].users if u.op == "QUANTIZE"]
    assert exits  # the island's exit: quantized at the width of its first reader
    assert compare_all(q) == {"reference": 0, "xnnpack": 0}


def test_float_edges_dequantize_an_int16_output():
    from qatir.reference import run_lowered
    from tests.helpers import litert_run

    g = _single("conv")
    buf = to_tflite(g, io="float")
    ops, _ = file_ops(buf)
    assert ("DEQUANTIZE", INT16_VERSION["DEQUANTIZE"]) in ops
    low = lower(g, io="float")
    rng = np.random.default_rng(4)
    feeds = {t.name: rng.normal(size=t.shape).astype(np.float32) for t in low.inputs}
    want = run_lowered(low, feeds)
    for ref in (True, False):
        got, _ = litert_run(buf, feeds, ref)
        for name, arr in want.items():
            np.testing.assert_array_equal(got[name], arr)


def test_fake_quant_bias_of_a_16x8_conv_is_not_clipped_at_int32():
    """At 16-bit input scales a bias of 10 is beyond int32 (scale ~2.4e-9): export keeps it
    in int64, and the fake-quant run (what QAT trains) must agree."""
    from qatir.quant import params_for, refresh_quant
    from qatir.reference import run_reference

    qb = QB(0)
    x16 = fq16(qb, qb.input("x", [1, 4, 4, 2], -1.0, 1.0), 1.0)
    w = qb.weight(np.full((3, 1, 1, 2), 0.01, np.float32), 0, name="w")
    b = qb.g.const(np.full(3, 10.0, np.float32), name="b")
    g = qb.output(fq16(qb, qb.op("CONV_2D", [x16, w, b], {"padding": "SAME"}), 16.0))
    refresh_quant(g)
    x = np.random.default_rng(0).integers(-128, 128, (1, 4, 4, 2)).astype(np.int8)
    xq = params_for(g.inputs[0].users[0])
    fake = qatir.run(g, {"x": ((x.astype(np.float32) - xq.zero_point[0]) * xq.scale[0])})
    out = g.outputs[0]
    ints = run_reference(g, {"x": x})[out.name].astype(np.float64) * out.quant.scale[0]
    assert np.abs(fake[out.name] - 10.0).max() < 0.1  # not clipped to ~5
    np.testing.assert_allclose(fake[out.name], ints, atol=2 * out.quant.scale[0])


# ---------------------------------------------------- int16 LOGISTIC, TANH, SOFTMAX, MEAN

def _worst(g, feeds) -> dict[str, int]:
    """Max |LiteRT - reference| per resolver on int16 ``feeds`` (0: bit exact)."""
    from qatir.reference import run_reference
    from tests.helpers import litert_run

    buf = to_tflite(g, io="int8")
    worst = {}
    for mode, ref in (("reference", True), ("xnnpack", False)):
        got, _ = litert_run(buf, feeds, ref)
        want = run_reference(g, feeds, kernels=mode)
        worst[mode] = max(int(np.abs(got[k].astype(np.int32) - want[k].astype(np.int32)).max())
                          for k in want)
    return worst


def _int16_in(shape, m: float):
    """A graph whose input is itself int16 (a 16-bit FAKE_QUANT on it), scale m/32767."""
    qb = QB(0)
    return qb, fq16(qb, qb.g.add_input("x", shape), m)


EVERY_INT16 = np.arange(-32768, 32768, dtype=np.int16).reshape(1, 64, 1024)


@pytest.mark.parametrize("op", ["LOGISTIC", "TANH"])
@pytest.mark.parametrize("m", [0.5, 3.0, 8.0, 8.5, 16.0, 40.0, 1000.0])
def test_logistic_tanh_int16_every_input_both_resolvers(op, m):
    """All 65536 inputs. Range 8 (scale 2^-12) is LiteRT's power-of-two case for both ops and
    16 (2^-11) for TANH: the default resolver runs gemmlowp's int16 fixed point there, the
    reference kernel the sigmoid table; elsewhere both run the table."""
    from qatir.reference_int16_act import pot_case

    qb, x16 = _int16_in([1, 64, 1024], m)
    g = qb.output(qb.op(op, [x16]))
    ops, types = file_ops(to_tflite(g, io="int8"))
    assert ops == [(op, 3)] and set(types.values()) == {"INT16"}
    low = lower(g, io="int8")
    assert low.outputs[0].quant.scale == (1.0 / 32768,) and low.outputs[0].quant.zero_point == (0,)
    assert pot_case(op, low.inputs[0].quant.scale[0]) == (m == 8.0 or (op == "TANH" and m == 16.0))
    assert _worst(g, {"x": EVERY_INT16}) == {"reference": 0, "xnnpack": 0}


@pytest.mark.parametrize("m,beta", [(0.5, 1.0), (4.0, 1.0), (30.0, 1.0), (1000.0, 1.0), (6.0, 0.5)])
def test_softmax_int16_both_resolvers(m, beta):
    qb, x16 = _int16_in([2, 16, 100], m)
    g = qb.output(qb.op("SOFTMAX", [x16], {"beta": beta}))
    assert file_ops(to_tflite(g, io="int8"))[0] == [("SOFTMAX", 3)]
    rng = np.random.default_rng(int(m))
    x = rng.integers(-32768, 32768, (2, 16, 100)).astype(np.int16)
    x[0] //= 256  # rows close to flat as well as spread out
    assert _worst(g, {"x": x}) == {"reference": 0, "xnnpack": 0}


@pytest.mark.parametrize("axis,keep,m_out", [([1, 2], True, 0.7), ([2], False, 3.0),
                                              ([1], False, 0.05)])
def test_mean_int16_both_resolvers(axis, keep, m_out):
    qb, x16 = _int16_in([1, 7, 9, 24], 3.0)
    g = qb.output(fq16(qb, qb.op("MEAN", [x16], {"axis": axis, "keep_dims": keep}), m_out))
    assert file_ops(to_tflite(g, io="int8"))[0] == [("MEAN", 3)]
    x = np.random.default_rng(5).integers(-32768, 32768, (1, 7, 9, 24)).astype(np.int16)
    assert _worst(g, {"x": x}) == {"reference": 0, "xnnpack": 0}


def _silu_net(seed: int = 0):
    """conv → BN → x·sigmoid(x) (SiLU) → global mean → FC → BN → x·sigmoid(x) → FC → tanh."""
    from qatir.ir import Graph
    from tests.helpers.graphs import batch_norm

    rng = np.random.default_rng(seed)
    g = Graph("silu_net")
    x = g.add_input("x", [1, 8, 8, 3])
    y = g.add_node("CONV_2D", [x, g.const(rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32), "w0"),
                               g.const(rng.normal(0, 0.2, 8).astype(np.float32), "b0")],
                   {"padding": "SAME"}, name="conv0").output
    y = batch_norm(g, y, rng, "bn0")
    s = g.add_node("LOGISTIC", [y], name="sig0").output
    y = g.add_node("MUL", [y, s], name="silu0").output
    y = g.add_node("MEAN", [y], {"axis": [1, 2], "keep_dims": False}, name="gap").output
    y = g.add_node("FULLY_CONNECTED", [y, g.const(rng.normal(0, 0.4, (12, 8)).astype(np.float32), "w1"),
                                       g.const(rng.normal(0, 0.2, 12).astype(np.float32), "b1")],
                   name="fc1").output
    s = g.add_node("LOGISTIC", [y], name="sig1").output
    y = g.add_node("MUL", [y, s], name="silu1").output
    y = g.add_node("FULLY_CONNECTED", [y, g.const(rng.normal(0, 0.4, (5, 12)).astype(np.float32), "w2")],
                   name="fc2").output
    y = g.add_node("TANH", [y], name="tanh", outputs=["out"]).output
    g.outputs = [y]
    g.verify()
    return g


def _silu_quantized(int16, seed=0):
    q = qatir.quantize(_silu_net(seed), table=_table(int16))
    rng = np.random.default_rng(seed)
    qatir.calibrate(q, [{"x": rng.normal(size=(1, 8, 8, 3)).astype(np.float32)} for _ in range(4)])
    return q


def test_silu_graph_all_int16_bit_exact():
    q = _silu_quantized([{"name": "."}])
    low = lower(q, io="int8")
    dtypes = {n.name: n.outputs[0].dtype for n in low.nodes}
    for name in ("conv0", "sig0", "silu0", "gap", "fc1", "sig1", "silu1", "fc2", "tanh"):
        assert dtypes[name] == np.int16, name
    sig = next(n for n in low.nodes if n.name == "sig0")
    assert sig.outputs[0].quant.scale == (1.0 / 32768,)
    assert compare_all(q) == {"reference": 0, "xnnpack": 0}


def test_silu_graph_mixed_int8_int16_bit_exact():
    q = _silu_quantized([{"ops": ["LOGISTIC", "MUL", "MEAN"]}], seed=1)
    low = lower(q, io="int8")
    dtypes = {n.name: n.outputs[0].dtype for n in low.nodes}
    assert dtypes["conv0"] == np.int8 and dtypes["fc1"] == np.int8 and dtypes["tanh"] == np.int8
    assert dtypes["sig0"] == np.int16 and dtypes["silu0"] == np.int16 and dtypes["gap"] == np.int16
    req = {(n.inputs[0].dtype.name, n.outputs[0].dtype.name) for n in low.nodes
           if n.op == "QUANTIZE" and n.inputs[0].dtype != np.float32}
    assert req == {("int8", "int16"), ("int16", "int8")}
    assert compare_all(q) == {"reference": 0, "xnnpack": 0}


def test_int16_silu_closer_to_float_than_int8():
    from qatir.reference import run_lowered

    g = _silu_net(2)
    x = np.random.default_rng(2).normal(size=(1, 8, 8, 3)).astype(np.float32)
    want = qatir.run(g, {"x": x})["out"]
    errs = {}
    for key, int16 in (("int8", []), ("int16", [{"name": "."}])):
        low = lower(_silu_quantized(int16, seed=2), io="float")
        errs[key] = float(np.abs(run_lowered(low, {"x": x})["out"] - want).max())
    assert errs["int16"] < errs["int8"]  # weights stay int8 in both: their error remains


def test_int8_in_int16_out_softmax_keeps_version_2():
    """The wide_softmax step's SOFTMAX (int8 in, int16 out) is the int8 kernel: version 2."""
    qb = QB(0)
    x = qb.input("x", [1, 1000], -8.0, 8.0)
    g = qb.output(qb.op("SOFTMAX", [x], {"beta": 1.0}, rng=(0.0, 255 / 256), name="head"))
    assert file_ops(to_tflite(g, io="int8"))[0] == [("SOFTMAX", 2), ("QUANTIZE", 1)]


def test_tiny_int16_logistic_input_is_floored_and_bit_exact():
    """A dead channel's range (scale ~1e-14, below LiteRT's multiplier floor) reaches the int16
    LOGISTIC through a QUANTIZE onto 2^-30: sigmoid 0.5, bit exact; the MUL of SiLU keeps the
    fine grid."""
    from qatir.lowering.int16 import LUT16_MIN_INPUT_SCALE

    qb, x16 = _int16_in([1, 64, 1024], 32767 * 1e-14)
    s = qb.op("LOGISTIC", [x16])
    g = qb.output(fq16(qb, qb.op("MUL", [x16, s]), 32767 * 0.6e-14))
    low = lower(g, io="int8")
    sig = next(n for n in low.nodes if n.op == "LOGISTIC")
    assert sig.inputs[0].producer.op == "QUANTIZE"
    assert sig.inputs[0].quant.scale == (LUT16_MIN_INPUT_SCALE,)
    mul = next(n for n in low.nodes if n.op == "MUL")
    assert mul.inputs[0].quant.scale[0] < 1e-13
    assert _worst(g, {"x": EVERY_INT16}) == {"reference": 0, "xnnpack": 0}


@pytest.mark.parametrize("shapes,scales", [
    (([1, 16, 64], [1, 16, 64]), (3.0, 2.2, 4.0)),    # elementwise (vector loop + tail)
    (([1, 2, 8400], [1, 2, 8400]), (80.0, 80.0, 100.0)),  # YOLOv8n's box decode, ~ x2y2 - x1y1
    (([1, 16, 64], [1, 1, 64]), (1.0, 5.0, 5.5)),     # broadcast: five-fold
    (([1, 1, 63], [1, 16, 1]), (2.0, 0.7, 2.5)),      # broadcast: generic
])
def test_sub_int16_full_range_both_resolvers(shapes, scales):
    """int16 SUB (version 5, pot_scale_int16 false) on random int16 values over the whole
    range, both input orders of a broadcast; LiteRT's default resolver runs
    optimized_integer_ops::Sub, BUILTIN_REF reference_ops::Sub."""
    qb = QB(0)
    a = fq16(qb, qb.g.add_input("a", shapes[0]), scales[0])
    b = fq16(qb, qb.g.add_input("b", shapes[1]), scales[1])
    g = qb.output(fq16(qb, qb.op("SUB", [a, b]), scales[2]),
                  fq16(qb, qb.op("SUB", [b, a], name="rev"), scales[2]))
    ops, _ = file_ops(to_tflite(g, io="int8"))
    assert ops == [("SUB", 5), ("SUB", 5)]
    rng = np.random.default_rng(len(shapes[0]))
    feeds = {"a": rng.integers(-32768, 32768, shapes[0]).astype(np.int16),
             "b": rng.integers(-32768, 32768, shapes[1]).astype(np.int16)}
    assert _worst(g, feeds) == {"reference": 0, "xnnpack": 0}


def test_int16_sub_scale_ratio_refused():
    qb = QB(0)
    a = fq16(qb, qb.g.add_input("a", [1, 4]), 100.0)
    b = fq16(qb, qb.g.add_input("b", [1, 4]), 1.0)
    g = qb.output(fq16(qb, qb.op("SUB", [a, b], name="s"), 100.0 / 2**14))
    with pytest.raises(ExportError, match="'s' \\(SUB, int16\\): input scale / output scale"):
        to_tflite(g)


def test_int16_sub_outside_xnnpack_ratios_is_not_warned_about():
    """In/out scale 300 is outside XNNPACK's ADD/SUB limits, but XNNPACK delegates no int16
    op: no warning, and bit exact."""
    import warnings

    qb = QB(0)
    a = fq16(qb, qb.g.add_input("a", [1, 64]), 300.0)
    b = fq16(qb, qb.g.add_input("b", [1, 64]), 2.0)
    g = qb.output(fq16(qb, qb.op("SUB", [a, b]), 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        buf = to_tflite(g, io="int8")
    assert file_ops(buf)[0] == [("SUB", 5)]
    rng = np.random.default_rng(2)
    feeds = {k: rng.integers(-32768, 32768, (1, 64)).astype(np.int16) for k in "ab"}
    assert _worst(g, feeds) == {"reference": 0, "xnnpack": 0}


def test_bias_correction_of_an_int16_conv_reading_an_int8_value():
    """conv2 (int16) reads dw1's int8 output through a 16-bit edge FAKE_QUANT: bias
    correction finds its float input behind both FAKE_QUANTs, and the file stays bit exact."""
    data = _table([{"name": "^conv2$"}])
    data["calibration"]["bias_correction"] = True
    q = qatir.quantize(mobile_block(seed=4, hw=8), table=data)
    conv2 = next(n for n in q.nodes if n.name == "conv2")
    edge = conv2.inputs[0].producer
    assert edge.op == "FAKE_QUANT" and edge.attrs["bits"] == 16
    assert edge.inputs[0].producer.op == "FAKE_QUANT"  # dw1's own 8-bit one
    rng = np.random.default_rng(4)
    qatir.calibrate(q, [{"x": rng.normal(size=(1, 8, 8, 3)).astype(np.float32)}
                        for _ in range(4)])
    assert "conv2" in q.metadata["bias_corrections"]
    assert compare_all(q) == {"reference": 0, "xnnpack": 0}

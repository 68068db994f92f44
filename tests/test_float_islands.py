"""Float islands: nodes kept float by the table, or without an int8 kernel, export as float
ops between DEQUANTIZE and QUANTIZE; LiteRT (both resolvers) matches the reference: int8
tensors bit for bit, float tensors within ``reference_float.FLOAT_RTOL/ATOL``."""

from __future__ import annotations

import tomllib
import warnings

import numpy as np
import pytest

import qatir
from qatir.errors import ExportError
from qatir.ir import Graph
from qatir.lowering import lower
from qatir.reference import run_reference
from qatir.reference_float import close
from qatir.table import builtin_tables
from qatir.tflite_writer import FloatIslandWarning
from tests.helpers import int8_feed, litert_run
from tests.helpers.islands import compare_islands, export_quiet, op_names


def _table(**extra) -> dict:
    data = tomllib.loads(builtin_tables()["int8_default"].read_text())
    data.update(extra)
    return data


def _calibrated(g: Graph, table=None, seed: int = 0) -> Graph:
    q = qatir.quantize(g, table=table)
    rng = np.random.default_rng(seed)
    batches = [{t.name: rng.normal(0, 1, t.shape).astype(np.float32) for t in g.inputs}
               for _ in range(4)]
    from qatir.calibration import calibrate

    calibrate(q, batches, progress=False, engine="litert")
    return q


_export = export_quiet
_check = compare_islands
_ops = op_names


def _conv(g, x, cin, cout, name, rng, k=3, act="NONE"):
    w = g.const(rng.normal(0, 1 / np.sqrt(cin * k * k), (cout, k, k, cin)).astype(np.float32),
                f"{name}_w")
    b = g.const(rng.normal(0, 0.1, cout).astype(np.float32), f"{name}_b")
    return g.add_node("CONV_2D", [x, w, b], {"padding": "SAME", "fused_activation": act},
                      name=name, outputs=[name]).output


def yolo_head(seed: int = 0, decode_output: bool = False) -> Graph:
    """Two conv branches, a box decoder dividing one by the other (DIV by a non-constant)."""
    rng = np.random.default_rng(seed)
    g = Graph("yolo_head")
    x = g.add_input("x", [1, 8, 8, 4])
    num = _conv(g, x, 4, 8, "num", rng)
    den = _conv(g, x, 4, 8, "den", rng, act="RELU")
    den = g.add_node("ADD", [den, g.const(np.full((1, 1, 1, 8), 1.0, np.float32), "one")],
                     name="den_plus_1").output
    d = g.add_node("DIV", [num, den], name="decode", outputs=["decode"]).output
    g.outputs = [d] if decode_output else [_conv(g, d, 8, 4, "head", rng, k=1)]
    return g


def test_div_by_a_tensor_is_a_float_island_between_dequantize_and_quantize():
    q = _calibrated(yolo_head())
    assert "decode" in q.metadata["float_nodes"]
    lowered = lower(q)
    assert lowered.metadata["float_islands"] == ["decode"]
    ops = _ops(_export(q))
    i = ops.index("DIV")
    assert ops[i - 2:i + 2] == ["DEQUANTIZE", "DEQUANTIZE", "DIV", "QUANTIZE"]
    assert ops.count("DEQUANTIZE") == 2 and ops.count("QUANTIZE") == 1
    # the QUANTIZE after the island carries the FAKE_QUANT of that edge
    fq = next(n for n in q.nodes if n.op == "FAKE_QUANT" and n.inputs[0].name == "decode")
    quant = next(n for n in lowered.nodes if n.op == "QUANTIZE" and n.inputs[0].name == "decode")
    assert quant.output.quant.scale == fq.output.quant.scale
    # XNNPACK takes the whole mixed graph: the float island is not left to builtin kernels
    from qatir.parity import xnnpack_coverage

    assert all(taken for _, taken in xnnpack_coverage(_export(q)))
    seen = _check(q)
    assert seen["float"] > 0 and seen["int8"] > 0


def test_float_output_of_a_box_decoder():
    q = _calibrated(yolo_head(decode_output=True))
    buf = _export(q, io="int8")
    feeds = int8_feed(q, 4)
    for mode, ref in (("reference", True), ("xnnpack", False)):
        got, _ = litert_run(buf, feeds, ref)
        want = run_reference(q, feeds, kernels=mode)
        assert want["decode"].dtype == np.float32
        assert close(got["decode"], want["decode"])


def test_one_shared_dequantize_per_tensor():
    rng = np.random.default_rng(3)
    g = Graph("shared")
    x = g.add_input("x", [1, 6, 6, 4])
    c = _conv(g, x, 4, 4, "c", rng)
    e1 = g.add_node("EXP", [c], name="exp1").output
    e2 = g.add_node("ABS", [c], name="abs1").output
    s = g.add_node("ADD", [e1, e2], name="sum").output
    g.outputs = [_conv(g, s, 4, 4, "out", rng, k=1)]
    q = _calibrated(g)
    ops = _ops(_export(q))
    # one DEQUANTIZE for the conv output both islands read, one QUANTIZE per tensor leaving
    assert ops.count("DEQUANTIZE") == 1 and ops.count("QUANTIZE") == 2
    assert {"EXP", "ABS"} <= set(ops)
    assert _check(q)["float"] > 0


def test_no_int8_kernel_strict_refuses_default_warns_once():
    q = _calibrated(yolo_head())
    with pytest.raises(ExportError, match=r"'decode' \(DIV\).*strict_int8"):
        qatir.to_tflite(q, strict_int8=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qatir.to_tflite(q)
    msgs = [str(w.message) for w in caught if issubclass(w.category, FloatIslandWarning)]
    assert len(msgs) == 1
    assert "'decode' (DIV, 0.0% of MACs)" in msgs[0] and "int8: 4 of 5 nodes" in msgs[0]


def test_user_excluded_conv_exports_as_a_float_conv():
    table = _table(exclude=[{"name": "^num$"}])
    q = _calibrated(yolo_head(), table=table)
    assert set(q.metadata["float_nodes"]) == {"num", "decode"}
    from qatir.lowering.islands import format_summary, summary

    line = format_summary(summary(q))
    assert line.startswith("int8: 3 of 5 nodes (") and "'num' (CONV_2D" in line
    lowered = lower(q)
    conv = next(n for n in lowered.nodes if n.name == "num")
    assert conv.inputs[1].dtype == np.float32 and conv.inputs[2].dtype == np.float32
    assert conv.inputs[0].producer.op == "DEQUANTIZE"
    assert _check(q)["float"] > 0


def test_strict_export_of_an_all_int8_graph_passes():
    rng = np.random.default_rng(5)
    g = Graph("silu")
    x = g.add_input("x", [1, 6, 6, 4])
    c = _conv(g, x, 4, 4, "c", rng)
    s = g.add_node("LOGISTIC", [c], name="sig").output
    y = g.add_node("MUL", [c, s], name="silu").output
    g.outputs = [_conv(g, y, 4, 4, "out", rng, k=1)]
    q = _calibrated(g)
    assert q.metadata["float_nodes"] == []
    ops = _ops(qatir.to_tflite(q, strict_int8=True))
    assert "DEQUANTIZE" not in ops and ops.count("MUL") == 1
    assert _check(q)["float"] == 0


def test_qat_with_an_excluded_layer_trains_and_exports():
    pytest.importorskip("tensorflow")
    table = _table(exclude=[{"name": "^num$"}])
    q = _calibrated(yolo_head(), table=table)
    w_before = q.tensors["num_w"].data.copy()
    rng = np.random.default_rng(7)
    data = [({"x": rng.normal(0, 1, (2, 8, 8, 4)).astype(np.float32)},
             rng.normal(0, 1, (2, 8, 8, 4)).astype(np.float32)) for _ in range(3)]
    hist = qatir.fit(q, data, loss="mse", optimizer="adam", epochs=1, verbose=False)
    assert np.isfinite(hist["loss"]).all()
    assert not np.array_equal(q.tensors["num_w"].data, w_before)
    # the float layer has no fake-quant inside: its weight and output stay unquantized
    num = next(n for n in q.nodes if n.name == "num")
    assert num.inputs[1].producer is None
    assert not any(u.op == "FAKE_QUANT" for u in num.output.users)
    assert _check(q, seeds=(1,))["float"] > 0


def test_parity_report_marks_float_tensors():
    from qatir.parity import format_report, parity_report

    q = _calibrated(yolo_head())
    rows = parity_report(_export(q), q, n=2, resolver="ref", fake_quant=False)
    by_name = {r.tensor: r for r in rows}
    assert by_name["decode"].precision == "float" and by_name["decode"].max_abs <= 1e-5
    assert by_name["num"].precision == "int8" and by_name["num"].max_lsb == 0
    line = next(x for x in format_report(rows).splitlines() if x.startswith("decode "))
    assert " f32 " in line


def test_compile_prints_the_int8_share_and_strict_refuses(capsys, tmp_path):
    import onnx

    from qatir.cli import main
    from tests.helpers.onnx_models import OnnxBuilder

    b = OnnxBuilder(opset=13, seed=4)
    x = b.input("x", [1, 3, 8, 8])
    num, den = b.conv(x, 3, 4), b.node("Relu", [b.conv(x, 3, 4)])
    den = b.node("Add", [den, b.init(np.float32(1.0), "one")])
    b.node("Div", [num, den], out="y", name="box_decode")
    b.output("y", [1, 4, 8, 8])
    path = tmp_path / "head.onnx"
    onnx.save(b.model(), path)
    out = tmp_path / "head.tflite"
    rc = main(["compile", str(path), "-o", str(out), "--calib-random", "2", "--no-progress"])
    text = capsys.readouterr()
    assert rc == 0, text.err
    assert "int8: 3 of 4 nodes (100.0% of MACs); float: 'box_decode' (DIV, 0.0% of MACs)" \
        in text.out
    assert "DEQUANTIZE" in text.out and "DIV 1" in text.out
    rc = main(["compile", str(path), "-o", str(tmp_path / "strict.tflite"), "--calib-random",
               "2", "--no-progress", "--strict-int8"])
    err = capsys.readouterr().err
    assert rc == 2 and "'box_decode' (DIV)" in err and "strict_int8" in err
    assert not (tmp_path / "strict.tflite").exists()


def test_include_only_the_dense_layer_gives_a_float_input_and_an_int8_dense():
    rng = np.random.default_rng(0)
    g = Graph("dense_only")
    x = g.add_input("image", [1, 8, 8, 1])
    c = _conv(g, x, 1, 12, "conv", rng, act="RELU")
    p = g.add_node("MAX_POOL_2D", [c], {"filter": [2, 2], "stride": [2, 2]}, name="pool").output
    f = g.add_node("RESHAPE", [p], {"new_shape": [1, 192]}, name="flatten").output
    w = g.const(rng.normal(0, 0.1, (10, 192)).astype(np.float32), "dw")
    g.outputs = [g.add_node("FULLY_CONNECTED", [f, w], name="dense", outputs=["dense"]).output]
    q = _calibrated(g, table=_table(include=[{"name": "^dense$"}]))
    assert q.metadata["float_nodes"] == ["conv", "pool", "flatten"]
    buf = _export(q, io="int8")
    assert _ops(buf) == ["CONV_2D", "MAX_POOL_2D", "RESHAPE", "QUANTIZE", "FULLY_CONNECTED"]
    feeds = {"image": rng.normal(0, 1, (1, 8, 8, 1)).astype(np.float32)}  # a float input
    for mode, ref in (("reference", True), ("xnnpack", False)):
        got, _ = litert_run(buf, feeds, ref)
        want = run_reference(q, feeds, kernels=mode)
        assert want["dense"].dtype == np.int8 and np.array_equal(got["dense"], want["dense"])


@pytest.mark.parametrize("attrs", [{"align_corners": False, "half_pixel_centers": True},
                                   {"align_corners": True, "half_pixel_centers": False},
                                   {"align_corners": False, "half_pixel_centers": False}])
def test_excluded_resize_bilinear_matches_litert_float(attrs):
    """Bilinear averages of dequantized values land exactly on rounding ties of the
    QUANTIZE leaving the island: XNNPACK rounds those half to even (x·(1/s)), LiteRT's
    builtin QUANTIZE half away (x/s); XNNPACK's float lerp has no FMA."""
    rng = np.random.default_rng(2)
    g = Graph("up")
    x = g.add_input("x", [1, 5, 6, 3])
    c = _conv(g, x, 3, 4, "c", rng)
    up = g.add_node("RESIZE_BILINEAR", [c], {"size": [10, 9], **attrs}, name="up").output
    g.outputs = [_conv(g, up, 4, 4, "out", rng, k=1)]
    q = _calibrated(g, table=_table(exclude=[{"ops": ["RESIZE_BILINEAR"]}]))
    assert q.metadata["float_nodes"] == ["up"]
    assert _check(q, seeds=(1, 2))["float"] > 0

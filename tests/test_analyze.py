"""Sensitivity analysis and recipes: ``qatir.analyze`` ranks a deliberately bad layer first,
``Report.suggest`` writes a table that reaches the target (checked for real, and bit-exact
in LiteRT), the TOML writer round-trips tables, and the shell commands work."""

from __future__ import annotations

import json
import math
import os
import tomllib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import qatir  # noqa: E402
from qatir.recipes import dump_toml, real_sqnr  # noqa: E402
from qatir.table import builtin_tables  # noqa: E402
from tests.helpers import compare_all  # noqa: E402
from tests.helpers.graphs import bad_layer_chain  # noqa: E402


def _calib(n: int = 4, seed: int = 1):
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(1, 8, 8, 4)).astype(np.float32)} for _ in range(n)]


@pytest.fixture(scope="module")
def report():
    return qatir.analyze(bad_layer_chain(), _calib())


def test_bad_layer_ranks_first(report):
    first = report.rows[0]
    assert first.node == "bad"
    assert first.sqnr_db < 10.0 < min(r.sqnr_db for r in report.rows[1:])
    assert report.full_int8_sqnr_db < 10.0
    # keeping it out of int8 is what recovers the model; keeping the others out is not
    assert first.gain_float_db > 20.0 and first.gain_int16_db > 20.0
    assert all(r.gain_float_db < 3.0 for r in report.rows[1:])
    assert report.evaluations > 0 and report.seconds > 0


def test_report_json_and_text(report):
    d = json.loads(report.to_json())
    assert d["rows"][0]["node"] == "bad" and d["rows"][0]["op"] == "CONV_2D"
    assert d["rows"][0]["macs"] == 8 * 8 * 8 * 8
    text = report.format_text()
    assert text.splitlines()[2].split()[1] == "bad"


def test_suggest_reaches_target_and_exports_bit_exact(report):
    table = report.suggest(30)
    s = report.suggestion
    assert s.reached and s.sqnr_db >= 30.0
    assert "bad" in s.int16 and not s.float  # int16 recovers it: no float island needed
    assert s.int8_or_int16_mac_share == 1.0 and s.int8_mac_share < 1.0
    assert real_sqnr(bad_layer_chain(), table, _calib()) == pytest.approx(s.sqnr_db)
    q = qatir.quantize(bad_layer_chain(), table=table)
    qatir.calibrate(q, _calib())
    assert compare_all(q) == {"reference": 0, "xnnpack": 0}


def test_suggest_float_only(report):
    report.suggest(30, allow_int16=False)
    s = report.suggestion
    # a float island alone does not help: its int8 reader quantizes the 400-wide value
    # again, so the reader follows it out of int8
    assert s.reached and s.float == ["bad", "c3"] and not s.int16
    assert s.int8_or_int16_mac_share == pytest.approx(1 - 2 * 4096 / (2048 + 4096 * 2 + 2048))


def test_batched_evaluation_matches_one_feed_per_call():
    from qatir.sensitivity import sqnrs
    from qatir.tf.gated import Gated

    q = qatir.quantize(bad_layer_chain())
    qatir.calibrate(q, _calib())
    fast, slow = Gated(q, _calib()), Gated(q, _calib(), batched=False)
    assert fast.batch > 1 and slow.batch == 1
    n = len(fast.fqs)
    rng = np.random.default_rng(0)
    configs = [(np.ones(n), np.zeros(n)), (np.zeros(n), np.zeros(n))]
    configs += [((rng.random(n) > 0.5).astype(np.float32), np.zeros(n)) for _ in range(5)]
    acts = np.array([f.attrs.get("kind") == "activation" for f in fast.fqs])
    configs += [(np.where(acts & (rng.random(n) > 0.5), 0.0, 1.0), acts * 1.0)
                for _ in range(3)]  # some activations int16 instead of int8
    assert sqnrs(fast, configs) == pytest.approx(sqnrs(slow, configs), abs=1e-3)
    assert fast.calls == slow.calls == len(configs) * 4 + 4  # and the float run


def test_analyze_refuses_a_quantized_graph():
    q = qatir.quantize(bad_layer_chain())
    with pytest.raises(qatir.QatirError, match="already quantized"):
        qatir.analyze(q, _calib())


def test_dump_toml_round_trips_the_builtin_table():
    data = tomllib.loads(builtin_tables()["int8_default"].read_text())
    data["int16"] = [{"name": "^(?:a\\.b|c)$"}]
    back = tomllib.loads(dump_toml(data))
    assert back == data
    assert math.isinf(next(f["max"] for f in back["fusions"] if f["name"] == "clip_to_relu"))


def test_cli_analyze_and_compile_target_sqnr(tmp_path):
    from qatir.cli import main

    model = tmp_path / "bad.qatir"
    qatir.save(bad_layer_chain(), model)
    np.savez(tmp_path / "c.npz", x=np.concatenate([c["x"] for c in _calib()]))
    out, sug = tmp_path / "a.json", tmp_path / "s.toml"
    assert main(["analyze", str(model), "--calib", str(tmp_path / "c.npz"), "--format", "json",
                 "-o", str(out), "--suggest", str(sug), "--target-sqnr", "30"]) == 0
    assert json.loads(out.read_text())["rows"][0]["node"] == "bad"
    table = tomllib.loads(sug.read_text())
    assert table["int16"] and "bad" in table["int16"][0]["name"]
    html = tmp_path / "a.html"
    assert main(["analyze", str(model), "--calib-random", "2", "--samples", "2",
                 "--format", "html", "-o", str(html)]) == 0
    assert "<svg" in html.read_text() and "bad" in html.read_text()
    tfl = tmp_path / "m.tflite"
    assert main(["compile", str(model), "-o", str(tfl), "--calib", str(tmp_path / "c.npz"),
                 "--target-sqnr", "30"]) == 0
    assert tfl.stat().st_size > 0


def _sigmoid_tail(seed: int = 0) -> qatir.Graph:
    """A conv whose outputs sit near -6 and a LOGISTIC on them: sigmoid ≈ 0.0025, a value
    LiteRT's fixed int8 output grid (1/256) rounds to 0 or 1 step; its int16 grid (1/32768)
    keeps it."""
    from qatir.ir import Graph

    rng = np.random.default_rng(seed)
    g = Graph("sigmoid_tail")
    x = g.add_input("x", [1, 8, 8, 4])
    w = (rng.normal(size=(8, 1, 1, 4)) * 0.1).astype(np.float32)
    y = g.add_node("CONV_2D", [x, g.const(w, "c1_w"), g.const(np.full(8, -6.0, np.float32),
                                                                 "c1_b")],
                   {"padding": "SAME"}, name="c1").output
    g.outputs = [g.add_node("LOGISTIC", [y], name="sig").output]
    g.verify()
    return g


def test_suggest_takes_a_logistic_to_int16_checked_on_the_file():
    from qatir.recipes import file_sqnr

    g = _sigmoid_tail()
    rep = qatir.analyze(g, _calib())
    row = next(r for r in rep.rows if r.node == "sig")
    assert row.op == "LOGISTIC" and row.sqnr_db < 20.0 and row.sqnr_int16_db > 35.0
    table = rep.suggest(30, check="file")
    s = rep.suggestion
    assert s.reached and s.check == "file" and s.int16 == ["sig"] and not s.float
    assert s.int8_or_int16_mac_share == 1.0
    assert s.sqnr_db >= 30.5  # the default margin, 0.5 dB
    assert file_sqnr(g, table, _calib()) == pytest.approx(s.sqnr_db)
    # held-out samples: the exported file reaches the target there too
    assert file_sqnr(g, table, _calib(), _calib(seed=7)) >= 30.0


def test_suggest_margin_keeps_adding_units(report):
    report.suggest(30, margin_db=0.0)
    low = report.suggestion
    assert low.reached and low.margin_db == 0.0
    report.suggest(30, margin_db=500.0)  # unreachable: it takes every unit, then stops
    s = report.suggestion
    assert s.reached and 30.0 < low.sqnr_db < s.sqnr_db < 530.0
    assert len(low.int16) + len(low.float) < len(s.int16) + len(s.float)
    assert s.float_weights  # last, float islands for the int8 weights left
    assert len(s.int16) + len(s.float) == len(report.rows) - 1  # all but the graph input
    assert s.inputs == ["x"]  # which comes last, as int16
    with pytest.raises(qatir.QatirError, match="check must be one of"):
        report.suggest(30, check="onnx")
    with pytest.raises(qatir.QatirError, match="margin_db"):
        report.suggest(30, margin_db=-1)


def test_peak_bytes_counts_live_values_only():
    from qatir.tf.gated import GATE_COPIES, peak_bytes

    # x (1 KiB) -> c1 -> bad -> c3 (2 KiB each) -> c4 (1 KiB): two 2 KiB values at once
    assert peak_bytes(bad_layer_chain()) == GATE_COPIES * 4096


def test_suggest_takes_a_pad_between_int16_nodes_along():
    """A PAD owns no unit (it shares its input's scale); between two int16 nodes it goes
    int16 too, or the file requantizes the outlier value to int8 on it."""
    from qatir.ir import Graph

    rng = np.random.default_rng(0)
    g = Graph("bad_pad_chain")
    x = g.add_input("x", [1, 8, 8, 4])

    def conv(y, cin, cout, name, w=None, b=None):
        w = (rng.normal(size=(cout, 1, 1, cin)) * 0.4).astype(np.float32) if w is None else w
        b = (rng.normal(size=cout) * 0.1).astype(np.float32) if b is None else b
        return g.add_node("CONV_2D", [y, g.const(w, f"{name}_w"), g.const(b, f"{name}_b")],
                          {"padding": "SAME"}, name=name).output

    b = np.zeros(8, np.float32)
    b[0] = 400.0
    y = conv(conv(x, 4, 8, "c1"), 8, 8, "bad", b=b)
    y = g.add_node("PAD", [y], {"paddings": [[0, 0], [1, 1], [2, 0], [0, 0]]}, name="pad").output
    w = (rng.normal(size=(8, 1, 1, 8)) * 0.4).astype(np.float32)
    w[..., 0] = 0.0
    g.outputs = [conv(conv(y, 8, 8, "c3", w=w), 8, 4, "c4")]
    g.verify()
    rep = qatir.analyze(g, _calib())
    assert "pad" not in {r.node for r in rep.rows}
    table = rep.suggest(30, check="file")
    s = rep.suggestion
    assert s.reached and {"bad", "pad", "c3"} <= set(s.int16) and not s.float
    assert "pad" in tomllib.loads(dump_toml(table))["int16"][0]["name"]


def _wide_input_net(seed: int = 0) -> qatir.Graph:
    """Input channel 0 spans ±400 (calibrated so), the others ~N(0, 1), and the first conv
    ignores channel 0: the int8 input grid (step ~3) leaves the other channels ~0 dB; an
    int16 one (step ~0.012) keeps them."""
    from qatir.ir import Graph

    rng = np.random.default_rng(seed)
    g = Graph("wide_input")
    x = g.add_input("x", [1, 8, 8, 4])
    w = (rng.normal(size=(8, 1, 1, 4)) * 0.4).astype(np.float32)
    w[..., 0] = 0.0
    y = g.add_node("CONV_2D", [x, g.const(w, "c1_w"), g.const(np.zeros(8, np.float32), "c1_b")],
                   {"padding": "SAME"}, name="c1").output
    w2 = (rng.normal(size=(4, 1, 1, 8)) * 0.4).astype(np.float32)
    g.outputs = [g.add_node("CONV_2D", [y, g.const(w2, "c2_w"),
                                        g.const(np.zeros(4, np.float32), "c2_b")],
                            {"padding": "SAME"}, name="c2").output]
    g.verify()
    return g


def _wide_calib(n: int = 4, seed: int = 1):
    out = _calib(n, seed)
    for f in out:
        f["x"][..., 0] *= 400.0 / np.abs(f["x"][..., 0]).max()
    return out


def test_suggest_takes_a_capping_graph_input_to_int16():
    from qatir.lower import lower
    from qatir.recipes import file_sqnr
    from qatir.reference import run_lowered
    from qatir.tflite_writer import to_tflite
    from tests.helpers import litert_run

    g = _wide_input_net()
    rep = qatir.analyze(g, _wide_calib())
    row = next(r for r in rep.rows if r.node == "x")
    assert row.op == "INPUT" and row.sqnr_db < 10.0 and row.sqnr_int16_db > 30.0
    # kept int8, the input caps every recipe far below the target
    rep.suggest(30, int16_inputs=False)
    assert not rep.suggestion.reached and not rep.suggestion.inputs
    table = rep.suggest(30, check="file")
    s = rep.suggestion
    assert s.reached and s.inputs == ["x"] and "c1" in s.int16 and not s.float
    assert s.int8_or_int16_mac_share == 1.0 and "int16 graph inputs: ['x']" in s.format_text()
    entries = tomllib.loads(dump_toml(table))["int16"]
    assert {"inputs": "^(?:x)$"} in entries
    assert file_sqnr(g, table, _wide_calib(), _wide_calib(seed=9)) >= 30.0
    q = qatir.quantize(g, table=table)
    qatir.calibrate(q, _wide_calib())
    low = lower(q, io="int8")
    assert low.inputs[0].dtype == np.int16
    buf = to_tflite(q, io="int8")
    feed = {"x": np.random.default_rng(3).integers(-32768, 32768, (1, 8, 8, 4)).astype(np.int16)}
    for mode, ref in (("reference", True), ("xnnpack", False)):
        got, _ = litert_run(buf, feed, ref)
        for k, v in run_lowered(low, feed, kernels=mode).items():
            np.testing.assert_array_equal(got[k], v)


def test_suggest_keeps_an_uncapping_graph_input_int8(report):
    """bad_layer_chain's input costs little: the suggestion leaves the interface int8."""
    report.suggest(30)
    assert report.suggestion.reached and report.suggestion.inputs == []


def test_cli_int8_inputs_keeps_the_interface(tmp_path):
    from qatir.cli import main

    model = tmp_path / "wide.qatir"
    qatir.save(_wide_input_net(), model)
    np.savez(tmp_path / "c.npz", x=np.concatenate([c["x"] for c in _wide_calib()]))
    for flag, want in (([], True), (["--int8-inputs"], False)):
        sug = tmp_path / f"s{len(flag)}.toml"
        assert main(["analyze", str(model), "--calib", str(tmp_path / "c.npz"), "-o",
                     str(tmp_path / "a.txt"), "--suggest", str(sug), *flag]) == 0
        entries = tomllib.loads(sug.read_text()).get("int16", [])
        assert any("inputs" in e for e in entries) == want


def _biased_weights_net() -> qatir.Graph:
    """Convs whose weights all round the same way on their int8 grid (0.3 next to a 1.0:
    38.1 steps -> 38), on positive inputs: the int8 weights shift every output by about the
    same amount, which int16 activations cannot remove and bias correction can."""
    from qatir.ir import Graph

    g = Graph("biased_weights")
    y = g.add_input("x", [1, 8, 8, 8])
    for i in range(3):
        w = np.full((8, 1, 1, 8), 0.3, np.float32)
        w[:, 0, 0, 0] = 1.0
        y = g.add_node("CONV_2D", [y, g.const(w / 3, f"w{i}"), g.const(np.zeros(8, np.float32),
                                                                        f"b{i}")],
                       {"padding": "SAME"}, name=f"c{i}").output
    g.outputs = [y]
    g.verify()
    return g


def test_suggest_fixes_the_int8_weights_when_int16_falls_short():
    """Every unit int16 leaves the weights' common rounding shift: GPTQ rounding (tried
    first) or bias correction removes it."""
    g = _biased_weights_net()
    calib = [{"x": np.abs(f["x"]) + 1.0} for f in _calib(4)]
    calib = [{"x": np.concatenate([f["x"], f["x"]], axis=-1)} for f in calib]
    rep = qatir.analyze(g, calib)
    table = rep.suggest(120, allow_float=False)  # beyond reach: every unit int16, then fixes
    s = rep.suggestion
    assert not s.reached and not s.float_weights
    assert s.weight_rounding == "gptq" and "GPTQ weight rounding" in s.format_text()
    assert table["calibration"]["weight_rounding"] == "gptq"
    assert table["calibration"].get("bias_correction", False) is s.bias_correction
    plain = json.loads(json.dumps(table))
    plain["calibration"].update(bias_correction=False, weight_rounding="nearest")
    assert s.sqnr_db > real_sqnr(g, plain, calib) + 3.0


def test_suggest_turns_bias_correction_on_when_int16_falls_short(monkeypatch):
    from qatir import recipes

    monkeypatch.setattr(recipes, "WEIGHT_FIXES", (("bias_correction", True),))  # that one alone
    g = _biased_weights_net()
    calib = [{"x": np.abs(f["x"]) + 1.0} for f in _calib(4)]
    calib = [{"x": np.concatenate([f["x"], f["x"]], axis=-1)} for f in calib]
    rep = qatir.analyze(g, calib)
    table = rep.suggest(120, allow_float=False)  # beyond reach: every unit int16, then this
    s = rep.suggestion
    assert not s.reached and s.bias_correction and "bias correction on" in s.format_text()
    assert table["calibration"]["bias_correction"] is True
    plain = json.loads(json.dumps(table))
    plain["calibration"]["bias_correction"] = False
    assert s.sqnr_db > real_sqnr(g, plain, calib) + 3.0


def test_analyze_with_bias_correction_measures_against_the_float_model():
    """The gated program's float run keeps the corrected biases; analyze measures against
    the float graph instead, so its full-int8 figure is the fake-quant run's."""
    g = _biased_weights_net()
    calib = [{"x": np.abs(f["x"]) + 1.0} for f in _calib(4)]
    calib = [{"x": np.concatenate([f["x"], f["x"]], axis=-1)} for f in calib]
    data = tomllib.loads(builtin_tables()["int8_default"].read_text())
    data["calibration"]["bias_correction"] = True
    rep = qatir.analyze(g, calib, table=data)
    assert rep.ref is not None
    assert rep.full_int8_sqnr_db == pytest.approx(real_sqnr(g, data, calib), abs=0.05)


def _coarse_weights_net():
    """Three convs; in the middle one each output channel has one weight 5x the others,
    so its int8 weight step is coarse. With int8 activations that costs about as much as
    its activations (the analysis takes it int16), but once every unit is int16 its
    weights are what is left."""
    from qatir.ir import Graph

    rng = np.random.default_rng(0)
    g = Graph("coarse_weights")
    y = g.add_input("x", [1, 8, 8, 4])
    cin = 4
    for i, name in enumerate(["c1", "coarse", "c3"]):
        w = rng.normal(size=(8, 3, 3, cin)) / np.sqrt(9 * cin)
        if name == "coarse":
            w[:, 0, 0, 0] *= 5.0
        y = g.add_node("CONV_2D", [y, g.const(w.astype(np.float32), f"w{i}"),
                                   g.const(np.zeros(8, np.float32), f"b{i}")],
                       {"padding": "SAME"}, name=name).output
        cin = 8
    g.outputs = [y]
    g.verify()
    return g


def test_suggest_makes_float_the_unit_whose_int8_weights_cost_most():
    from qatir.recipes import weight_costs

    g = _coarse_weights_net()
    rng = np.random.default_rng(1)
    calib = [{"x": rng.normal(size=(1, 8, 8, 4)).astype(np.float32)} for _ in range(4)]
    rep = qatir.analyze(g, calib)
    every = rep.suggest(40, allow_float=False)  # int16 everywhere falls short
    assert not rep.suggestion.reached and not rep.suggestion.float
    costs = weight_costs(rep, every)
    assert costs[0][0] == "coarse" and costs[0][1] > 0.5
    table = rep.suggest(40)
    s = rep.suggestion
    assert s.reached and s.float_weights == ["coarse"] and s.float == ["coarse"]
    assert "coarse" not in s.int16 and "float for their weights" in s.format_text()
    assert s.int8_or_int16_mac_share == pytest.approx(1 - 36864 / (18432 + 2 * 36864))
    assert real_sqnr(g, table, calib) == pytest.approx(s.sqnr_db)

"""The ``qatir`` command line: dumps, compile end to end (LiteRT runs the result), errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import pytest

import qatir
from qatir.cli import main, parse_input_shapes
from qatir.demo import digits_cnn_onnx, load_digits_nchw
from qatir.litert_run import interpreter, run_litert
from tests.helpers.onnx_models import tiny_onnx


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture
def tiny(tmp_path) -> str:
    return tiny_onnx(tmp_path / "tiny.onnx")


# --------------------------------------------------------------------------- parsing
def test_parse_input_shapes():
    assert parse_input_shapes(["x=1,3,224,224", "y=2x5"]) == {"x": [1, 3, 224, 224], "y": [2, 5]}
    for bad in ["x", "x=", "=1,2", "x=1,-2", "x=1,a", "x=0"]:
        with pytest.raises(qatir.QatirError, match="--input-shape"):
            parse_input_shapes([bad])


# --------------------------------------------------------------------------- dump
def test_dump_text_and_json(capsys, tiny, tmp_path):
    rc, out, err = run_cli(capsys, "dump", tiny)
    assert rc == 0, err
    assert out.startswith("graph ") and "CONV_2D(" in out and "BATCH_NORM(" in out
    assert out == str(qatir.load(tiny)) + "\n"
    rc, out, _ = run_cli(capsys, "dump", tiny, "--format", "json")
    assert rc == 0
    d = json.loads(out)
    assert {n["op"] for n in d["nodes"]} >= {"CONV_2D", "FULLY_CONNECTED"}
    assert all("values" not in t for t in d["tensors"])  # weights only with --with-data
    # the JSON dump with data reloads into the same graph
    js = tmp_path / "tiny.json"
    assert run_cli(capsys, "dump", tiny, "--format", "json", "--with-data", "-o", js)[0] == 0
    assert str(qatir.load(js)) == str(qatir.load(tiny))


def test_dump_input_shape_fixes_batch(capsys, tiny):
    rc, out, _ = run_cli(capsys, "dump", tiny, "--input-shape", "x=2,3,8,8")
    assert rc == 0
    assert "f32[2,8,8,3]" in out.splitlines()[0]


def test_dump_svg_and_after_pass_html(capsys, tiny, tmp_path):
    svg = tmp_path / "g.svg"
    assert run_cli(capsys, "dump", tiny, "--format", "svg", "-o", svg)[0] == 0
    root = ET.parse(svg).getroot()
    drawn = {g.get("data-node") for g in root.iter("{http://www.w3.org/2000/svg}g")}
    assert {n.name for n in qatir.load(tiny).nodes} <= drawn
    page = tmp_path / "fold.html"
    rc, _, err = run_cli(capsys, "dump", tiny, "--format", "html", "--after-pass",
                         "fold_batch_norm", "-o", page)
    assert rc == 0, err
    text = page.read_text()
    assert text.count("<svg") == 2 and "BATCH_NORM -1" in text
    rc, out, _ = run_cli(capsys, "dump", tiny, "--after-pass", "fold_batch_norm")
    assert rc == 0 and any(ln.startswith("-") and "BATCH_NORM" in ln for ln in out.splitlines())
    # a later pass of the default pipeline sees the graph the earlier passes made
    rc, out, _ = run_cli(capsys, "dump", tiny, "--after-pass", "insert_fake_quant")
    assert rc == 0
    removed = [ln for ln in out.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    added = [ln for ln in out.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    assert not any("BATCH_NORM" in ln for ln in removed + added)  # folded before this pass
    assert any("FAKE_QUANT" in ln for ln in added)


def test_dump_does_not_import_tensorflow(tiny):
    """`qatir dump` stays fast: the IR, the ONNX frontend and the pictures need no TensorFlow."""
    code = ("import sys; from qatir.cli import main; "
            f"rc = main(['dump', {tiny!r}, '--format', 'svg']); "
            "assert rc == 0; assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith("<svg")


def test_passes_lists_registries(capsys):
    rc, out, _ = run_cli(capsys, "passes")
    assert rc == 0
    for word in ("passes:", "fold_batch_norm", "insert_fake_quant", "pattern tables:",
                 "quantizers:", "minmax"):
        assert word in out


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("args, needle", [
    (["dump", "{tmp}/missing.onnx"], "missing.onnx: no such model file"),
    (["dump", "{tiny}", "--input-shape", "x=1,three,8,8"], "--input-shape"),
    (["compile", "{tiny}", "-o", "{tmp}/o.tflite", "--calib", "{tmp}/wrong.npz"],
     "no array named 'x'"),
    (["compile", "{tiny}", "-o", "{tiny}"], "must end in .tflite"),
    (["compile", "{tmp}/m.tflite", "-o", "{tmp}/m.tflite"], "refusing to overwrite the input"),
    (["compile", "{tiny}", "-o", "{tmp}/o.tflite", "--passes", "no_such_pass",
      "--calib-random", "1"], "unknown pass 'no_such_pass'"),
    (["dump", "{tiny}", "--format", "png"], "'png' is not one of"),
    (["compile", "{tiny}", "-o", "{tmp}/no/such/dir/o.tflite"], "does not exist"),
    (["compile", "{tiny}", "-o", "{tmp}/o.tflite", "--table", "{tmp}/missing.toml"],
     "missing.toml: no such input file"),
    (["compile", "{tiny}", "-o", "{tmp}/o.tflite", "--report=tf"], "'tf' is not one of"),
])
def test_user_errors_are_one_line_exit_2(capsys, tiny, tmp_path, args, needle):
    np.savez(tmp_path / "wrong.npz", images=np.zeros((2, 3, 8, 8), np.float32))
    (tmp_path / "m.tflite").write_bytes(b"not a model")
    argv = [a.format(tmp=tmp_path, tiny=tiny) for a in args]
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2
    lines = err.strip().splitlines()
    assert [ln for ln in lines if ln.startswith("qatir: error:")] == lines[-1:], err
    assert needle in lines[-1]
    assert "Traceback" not in err


def test_console_script_error_and_debug_traceback(tmp_path):
    missing = str(tmp_path / "nope.onnx")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    p = subprocess.run([sys.executable, "-m", "qatir.cli", "dump", missing],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip() == f"qatir: error: {missing}: no such model file"
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    p = subprocess.run([sys.executable, "-m", "qatir.cli", "dump", str(bad), "--debug"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2
    assert "Traceback" in p.stderr and p.stderr.strip().splitlines()[-1].startswith("qatir: error:")


def test_failed_compile_keeps_existing_output(capsys, tiny, tmp_path):
    out = tmp_path / "keep.tflite"
    out.write_bytes(b"old contents")
    np.savez(tmp_path / "wrong.npz", other=np.zeros((2, 3, 8, 8), np.float32))
    rc, _, err = run_cli(capsys, "compile", tiny, "-o", out, "--calib", tmp_path / "wrong.npz")
    assert rc == 2 and "no array named 'x'" in err
    assert out.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# --------------------------------------------------------------------------- compile
def test_compile_onnx_end_to_end_runs_in_litert(capsys, tiny, tmp_path):
    rng = np.random.default_rng(1)
    calib = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)  # NCHW, as ONNX users hold it
    np.savez(tmp_path / "calib.npz", x=calib)
    out = tmp_path / "tiny_int8.tflite"
    out.write_bytes(b"old")  # replaced on success
    rc, stdout, err = run_cli(capsys, "compile", tiny, "-o", out, "--calib",
                              tmp_path / "calib.npz", "--no-progress", "--save-ir",
                              tmp_path / "tiny.qatir")
    assert rc == 0, err
    assert "CONV_2D 1" in stdout and "FULLY_CONNECTED 1" in stdout and "SQNR" in stdout
    sqnr = float(stdout.split("int8 in LiteRT ")[1].split(" dB")[0])
    assert sqnr > 15.0, stdout
    x = calib[:1].transpose(0, 2, 3, 1)
    want = qatir.run(qatir.load(tiny), {"x": x})["y"]
    got = run_litert(out.read_bytes(), [{"x": x}])[0][0]  # int8 edges quantized for us
    assert got.shape == (1, 3)
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max() + 0.05
    q = qatir.load(tmp_path / "tiny.qatir")
    assert any(n.op == "FAKE_QUANT" for n in q.nodes)
    # the saved quantized IR compiles again without re-quantizing or re-calibrating
    again_ir = tmp_path / "again_from_ir.tflite"
    rc, stdout, err = run_cli(capsys, "compile", tmp_path / "tiny.qatir", "-o", again_ir)
    assert rc == 0, err
    assert "already quantized" in err and "calibrate" not in stdout
    assert again_ir.read_bytes() == out.read_bytes()
    # compiling the int8 result again is refused with one clear line
    rc, _, err = run_cli(capsys, "compile", out, "-o", tmp_path / "again.tflite",
                         "--calib-random", "1")
    assert rc == 2 and "already an int8 model" in err


def test_compile_float_io_and_print_ir_after(capsys, tiny, tmp_path):
    out = tmp_path / "f.tflite"
    rc, stdout, err = run_cli(capsys, "compile", tiny, "-o", out, "--calib-random", "4",
                              "--io", "float", "--print-ir-after", "fold_batch_norm",
                              "--input-shape", "x=1,3,8,8", "--no-progress")
    assert rc == 0, err
    assert "real samples" in err  # the random-calibration warning
    assert "// IR after pass" in stdout and "fold_batch_norm" in stdout
    interp = interpreter(out.read_bytes())
    assert interp.get_input_details()[0]["dtype"] == np.float32
    assert interp.get_output_details()[0]["dtype"] == np.float32
    x = np.random.default_rng(2).standard_normal((1, 8, 8, 3)).astype(np.float32)
    assert np.isfinite(run_litert(out.read_bytes(), [{"x": x}])[0][0]).all()


def test_compile_with_qat_on_digits(capsys, tmp_path):
    """--train fine-tunes through the fake-quant graph: an untrained CNN learns the digits."""
    model = tmp_path / "digits.onnx"
    onnx.save(digits_cnn_onnx(channels=(8, 8, 8)), str(model))
    x, y, x_test, y_test = load_digits_nchw()
    np.savez(tmp_path / "calib.npz", image=x[:64])
    np.savez(tmp_path / "train.npz", image=x, y=y)
    out = tmp_path / "d.tflite"
    rc, stdout, err = run_cli(capsys, "compile", model, "-o", out, "--calib",
                              tmp_path / "calib.npz", "--train", tmp_path / "train.npz",
                              "--epochs", "3", "--learning-rate", "0.01",
                              "--loss", "sparse_categorical_crossentropy", "--no-progress")
    assert rc == 0, err
    assert "qat " in stdout
    outs = run_litert(out.read_bytes(), [{"image": x_test[i:i + 1].transpose(0, 2, 3, 1)}
                                         for i in range(100)])
    acc = np.mean([np.argmax(o[0]) for o in outs] == y_test[:100])
    assert acc > 0.6, acc  # chance is 0.1; logits were treated as logits


def test_compile_float_tflite_model(capsys, tmp_path):
    """A float .tflite from TensorFlow's own converter compiles to int8 and runs."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input((8, 8, 3), batch_size=1, name="x")
    h = tf.keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    h = tf.keras.layers.GlobalAveragePooling2D()(h)
    outp = tf.keras.layers.Dense(3)(h)
    keras_model = tf.keras.Model(inp, outp)
    buf = tf.lite.TFLiteConverter.from_keras_model(keras_model).convert()
    src = tmp_path / "float.tflite"
    src.write_bytes(buf)
    rc, dumped, _ = run_cli(capsys, "dump", src)
    assert rc == 0 and "CONV_2D(" in dumped and "FULLY_CONNECTED(" in dumped
    g = qatir.load(src)
    name = g.inputs[0].name
    np.savez(tmp_path / "calib.npz",
             **{name: np.random.default_rng(3).random((8, 8, 8, 3)).astype(np.float32)})
    out = tmp_path / "int8.tflite"
    rc, stdout, err = run_cli(capsys, "compile", src, "-o", out, "--calib",
                              tmp_path / "calib.npz", "--no-progress")
    assert rc == 0, err
    assert interpreter(out.read_bytes()).get_input_details()[0]["dtype"] == np.int8
    float_sqnr = float(stdout.split("int8 in LiteRT ")[1].split(" dB")[0])
    assert float_sqnr > 15.0, stdout


# --------------------------------------------------------------------------- verify, report
def test_verify_and_report_on_digits(capsys, tmp_path):
    model = tmp_path / "digits.onnx"
    onnx.save(digits_cnn_onnx(channels=(8, 8, 8)), str(model))
    x, _, x_test, _ = load_digits_nchw()
    np.savez(tmp_path / "calib.npz", image=x[:64])
    np.savez(tmp_path / "test.npz", image=x_test[:8])
    out, ir = tmp_path / "d.tflite", tmp_path / "d.qatir"
    rc, stdout, err = run_cli(capsys, "compile", model, "-o", out, "--calib",
                              tmp_path / "calib.npz", "--save-ir", ir, "--report",
                              "--no-progress")
    assert rc == 0, err
    assert "parity report" in stdout and "logits" in stdout
    for resolver in ("default", "ref"):
        rc, stdout, err = run_cli(capsys, "verify", out, "--against", ir, "--data",
                                  tmp_path / "test.npz", "--samples", "8", "--resolver", resolver)
        assert rc == 0, err
        last = stdout.strip().splitlines()[-1]
        assert last.startswith("OK:") and "max 0 LSB" in last
        sqnr = float(last.split("worst output SQNR vs float ")[1].split(" dB")[0])
        assert sqnr > 15
    # a float graph is not what the file was written from
    rc, _, err = run_cli(capsys, "verify", out, "--against", model)
    assert rc == 2 and "no FAKE_QUANT" in err


def test_verify_detects_a_different_model(capsys, tmp_path):
    """Verifying a file against another model's IR fails (exit 1), not silently passes."""
    paths = {}
    x, _, _, _ = load_digits_nchw()
    np.savez(tmp_path / "calib.npz", image=x[:32])
    for seed in (0, 1):
        model = tmp_path / f"m{seed}.onnx"
        onnx.save(digits_cnn_onnx(seed=seed, channels=(8, 8, 8)), str(model))
        out, ir = tmp_path / f"m{seed}.tflite", tmp_path / f"m{seed}.qatir"
        rc, _, err = run_cli(capsys, "compile", model, "-o", out, "--calib",
                             tmp_path / "calib.npz", "--save-ir", ir, "--no-progress")
        assert rc == 0, err
        paths[seed] = (out, ir)
    rc, stdout, _ = run_cli(capsys, "verify", paths[0][0], "--against", paths[1][1])
    assert rc == 1 and "MISMATCH" in stdout


def test_bench_times_every_stage(capsys, tiny):
    rc, out, err = run_cli(capsys, "bench", tiny, "--repeat", "3")
    assert rc == 0, err
    for stage in ("load", "quantize (passes)", "calibrate (4 batches)", "to_tflite (lower + write)",
                  "default (XNNPACK)", "reference kernels"):
        line = next(ln for ln in out.splitlines() if stage in ln)
        assert float(line.split()[-1]) >= 0.0
    assert "model: " in out and "IR nodes" in out


# --------------------------------------------------------------------------- plug-in example
def test_plugin_example_found_through_its_entry_point(capsys, tiny, tmp_path, monkeypatch):
    """examples/qatir-plugin-example: its pyproject's entry point finds and registers the pass.

    Instead of pip-installing it, a .dist-info made from its pyproject.toml is put on
    sys.path, which is all importlib.metadata looks at.
    """
    import tomllib
    from pathlib import Path

    from qatir.pipeline import load_plugins

    example = Path(__file__).resolve().parent.parent / "examples" / "qatir-plugin-example"
    meta = tomllib.loads((example / "pyproject.toml").read_text())["project"]
    group = meta["entry-points"]["qatir.passes"]
    info = tmp_path / "site" / "qatir_plugin_example-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(
        "[qatir.passes]\n" + "".join(f"{k} = {v}\n" for k, v in group.items()))
    monkeypatch.syspath_prepend(str(example))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    import importlib

    importlib.invalidate_caches()
    assert "relu_to_relu6" in load_plugins(rescan=True)
    rc, out, _ = run_cli(capsys, "passes")
    assert rc == 0 and "relu_to_relu6" in out
    out_file = tmp_path / "r6.tflite"
    rc, stdout, err = run_cli(capsys, "compile", tiny, "-o", out_file, "--calib-random", "2",
                              "--passes", "relu_to_relu6,default", "--print-ir-after",
                              "relu_to_relu6", "--no-progress")
    assert rc == 0, err
    after = stdout.split("// IR after pass 0: relu_to_relu6")[1].split("\n}")[0]
    assert "RELU6(" in after and "RELU(" not in after


def test_compile_print_ir_after_reaches_lowering_steps(capsys, tiny, tmp_path):
    """``--print-ir-after`` names passes and lowering steps alike; ``all`` dumps both."""
    out = tmp_path / "l.tflite"
    rc, stdout, err = run_cli(capsys, "compile", tiny, "-o", out, "--calib-random", "2",
                              "--print-ir-after", "fold_batch_norm,lower.bias,edges",
                              "--no-progress")
    assert rc == 0, err
    assert "// IR after pass" in stdout and "fold_batch_norm" in stdout
    steps = [line for line in stdout.splitlines() if line.startswith("// IR after lowering step")]
    assert [s.rsplit(": ", 1)[1] for s in steps] == ["lower.bias", "lower.edges"]
    rc, stdout, err = run_cli(capsys, "compile", tiny, "-o", out, "--calib-random", "2",
                              "--print-ir-after", "all", "--no-progress")
    assert rc == 0, err
    assert "// IR after pass" in stdout and "// IR after lowering step" in stdout
    assert "lower.limits" in stdout

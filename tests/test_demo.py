"""``qatir demo``: the README's main job trains, quantizes, exports and checks the digits CNN."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

import qatir
from qatir.cli import main
from qatir.demo import digits_cnn_onnx, load_digits_nchw


def test_demo_model_is_valid_onnx_and_imports_like_a_user_model(tmp_path):
    model = digits_cnn_onnx()
    x, _, _, _ = load_digits_nchw()
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"image": x[:4]})[0]
    path = tmp_path / "digits.onnx"
    onnx.save(model, str(path))
    g = qatir.load(path)
    assert g.inputs[0].source_layout == "NCHW" and g.inputs[0].shape == (None, 8, 8, 1)
    got = qatir.run(g, {"image": x[:4].transpose(0, 2, 3, 1)})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_demo_cli_fast_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--fast", "--no-progress", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    acc = {}
    for line in text.splitlines():
        for key in ("float (TF", "after calibration", "after QAT", "int8 .tflite"):
            if key in line:
                acc[key] = float(line.rsplit(None, 1)[1].rstrip("%")) / 100
    assert len(acc) == 4, text
    assert acc["float (TF"] > 0.9
    assert acc["int8 .tflite"] > 0.9
    assert abs(acc["int8 .tflite"] - acc["after QAT"]) < 0.02
    assert "max difference 0 LSB (bit-exact)" in text
    written = {p.name for p in out.iterdir()}
    assert {"digits_cnn.onnx", "digits_float.qatir", "digits_qat.qatir", "digits_int8.tflite",
            "digits_qat.html", "quantize_before_after.html"} <= written
    for name in sorted(written):
        assert str(out / name) in text  # every file written is reported
    # the int8 file is really int8 and runs in LiteRT on its own
    from qatir.litert_run import interpreter

    interp = interpreter((out / "digits_int8.tflite").read_bytes())
    assert interp.get_input_details()[0]["dtype"] == np.int8
    assert interp.get_output_details()[0]["dtype"] == np.int8
    q = qatir.load(out / "digits_qat.qatir")
    assert sum(n.op == "FAKE_QUANT" for n in q.nodes) >= 8

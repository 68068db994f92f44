"""Post-training ``qatir compile`` (and ``--report``) without TensorFlow; the shared
LiteRT runner, float export evaluation and the one feed validator."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qatir
from qatir.errors import DataError
from tests.helpers.onnx_models import tiny_onnx

NO_TF = """
import sys
from qatir.cli import main
rc = main(sys.argv[1:])
print("TF-IMPORTED" if "tensorflow" in sys.modules else "TF-ABSENT")
sys.exit(rc)
"""


def two_output_onnx(path) -> str:
    """Conv -> Relu -> GlobalAveragePool -> Flatten, then two Gemm heads of different scales."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in [
        ("w", rng.standard_normal((6, 3, 3, 3)) * 0.3), ("b", rng.standard_normal(6) * 0.1),
        ("w1", rng.standard_normal((8, 6)) * 5.0), ("b1", np.zeros(8)),
        ("w2", rng.standard_normal((1, 6)) * 0.2), ("b2", np.zeros(1))]]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w1", "b1"], ["big"], transB=1),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["small"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("big", TensorProto.FLOAT, [1, 8]),
         helper.make_tensor_value_info("small", TensorProto.FLOAT, [1, 1])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return str(path)


@pytest.mark.parametrize("extra", [[], ["--report"]])
def test_post_training_compile_does_not_import_tensorflow(tmp_path, extra):
    model = tiny_onnx(tmp_path / "tiny.onnx")
    np.savez(tmp_path / "calib.npz",
             x=np.random.default_rng(1).standard_normal((8, 3, 8, 8)).astype(np.float32))
    args = ["compile", model, "-o", str(tmp_path / "o.tflite"), "--calib",
            str(tmp_path / "calib.npz"), "--no-progress", "--save-ir", str(tmp_path / "o.qatir"),
            *extra]
    p = subprocess.run([sys.executable, "-c", NO_TF, *args], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == "TF-ABSENT", p.stdout
    assert "int8 in LiteRT" in p.stdout and "float run in LiteRT" in p.stdout
    if extra:
        assert "parity report" in p.stdout and "n/a" in p.stdout  # no fake-quant column
    else:
        assert "max 0 LSB from LiteRT" in p.stdout  # the integer reference on one sample


def test_compile_summary_per_output_and_report_full(capsys, tmp_path):
    from qatir.cli import main

    model = two_output_onnx(tmp_path / "two.onnx")
    np.savez(tmp_path / "calib.npz",
             x=np.random.default_rng(2).standard_normal((8, 3, 8, 8)).astype(np.float32))
    out = tmp_path / "two.tflite"
    rc = main(["compile", model, "-o", str(out), "--calib", str(tmp_path / "calib.npz"),
               "--no-progress", "--report=full"])
    stdout = capsys.readouterr().out
    assert rc == 0
    per = next(ln for ln in stdout.splitlines() if "per output:" in ln)
    assert "big " in per and "small " in per
    assert "fake-quant " in stdout  # --report=full: the fake-quant SQNR and column, in TF
    table = stdout.split("parity report")[1]
    fq = [ln.split()[3] for ln in table.splitlines() if ln.startswith(("big", "small"))]
    assert len(fq) == 2 and all(v != "n/a" for v in fq)


def test_litert_float_export_matches_tensorflow():
    from qatir.evaluate import FloatRun, evaluate, strip_fake_quant
    from tests.helpers.cases import CASES
    from tests.helpers.qbuild import QB

    qb = QB(seed=3)
    q = qb.output(CASES["graph_residual"](qb))
    f = strip_fake_quant(q)
    names = [t.name for t in f.tensors.values()]
    lite, tf = FloatRun(f, names, "litert"), FloatRun(f, names, "tf")
    assert lite.engine == "litert" and tf.engine == "tf"
    x = {"x": np.random.default_rng(0).uniform(-1, 1, (1, 12, 12, 3)).astype(np.float32)}
    a, b = lite.run(x), tf.run(x)
    assert set(a) == {t.name for t in f.tensors.values() if t.producer is not None}
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-4, err_msg=name)
    buf = qatir.to_tflite(q)
    ev = evaluate(q, buf, [x], fake_quant=True)
    assert ev.float_engine == "litert" and ev.reference_max_lsb == 0
    assert ev.int8_all_db > 15 and ev.fake_quant_db > 15
    assert ev.reference_db == pytest.approx(ev.int8_all_db)


def test_float_run_falls_back_to_tensorflow_and_says_why(monkeypatch):
    import qatir.tflite_writer
    from qatir.errors import ExportError
    from qatir.evaluate import FloatRun, strip_fake_quant
    from tests.helpers.cases import CASES
    from tests.helpers.qbuild import QB

    qb = QB(seed=3)
    g = strip_fake_quant(qb.output(CASES["graph_residual"](qb)))

    def refuse(*a, **k):
        raise ExportError("no float kernel for FOO")

    monkeypatch.setattr(qatir.tflite_writer, "to_tflite", refuse)
    run = FloatRun(g)
    assert run.engine == "tf" and "no float kernel for FOO" in run.fallback
    with pytest.raises(qatir.QatirError, match="LiteRT cannot run the float graph"):
        FloatRun(g, engine="litert")


def test_one_feed_validator_one_error_class(tmp_path):
    from qatir.data import load_npz
    from qatir.feeds import check_feeds, order_inputs
    from tests.helpers.cases import CASES
    from tests.helpers.qbuild import QB

    qb = QB(seed=3)
    q = qb.output(CASES["graph_residual"](qb))
    good = np.zeros((1, 12, 12, 3), np.float32)
    with pytest.raises(DataError, match="missing input.*'x'.*unknown input.*'y'"):
        check_feeds(q, {"y": good})
    with pytest.raises(DataError, match=r"shape \[1, 12, 12, 4\] does not match \[1,12,12,3\]"):
        check_feeds(q, {"x": np.zeros((1, 12, 12, 4), np.float32)})
    with pytest.raises(DataError, match="unknown input"):
        order_inputs(q, {"x": good, "z": good})
    np.savez(tmp_path / "d.npz", other=good)
    with pytest.raises(DataError, match="no array named 'x'"):
        load_npz(str(tmp_path / "d.npz"), q)
    assert issubclass(DataError, qatir.QatirError)
    from qatir.compile import DataError as old_path

    assert old_path is DataError  # the old import path still works


def test_sqnr_is_one_function():
    import qatir.compile
    import qatir.metrics
    import qatir.parity

    assert qatir.compile.sqnr_db is qatir.metrics.sqnr_db is qatir.parity.sqnr_db
    x = np.array([1.0, -2.0, 3.0])
    assert qatir.metrics.sqnr_db(x, x) == math.inf
    assert qatir.metrics.sqnr_db(np.zeros(3), x) == -math.inf

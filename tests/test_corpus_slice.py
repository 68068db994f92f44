"""The CI slice of the corpus (tools/corpus): tiny architecture-like ONNX graphs built here
with onnx.helper (no torch), run through the same child-process code path as
``tools/corpus/run.py``: each must come through every stage bit-exact under LiteRT's
reference kernels, and the parent must tell a crash, a hang and a failure apart.
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _corpus_run():
    spec = importlib.util.spec_from_file_location(
        "corpus_run", os.path.join(ROOT, "tools", "corpus", "run.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


corpus = _corpus_run()
RNG = np.random.default_rng(0)


def _w(name, shape, scale=0.3):
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def _bn(prefix, c, x, y):
    inits = [numpy_helper.from_array(a.astype(np.float32), f"{prefix}_{k}") for k, a in (
        ("s", RNG.uniform(0.5, 1.5, c)), ("b", RNG.normal(0, 0.1, c)),
        ("m", RNG.normal(0, 0.1, c)), ("v", RNG.uniform(0.5, 1.5, c)))]
    node = helper.make_node("BatchNormalization", [x] + [i.name for i in inits], [y])
    return node, inits


def _model(name, nodes, inits, in_shape, out_shape):
    g = helper.make_graph(nodes, name,
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def residual_block():
    """conv-bn-relu, conv-bn, identity add, relu, global pool, gemm (a ResNet basic block)."""
    n, i = [], []
    i += [_w("c0", (8, 3, 3, 3)), _w("c1", (8, 8, 3, 3), 0.15), _w("c2", (8, 8, 3, 3), 0.15),
          _w("fc_w", (10, 8)), _w("fc_b", (10,), 0.1)]
    n.append(helper.make_node("Conv", ["input", "c0"], ["a0"], pads=[1, 1, 1, 1], strides=[2, 2]))
    bn, bi = _bn("bn0", 8, "a0", "a1")
    n.append(bn)
    i += bi
    n.append(helper.make_node("Relu", ["a1"], ["a2"]))
    n.append(helper.make_node("Conv", ["a2", "c1"], ["b0"], pads=[1, 1, 1, 1]))
    bn, bi = _bn("bn1", 8, "b0", "b1")
    n.append(bn)
    i += bi
    n.append(helper.make_node("Relu", ["b1"], ["b2"]))
    n.append(helper.make_node("Conv", ["b2", "c2"], ["b3"], pads=[1, 1, 1, 1]))
    bn, bi = _bn("bn2", 8, "b3", "b4")
    n.append(bn)
    i += bi
    n.append(helper.make_node("Add", ["b4", "a2"], ["c0s"]))
    n.append(helper.make_node("Relu", ["c0s"], ["c1s"]))
    n.append(helper.make_node("GlobalAveragePool", ["c1s"], ["p"]))
    n.append(helper.make_node("Flatten", ["p"], ["f"]))
    n.append(helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["output"], transB=1))
    return _model("residual", n, i, [1, 3, 16, 16], [1, 10])


def dw_se_hswish_block():
    """MobileNetV3 block: 1x1 expand + hard-swish, depthwise 3x3, squeeze-excite with
    hard-sigmoid, 1x1 project (NCHW output: a 4-D output goes back through the layout)."""
    n, i = [], []
    i += [_w("e", (16, 4, 1, 1)), _w("eb", (16,), 0.1), _w("dw", (16, 1, 3, 3)),
          _w("dwb", (16,), 0.1), _w("se1", (4, 16, 1, 1)), _w("se1b", (4,), 0.1),
          _w("se2", (16, 4, 1, 1)), _w("se2b", (16,), 0.1), _w("pj", (8, 16, 1, 1))]
    n.append(helper.make_node("Conv", ["input", "e", "eb"], ["x1"]))
    n.append(helper.make_node("HardSwish", ["x1"], ["x2"]))
    n.append(helper.make_node("Conv", ["x2", "dw", "dwb"], ["x3"], group=16, pads=[1, 1, 1, 1]))
    n.append(helper.make_node("HardSwish", ["x3"], ["x4"]))
    n.append(helper.make_node("GlobalAveragePool", ["x4"], ["s0"]))
    n.append(helper.make_node("Conv", ["s0", "se1", "se1b"], ["s1"]))
    n.append(helper.make_node("Relu", ["s1"], ["s2"]))
    n.append(helper.make_node("Conv", ["s2", "se2", "se2b"], ["s3"]))
    n.append(helper.make_node("HardSigmoid", ["s3"], ["s4"], alpha=1 / 6, beta=0.5))
    n.append(helper.make_node("Mul", ["x4", "s4"], ["x5"]))
    n.append(helper.make_node("Conv", ["x5", "pj"], ["output"]))
    return _model("dw_se_hswish", n, i, [1, 4, 12, 12], [1, 8, 12, 12])


def softmax_head():
    """conv + relu6 (Clip), max pool, concat of two branches, mean, gemm, softmax."""
    n, i = [], []
    i += [_w("c", (6, 3, 3, 3)), _w("cb", (6,), 0.1), _w("d", (6, 3, 1, 1)),
          _w("fw", (5, 12)), _w("fb", (5,), 0.1),
          numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
          numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    n.append(helper.make_node("Conv", ["input", "c", "cb"], ["a"], pads=[1, 1, 1, 1]))
    n.append(helper.make_node("Clip", ["a", "lo", "hi"], ["a6"]))
    n.append(helper.make_node("Conv", ["input", "d"], ["b"]))
    n.append(helper.make_node("Sigmoid", ["b"], ["bs"]))
    n.append(helper.make_node("Concat", ["a6", "bs"], ["cat"], axis=1))
    n.append(helper.make_node("MaxPool", ["cat"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]))
    n.append(helper.make_node("ReduceMean", ["mp"], ["gm"], axes=[2, 3], keepdims=0))
    n.append(helper.make_node("Gemm", ["gm", "fw", "fb"], ["logits"], transB=1))
    n.append(helper.make_node("Softmax", ["logits"], ["output"], axis=-1))
    return _model("softmax_head", n, i, [1, 3, 16, 16], [1, 5])


def erf_model():
    """An op qatir refuses at import (README, known limits): a failure, not a crash."""
    n = [helper.make_node("Erf", ["input"], ["output"])]
    return _model("erf", n, [], [1, 4], [1, 4])


SLICE = {"residual_block": residual_block, "dw_se_hswish_block": dw_se_hswish_block,
         "softmax_head": softmax_head}


def _manifest(tmp_path, builders):
    entries = []
    for name, build in builders.items():
        m = build()
        onnx.save(m, str(tmp_path / f"{name}.onnx"))
        shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
        entries.append({"name": name, "path": f"{name}.onnx", "format": "onnx",
                        "source": "ci-slice", "inputs": [{"name": "input", "shape": shape,
                                                          "layout": "NCHW"}]})
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"models": entries, "failed": []}))
    return str(path)


@pytest.fixture(scope="module")
def slice_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("corpus")
    manifest = _manifest(tmp, SLICE)
    out = tmp / "table.txt"
    with open(out, "w") as f:
        results = corpus.run_corpus(manifest, timeout=240, workdir=str(tmp / "work"), out=f)
    return {r["name"]: r for r in results}, out.read_text()


@pytest.mark.parametrize("name", sorted(SLICE))
def test_slice_model_is_ok_and_bit_exact(slice_results, name):
    results, _ = slice_results
    r = results[name]
    assert r["status"] == "ok", (r.get("stage"), r.get("error"), r.get("traceback"))
    assert r["returncode"] == 0
    assert r["float_rel_err"] <= 1e-4
    assert r["fake_quant_nodes"] > 0
    assert r["lsb_ref"] == 0, r  # LiteRT BUILTIN_REF vs qatir.run_reference: bit for bit
    assert r["equal_pct_ref"] == 100.0
    assert r["lsb_xnn"] == 0, r  # the XNNPACK path vs kernels="xnnpack"
    assert r["bit_exact"] is True
    assert r["bitexact_feeds"] == 3  # the measured feed and two more
    assert r["tflite_bytes"] > 0 and r["ops"] >= 3
    assert r["sqnr_db"] > 10.0, r["sqnr_db"]  # int8 tracks float (random data, 4 calib batches)


def test_slice_table_and_summary(slice_results):
    results, table = slice_results
    lines = table.strip().splitlines()
    assert lines[0].split()[:3] == ["model", "source", "nodes"]
    assert lines[-1] == (f"corpus: {len(SLICE)} models, {len(SLICE)} through export, "
                         f"{len(SLICE)} bit-exact, 0 crashes, 0 hangs, fails by stage: none")
    for name in SLICE:
        row = next(ln for ln in lines if ln.startswith(name))
        assert " done " in row and " ok " in row and " 0/0 " in row


def test_parent_reports_crash_hang_and_failure(tmp_path, monkeypatch):
    """A child killed by SIGSEGV is a CRASH with its stage, a child past the time limit a
    HANG with its stage, and an import error a plain failure with its error class."""
    manifest = _manifest(tmp_path, {"softmax_head": softmax_head, "erf": erf_model})
    man = json.loads(open(manifest).read())
    entry, erf = man["models"]
    work = str(tmp_path / "w")
    os.makedirs(work)
    monkeypatch.setenv("QATIR_CORPUS_FAULT", "crash:float")
    r = corpus.run_child(entry, manifest, timeout=120, workdir=work)
    assert r["status"] == "CRASH" and r["stage"] == "float", r
    assert r["returncode"] == -11 and "SIGSEGV" in r["error"]
    assert r["nodes"] > 0  # the stages before the crash were recorded
    monkeypatch.setenv("QATIR_CORPUS_FAULT", "hang:load")
    r = corpus.run_child(entry, manifest, timeout=8, workdir=work)
    assert r["status"] == "HANG" and r["stage"] == "load", r
    monkeypatch.delenv("QATIR_CORPUS_FAULT")
    r = corpus.run_child(erf, manifest, timeout=120, workdir=work)
    assert r["status"] == "fail" and r["stage"] == "load", r
    assert r["error"].startswith("UnsupportedOpError"), r["error"]
    s = corpus.summary([r, {"name": "x", "status": "CRASH", "stage": "float"}])
    assert s == ("corpus: 2 models, 0 through export, 0 bit-exact, 1 crashes, 0 hangs, "
                 "fails by stage: load 1, float 1")

"""The built-in passes: float outputs unchanged by folding and fusion (TF execution),
structure after each pass (IR dumps), fake-quant layout, and table-driven behaviour."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import io  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import qatir  # noqa: E402
from qatir.ir import Graph  # noqa: E402
from qatir.pipeline import FLOAT_PIPELINE, float_pipeline, quantize, run_pipeline  # noqa: E402
from qatir.quant import params_for, range_for  # noqa: E402
from qatir.table import builtin_tables  # noqa: E402
from tests.helpers.graphs import chain, mobile_block, transpose_conv_bn  # noqa: E402

DEFAULT_TOML = Path(builtin_tables()["int8_default"]).read_text()


def _feeds(g: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {t.name: (rng.standard_normal([1 if d is None else d for d in t.shape]) * 2)
            .astype(np.float32) for t in g.inputs}


def _assert_same_outputs(a: Graph, b: Graph, rtol: float = 1e-5) -> dict[str, np.ndarray]:
    feeds = _feeds(a)
    ya, yb = qatir.run(a, feeds), qatir.run(b, feeds)
    assert set(ya) == set(yb)
    for k in ya:
        scale = max(float(np.max(np.abs(ya[k]))), 1e-6)
        assert float(np.max(np.abs(ya[k] - yb[k]))) <= rtol * scale, k
    return ya


def _ops(g: Graph) -> list[str]:
    return [n.op for n in g.nodes]


def _node(g: Graph, name: str):
    return next(n for n in g.nodes if n.name == name)


def _dumps_after_each_pass(g: Graph) -> dict[str, str]:
    buf = io.StringIO()
    float_pipeline(g, print_ir_after="all", ir_out=buf)
    parts = re.split(r"// IR after pass \d+: (\w+)\n", buf.getvalue())
    return dict(zip(parts[1::2], parts[2::2]))


# ---------------------------------------------------------------- float passes


@pytest.mark.parametrize("build", [mobile_block, transpose_conv_bn, lambda: chain(6)])
def test_fold_and_fuse_keep_float_outputs(build):
    g = build()
    f = float_pipeline(g)
    assert "BATCH_NORM" not in _ops(f) and "CLIP" not in _ops(f) and "HARD_SIGMOID" not in _ops(f)
    assert len(f.nodes) <= len(g.nodes)
    assert [t.name for t in f.outputs] == [t.name for t in g.outputs]
    _assert_same_outputs(g, f)


def test_structure_after_each_pass():
    dumps = _dumps_after_each_pass(mobile_block())
    assert list(dumps) == list(FLOAT_PIPELINE)
    assert "BATCH_NORM" in dumps["remove_identities"]
    assert "BATCH_NORM" not in dumps["fold_batch_norm"]
    assert "CLIP" in dumps["fold_batch_norm"] and "CLIP" not in dumps["lower_clip"]
    assert "= RELU6(%conv0)" in dumps["lower_clip"]
    assert "HARD_SIGMOID" not in dumps["fuse_hard_swish"]
    assert "= HARD_SWISH(%conv2)" in dumps["fuse_hard_swish"]
    final = dumps["fuse_activations"]
    assert re.search(r"DEPTHWISE_CONV_2D\(.*act=RELU6.*# dw1", final)   # RELU6 fused into the dw conv
    assert re.search(r"CONV_2D\(%x, .*act=RELU6.*# conv0", final)       # clip(0,6) -> RELU6, fused
    assert re.search(r"FULLY_CONNECTED\(.*act=RELU.*# fc3", final)
    assert not re.search(r"= (RELU|RELU6)\(", final)


def test_bn_fold_axes_per_op():
    # depthwise (1HWO, axis 3), FC ([N, K], axis 0), transpose conv (OHWI, axis 0)
    g = mobile_block()
    f = float_pipeline(g)
    for name, w_name in (("dw1", "w1"), ("fc3", "w3")):
        node, orig = _node(f, name), g.tensors[w_name].data
        ratio = node.inputs[1].data / orig
        axis = 3 if name == "dw1" else 0
        other = tuple(i for i in range(orig.ndim) if i != axis)
        assert np.allclose(ratio, ratio.mean(axis=other, keepdims=True), rtol=1e-5)
        gamma, var = g.tensors[f"bn{name[-1]}_gamma"].data, g.tensors[f"bn{name[-1]}_var"].data
        assert np.allclose(ratio.mean(axis=other), gamma / np.sqrt(var + 1e-3), rtol=1e-5)


def test_bn_on_input_and_after_shared_conv_becomes_mul_add():
    rng = np.random.default_rng(3)
    g = Graph("shared")
    x = g.add_input("x", [1, 4, 4, 3])
    c = g.add_node("CONV_2D", [x, g.const(rng.standard_normal((3, 1, 1, 3)).astype(np.float32), "w")],
                   name="conv").output
    params = [g.const(v.astype(np.float32), k) for k, v in
              (("g", rng.uniform(.5, 1.5, 3)), ("b", rng.uniform(-1, 1, 3)),
               ("m", rng.uniform(-1, 1, 3)), ("v", rng.uniform(.5, 2, 3)))]
    bn = g.add_node("BATCH_NORM", [c] + params, name="bn").output
    g.outputs = [g.add_node("ADD", [bn, c], name="add").output]  # conv output used twice
    f = quantize(g, passes="float", trace=True)
    assert "BATCH_NORM" not in _ops(f) and _ops(f).count("MUL") == 1
    reasons = [e["reason"] for e in f.metadata["pipeline"]["trace"]
               if e["rule"] == "fold_batch_norm" and not e["fired"]]
    assert any("has 2 uses" in r for r in reasons)
    fired = [e["rule"] for e in f.metadata["pipeline"]["trace"] if e["fired"]]
    assert "batch_norm_to_mul_add" in fired
    _assert_same_outputs(g, f)


def test_fold_constants_and_remove_identities():
    g = Graph("consts")
    x = g.add_input("x", [2, 3])
    a = g.const(np.arange(6, dtype=np.float32).reshape(3, 2), "a")
    t = g.add_node("TRANSPOSE", [a], {"perm": [1, 0]}, name="t").output
    s = g.add_node("ADD", [t, g.const(np.float32(1.0), "one")], {"fused_activation": "RELU6"},
                   name="s").output
    y = g.add_node("MUL", [x, s], name="mul").output
    y = g.add_node("RESHAPE", [y], {"new_shape": [2, 3]}, name="noop").output
    y = g.add_node("IDENTITY", [y], name="ident", outputs=["out"]).output
    g.outputs = [y]
    f = float_pipeline(g)
    assert _ops(f) == ["MUL"]
    assert f.outputs[0].name == "out"
    folded = f.nodes[0].inputs[1]
    assert folded.is_const and folded.dtype == np.float32
    assert np.array_equal(folded.data, np.minimum(np.arange(6).reshape(3, 2).T + 1.0, 6))
    # an identity between a graph input and a graph output stays (the output name would be lost)
    g2 = Graph("io")
    g2.outputs = [g2.add_node("IDENTITY", [g2.add_input("x", [2])], name="i", outputs=["y"]).output]
    assert _ops(float_pipeline(g2)) == ["IDENTITY"]


def test_generic_clip_and_hard_sigmoid_lowering():
    g = Graph("clips")
    x = g.add_input("x", [1, 8])
    a = g.add_node("CLIP", [x], {"min": -2.0, "max": 3.0}, name="c1").output
    b = g.add_node("CLIP", [a], {"min": 0.0, "max": None}, name="c2").output
    c = g.add_node("HARD_SIGMOID", [x], {"alpha": 0.2, "beta": 0.5}, name="hs").output
    g.outputs = [g.add_node("ADD", [b, c], name="sum").output]
    f = float_pipeline(g)
    assert sorted(_ops(f)) == sorted(["MAXIMUM", "MINIMUM", "RELU", "MUL", "ADD", "MUL", "ADD"])
    _assert_same_outputs(g, f)


# ---------------------------------------------------------------- ONNX models


def _onnx_models():
    from tests.helpers import onnx_models as om

    return [("resnet_like", om.resnet_like), ("mobilenet_like", om.mobilenet_like),
            ("inception_like", om.inception_like), ("digits_cnn", om.digits_cnn_onnx),
            ("conv_chain", lambda: om.conv_chain(3))]


@pytest.mark.parametrize("name,build", _onnx_models())
def test_onnx_models_fold_and_fuse_keep_outputs(name, build, tmp_path):
    from tests.helpers.onnx_models import save

    g = qatir.load(save(build(), tmp_path / f"{name}.onnx"))
    f = float_pipeline(g)
    assert "BATCH_NORM" not in _ops(f) and "CLIP" not in _ops(f)
    assert len(f.nodes) < len(g.nodes)
    _assert_same_outputs(g, f)
    q = quantize(g)
    assert "FAKE_QUANT" in _ops(q)
    for n in q.nodes:
        if n.op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            assert n.inputs[1].producer.op == "FAKE_QUANT"


# ---------------------------------------------------------------- fake-quant layout


@pytest.fixture(scope="module")
def mobile_q():
    g = mobile_block()
    return g, quantize(g)


def test_weight_fake_quant_per_op_axis(mobile_q):
    _, q = mobile_q
    axes = {"conv0": 0, "dw1": 3, "conv2": 0, "fc3": 0, "fc4": 0}
    for name, axis in axes.items():
        node = _node(q, name)
        fq = node.inputs[1].producer
        assert fq.op == "FAKE_QUANT" and fq.attrs["kind"] == "weight"
        assert fq.attrs["axis"] == axis and fq.attrs["narrow_range"] and fq.attrs["symmetric"]
        assert fq.inputs[0].is_const
        p = fq.outputs[0].quant
        assert set(p.zero_point) == {0} and p.axis == axis
        w = fq.inputs[0].data
        if axis is not None:
            other = tuple(i for i in range(w.ndim) if i != axis)
            assert np.allclose(fq.inputs[2].data, np.abs(w).max(axis=other))
        if len(node.inputs) > 2:
            assert node.inputs[2].is_const  # bias stays float, no FAKE_QUANT
            assert node.inputs[2].producer is None


def test_activation_layout_inputs_outputs_and_fixed_ranges(mobile_q):
    g, q = mobile_q
    assert q.metadata["calibrated"] is False
    x_users = [n for n, _ in q.inputs[0].uses]
    assert [n.op for n in x_users] == ["FAKE_QUANT"]
    assert x_users[0].attrs["kind"] == "activation" and x_users[0].attrs["axis"] is None
    out = q.outputs[0]
    assert out.name == "probs" and out.producer.op == "FAKE_QUANT"
    assert out.producer.attrs["quantizer"] == "fixed"
    assert out.quant.scale == (1 / 256,) and out.quant.zero_point == (-128,)
    lo, hi = range_for(1 / 256, -128)
    assert float(out.producer.inputs[1].data) == lo and float(out.producer.inputs[2].data) == hi
    for n in q.nodes:
        if n.op == "FAKE_QUANT":
            assert n.inputs[1].dtype == np.float32 and n.inputs[1].is_const
            assert n.outputs[0].quant == params_for(n)


def test_same_scale_ops_share_range_tensors_and_grid_ops_inherit(mobile_q):
    _, q = mobile_q
    cat = _node(q, "cat")
    out_fq = cat.output.uses[0][0]
    assert out_fq.op == "FAKE_QUANT"
    avg_fq = cat.inputs[0].producer
    maxpool = cat.inputs[1].producer
    assert avg_fq.op == "FAKE_QUANT" and maxpool.op == "MAX_POOL_2D"
    pool_in_fq = maxpool.inputs[0].producer
    for fq in (avg_fq, pool_in_fq):
        assert fq.inputs[1] is out_fq.inputs[1] and fq.inputs[2] is out_fq.inputs[2]
    assert all(u.op != "FAKE_QUANT" for u, _ in maxpool.output.uses)  # inherits
    reshape = _node(q, "flat")
    assert all(u.op != "FAKE_QUANT" for u, _ in reshape.output.uses)


def test_tanh_stays_separate_and_gets_fixed_range():
    # LiteRT ignores a fused TANH, so the default table does not fuse it.
    q = quantize(transpose_conv_bn())
    tconv = _node(q, "tconv")
    assert tconv.attrs["fused_activation"] == "NONE"
    tanh = _node(q, "tanh")
    fq = tanh.output.uses[0][0]
    assert fq.op == "FAKE_QUANT"
    assert fq.outputs[0].quant.scale == (1 / 128,) and fq.outputs[0].quant.zero_point == (0,)


def test_quantized_graph_runs_close_to_float(mobile_q):
    g, q = mobile_q
    feeds = _feeds(g)
    yf, yq = qatir.run(g, feeds)["probs"], qatir.run(q, feeds)["probs"]
    assert np.max(np.abs(yf - yq)) < 0.05


# ---------------------------------------------------------------- table edits change behaviour


def test_table_edit_exclude_layer_and_weight_bits(tmp_path, mobile_q):
    g, q8 = mobile_q
    text = DEFAULT_TOML.replace("bits = 8\nsymmetric = true", "bits = 4\nsymmetric = true")
    text += '\n[[exclude]]\nname = "^fc3$"\nnote = "keep the classifier hidden layer float"\n'
    path = tmp_path / "edited.toml"
    path.write_text(text)
    q4 = quantize(g, table=path)
    # fc3 kept float: no FAKE_QUANT on its weights; its float output is fake-quantized only
    # where the quantized fc4 reads it (the writer's QUANTIZE boundary)
    fc3 = _node(q4, "fc3")
    assert fc3.inputs[1].producer is None
    assert [u.op for u, _ in fc3.output.uses] == ["FAKE_QUANT"]
    boundary = fc3.output.uses[0][0]
    assert [u.name for u, _ in boundary.output.uses] == ["fc4"]
    assert q4.metadata["float_nodes"] == ["fc3"]
    assert _node(q8, "fc3").inputs[1].producer.op == "FAKE_QUANT"
    # 4-bit weights everywhere else
    w_fqs = [n for n in q4.nodes if n.op == "FAKE_QUANT" and n.attrs["kind"] == "weight"]
    assert w_fqs and all(n.attrs["bits"] == 4 and n.outputs[0].quant.qrange() == (-7, 7)
                         for n in w_fqs)
    feeds = _feeds(g)
    assert not np.allclose(qatir.run(q4, feeds)["probs"], qatir.run(q8, feeds)["probs"])


def test_table_symmetric_activations_and_include_rules(tmp_path):
    g = chain(3)
    text = DEFAULT_TOML.replace("bits = 8\nsymmetric = false", "bits = 8\nsymmetric = true")
    text += '\n[[include]]\nops = ["CONV_2D"]\n'
    path = tmp_path / "sym.toml"
    path.write_text(text)
    q = quantize(g, table=path)
    acts = [n for n in q.nodes if n.op == "FAKE_QUANT" and n.attrs["kind"] == "activation"]
    assert acts and all(n.outputs[0].quant.zero_point == (0,) for n in acts)
    assert sorted(q.metadata["float_nodes"]) == ["add0", "add1", "add2"]
    assert q.outputs[0].producer.op == "ADD"  # the float output stays float
    for n in q.nodes:
        if n.op == "ADD":  # fake-quantized only where a quantized conv reads it
            assert all(v.op == "CONV_2D" for u, _ in n.output.uses if u.op == "FAKE_QUANT"
                       for v, _ in u.output.uses)


def test_table_without_fusions_keeps_ops(tmp_path):
    text = DEFAULT_TOML.split("[[fusions]]")[0] + "[activations]" + DEFAULT_TOML.split("[activations]")[1]
    path = tmp_path / "nofuse.toml"
    path.write_text(text)
    f = float_pipeline(mobile_block(), table=path)
    assert "BATCH_NORM" in _ops(f) and "CLIP" in _ops(f) and "RELU6" in _ops(f)


def test_pipeline_report_records_all_passes(mobile_q):
    _, q = mobile_q
    rep = q.metadata["pipeline"]
    assert rep["notes"]["fake_quant_inserted"] > 0
    report = run_pipeline(chain(4).clone(), "default")
    assert report.total_seconds > 0 and len(report.records) == len(rep["passes"])


def test_quantize_twice_adds_nothing(mobile_q):
    _, q = mobile_q
    again = quantize(q)
    assert _ops(again).count("FAKE_QUANT") == _ops(q).count("FAKE_QUANT")


def test_tflite_frontend_model_fold_fuse_and_quantize(tmp_path):
    from tests.helpers.keras_models import convert, mobilenet_like

    path = tmp_path / "m.tflite"
    path.write_bytes(convert(mobilenet_like(), "float"))
    g = qatir.load(path)
    f = float_pipeline(g)
    _assert_same_outputs(g, f)
    q = quantize(g)
    assert [t.name for t in q.outputs] == [t.name for t in g.outputs]
    # an output computed by a float island (DIV by a tensor: no int8 kernel) stays float
    floats = set(q.metadata["float_nodes"])
    assert all(t.producer.op == "FAKE_QUANT" or t.producer.name in floats for t in q.outputs)
    assert q.metadata["quant_conflicts"] == []

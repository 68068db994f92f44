"""Canonicalization passes: what exporters write becomes ops with an int8 kernel.

Each rewrite is checked three ways: the structure (ops before/after), the float result
(LiteRT float file of the graph before vs after the passes) and that the quantized graph
then exports with ``strict_int8=True`` and runs bit-exact with the reference. Each pass
is switched off by deleting its table entry.
"""

from __future__ import annotations

import tomllib

import numpy as np
import pytest

import qatir
from qatir.ir import Graph
from qatir.pipeline import float_pipeline
from qatir.table import builtin_tables
from tests.helpers import compare_all, litert_run
from tests.helpers.onnx_models import OnnxBuilder

DEFAULT = tomllib.loads(builtin_tables()["int8_default"].read_text())


def _without(kind: str) -> dict:
    data = dict(DEFAULT)
    data["fusions"] = [f for f in DEFAULT["fusions"] if f["kind"] != kind]
    return data


def _ops(g: Graph) -> list[str]:
    return [n.op for n in g.nodes if n.op != "FAKE_QUANT"]


def _same_float(g: Graph, f: Graph, seed: int = 0) -> float:
    """Max |LiteRT(float file of g) - LiteRT(float file of f)| on a random feed."""
    rng = np.random.default_rng(seed)
    feeds = {t.name: rng.normal(0, 2, t.shape).astype(np.float32) for t in g.inputs}
    a, _ = litert_run(qatir.to_tflite(g), feeds, ref=True)
    b, _ = litert_run(qatir.to_tflite(f), feeds, ref=True)
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def _int8(g: Graph, table=None) -> Graph:
    q = qatir.quantize(g, table=table)
    rng = np.random.default_rng(1)
    from qatir.calibration import calibrate

    calibrate(q, [{t.name: rng.normal(0, 2, t.shape).astype(np.float32) for t in g.inputs}
                  for _ in range(4)], progress=False, engine="litert")
    return q


def _exact(q: Graph) -> None:
    qatir.to_tflite(q, strict_int8=True)
    assert compare_all(q) == {"reference": 0, "xnnpack": 0}


def pplcnet_block(assoc: str = "left", opset: int = 13) -> Graph:
    """A PP-LCNet block as paddle2onnx writes it: conv, x·clip(x + 3, 0, 6) / 6, conv."""
    b = OnnxBuilder(opset=opset, seed=2)
    x = b.input("x", [1, 4, 8, 8])
    c = b.conv(x, 4, 8)
    clip = b.node("Clip", [b.node("Add", [c, b.init(np.float32(3.0), "three")]),
                           b.init(np.float32(0.0), "lo"), b.init(np.float32(6.0), "hi")])
    six = b.init(np.float32(6.0), "six")
    if assoc == "left":  # (x * clip) / 6
        hs = b.node("Div", [b.node("Mul", [c, clip]), six])
    else:  # x * (clip / 6)
        hs = b.node("Mul", [c, b.node("Div", [clip, six])])
    b.output(b.conv(hs, 8, 4, k=1, p=0), [1, 4, 8, 8])
    import tempfile
    from pathlib import Path

    import onnx

    path = Path(tempfile.mkdtemp()) / "pplcnet.onnx"
    onnx.save(b.model(), path)
    return qatir.load(path)


@pytest.mark.parametrize("assoc", ["left", "right"])
def test_paddle_hard_swish_becomes_one_int8_hard_swish(assoc):
    g = pplcnet_block(assoc)
    assert _ops(g).count("DIV") == 1
    f = float_pipeline(g)
    assert _ops(f) == ["CONV_2D", "HARD_SWISH", "CONV_2D"]
    assert _same_float(g, f) < 1e-5
    q = _int8(g)
    assert q.metadata["float_nodes"] == []
    _exact(q)


def test_hard_swish_with_the_relu6_already_fused_into_the_add():
    g = Graph("fused")
    x = g.add_input("x", [1, 4, 4, 3])
    add = g.add_node("ADD", [x, g.const(np.full((1, 1, 1, 3), 3.0, np.float32), "three")],
                     {"fused_activation": "RELU6"}).output
    y = g.add_node("MUL", [g.add_node("MUL", [x, add]).output,
                           g.const(np.float32(1 / 6), "sixth")]).output
    g.outputs = [y]
    f = float_pipeline(g)
    assert _ops(f) == ["HARD_SWISH"] and _same_float(g, f) < 1e-5


def test_hard_swish_spelling_with_other_constants_is_left_alone():
    g = Graph("not_hs")
    x = g.add_input("x", [1, 4, 4, 3])
    r = g.add_node("RELU6", [g.add_node("ADD", [x, g.const(np.float32(2.0), "two")]).output])
    y = g.add_node("MUL", [g.add_node("MUL", [x, r.output]).output,
                           g.const(np.float32(1 / 6), "sixth")]).output
    g.outputs = [y]
    rep = qatir.quantize(g, passes=["fuse_hard_swish_spelled"], trace=True)
    assert "HARD_SWISH" not in _ops(rep)
    reasons = [e["reason"] for e in rep.metadata["pipeline"]["trace"] if not e["fired"]]
    assert any("%two is not 3" in r for r in reasons)


def test_hard_swish_spelled_switched_off_by_the_table_leaves_a_float_div_island():
    g = pplcnet_block("left")
    table = _without("hard_swish_spelled")
    table["fusions"] = [f for f in table["fusions"] if f["kind"] != "div_by_constant"]
    q = _int8(g, table)
    assert [n for n in q.metadata["float_nodes"]] and "HARD_SWISH" not in _ops(q)
    assert [q.nodes[[n.name for n in q.nodes].index(q.metadata["float_nodes"][0])].op] == ["DIV"]
    with pytest.raises(qatir.ExportError, match=r"\(DIV\).*strict_int8"):
        qatir.to_tflite(q, strict_int8=True)
    assert compare_all(q) == {"reference": 0, "xnnpack": 0}


def test_div_by_constant_becomes_mul_by_its_reciprocal():
    g = Graph("div")
    x = g.add_input("x", [1, 4, 4, 3])
    c = np.asarray([2.0, 4.0, 0.5], np.float32).reshape(1, 1, 1, 3)
    y = g.add_node("DIV", [x, g.const(c, "c")], {"fused_activation": "RELU"}).output
    g.outputs = [y]
    f = float_pipeline(g)
    (mul,) = f.nodes
    assert mul.op == "MUL" and mul.attrs["fused_activation"] == "RELU"
    np.testing.assert_array_equal(mul.inputs[1].data, (1 / c).astype(np.float32))
    assert _same_float(g, f) == 0.0  # 1/c exact for these c
    _exact(_int8(g))
    off = float_pipeline(g, table=_without("div_by_constant"))
    assert _ops(off) == ["DIV"]


def test_div_by_a_constant_zero_is_not_rewritten():
    g = Graph("div0")
    x = g.add_input("x", [1, 3])
    g.outputs = [g.add_node("DIV", [x, g.const(np.asarray([1.0, 0.0, 2.0], np.float32))]).output]
    assert _ops(float_pipeline(g)) == ["DIV"]


def test_clip_0_1_becomes_relu_then_relu_n1_to_1_and_exports_int8():
    g = Graph("hsig")
    x = g.add_input("x", [1, 4, 4, 3])
    a = g.add_node("MUL", [x, g.const(np.float32(0.2), "slope")]).output
    b = g.add_node("ADD", [a, g.const(np.float32(0.5), "offset")]).output
    g.outputs = [g.add_node("CLIP", [b], {"min": 0.0, "max": 1.0}).output]
    f = float_pipeline(g)
    assert "RELU_0_TO_1" not in _ops(f) and _ops(f)[-1] == "RELU_N1_TO_1"
    assert _same_float(g, f) == 0.0
    _exact(_int8(g))
    off = float_pipeline(g, table=_without("relu_0_to_1"))
    assert "RELU_0_TO_1" in _ops(off)


def test_silu_stays_mul_of_logistic_and_is_int8():
    g = Graph("silu")
    x = g.add_input("x", [1, 4, 4, 3])
    g.outputs = [g.add_node("MUL", [x, g.add_node("LOGISTIC", [x]).output]).output]
    q = _int8(g)
    assert _ops(q) == ["LOGISTIC", "MUL"] and q.metadata["float_nodes"] == []
    _exact(q)

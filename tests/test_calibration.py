"""Calibration engines: LiteRT (float TFLite of the graph) and TensorFlow agree; fallbacks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import qatir
from qatir.calibration import Tap
from qatir.errors import QatirError
from qatir.ir import Graph
from qatir.litert_capture import LiteRTCapture, float_tap_graph
from qatir.quantizers import Quantizer, register_quantizer
from tests.helpers import onnx_models


def ranges(g: Graph) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {n.name: (np.array(n.inputs[1].data), np.array(n.inputs[2].data))
            for n in g.nodes if n.op == "FAKE_QUANT"}


def assert_same_ranges(a: Graph, b: Graph) -> None:
    ra, rb = ranges(a), ranges(b)
    assert ra.keys() == rb.keys()
    for name in ra:
        for x, y in zip(ra[name], rb[name]):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5, err_msg=name)


def imported(model, tmp_path) -> Graph:
    return qatir.load(onnx_models.save(model, tmp_path / "m.onnx"))


def image_batches(g: Graph, sizes, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    t = g.inputs[0]
    return [{t.name: rng.normal(0, 1, (n, *t.shape[1:])).astype(np.float32)} for n in sizes]


@pytest.mark.parametrize("make", [onnx_models.resnet_like, onnx_models.mobilenet_like,
                                  onnx_models.inception_like])
def test_litert_and_tensorflow_engines_set_the_same_ranges(make, tmp_path):
    g = imported(make(), tmp_path)
    if g.inputs[0].shape[0] is None:
        sizes = (2, 2, 1)  # a last, smaller batch builds a second LiteRT model
    else:
        sizes = (g.inputs[0].shape[0],) * 3
    data = image_batches(g, sizes)
    by_engine = {}
    for engine in ("litert", "tf"):
        q = qatir.quantize(g)
        qatir.calibrate(q, data, progress=False, engine=engine)
        by_engine[engine] = q
    assert_same_ranges(by_engine["litert"], by_engine["tf"])
    assert len(ranges(by_engine["tf"])) > 10


def test_row_quantizers_get_whole_activations_on_both_engines(tmp_path):
    g = imported(onnx_models.resnet_like(), tmp_path)
    data = image_batches(g, (1, 1))
    by_engine = {}
    for engine in ("litert", "tf"):
        q = qatir.quantize(g)
        for n in q.nodes:
            if n.op == "FAKE_QUANT" and n.attrs.get("quantizer") in ("moving_average", "minmax"):
                n.attrs["quantizer"] = "percentile"
        qatir.calibrate(q, data, progress=False, engine=engine,
                        quantizer_options={"percentile": {"percentile": 99.0}})
        by_engine[engine] = q
    assert_same_ranges(by_engine["litert"], by_engine["tf"])


SEEN: dict[str, list] = {"minmax": [], "rows": []}


@register_quantizer("test_calibration_minmax_only")
class _MinMaxOnly(Quantizer):
    def observe_minmax(self, state, lo, hi):
        SEEN["minmax"].append((lo.copy(), hi.copy()))
        super().observe_minmax(state, lo, hi)


@register_quantizer("test_calibration_rows")
class _Rows(Quantizer):
    def observe(self, state, x):
        SEEN["rows"].append(x.copy())
        super().observe(state, x)


def two_channel_net(quantizer: str) -> Graph:
    """x[?, 3, 2] -> MUL by [1, -2] -> per-channel (axis 2) FAKE_QUANT."""
    g = Graph("chan")
    x = g.add_input("x", [None, 3, 2])
    y = g.add_node("MUL", [x, g.const(np.array([1.0, -2.0], np.float32), "k")]).output
    lo, hi = g.const(np.zeros(2, np.float32), "lo"), g.const(np.ones(2, np.float32), "hi")
    g.outputs = [g.add_node("FAKE_QUANT", [y, lo, hi], {"quantizer": quantizer, "axis": 2}).output]
    return g


@pytest.mark.parametrize("engine", ["litert", "tf"])
def test_a_quantizer_sees_min_max_or_rows_as_it_declares(engine):
    assert not _MinMaxOnly.needs_rows() and _Rows.needs_rows()
    x = np.arange(12, dtype=np.float32).reshape(2, 3, 2) - 4
    for key in SEEN:
        SEEN[key].clear()
    qatir.calibrate(two_channel_net("test_calibration_minmax_only"), [{"x": x}], progress=False,
                    engine=engine)
    y = x * np.array([1, -2], np.float32)
    (lo, hi), = SEEN["minmax"]
    np.testing.assert_array_equal(lo, y.reshape(-1, 2).min(0))
    np.testing.assert_array_equal(hi, y.reshape(-1, 2).max(0))
    g = two_channel_net("test_calibration_rows")
    qatir.calibrate(g, [{"x": x}], progress=False, engine=engine)
    rows, = SEEN["rows"]
    np.testing.assert_array_equal(rows, y.reshape(-1, 2))
    np.testing.assert_array_equal(g.tensors["lo"].data, np.minimum(y.reshape(-1, 2).min(0), 0))


@pytest.mark.parametrize("engine", ["litert", "tf"])
def test_moving_average_averages_per_batch_extremes(engine):
    g = two_channel_net("moving_average")
    a = np.full((4, 3, 2), 1.0, np.float32)
    b = np.full((1, 3, 2), 3.0, np.float32)  # different batch sizes
    qatir.calibrate(g, [{"x": a}, {"x": b}], progress=False, engine=engine)
    np.testing.assert_allclose(g.tensors["hi"].data, [2.0, 0.0])  # mean of 1 and 3; -2x < 0
    np.testing.assert_allclose(g.tensors["lo"].data, [0.0, -4.0])


def dynamic_width_net() -> Graph:
    g = Graph("dyn")
    x = g.add_input("x", [None, None])
    y = g.add_node("MUL", [x, g.const(np.float32(2.0), "two")]).output
    lo, hi = g.const(np.float32(0), "lo"), g.const(np.float32(1), "hi")
    g.outputs = [g.add_node("FAKE_QUANT", [y, lo, hi], {"quantizer": "minmax"}).output]
    return g


def clip_net() -> Graph:
    """CLIP(0, 3) has no TFLite builtin: the float graph cannot be written."""
    g = Graph("clip")
    x = g.add_input("x", [None, 4])
    y = g.add_node("CLIP", [x], {"min": 0.0, "max": 3.0}).output
    lo, hi = g.const(np.float32(0), "lo"), g.const(np.float32(1), "hi")
    g.outputs = [g.add_node("FAKE_QUANT", [y, lo, hi], {"quantizer": "minmax"}).output]
    return g


@pytest.mark.parametrize("make, why", [(dynamic_width_net, "dynamic non-batch dims"),
                                       (clip_net, "CLIP")])
def test_auto_falls_back_to_tensorflow_when_litert_cannot_run_the_graph(make, why):
    x = np.linspace(-1, 5, 8, dtype=np.float32).reshape(2, 4)
    with pytest.raises(QatirError, match=why):
        qatir.calibrate(make(), [{"x": x}], progress=False, engine="litert")
    g = qatir.calibrate(make(), [{"x": x}], progress=False)
    want = 10.0 if make is dynamic_width_net else 3.0
    assert float(g.tensors["hi"].data) == pytest.approx(want)


def test_unknown_engine_is_refused():
    with pytest.raises(QatirError, match="engine must be one of"):
        qatir.calibrate(clip_net(), [{"x": np.zeros((1, 4), np.float32)}], engine="onnx")


def test_tap_graph_drops_every_fake_quant_and_outputs_the_observed_tensors(tmp_path):
    q = qatir.quantize(imported(onnx_models.mobilenet_like(), tmp_path))
    names = {n.name for n in q.nodes if n.op == "FAKE_QUANT" and n.attrs.get("kind") != "weight"}
    before = str(q)
    g, sources = float_tap_graph(q, names)
    assert str(q) == before  # the caller's graph is untouched
    assert not any(n.op == "FAKE_QUANT" for n in g.nodes)
    assert sources.keys() == names
    computed = {id(t) for t in sources.values() if t.producer is not None}
    assert {id(t) for t in g.outputs} == computed
    assert any(t in g.inputs for t in sources.values())  # the input's range is read directly
    engine = LiteRTCapture(q, [Tap(n, None, False) for n in sorted(names)])
    out = engine.run(tuple(image_batches(q, (1,))[0].values()))
    assert all(v.shape == (2, 1) and v[0, 0] <= v[1, 0] for v in out.values())


def test_post_training_quantization_does_not_import_tensorflow(tmp_path):
    path = onnx_models.save(onnx_models.mobilenet_like(), tmp_path / "m.onnx")
    script = f"""
import sys, numpy as np, qatir
g = qatir.load({str(path)!r})
q = qatir.quantize(g)
x = np.random.default_rng(0).normal(size=(2, *g.inputs[0].shape[1:])).astype(np.float32)
qatir.calibrate(q, [{{g.inputs[0].name: x}}], progress=False)
assert len(qatir.to_tflite(q)) > 1000
print("tensorflow" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_batches_of_many_sizes_keep_few_interpreters():
    g = two_channel_net("minmax")
    data = [{"x": np.full((n, 3, 2), float(n), np.float32)} for n in (1, 2, 3, 4, 3, 1)]
    from qatir import litert_capture

    engine = litert_capture.LiteRTCapture(g, [Tap(g.outputs[0].producer.name, 2, False)])
    for batch in data:
        out = engine.run((batch["x"],))[g.outputs[0].producer.name]
        n = batch["x"].shape[0]
        np.testing.assert_array_equal(out, [[n, -2 * n], [n, -2 * n]])
        assert len(engine._interpreters) <= litert_capture.KEEP_INTERPRETERS


@pytest.mark.parametrize("engine", ["litert", "tf"])
def test_ema_starts_at_the_first_batch_and_decays(engine):
    """ai-edge-quantizer's rule: r = 0.95 r + 0.05 r_batch after the first batch's r."""
    g = two_channel_net("ema")
    batches = [{"x": np.full((1, 3, 2), v, np.float32)} for v in (1.0, 3.0, 5.0)]
    qatir.calibrate(g, batches, progress=False, engine=engine)
    want = 0.95 * (0.95 * 1.0 + 0.05 * 3.0) + 0.05 * 5.0
    np.testing.assert_allclose(g.tensors["hi"].data, [want, 0.0], rtol=1e-6)
    np.testing.assert_allclose(g.tensors["lo"].data, [0.0, -2 * want], rtol=1e-6)

"""Streaming calibration: generators, tf.data, batches split to the graph's size,
bias correction over a re-iterable, bounded quantizer state, LiteRT on all cores."""

from __future__ import annotations

import numpy as np
import pytest

import qatir
from qatir import litert_capture
from qatir.errors import DataError, QatirError
from qatir.feeds import iterate_feeds
from qatir.ir import Graph
from qatir.litert_run import all_threads
from qatir.quantizers import get_quantizer
from tests.helpers.graphs import mobile_block


def ranges(g: Graph) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {n.name: (np.array(n.inputs[1].data), np.array(n.inputs[2].data))
            for n in g.nodes if n.op == "FAKE_QUANT"}


def assert_same_ranges(a: Graph, b: Graph) -> None:
    ra, rb = ranges(a), ranges(b)
    assert ra.keys() == rb.keys() and ra
    for name in ra:
        for x, y in zip(ra[name], rb[name]):
            np.testing.assert_array_equal(x, y, err_msg=name)


def images(n: int, seed: int = 0) -> np.ndarray:
    """[n, 8, 8, 3]: n samples for mobile_block (graph batch 1)."""
    return np.random.default_rng(seed).normal(0, 1, (n, 8, 8, 3)).astype(np.float32)


def calibrated(data, bias_correction=None, **kw) -> Graph:
    q = qatir.quantize(mobile_block())
    if bias_correction is not None:
        q.metadata["bias_correction"] = bias_correction
    return qatir.calibrate(q, data, progress=False, **kw)


@pytest.fixture(scope="module")
def reference() -> Graph:
    """Calibrated from a list of six batch-1 dicts."""
    x = images(6)
    return calibrated([{"x": x[i:i + 1]} for i in range(6)])


def test_a_generator_gives_the_ranges_of_the_list(reference):
    x = images(6)
    assert_same_ranges(calibrated({"x": x[i:i + 1]} for i in range(6)), reference)
    assert_same_ranges(calibrated(iter([x[i:i + 1] for i in range(6)])), reference)  # bare


def test_a_batch_larger_than_the_graphs_is_split_into_graph_sized_pieces(reference):
    x = images(6)
    assert_same_ranges(calibrated([{"x": x[:4]}, {"x": x[4:]}]), reference)
    pieces = list(iterate_feeds(mobile_block(), [x[:4]]))
    assert [p[0].shape for p in pieces] == [(1, 8, 8, 3)] * 4
    np.testing.assert_array_equal(pieces[2][0], x[2:3])


def test_max_batches_counts_graph_sized_pieces():
    x = images(6)
    assert_same_ranges(calibrated([{"x": x}], max_batches=3),
                       calibrated([{"x": x[i:i + 1]} for i in range(3)]))


def test_a_shape_that_does_not_fit_is_a_data_error_naming_the_input():
    g = mobile_block()
    with pytest.raises(DataError, match=r"input 'x'.*\[1,8,8,3\]"):
        list(iterate_feeds(g, [np.zeros((2, 3, 8, 8), np.float32)]))  # NCHW
    g2 = Graph("two")
    a, b = g2.add_input("a", [2, 4]), g2.add_input("b", [2, 4])
    g2.outputs = [g2.add_node("ADD", [a, b]).output]
    with pytest.raises(DataError, match=r"input 'a': a batch of 3 does not split"):
        list(iterate_feeds(g2, [{"a": np.zeros((3, 4)), "b": np.zeros((3, 4))}]))
    with pytest.raises(DataError, match="different numbers of batches"):
        list(iterate_feeds(g2, [{"a": np.zeros((4, 4)), "b": np.zeros((2, 4))}]))
    pairs = list(iterate_feeds(g2, [((np.zeros((4, 4)), np.ones((4, 4))), None)]))
    assert len(pairs) == 2 and pairs[0][1].shape == (2, 4) and pairs[0][1].max() == 1


tf = pytest.importorskip("tensorflow")


@pytest.mark.parametrize("form", ["dict", "tuple", "bare"])
@pytest.mark.parametrize("batch", [1, 4])
def test_a_tf_data_dataset_gives_the_ranges_of_the_list(reference, form, batch):
    x = images(6)
    ds = tf.data.Dataset.from_tensor_slices(x)
    if form == "dict":
        ds = ds.map(lambda v: {"x": v})
    elif form == "tuple":  # (features, label), as Keras pipelines yield
        ds = tf.data.Dataset.zip((ds.map(lambda v: {"x": v}),
                                  tf.data.Dataset.from_tensor_slices(np.arange(6))))
    assert_same_ranges(calibrated(ds.batch(batch)), reference)


def test_bias_correction_streams_a_re_iterable_and_refuses_a_one_shot_iterator():
    x = images(6, seed=3)
    listed = calibrated([{"x": x[i:i + 1]} for i in range(6)], bias_correction=True)
    assert listed.metadata["bias_corrections"]
    from_callable = calibrated(lambda: ({"x": x[i:i + 1]} for i in range(6)),
                               bias_correction=True)
    from_dataset = calibrated(tf.data.Dataset.from_tensor_slices({"x": x}).batch(2),
                              bias_correction=True)
    for g in (from_callable, from_dataset):
        assert_same_ranges(g, listed)
        assert g.metadata["bias_corrections"] == listed.metadata["bias_corrections"]
    with pytest.raises(QatirError, match="one-shot generator.*re-iterable"):
        calibrated(({"x": x[i:i + 1]} for i in range(6)), bias_correction=True)
    auto = calibrated(lambda: iter([{"x": x[i:i + 1]} for i in range(6)]),
                      bias_correction="auto")
    assert isinstance(auto.metadata["bias_correction_kept"], bool)


@pytest.mark.parametrize("threads", [None, 1])
def test_litert_capture_runs_on_all_cores_unless_told(monkeypatch, threads):
    seen = []
    real = litert_capture.interpreter

    def spy(buf, *args, threads=None, **kw):
        seen.append(threads)
        return real(buf, *args, threads=threads, **kw)

    monkeypatch.setattr(litert_capture, "interpreter", spy)
    calibrated([{"x": images(1)}], engine="litert", threads=threads)
    assert seen == [all_threads() if threads is None else threads]


def test_quantizer_state_is_bounded_whatever_the_number_of_batches():
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(5000, 3)).astype(np.float32) for _ in range(10)]
    q = qatir.quantize(mobile_block())
    default = get_quantizer(next(n.attrs["quantizer"] for n in q.nodes if n.op == "FAKE_QUANT"
                                 and n.attrs.get("kind") != "weight"))()
    for q in (default, get_quantizer("moving_average")(),
              get_quantizer("percentile")(max_samples=2000)):
        state = q.new_state(3)
        for b in batches:
            if q.needs_rows():
                q.observe(state, b)
            else:
                q.observe_minmax(state, b.min(0), b.max(0))
        arrays = [v for v in state.values() if isinstance(v, np.ndarray)]
        limit = 2000 * 3 if q.needs_rows() else 3
        assert max(v.size for v in arrays) <= limit, type(q).__name__

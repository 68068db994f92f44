"""int16 graph inputs: an ``[[int16]]`` entry's ``inputs`` regex puts graph inputs in int16.

With ``io="int8"`` the file's input is int16 (zero point 0); with ``io="float"`` a float32
input feeds a QUANTIZE into int16 (version 2). Small graphs bit for bit against LiteRT
under BUILTIN_REF and the default resolver, the table's validation, and QAT through it.
"""

from __future__ import annotations

import os
import tomllib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import qatir  # noqa: E402
from qatir.errors import TableError  # noqa: E402
from qatir.ir import Graph  # noqa: E402
from qatir.lower import lower  # noqa: E402
from qatir.reference import run_lowered, run_reference  # noqa: E402
from qatir.table import builtin_tables  # noqa: E402
from qatir.tflite_writer import to_tflite  # noqa: E402
from tests.helpers import file_ops, worst_lsb  # noqa: E402


def _table(int16):
    data = tomllib.loads(builtin_tables()["int8_default"].read_text())
    data["int16"] = int16
    return data


def _convnet(seed: int = 0) -> Graph:
    """x -> conv c1 -> conv c2 -> out (1x1 and 3x3), and a second reader of x (c3)."""
    rng = np.random.default_rng(seed)
    g = Graph("int16_in")
    x = g.add_input("x", [1, 8, 8, 3])

    def conv(y, cin, cout, k, name):
        w = rng.normal(0, 0.4, (cout, k, k, cin)).astype(np.float32)
        b = rng.normal(0, 0.2, cout).astype(np.float32)
        return g.add_node("CONV_2D", [y, g.const(w, name + "_w"), g.const(b, name + "_b")],
                          {"padding": "SAME", "fused_activation": "RELU"}, name=name).output

    y = conv(conv(x, 3, 6, 3, "c1"), 6, 4, 1, "c2")
    z = conv(x, 3, 4, 1, "c3")
    g.outputs = [g.add_node("ADD", [y, z], name="add", outputs=["out"]).output]
    g.verify()
    return g


def _feeds(seed: int, n: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": (rng.normal(size=(1, 8, 8, 3)) * 2).astype(np.float32)} for _ in range(n)]


def _quantized(int16, seed: int = 0):
    q = qatir.quantize(_convnet(seed), table=_table(int16))
    qatir.calibrate(q, _feeds(seed))
    return q


def _ops(buf: bytes) -> tuple[list[tuple[str, int]], dict[str, str]]:
    return file_ops(buf, inputs_only=True)


def _worst(buf: bytes, low: Graph, feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Max |LiteRT - run_lowered(low)| per resolver (0: bit exact)."""
    return worst_lsb(buf, feeds, lambda f, mode: run_lowered(low, f, kernels=mode))


def _int16_feeds(low: Graph, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{t.name: rng.integers(-32768, 32768, t.shape).astype(t.dtype) for t in low.inputs}
            for _ in range(2)]


ALL_CONVS = {"name": "^c[123]$"}


def test_int16_input_int8_edges_is_the_file_interface():
    q = _quantized([{"inputs": "^x$"}, ALL_CONVS])
    fq = q.inputs[0].users[0]
    assert fq.op == "FAKE_QUANT" and fq.attrs["bits"] == 16 and fq.attrs["symmetric"]
    low = lower(q, io="int8")
    x = low.inputs[0]
    assert x.dtype == np.int16 and x.quant.zero_point == (0,)
    assert {u.op for u in x.users} == {"CONV_2D"}  # read directly, no requantize
    buf = to_tflite(q, io="int8")
    ops, inputs = _ops(buf)
    assert inputs == {"x": "INT16"}
    assert ("CONV_2D", 8) in ops and not any(op == "QUANTIZE" for op, _ in ops[:2])
    assert _worst(buf, low, _int16_feeds(low, 1)) == {"reference": 0, "xnnpack": 0}


def test_int16_input_float_edges_quantizes_to_int16():
    q = _quantized([{"inputs": "^x$"}, ALL_CONVS], seed=1)
    buf = to_tflite(q, io="float")
    ops, inputs = _ops(buf)
    assert inputs == {"x": "FLOAT32"} and ops[0] == ("QUANTIZE", 2)
    low = lower(q, io="float")
    quant = low.inputs[0].users[0]
    assert quant.op == "QUANTIZE" and quant.outputs[0].dtype == np.int16
    assert _worst(buf, low, _feeds(5, 2)) == {"reference": 0, "xnnpack": 0}
    # the float edge strips back to the int16 interface (the reference's int8 edges)
    again = lower(low, io="int8")
    assert again.inputs[0].dtype == np.int16 and again.inputs[0].name == "x"


def test_int16_input_read_by_int8_nodes_is_requantized():
    """Only c1 is int16: c3 (int8) reads the int16 input through a QUANTIZE int16 -> int8."""
    q = _quantized([{"inputs": "^x$"}, {"name": "^c1$"}], seed=2)
    low = lower(q, io="int8")
    readers = {u.op: u for u in low.inputs[0].users}
    assert set(readers) == {"CONV_2D", "QUANTIZE"}
    assert readers["QUANTIZE"].outputs[0].dtype == np.int8
    buf = to_tflite(q, io="int8")
    assert _worst(buf, low, _int16_feeds(low, 3)) == {"reference": 0, "xnnpack": 0}
    assert _worst(to_tflite(q, io="float"), lower(q, io="float"), _feeds(6, 2)) \
        == {"reference": 0, "xnnpack": 0}


def test_int16_input_closer_to_float_than_int8_input():
    """The int8 input's quantization is the error left when every node is int16."""
    g = _convnet(3)
    feeds = _feeds(7, 2)
    errs = {}
    for key, int16 in (("int8 in", [ALL_CONVS, {"name": "^add$"}]),
                       ("int16 in", [{"inputs": "."}, ALL_CONVS, {"name": "^add$"}])):
        low = lower(_quantized(int16, seed=3), io="float")
        errs[key] = max(float(np.abs(run_lowered(low, f)["out"] - qatir.run(g, f)["out"]).max())
                        for f in feeds)
    assert errs["int16 in"] < 0.75 * errs["int8 in"]  # weights stay int8 in both


def test_evaluate_feeds_an_int16_input():
    """qatir.evaluate quantizes float samples for the integer reference at the input's
    width (int16 here): LiteRT and the reference agree to the LSB."""
    from qatir.evaluate import evaluate

    q = _quantized([{"inputs": "^x$"}, ALL_CONVS], seed=4)
    ev = evaluate(q, to_tflite(q, io="int8"), _feeds(8, 2), reference_samples=2)
    assert ev.reference_max_lsb == 0 and ev.int8_all_db > 30


def test_inputs_only_entry_selects_no_node():
    q = _quantized([{"inputs": "^x$"}], seed=5)
    low = lower(q, io="int8")
    assert low.inputs[0].dtype == np.int16
    assert all(n.outputs[0].dtype == np.int8 for n in low.nodes if n.op == "CONV_2D")
    assert {u.op for u in low.inputs[0].users} == {"QUANTIZE"}
    assert _worst(to_tflite(q, io="int8"), low, _int16_feeds(low, 4)) \
        == {"reference": 0, "xnnpack": 0}


def test_inputs_regex_matching_nothing_keeps_int8():
    low = lower(_quantized([{"inputs": "^image$"}, ALL_CONVS], seed=6), io="int8")
    assert low.inputs[0].dtype == np.int8


def test_bad_inputs_regex_refused():
    with pytest.raises(TableError, match=r"int16\[1\]\.inputs: bad regex '\('"):
        qatir.quantize(_convnet(), table=_table([ALL_CONVS, {"inputs": "("}]))


def test_inputs_key_only_in_int16_entries():
    data = _table([])
    data["exclude"] = [{"inputs": "^x$"}]
    with pytest.raises(TableError, match="exclude"):
        qatir.quantize(_convnet(), table=data)


def test_qat_with_int16_input_exports():
    import keras

    q = _quantized([{"inputs": "^x$"}, ALL_CONVS], seed=7)
    rng = np.random.default_rng(7)
    xs = [f["x"] for f in _feeds(9, 8)]
    ys = [rng.normal(size=(1, 8, 8, 4)).astype(np.float32) for _ in xs]
    qatir.fit(q, [({"x": x}, y) for x, y in zip(xs, ys)], loss="mse",
              optimizer=keras.optimizers.Adam(0.01), epochs=2, verbose=False)
    fq = q.inputs[0].users[0]
    assert fq.attrs["bits"] == 16 and fq.outputs[0].quant.zero_point == (0,)
    low = lower(q, io="int8")
    assert low.inputs[0].dtype == np.int16
    assert _worst(to_tflite(q, io="int8"), low, _int16_feeds(low, 5)) \
        == {"reference": 0, "xnnpack": 0}


def test_run_reference_takes_int16_feeds():
    q = _quantized([{"inputs": "^x$"}, ALL_CONVS], seed=8)
    with pytest.raises(qatir.errors.ExportError, match="expected int16, got int8"):
        run_reference(q, {"x": np.zeros((1, 8, 8, 3), np.int8)})

"""ONNX LSTM and GRU, unrolled into int8-capable builtins (qatir/frontends/onnx_rnn.py):
float results against onnxruntime, int8 exports bit-exact against LiteRT."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

import qatir
from qatir.errors import ShapeError, UnsupportedOpError
from tests.helpers import compare_all, file_ops
from tests.helpers.onnx_models import OnnxBuilder, compare_with_ort, rnd, save


def rnn_model(kind: str = "LSTM", direction: str = "forward", seq: int = 5, batch: int = 2,
              inp: int = 6, hid: int = 4, lbr: int = 0, init: bool = False,
              outs: tuple[int, ...] = (0, 1, 2), **attrs) -> onnx.ModelProto:
    """One LSTM/GRU node on ``x [seq, batch, inp]`` with random weights and biases;
    ``init`` adds random initial states; ``outs`` picks which outputs are graph outputs."""
    b = OnnxBuilder(14)
    x = b.input("x", [seq, batch, inp])
    dirs = 2 if direction == "bidirectional" else 1
    g = 4 if kind == "LSTM" else 3
    ins = [x, b.init(b.randn(dirs, g * hid, inp)), b.init(b.randn(dirs, g * hid, hid)),
           b.init(b.randn(dirs, 2 * g * hid, scale=0.3))]
    if init:
        ins += ["", b.init(b.randn(dirs, batch, hid))]
        ins += [b.init(b.randn(dirs, batch, hid))] if kind == "LSTM" else []
    if kind == "GRU":
        attrs["linear_before_reset"] = lbr
    n_out = 3 if kind == "LSTM" else 2
    ys = b.node(kind, ins, n_out=n_out, name="rnn", hidden_size=hid, direction=direction,
                **attrs)
    for i in outs:
        if i < n_out:
            b.node("Identity", [ys[i]], out=f"o{i}")
            b.output(f"o{i}")
    return b.model()


@pytest.mark.parametrize("kind,lbr", [("LSTM", 0), ("GRU", 0), ("GRU", 1)])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("init", [False, True])
def test_rnn_matches_onnxruntime(tmp_path, kind, lbr, direction, init):
    g = compare_with_ort(rnn_model(kind, direction, lbr=lbr, init=init), {"x": rnd(5, 2, 6)},
                         tmp_dir=tmp_path, rtol=1e-5)
    ops = Counter(n.op for n in g.nodes)
    assert set(ops) <= {"FULLY_CONNECTED", "STRIDED_SLICE", "ADD", "SUB", "MUL", "LOGISTIC",
                        "TANH", "RESHAPE", "CONCATENATION", "TRANSPOSE", "IDENTITY"}
    dirs = 2 if direction == "bidirectional" else 1
    # one input projection per direction, one recurrent product per step after the first
    # (every step with an initial state); GRU's candidate gate has its own
    per_step = 1 if kind == "LSTM" else 2
    steps = 5 if init else 4
    assert ops["FULLY_CONNECTED"] == dirs * (1 + per_step * steps)


def test_relu_activations_and_an_unused_state_output(tmp_path):
    model = rnn_model("LSTM", outs=(0,), activations=["Sigmoid", "Relu", "Relu"])
    g = compare_with_ort(model, {"x": rnd(5, 2, 6)}, tmp_dir=tmp_path, rtol=1e-5)
    assert "RELU" in {n.op for n in g.nodes} and "TANH" not in {n.op for n in g.nodes}


@pytest.mark.parametrize("kind,direction", [("LSTM", "bidirectional"), ("GRU", "forward")])
def test_rnn_exports_int8_bit_exact(tmp_path, kind, direction):
    q = qatir.quantize(qatir.load(save(rnn_model(kind, direction, lbr=1, outs=(0, 1)),
                                       tmp_path / "rnn.onnx")))
    rng = np.random.default_rng(0)
    qatir.calibrate(q, [{"x": rng.normal(size=(5, 2, 6)).astype(np.float32)} for _ in range(4)],
                    progress=False)
    assert compare_all(q) == {"reference": 0, "xnnpack": 0}
    buf = qatir.to_tflite(q, io="int8", strict_int8=True)  # no float island anywhere
    # no float tensor either; a QUANTIZE may requantize int8 -> int8 (a step the
    # concatenation of a state other nodes read, `requantize_shared_inputs`)
    ops, types = file_ops(buf)
    assert "FLOAT32" not in types.values() and "DEQUANTIZE" not in dict(ops)


@pytest.mark.parametrize("attrs,match", [
    ({"clip": 3.0}, "clip=3"), ({"input_forget": 1}, "input_forget=1"),
    ({"layout": 1}, "layout=1"),
    ({"activations": ["Sigmoid", "Elu", "Tanh"]}, "activations="),
])
def test_unsupported_rnn_attributes_are_refused_naming_the_node(tmp_path, attrs, match):
    path = save(rnn_model("LSTM", **attrs), tmp_path / "bad_rnn.onnx")
    with pytest.raises(UnsupportedOpError, match=rf"bad_rnn\.onnx: node 'rnn'.*{match}"):
        qatir.load(path)


def test_rnn_with_a_dynamic_sequence_names_the_fix(tmp_path):
    model = rnn_model("GRU")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "T"
    path = save(model, tmp_path / "dyn_rnn.onnx")
    with pytest.raises(ShapeError, match=r"dyn_rnn\.onnx: node 'rnn'.*static.*input_shapes="):
        qatir.load(path)
    assert qatir.load(path, input_shapes={"x": [5, 2, 6]}).inputs[0].shape == (5, 2, 6)


def test_a_sequence_too_long_to_unroll_is_refused_before_emitting(tmp_path):
    path = save(rnn_model("LSTM", "bidirectional", seq=6000, batch=1), tmp_path / "long.onnx")
    with pytest.raises(UnsupportedOpError, match=r"long\.onnx: node 'rnn'.*6000 x 2 .*10000"):
        qatir.load(path)

"""ONNX Pow with a tensor base and a constant exponent (PP-OCR's recognizer writes x^2)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qatir
from tests.helpers import compare_all
from tests.helpers.onnx_models import compare_with_ort


def pow_model(p: float, relu_first: bool = False) -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["x"], ["r"])] if relu_first else []
    nodes.append(helper.make_node("Pow", ["r" if relu_first else "x", "e"], ["y"], name="the_pow"))
    g = helper.make_graph(nodes, "pow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.array(p, np.float32), "e")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("p,relu,ops", [(2.0, False, ["MUL"]), (3.0, False, ["MUL", "MUL"]),
                                        (0.5, True, ["RELU", "SQRT"]),
                                        (-0.5, True, ["RELU", "RSQRT"]),
                                        (1.0, False, ["IDENTITY"])])  # graph output = input
def test_pow_by_a_constant_matches_onnxruntime(tmp_path, p, relu, ops):
    model = pow_model(p, relu)
    x = np.random.default_rng(0).normal(size=(1, 3, 4, 5)).astype(np.float32) + (3 if p < 0 else 0)
    g = compare_with_ort(model, {"x": x}, tmp_dir=tmp_path)
    assert [n.op for n in g.nodes if n.op not in ("TRANSPOSE", "RESHAPE")] == ops


def test_pow_by_another_exponent_becomes_tflite_pow(tmp_path):
    g = compare_with_ort(pow_model(1.7, relu_first=True),
                         {"x": np.abs(np.random.default_rng(0).normal(size=(1, 3, 4, 5)))
                          .astype(np.float32)}, tmp_dir=tmp_path)
    assert [n.op for n in g.nodes if n.op not in ("TRANSPOSE", "RESHAPE")] == ["RELU", "POW"]


def test_square_exports_int8_bit_exact(tmp_path):
    path = tmp_path / "sq.onnx"
    onnx.save(pow_model(2.0), path)
    q = qatir.quantize(qatir.load(str(path)))
    rng = np.random.default_rng(1)
    qatir.calibrate(q, [{"x": rng.normal(size=(1, 4, 5, 3)).astype(np.float32)} for _ in range(3)],
                    progress=False)
    assert compare_all(q) == {"reference": 0, "xnnpack": 0}

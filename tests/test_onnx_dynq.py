"""onnxruntime's dynamic quantization undone at import (qatir/frontends/onnx_dynq.py):
a float CRNN-like model (conv, LSTM, classifier) is quantized with
``onnxruntime.quantization.quantize_dynamic`` and imported as its float equivalent."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest

import qatir
from qatir.frontends.onnx_dynq import dequantize_dynamic
from tests.helpers import compare_all
from tests.helpers.onnx_models import OnnxBuilder, compare_with_ort, ops_of, rnd, run_ort, save


def _crnn(per_channel: bool = False) -> onnx.ModelProto:
    """conv 3x3 (stride 2) -> relu -> [W, N, C·H] -> bidirectional LSTM -> classifier."""
    b = OnnxBuilder(13)
    x = b.input("x", [1, 1, 8, 12])
    c = b.node("Relu", [b.conv(x, 1, 8, s=2)])  # [1, 8, 4, 6]
    seq = b.node("Reshape", [b.node("Transpose", [c], perm=[3, 0, 1, 2]), b.ints([6, 1, 32])])
    hid = 8
    ys = b.node("LSTM", [seq, b.init(b.randn(2, 4 * hid, 32, scale=0.3)),
                         b.init(b.randn(2, 4 * hid, hid, scale=0.3)),
                         b.init(b.randn(2, 8 * hid, scale=0.1))],
                n_out=3, hidden_size=hid, direction="bidirectional")
    flat = b.node("Reshape", [b.node("Transpose", [ys[0]], perm=[0, 2, 1, 3]),
                              b.ints([6, 2 * hid])])
    b.node("Add", [b.node("MatMul", [flat, b.init(b.randn(2 * hid, 10))]),
                   b.init(b.randn(10, scale=0.1))], out="y")
    b.output("y")
    return b.model()


def _quantized(tmp_path, per_channel: bool = False) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = save(_crnn(), tmp_path / "float.onnx")
    dst = tmp_path / "dynq.onnx"
    quantize_dynamic(src, str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                     op_types_to_quantize=["Conv", "MatMul", "LSTM"])
    return onnx.load(str(dst))


@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_quantized_model_imports_as_its_float_equivalent(tmp_path, per_channel):
    model = _quantized(tmp_path, per_channel)
    kinds = {(n.domain, n.op_type) for n in model.graph.node}
    assert {("", "ConvInteger"), ("", "DynamicQuantizeLinear"), ("", "MatMulInteger"),
            ("com.microsoft", "DynamicQuantizeLSTM")} <= kinds
    equivalent = copy.deepcopy(model)
    assert dequantize_dynamic(equivalent.graph, "dynq.onnx") > 0
    assert not {n.op_type for n in equivalent.graph.node} & {
        "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeLSTM", "Floor"}
    x = rnd(1, 1, 8, 12)
    g = compare_with_ort(model, {"x": x}, tmp_dir=tmp_path, rtol=1e-5, reference=equivalent)
    assert "CONV_2D" in ops_of(g) and "FULLY_CONNECTED" in ops_of(g)
    # the file itself differs from its float equivalent by its activation rounding only
    file_out, float_out = run_ort(model, {"x": x})[0], run_ort(_crnn(), {"x": x})[0]
    eq_out = run_ort(equivalent, {"x": x})[0]
    scale = np.abs(float_out).max()
    assert np.abs(eq_out - float_out).max() < 0.05 * scale  # int8 weights vs float ones
    assert np.abs(eq_out - file_out).max() < 0.05 * scale


def test_dynamic_quantized_model_exports_int8_bit_exact(tmp_path):
    path = save(_quantized(tmp_path), tmp_path / "dq.onnx")
    q = qatir.quantize(qatir.load(path))
    rng = np.random.default_rng(0)
    qatir.calibrate(q, [{"x": rng.normal(size=(1, 8, 12, 1)).astype(np.float32)}
                        for _ in range(4)], progress=False)
    assert compare_all(q) == {"reference": 0, "xnnpack": 0}

"""End to end on scikit-learn's digits: ONNX CNN -> float fit -> quantize -> calibrate -> QAT.

The CNN has conv+BN+ReLU, depthwise+BN+ReLU6, a strided conv, global average
pooling and a dense head. It is built with onnx.helper, imported with
``qatir.load``, trained in float with ``qatir.fit`` (batch norm in training
mode), quantized with ``qatir.quantize`` and fine-tuned with fake quant. The
fake-quant accuracy must stay within 0.5 points of float, and so must the int8
TFLite model run in LiteRT.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qatir

keras = pytest.importorskip("keras")


def digits_onnx(rng: np.random.Generator) -> onnx.ModelProto:
    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    def conv(x, name, c_in, c_out, stride=1, group=1):
        fan_in = 9 * c_in // group
        w = rng.standard_normal((c_out, c_in // group, 3, 3)) * np.sqrt(2.0 / fan_in)
        nodes.append(helper.make_node("Conv", [x, const(f"{name}.w", w)], [name], group=group,
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                      strides=[stride, stride], name=name))
        return name

    def bn(x, name, c):
        args = [const(f"{name}.{k}", v) for k, v in (("g", np.ones(c)), ("b", np.zeros(c)),
                                                      ("m", np.zeros(c)), ("v", np.ones(c)))]
        nodes.append(helper.make_node("BatchNormalization", [x, *args], [name], epsilon=1e-3,
                                      momentum=0.9, name=name))
        return name

    x = conv("image", "conv1", 1, 16)
    x = bn(x, "bn1", 16)
    nodes.append(helper.make_node("Relu", [x], ["relu1"]))
    x = conv("relu1", "dw", 16, 16, group=16)
    x = bn(x, "bn2", 16)
    nodes.append(helper.make_node("Clip", [x, const("zero", 0.0), const("six", 6.0)], ["relu6"]))
    x = conv("relu6", "conv3", 16, 32, stride=2)
    x = bn(x, "bn3", 32)
    nodes.append(helper.make_node("Relu", [x], ["relu3"]))
    nodes.append(helper.make_node("GlobalAveragePool", ["relu3"], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1))
    w = rng.standard_normal((10, 32)) / np.sqrt(32)
    nodes.append(helper.make_node("Gemm", ["flat", const("fc.w", w), const("fc.b", np.zeros(10))],
                                  ["logits"], transB=1))
    graph = helper.make_graph(
        nodes, "digits", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


def digits_data():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[..., None]  # NHWC, as qatir imports the input
    y = d.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(x))
    cut = int(0.75 * len(x))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def batches(x, y, size, seed):
    order = np.random.default_rng(seed).permutation(len(x))
    return [({"image": x[order[i:i + size]]}, y[order[i:i + size]]) for i in range(0, len(x), size)]


def accuracy(graph, x, y) -> float:
    logits = qatir.run(graph, {"image": x})[graph.outputs[0].name]
    return 100.0 * float(np.mean(logits.argmax(-1) == y))


def test_digits_float_then_qat_within_half_a_point(tmp_path):
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    path = tmp_path / "digits.onnx"
    onnx.save(digits_onnx(np.random.default_rng(0)), path)
    g = qatir.load(path)
    ops = [n.op for n in g.nodes]
    assert "DEPTHWISE_CONV_2D" in ops and "BATCH_NORM" in ops
    xtr, ytr, xte, yte = digits_data()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    hist = qatir.fit(g, batches(xtr, ytr, 32, 1), loss=loss, optimizer=keras.optimizers.Adam(0.01),
                     epochs=12, verbose=False)
    assert hist["loss"][-1] < 0.3 * hist["loss"][0]
    float_acc = accuracy(g, xte, yte)
    assert float_acc > 90.0

    q = qatir.quantize(g)
    ops = [n.op for n in q.nodes]
    assert "BATCH_NORM" not in ops and ops.count("FAKE_QUANT") >= 8
    qatir.calibrate(q, [b[0] for b in batches(xtr, ytr, 64, 2)[:10]], progress=False)
    ptq_acc = accuracy(q, xte, yte)
    qatir.fit(q, batches(xtr, ytr, 32, 3), loss=loss, optimizer=keras.optimizers.Adam(5e-4),
              epochs=3, verbose=False)
    qat_acc = accuracy(q, xte, yte)
    print(f"float {float_acc:.2f}  ptq {ptq_acc:.2f}  qat {qat_acc:.2f}")
    assert qat_acc >= float_acc - 0.5, (float_acc, ptq_acc, qat_acc)

    from qatir.litert_run import run_litert

    outs = run_litert(qatir.to_tflite(q, io="float"), [[xte[i:i + 1]] for i in range(len(xte))])
    preds = [o[0].argmax() for o in outs]
    int8_acc = 100.0 * float(np.mean(np.array(preds) == yte))
    print(f"int8 tflite {int8_acc:.2f}")
    assert int8_acc >= float_acc - 0.5, (float_acc, qat_acc, int8_acc)

"""Whole path on the architecture zoo: ONNX -> quantize -> calibrate -> int8 TFLite.

For each model the int8 file runs in LiteRT under both kernel paths and equals
qatir's integer reference bit for bit, XNNPACK takes every node it supports, and
the int8 model stays close to float (SQNR against the float IR).
"""

from __future__ import annotations

import numpy as np
import pytest

import qatir
from qatir.parity import xnnpack_coverage
from tests.helpers import XNNPACK_INT8, compare_all, onnx_models

MODELS = {
    "resnet_like": onnx_models.resnet_like,
    "mobilenet_like": onnx_models.mobilenet_like,
    "inception_like": onnx_models.inception_like,
}


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    noise = np.sum((ref - got) ** 2)
    return float(10 * np.log10(np.sum(ref ** 2) / max(noise, 1e-30)))


@pytest.fixture(scope="module", params=sorted(MODELS))
def quantized(request, tmp_path_factory):
    path = onnx_models.save(MODELS[request.param](), tmp_path_factory.mktemp("m") / "m.onnx")
    g = qatir.load(path)  # dynamic batch: calibrate on 4, export with batch 1
    rng = np.random.default_rng(0)
    x = g.inputs[0]
    shape = [d or 1 for d in x.shape]
    batches = [{x.name: rng.uniform(-1, 1, [4] + shape[1:]).astype(np.float32)}
               for _ in range(4)]
    q = qatir.quantize(g)
    qatir.calibrate(q, batches, progress=False)
    return request.param, g, q, batches


def test_int8_file_equals_integer_reference_on_both_kernel_paths(quantized):
    name, _, q, _ = quantized
    assert compare_all(q, seeds=(1, 2)) == {"reference": 0, "xnnpack": 0}, name


def test_xnnpack_takes_every_node_it_supports(quantized):
    name, _, q, _ = quantized
    cover = xnnpack_coverage(qatir.to_tflite(q, io="int8"))
    rejected = [op for op, taken in cover if op in XNNPACK_INT8 and not taken]
    assert not rejected, f"{name}: XNNPACK rejected {rejected}"
    assert sum(taken for _, taken in cover) >= len(cover) // 2


def test_fake_quant_and_int8_stay_close_to_float(quantized):
    from tests.helpers import litert_run

    name, g, q, batches = quantized
    feeds = {k: v[:1] for k, v in batches[0].items()}
    out = g.outputs[0].name
    y_float = qatir.run(g, feeds)[out]
    y_fq = qatir.run(q, feeds)[out]
    buf = qatir.to_tflite(q, io="float")
    y_int8 = next(iter(litert_run(buf, feeds, ref=False)[0].values()))
    assert _sqnr(y_float, y_fq) > 15, name
    assert _sqnr(y_float, y_int8.reshape(y_float.shape)) > 15, name

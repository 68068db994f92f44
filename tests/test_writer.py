"""Flatbuffer invariants of the TFLite writer, float export, atomic save, size guard."""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest

import qatir
from qatir.errors import ExportError, UnsupportedOpError
from qatir.tflite_writer import check_size, to_tflite
from tests.helpers import CASES, QB, litert_run

Model = importlib.import_module("tflite.Model").Model
BuiltinOperator = importlib.import_module("tflite.BuiltinOperator").BuiltinOperator
CODE_NAMES = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}


def _model(buf: bytes):
    return Model.GetRootAs(buf, 0)


def _opcodes(m) -> dict[str, tuple[int, int]]:
    out = {}
    for i in range(m.OperatorCodesLength()):
        oc = m.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        out[CODE_NAMES[code]] = (oc.Version(), oc.DeprecatedBuiltinCode())
    return out


def _graph(case: str = "graph_residual"):
    qb = QB(seed=3)
    return qb.output(CASES[case](qb))


def test_header_buffers_alignment():
    buf = to_tflite(_graph())
    assert buf[4:8] == b"TFL3"
    m = _model(buf)
    assert m.Version() == 3
    assert m.Buffers(0).DataLength() == 0
    base = np.frombuffer(buf, np.uint8).__array_interface__["data"][0]
    n_const = 0
    for i in range(1, m.BuffersLength()):
        b = m.Buffers(i)
        if b.DataLength():
            addr = b.DataAsNumpy().__array_interface__["data"][0]
            assert (addr - base) % 16 == 0, f"buffer {i} not 16-byte aligned"
            n_const += 1
    assert n_const >= 6
    sg = m.Subgraphs(0)
    for t in range(sg.TensorsLength()):
        tensor = sg.Tensors(t)
        if tensor.Type() == 9 and tensor.Buffer() == 0:  # int8 activation
            q = tensor.Quantization()
            assert q.ScaleLength() == 1 and -128 <= q.ZeroPoint(0) <= 127


def test_op_versions_and_both_code_fields():
    ops = _opcodes(_model(to_tflite(_graph())))
    versions = {k: v[0] for k, v in ops.items()}
    assert versions == {"CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "ADD": 2, "MEAN": 2,
                        "FULLY_CONNECTED": 4, "SOFTMAX": 2}
    for name, (_, deprecated) in ops.items():
        assert deprecated == min(getattr(BuiltinOperator, name), 127)
    ops = _opcodes(_model(to_tflite(_graph("graph_unet"))))
    assert ops["TRANSPOSE_CONV"][0] == 3 and ops["HARD_SWISH"][0] == 1
    assert ops["LEAKY_RELU"][0] == 1 and ops["RESIZE_BILINEAR"][0] == 2


def test_mul_version_3_when_scale_ratio_at_least_one():
    qb = QB()
    a = qb.input("a", [1, 4], -8, 8)
    b = qb.input("b", [1, 4], -8, 8)
    g = qb.output(qb.op("MUL", [a, b], None, (-0.01, 0.01)))  # s1*s2/so = 50
    assert _opcodes(_model(to_tflite(g)))["MUL"][0] == 3
    assert _opcodes(_model(to_tflite(_graph("mul"))))["MUL"][0] == 2


def test_min_runtime_version_and_signature():
    g = _graph()
    m = _model(to_tflite(g, io="float"))
    meta = {m.Metadata(i).Name().decode(): m.Metadata(i).Buffer()
            for i in range(m.MetadataLength())}
    data = m.Buffers(meta["min_runtime_version"]).DataAsNumpy().tobytes()
    assert len(data) == 16 and data.rstrip(b"\0") == b"1.14.0"
    sig = m.SignatureDefs(0)
    assert sig.SignatureKey() == b"serving_default"
    assert [sig.Inputs(i).Name().decode() for i in range(sig.InputsLength())] == ["x"]
    assert [sig.Outputs(i).Name().decode() for i in range(sig.OutputsLength())] == \
        [g.outputs[0].name]


def test_signature_runner_float_edges():
    from qatir.litert_run import interpreter

    g = _graph()
    it = interpreter(to_tflite(g, io="float"))
    runner = it.get_signature_runner("serving_default")
    out = runner(x=np.random.default_rng(0).uniform(-1, 1, (1, 12, 12, 3)).astype(np.float32))
    probs = out[g.outputs[0].name]
    assert probs.dtype == np.float32 and abs(probs.sum() - 1) < 0.05


def test_dynamic_batch_becomes_batch_size():
    qb = QB(seed=0)
    x = qb.input("x", [None, 16], -1, 1)
    g = qb.output(qb.conv("FULLY_CONNECTED", x, [4, 16], None, (-2, 2)))
    for bs in (1, 3):
        m = _model(to_tflite(g, batch_size=bs))
        sg = m.Subgraphs(0)
        assert sg.Tensors(sg.Inputs(0)).ShapeAsNumpy().tolist() == [bs, 16]


def test_float_graph_exports_float_model_matching_ir():
    rng = np.random.default_rng(0)
    qb = QB(seed=0)
    x = qb.g.add_input("x", [1, 8, 8, 3])
    w = qb.g.const(rng.normal(0, 0.3, (6, 3, 3, 3)).astype(np.float32), name="w")
    b = qb.g.const(rng.normal(0, 0.1, 6).astype(np.float32), name="b")
    y = qb.op("CONV_2D", [x, w, b], {"padding": "SAME", "fused_activation": "RELU6"})
    dw = qb.g.const(rng.normal(0, 0.3, (1, 3, 3, 6)).astype(np.float32), name="dw")
    y = qb.op("DEPTHWISE_CONV_2D", [y, dw], {"padding": "SAME", "stride": [2, 2]})
    y = qb.op("HARD_SWISH", [y])
    y = qb.op("MEAN", [y], {"axis": [1, 2], "keep_dims": False})
    fw = qb.g.const(rng.normal(0, 0.3, (5, 6)).astype(np.float32), name="fw")
    y = qb.op("SOFTMAX", [qb.op("FULLY_CONNECTED", [y, fw])])
    g = qb.output(y)
    buf = to_tflite(g)
    m = _model(buf)
    assert all(m.Subgraphs(0).Tensors(i).Type() == 0 for i in range(m.Subgraphs(0).TensorsLength())
               if m.Subgraphs(0).Tensors(i).Buffer() == 0)
    feed = {"x": rng.normal(size=(1, 8, 8, 3)).astype(np.float32)}
    want = qatir.run(g, feed)[g.outputs[0].name]
    got, _ = litert_run(buf, feed, ref=False)
    np.testing.assert_allclose(got[g.outputs[0].name], want, atol=1e-5)


def test_unsupported_op_lists_all():
    qb = QB()
    x = qb.g.add_input("x", [1, 4])
    g = qb.output(qb.op("SHAPE", [qb.op("SHAPE", [x])]))
    with pytest.raises(UnsupportedOpError, match=r"SHAPE \(x2\)"):
        to_tflite(g)


def test_size_guard():
    check_size(2**31 - 1)
    with pytest.raises(ExportError, match=r"3\.00 GiB"):
        check_size(3 * 2**30)


def test_atomic_save(tmp_path):
    g = _graph()
    path = tmp_path / "m.tflite"
    qatir.save(g, path)
    first = path.read_bytes()
    assert first == to_tflite(g)
    qb = QB()
    x = qb.g.add_input("x", [1, 4])
    bad = qb.output(qb.op("SHAPE", [x]))
    with pytest.raises(UnsupportedOpError):
        qatir.save(bad, path)
    assert path.read_bytes() == first
    assert os.listdir(tmp_path) == ["m.tflite"]


def test_unknown_option_refused():
    with pytest.raises(ExportError, match="unknown to_tflite option"):
        to_tflite(_graph(), quantize_everything=True)


@pytest.mark.parametrize("io", ["int8", "float"])
def test_roundtrip_through_tflite_frontend(tmp_path, io):
    """write -> qatir.load (the TFLite frontend's lowered form) -> write: same results."""
    from qatir.reference import run_reference
    from tests.helpers import int8_feed

    g = _graph("graph_unet")
    buf = to_tflite(g, io=io)
    path = tmp_path / "m.tflite"
    path.write_bytes(buf)
    g2 = qatir.load(path)
    buf2 = to_tflite(g2, io=io)
    feeds = int8_feed(g)
    ref_feeds = feeds
    if io == "float":
        feeds = {k: v.astype(np.float32) * 0.01 for k, v in feeds.items()}
    a, _ = litert_run(buf, feeds, ref=True)
    b, _ = litert_run(buf2, feeds, ref=True)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    want = run_reference(g, ref_feeds)
    got = run_reference(g2, ref_feeds)
    assert all(np.array_equal(want[k], got[k]) for k in want)


def test_uint8_edges_shift_zero_point():
    from tests.helpers import int8_feed

    g = _graph()
    feeds = int8_feed(g)
    a, _ = litert_run(to_tflite(g), feeds, ref=True)
    u8 = {k: (v.astype(np.int16) + 128).astype(np.uint8) for k, v in feeds.items()}
    b, _ = litert_run(to_tflite(g, io="uint8"), u8, ref=True)
    for k in a:
        assert b[k].dtype == np.uint8
        np.testing.assert_array_equal(a[k].astype(np.int16) + 128, b[k])


def test_dynamic_spatial_dims_refused():
    qb = QB()
    x = qb.g.add_input("x", [None, None, 8, 3])
    g = qb.output(qb.op("RELU", [x]))
    with pytest.raises(ExportError, match="dynamic non-batch dims"):
        to_tflite(g)


def test_offset_buffers_layout_runs_in_litert():
    """The >2 GB layout (data after the flatbuffer, Buffer.offset/size), forced on a small model."""
    from tests.helpers import int8_feed

    g = _graph("graph_unet")
    inline, offset = to_tflite(g), to_tflite(g, offset_buffers=True)
    m = _model(offset)
    n_off = 0
    for i in range(1, m.BuffersLength()):
        b = m.Buffers(i)
        if b.Offset() > 1:
            n_off += 1
            assert b.DataLength() == 0 and b.Offset() % 16 == 0
            assert b.Offset() + b.Size() <= len(offset)
    assert n_off >= 6
    feeds = int8_feed(g)
    for ref in (True, False):
        a, _ = litert_run(inline, feeds, ref)
        b, _ = litert_run(offset, feeds, ref)
        assert all(np.array_equal(a[k], b[k]) for k in a)

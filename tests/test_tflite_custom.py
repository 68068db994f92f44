"""MediaPipe's Convolution2DTransposeBias custom op imports as TRANSPOSE_CONV with a bias
(qatir/frontends/tflite_custom.py). The file is made from qatir's own TRANSPOSE_CONV export
by rewriting the operator as MediaPipe writes it (custom code, inputs (x, w, b), raw
TfLiteTransposeConvParams options); LiteRT runs it through XNNPACK's delegate."""

from __future__ import annotations

import flatbuffers
import numpy as np
import pytest

import qatir
from qatir.errors import QatirError
from qatir.ir import Graph
from tests.helpers import compare_all, litert_run


def _tconv_graph(padding: str, seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    g = Graph("tconv")
    x = g.add_input("x", [1, 5, 5, 4])
    w = g.const(rng.normal(size=(3, 2, 2, 4)).astype(np.float32), "w")
    b = g.const(rng.normal(size=(3,)).astype(np.float32), "b")
    g.outputs = [g.add_node("TRANSPOSE_CONV", [x, w, b], {"stride": [2, 2], "padding": padding},
                            outputs=["y"]).output]
    return g


def mediapipe_file(g: Graph, options: bytes) -> bytes:
    """``g``'s float TFLite file with its TRANSPOSE_CONV rewritten as MediaPipe's custom op."""
    from ai_edge_litert import schema_py_generated as S

    m = S.ModelT.InitFromPackedBuf(qatir.to_tflite(g), 0)
    for op in m.subgraphs[0].operators:
        code = m.operatorCodes[op.opcodeIndex]
        if code.builtinCode == S.BuiltinOperator.TRANSPOSE_CONV:
            code.builtinCode = code.deprecatedBuiltinCode = S.BuiltinOperator.CUSTOM
            code.customCode = "Convolution2DTransposeBias"
            op.inputs = [op.inputs[2], op.inputs[1], op.inputs[3]]  # (x, w, b)
            op.builtinOptionsType, op.builtinOptions = 0, None
            op.customOptions = list(options)
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


@pytest.mark.parametrize("padding,code", [("SAME", 1), ("VALID", 2)])
def test_convolution2d_transpose_bias_matches_litert(tmp_path, padding, code):
    g = _tconv_graph(padding)
    buf = mediapipe_file(g, np.array([code, 2, 2], "<i4").tobytes())
    path = tmp_path / "mp.tflite"
    path.write_bytes(buf)
    back = qatir.load(str(path))
    assert [n.op for n in back.nodes] == ["TRANSPOSE_CONV"]
    assert back.nodes[0].attrs["padding"] == padding and len(back.nodes[0].inputs) == 3
    x = np.random.default_rng(1).normal(size=(1, 5, 5, 4)).astype(np.float32)
    got, _ = litert_run(buf, {"x": x}, ref=False)  # XNNPACK's delegate runs the custom op
    want = qatir.run(back, {"x": x})["y"]
    np.testing.assert_allclose(want, got["y"], rtol=1e-5, atol=1e-5)
    q = qatir.quantize(back)
    qatir.calibrate(q, [{"x": x}], progress=False)
    assert compare_all(q) == {"reference": 0, "xnnpack": 0}  # exported as the builtin


@pytest.mark.parametrize("options,match", [(b"\x01\x00\x00\x00", "4 bytes"),
                                           (np.array([7, 2, 2], "<i4").tobytes(), "code 7"),
                                           (np.array([1, 0, 2], "<i4").tobytes(), "stride")])
def test_bad_custom_options_are_refused_naming_the_operator(tmp_path, options, match):
    path = tmp_path / "bad_mp.tflite"
    path.write_bytes(mediapipe_file(_tconv_graph("SAME"), options))
    with pytest.raises(QatirError, match=rf"bad_mp\.tflite.*Convolution2DTransposeBias.*{match}"):
        qatir.load(str(path))

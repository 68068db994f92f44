"""docs/from-tfmot.md: the page's shape, and the qatir mechanisms it maps TFMOT onto.

The page's Python blocks themselves run in ``tests/test_docs.py`` (every docs/*.md);
this module checks that each TFMOT snippet has its qatir answer next to it, and
that the pattern-table selections the page relies on do what it says on a
Keras-imported graph (layer names are node names).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

import qatir
from qatir.table import builtin_tables

keras = pytest.importorskip("keras")

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGE = DOCS / "from-tfmot.md"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.S | re.M)
TFMOT_APIS = ["quantize_model", "q_aware_model.fit", "TFLiteConverter", "quantize_scope",
              "quantize_annotate_layer", "quantize_apply", "QuantizeConfig",
              "MovingAverageQuantizer", "LastValueQuantizer", "FixedRangeQuantizer"]


def blocks(page: Path) -> list[tuple[str, str, int]]:
    """(language, code, line) of every fenced block (the parse tests/test_docs.py runs)."""
    text = page.read_text()
    return [(m.group(1).strip(), m.group(2), text[:m.start()].count("\n") + 1)
            for m in FENCE.finditer(text)]


def test_page_is_run_by_the_docs_test():
    assert PAGE in sorted(DOCS.glob("*.md"))   # test_docs.py runs every docs/*.md
    assert sum(lang == "python" for lang, _, _ in blocks(PAGE)) >= 8


def test_every_tfmot_snippet_is_followed_by_qatir_code():
    langs = [lang for lang, _, _ in blocks(PAGE)]
    for i, lang in enumerate(langs):
        if lang == "text":
            assert "python" in langs[i + 1:i + 2], f"text block {i} has no qatir block after it"
    tfmot_text = "\n".join(code for lang, code, _ in blocks(PAGE) if lang == "text")
    for api in TFMOT_APIS:
        assert api in tfmot_text, f"the page does not show TFMOT's {api}"


def test_page_ends_in_litert():
    code = "\n".join(code for lang, code, _ in blocks(PAGE) if lang == "python")
    assert "Interpreter(" in code and "qatir.save(q, \"digits_int8.tflite\")" in code


def _model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((8, 8), name="image"), keras.layers.Reshape((8, 8, 1)),
                             keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
                             keras.layers.Flatten(), keras.layers.Dense(10, name="dense")])


def _table(**entries):
    table = tomllib.loads(builtin_tables()["int8_default"].read_text())
    table.update(entries)
    return table


def _quantized_consumers(q):
    return {u.name for n in q.nodes if n.op == "FAKE_QUANT" for u in n.output.users}


def test_include_by_layer_name_quantizes_only_that_layer():
    g = qatir.load(_model())
    full = _quantized_consumers(qatir.quantize(g))
    only = _quantized_consumers(qatir.quantize(g, table=_table(include=[{"name": "^dense$"}])))
    assert {"conv", "dense"} <= full
    assert only == {"dense"}


def test_exclude_by_layer_name_keeps_that_layer_float():
    g = qatir.load(_model())
    q = qatir.quantize(g, table=_table(exclude=[{"name": "^conv"}]))
    conv = next(n for n in q.nodes if n.op == "CONV_2D")
    assert all(t.producer is None or t.producer.op != "FAKE_QUANT" for t in conv.inputs[1:] if t)
    assert "dense" in _quantized_consumers(q)


def test_whole_keras_model_to_int8_matches_reference(rng):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    g = qatir.load(_model())
    q = qatir.quantize(g)
    x = rng.uniform(0, 1, (16, 8, 8)).astype(np.float32)
    qatir.calibrate(q, [{"image": x}], progress=False)
    it = Interpreter(model_content=qatir.to_tflite(q),
                     experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    scale, zp = inp["quantization"]
    x8 = np.clip(np.round(x[:1] / scale) + zp, -128, 127).astype(np.int8)
    it.set_tensor(inp["index"], x8)
    it.invoke()
    ref = qatir.run_reference(q, {"image": x8})[q.outputs[0].name]
    np.testing.assert_array_equal(it.get_tensor(out["index"]), ref)

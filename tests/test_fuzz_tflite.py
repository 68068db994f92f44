"""Fuzzed TFLite input (issue 8): every mutated model ends in success or a QatirError, in time.

The engine (mutations, seeds, per-case time bound) is tools/fuzz_tflite.py; this runs a
short deterministic campaign of it. A longer run: ``python tools/fuzz_tflite.py --cases N``.
"""

import importlib.util
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

import qatir  # noqa: E402
from qatir.frontends.tflite import load_tflite_bytes  # noqa: E402

CASES = 2400
PER_CASE_S = 5.0


def _engine():
    path = Path(__file__).resolve().parents[1] / "tools" / "fuzz_tflite.py"
    spec = importlib.util.spec_from_file_location("fuzz_tflite", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_tflite"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def engine():
    return _engine()


@pytest.fixture(scope="module")
def seeds(engine):
    return engine.seed_models()


def test_seed_models_import(seeds):
    for name, buf in seeds.items():
        g = load_tflite_bytes(buf, name)
        assert g.nodes and g.outputs, name


def test_campaign_has_no_crash_or_hang(engine, seeds):
    rep = engine.campaign(seeds, CASES, seed=20261123, time_limit=PER_CASE_S)
    assert rep.cases == CASES
    msgs = [f"case #{i} ({base}: {desc}) -> {out.kind}: {out.message}"
            for i, base, desc, out in rep.failures]
    assert not msgs, "\n".join(msgs[:5])
    assert set(rep.outcomes) <= {"ok", "ModelFormatError", "UnsupportedOpError", "ShapeError",
                                 "VerifyError"}, rep.outcomes
    # The mutations must actually reach the frontend's error paths, not only the header check.
    assert rep.outcomes["ModelFormatError"] > CASES // 4
    assert rep.outcomes["ok"] > 50 and rep.outcomes["UnsupportedOpError"] > 5
    assert rep.slowest[0] < PER_CASE_S


@pytest.mark.parametrize("mutation", ["truncate", "flip", "word"])
def test_each_mutation_class_alone(engine, seeds, mutation):
    fn = {"truncate": engine.truncate, "flip": engine.flip_bytes, "word": engine.hostile_word}[mutation]
    for i in range(150):
        rng = random.Random(i)
        base = sorted(seeds)[i % len(seeds)]
        buf, desc = fn(seeds[base], rng)
        out = engine.run_case(buf, f"{mutation}-{i}.tflite", PER_CASE_S)
        assert out.kind == "ok" or not out.kind.startswith(("CRASH", "HANG")), (desc, out.message)


def test_error_messages_name_file_and_operator(tmp_path, seeds):
    buf = bytearray(seeds["float"])
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(bytes(buf[:200]))
    with pytest.raises(qatir.ModelFormatError, match="bad.tflite"):
        qatir.load(bad)
    buf[4:8] = b"XXXX"
    bad.write_bytes(bytes(buf))
    with pytest.raises(qatir.ModelFormatError, match=r"bad.tflite.*identifier"):
        qatir.load(bad)
    bad.write_bytes(b"")
    with pytest.raises(qatir.ModelFormatError, match="too short"):
        qatir.load(bad)


def _edited(buf: bytes, edit) -> bytes:
    """Re-serialize ``buf`` after ``edit(model)`` through LiteRT's schema object API."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    m = s.ModelT.InitFromPackedBuf(buf, 0)
    edit(m, s)
    b = flatbuffers.Builder(len(buf) + 1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def test_out_of_range_tensor_index_names_the_operator(seeds):
    def edit(m, s):
        m.subgraphs[0].operators[1].inputs = [999] + list(m.subgraphs[0].operators[1].inputs)[1:]
    with pytest.raises(qatir.ModelFormatError, match=r"m.tflite: operator 1 .*tensor index 999 "
                                                     r"out of range"):
        load_tflite_bytes(_edited(seeds["float"], edit), "m.tflite")


def test_out_of_range_buffer_index(seeds):
    def edit(m, s):
        m.subgraphs[0].tensors[3].buffer = len(m.buffers) + 5
    with pytest.raises(qatir.ModelFormatError, match=r"tensor 3 .*buffer index"):
        load_tflite_bytes(_edited(seeds["float"], edit), "m.tflite")


def test_unknown_operators_listed_with_counts(seeds):
    def edit(m, s):
        codes = m.operatorCodes
        conv = [i for i, c in enumerate(codes) if max(c.builtinCode, c.deprecatedBuiltinCode) == 3]
        codes[conv[0]].builtinCode = codes[conv[0]].deprecatedBuiltinCode = 27  # SVDF
        extra = s.OperatorCodeT()
        extra.builtinCode, extra.deprecatedBuiltinCode = 250, 127  # a code from the future
        codes.append(extra)
        m.subgraphs[0].operators[-1].opcodeIndex = len(codes) - 1
    with pytest.raises(qatir.UnsupportedOpError) as err:
        load_tflite_bytes(_edited(seeds["float"], edit), "m.tflite")
    msg = str(err.value)
    assert "m.tflite" in msg and "SVDF (x" in msg and "BUILTIN_250 (x1)" in msg
    assert "operator index" in msg


def test_operator_reading_its_own_output(seeds):
    def edit(m, s):
        op = m.subgraphs[0].operators[2]
        op.inputs = [int(op.outputs[0])] + list(op.inputs)[1:]
    with pytest.raises(qatir.ModelFormatError, match=r"operator 2 .*before any operator writes"):
        load_tflite_bytes(_edited(seeds["float"], edit), "m.tflite")


def test_extra_subgraphs_warn_with_count(seeds):
    def edit(m, s):
        m.subgraphs.append(s.SubGraphT())
    with pytest.warns(UserWarning, match="2 subgraphs"):
        g = load_tflite_bytes(_edited(seeds["float"], edit), "m.tflite")
    assert g.nodes

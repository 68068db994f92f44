"""``[constraints] requantize_shared_inputs``: a CONCATENATION input that other nodes read
too keeps its own range (export requantizes it) instead of the union of the concatenated
ranges; an input read by the concatenation alone is still tied."""

from __future__ import annotations

import numpy as np
import pytest

import qatir
from qatir.errors import TableError
from qatir.ir import Graph
from qatir.lower import lower
from qatir.table import load_table
from tests.helpers.qbuild import compare_all


def _table(untie: list[str]) -> dict:
    data = load_table().data
    return {**data, "constraints": {**data["constraints"], "requantize_shared_inputs": untie}}


def fan_out_concat(seed: int = 0, shared: float = 0.1, other: float = 3.0) -> Graph:
    """x -> conv "narrow" (weights ~ ``shared``) -> concat(narrow, wide) and -> conv "after";
    x -> conv "wide" (weights ~ ``other``) -> concat only."""
    rng = np.random.default_rng(seed)
    g = Graph("fan_out_concat")
    x = g.add_input("x", [1, 6, 6, 3])

    def conv(name: str, src, scale: float, c_in: int = 3):
        w = (rng.standard_normal((4, 1, 1, c_in)) * scale).astype(np.float32)
        return g.add_node("CONV_2D", [src, g.const(w, f"{name}_w"),
                                      g.const(np.zeros(4, np.float32), f"{name}_b")],
                          {"padding": "SAME"}, name=name).output

    narrow, wide = conv("narrow", x, shared), conv("wide", x, other)
    cat = g.add_node("CONCATENATION", [narrow, wide], {"axis": 3}, name="cat").output
    after = conv("after", narrow, 1.0, c_in=4)
    g.outputs = [cat, after]
    g.verify()
    return g


def _fq_of(q: Graph, producer: str):
    return next(n for n in q.nodes if n.op == "FAKE_QUANT"
                and n.inputs[0].producer is not None and n.inputs[0].producer.name == producer)


def _calibrated(untie: list[str], **scales: float) -> Graph:
    g = fan_out_concat(**scales)
    q = qatir.quantize(g, table=_table(untie))
    rng = np.random.default_rng(1)
    qatir.calibrate(q, [{"x": rng.standard_normal((1, 6, 6, 3)).astype(np.float32)}
                        for _ in range(4)], progress=False)
    return q


def test_shared_input_keeps_its_own_range_and_is_requantized():
    q = _calibrated(["CONCATENATION"])
    narrow, wide, cat = _fq_of(q, "narrow"), _fq_of(q, "wide"), _fq_of(q, "cat")
    assert narrow.inputs[1] is not cat.inputs[1]  # untied: its own range
    assert wide.inputs[1] is cat.inputs[1] and wide.inputs[2] is cat.inputs[2]  # still tied
    assert float(narrow.inputs[2].data) < float(cat.inputs[2].data) / 5
    assert q.metadata["requantized_shared_inputs"] == [["cat", narrow.name, cat.name]]
    lg = lower(q)
    reqs = [n for n in lg.nodes if n.op == "QUANTIZE" and n.inputs[0].dtype == np.int8]
    assert len(reqs) == 1 and reqs[0].outputs[0].uses[0][0].op == "CONCATENATION"
    assert compare_all(q) == {"reference": 0, "xnnpack": 0}


def test_tied_by_default_without_the_entry():
    q = _calibrated([])
    narrow, cat = _fq_of(q, "narrow"), _fq_of(q, "cat")
    assert narrow.inputs[1] is cat.inputs[1] and narrow.inputs[2] is cat.inputs[2]
    assert q.metadata["requantized_shared_inputs"] == []


def test_untied_input_is_finer_for_its_other_reader():
    """What the option is for: the conv reading "narrow" gets "narrow" on its own grid."""
    from qatir.evaluate import strip_fake_quant
    from qatir.metrics import sqnr_db

    rng = np.random.default_rng(7)
    tests = [{"x": rng.standard_normal((1, 6, 6, 3)).astype(np.float32)} for _ in range(3)]
    err = {}
    for untie in ([], ["CONCATENATION"]):
        q = _calibrated(untie)
        fl = strip_fake_quant(q)
        name = q.outputs[1].name
        want = np.concatenate([qatir.run(fl, t)[fl.outputs[1].name].ravel() for t in tests])
        got = np.concatenate([qatir.run(q, t)[name].ravel() for t in tests])
        err[bool(untie)] = sqnr_db(want, got)
    assert err[True] > err[False] + 6


def test_entry_must_be_a_same_scale_op():
    with pytest.raises(TableError, match="requantize_shared_inputs.*MAX_POOL_2D"):
        data = load_table().data
        load_table({**data, "constraints": {**data["constraints"],
                                            "requantize_shared_inputs": ["MAX_POOL_2D"]}})


def test_shared_input_whose_range_holds_the_output_is_tied_again():
    """The shared input is the wide one: tying would not widen it, so calibration ties it
    again (no requantize, no double rounding): the same ranges as the tied table."""
    q = _calibrated(["CONCATENATION"], shared=3.0, other=0.1)
    narrow, cat = _fq_of(q, "narrow"), _fq_of(q, "cat")
    assert narrow.inputs[1] is cat.inputs[1] and narrow.inputs[2] is cat.inputs[2]
    assert q.metadata["requantized_shared_inputs"] == []
    tied = _calibrated([], shared=3.0, other=0.1)
    assert float(cat.inputs[2].data) == float(_fq_of(tied, "cat").inputs[2].data)
    assert not [n for n in lower(q).nodes if n.op == "QUANTIZE" and n.inputs[0].dtype == np.int8]

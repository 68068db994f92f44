"""Parity report: float IR vs fake-quant IR vs integer reference vs LiteRT, per tensor."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qatir.parity import format_report, parity_report, sqnr_db, strip_fake_quant
from qatir.tflite_writer import to_tflite
from tests.helpers import CASES, QB


@pytest.fixture(scope="module")
def residual():
    qb = QB(seed=3)
    return qb.output(CASES["graph_residual"](qb))


@pytest.mark.parametrize("resolver", ["default", "ref"])
def test_parity_rows(residual, tmp_path, resolver):
    path = tmp_path / "m.tflite"
    path.write_bytes(to_tflite(residual, io="float"))
    rng = np.random.default_rng(0)
    inputs = [{"x": rng.uniform(-1, 1, (1, 12, 12, 3)).astype(np.float32)} for _ in range(2)]
    rows = parity_report(str(path), residual, inputs=inputs, resolver=resolver)
    names = {r.tensor for r in rows}
    out_name = residual.outputs[0].name
    assert out_name in names and {"conv_2d", "add", "mean", "fully_connected"} <= names
    assert [r.kind for r in rows if r.tensor == out_name] == ["output"]
    # LiteRT computes exactly what the integer reference of the same resolver computes
    assert all(r.max_lsb == 0 for r in rows)
    # worst first
    sq = [r.sqnr_db for r in rows]
    assert sq == sorted(sq)
    # in-range uniform inputs: quantization noise well below the signal
    assert all(r.sqnr_db > 15 for r in rows)
    # LiteRT and fake-quant IR agree closely (same grid, rounding differences only)
    assert all(abs(r.sqnr_db - r.fq_sqnr_db) < 3 for r in rows if math.isfinite(r.sqnr_db))
    table = format_report(rows)
    assert table.splitlines()[0].startswith("tensor") and out_name in table


def test_sqnr_and_strip():
    x = np.array([1.0, -2.0, 3.0])
    assert sqnr_db(x, x) == math.inf
    assert abs(sqnr_db(x, x * 1.1) - 20.0) < 1e-9
    qb = QB(seed=3)
    g = qb.output(CASES["conv_same_s2"](qb))
    f = strip_fake_quant(g)
    assert not any(n.op == "FAKE_QUANT" for n in f.nodes) and len(f.nodes) == 1


def test_parity_without_tensorflow_matches_the_full_report(residual):
    """fake_quant=False runs float in LiteRT (no TF needed): same LiteRT SQNR and LSB columns."""
    buf = to_tflite(residual)
    rng = np.random.default_rng(1)
    inputs = [{"x": rng.uniform(-1, 1, (1, 12, 12, 3)).astype(np.float32)} for _ in range(2)]
    full = {r.tensor: r for r in parity_report(buf, residual, inputs=inputs, float_engine="tf")}
    lite = parity_report(buf, residual, inputs=inputs, fake_quant=False, reference_samples=1)
    assert {r.tensor for r in lite} == set(full)
    for r in lite:
        assert math.isnan(r.fq_sqnr_db) and r.max_lsb == 0
        assert abs(r.sqnr_db - full[r.tensor].sqnr_db) < 0.1 or r.sqnr_db > 60, r.tensor
    assert "n/a" in format_report(lite)

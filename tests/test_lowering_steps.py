"""Lowering runs as named steps: each verifiable and dumpable (``print_ir_after``)."""

from __future__ import annotations

import io

import numpy as np
import pytest

import qatir
from qatir.lowering import STEPS, lower, step_names
from tests.helpers.qbuild import QB


def _graph():
    qb = QB(seed=0)
    x = qb.input("x", [1, 6, 6, 3], -1, 1)
    y = qb.conv("CONV_2D", x, [4, 3, 3, 3], {"padding": "SAME"}, (-2, 2))
    y = qb.op("MAX_POOL_2D", [y], {"filter": [2, 2], "stride": [2, 2]})
    y = qb.op("RESHAPE", [y], {"new_shape": [1, 36]})
    return qb.output(qb.op("SOFTMAX", [y], None, (0, 1)))


def test_step_names_are_in_the_documented_order():
    assert step_names() == ["lower.legalise", "lower.float_bias", "lower.islands",
                            "lower.constants", "lower.activations", "lower.island_edges",
                            "lower.bias", "lower.same_scale", "lower.exact_mean",
                            "lower.xnn_add_ratios", "lower.xnn_forms", "lower.wide_softmax",
                            "lower.int16_lut_floor", "lower.checks", "lower.edges", "lower.limits"]
    assert all(s.doc for s in STEPS)


def test_every_step_verifies_and_dumps():
    out = io.StringIO()
    lg = lower(_graph(), io="float", print_ir_after="all", ir_out=out, verify=True)
    text = out.getvalue()
    dumped = [line.split(": ", 1)[1] for line in text.splitlines()
              if line.startswith("// IR after lowering step")]
    assert dumped == [n for n in step_names() if n != "lower.float_bias"]
    # the constants step leaves no FAKE_QUANT on a constant; bias makes the int32 bias
    after_constants = text.split("lower.constants")[1].split("// IR after")[0]
    assert "i8[4,3,3,3]" in after_constants
    after_bias = text.split("lower.bias\n")[1].split("// IR after")[0]
    assert "i32[4]" in after_bias
    assert "FAKE_QUANT" not in str(lg)


def test_selected_steps_dump_to_a_folder(tmp_path):
    lower(_graph(), print_ir_after=["bias", "lower.edges"], ir_out=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lower_06_bias.txt",
                                                         "lower_14_edges.txt"]


def test_to_tflite_passes_the_dump_through(capsys):
    qatir.to_tflite(_graph(), print_ir_after="same_scale")
    assert "// IR after lowering step 7: lower.same_scale" in capsys.readouterr().out


def test_a_float_graph_runs_only_the_float_steps():
    g = qatir.Graph("f")
    x = g.add_input("x", [1, 4])
    w = g.const(np.ones((2, 4), np.float32), name="w")
    g.outputs = [g.add_node("FULLY_CONNECTED", [x, w]).output]
    out = io.StringIO()
    lg = lower(g, print_ir_after="all", ir_out=out)
    assert out.getvalue().count("// IR after lowering step") == 2  # legalise, float_bias
    assert len(next(n for n in lg.nodes).inputs) == 3  # the zero bias


def test_bad_io_is_refused():
    with pytest.raises(qatir.QatirError, match="io must be one of"):
        lower(_graph(), io="int4")


@pytest.mark.parametrize("keep", [True, False])
def test_innermost_mean_is_an_exact_fully_connected(keep):
    """XNNPACK sums an int8 MEAN over the innermost axis in float32 (a tie can go either
    way, CPU-dependent): lowering writes it as an integer FULLY_CONNECTED of ones, which
    the reference predicts on both resolvers (this shape was 1 LSB off on 6 of 147 rows)."""
    from tests.helpers import QB, compare_all

    qb = QB(seed=1)
    x = qb.input("x", [1, 49, 96], -3, 3)
    g = qb.output(qb.op("MEAN", [x], {"axis": [-1], "keep_dims": keep}, (-1, 1)))
    ops = [n.op for n in lower(g, io="int8").nodes]
    assert "MEAN" not in ops and "FULLY_CONNECTED" in ops
    assert compare_all(g, seeds=(1, 2, 3)) == {"reference": 0, "xnnpack": 0}

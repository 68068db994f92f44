"""XNNPACK must take every node of the emitted models that it can take.

How it is checked (``qatir.parity.xnnpack_coverage``): after delegation LiteRT's
``_get_ops_details()`` lists the original nodes plus one DELEGATE node per
partition; a node is delegated when it is reachable backwards from a DELEGATE's
outputs without crossing that DELEGATE's inputs. XNNPACK rejects nodes silently
(wrong per-channel axis, non-static weights, odd scales, ...), so any such
rejection shows up here as a node that stays with the builtin kernels.
"""

from __future__ import annotations

import pytest

from qatir.parity import xnnpack_coverage
from qatir.tflite_writer import to_tflite
from tests.helpers import CASES, QB, XNNPACK_INT8


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("io", ["int8", "float"])
def test_xnnpack_takes_every_supported_node(case, io, recwarn):
    qb = QB(seed=3)
    g = qb.output(CASES[case](qb))
    cover = xnnpack_coverage(to_tflite(g, io=io))
    rejected = [op for op, taken in cover if op in XNNPACK_INT8 and not taken]
    assert not rejected, f"XNNPACK rejected {rejected} in {cover}"
    assert not [w for w in recwarn if "XNNPACK" in str(w.message)]


def test_coverage_reports_builtin_nodes():
    """The check can fail: SOFTMAX int8 is not an XNNPACK op and must show as not taken."""
    qb = QB(seed=3)
    g = qb.output(CASES["graph_residual"](qb))
    cover = dict((op, taken) for op, taken in xnnpack_coverage(to_tflite(g)))
    assert cover["SOFTMAX"] is False
    assert cover["CONV_2D"] is True and cover["FULLY_CONNECTED"] is True


def test_float_model_fully_delegated():
    qb = QB(seed=3)
    x = qb.g.add_input("x", [1, 8, 8, 3])
    import numpy as np

    w = qb.g.const(np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32))
    b = qb.g.const(np.zeros(4, np.float32))
    y = qb.op("CONV_2D", [x, w, b], {"padding": "SAME", "fused_activation": "RELU6"})
    g = qb.output(qb.op("MEAN", [y], {"axis": [1, 2], "keep_dims": False}))
    assert all(taken for _, taken in xnnpack_coverage(to_tflite(g)))


def test_out_of_range_scale_ratio_is_reported():
    """XNNPACK refuses ADD when in/out scale ratios leave [2^-10, 2^8); lowering says so."""
    qb = QB(seed=1)
    x = qb.input("x", [1, 64], -300, 300)
    y = qb.input("y", [1, 64], -1, 1)
    g = qb.output(qb.op("ADD", [x, y], None, (-0.5, 0.5)))
    with pytest.warns(UserWarning, match=r"'add' \(ADD, ratio 600\)"):
        buf = to_tflite(g)
    assert xnnpack_coverage(buf) == [("ADD", False)]
    from qatir.xnn_offload import xnnpack_offload

    (row,) = xnnpack_offload(buf)
    assert row["op"] == "ADD" and "CheckTensorsInputOutputScale, input 0" in row["reason"]


def test_offload_names_the_delegate_check():
    from qatir.xnn_offload import xnnpack_offload

    qb = QB(seed=3)
    g = qb.output(CASES["graph_residual"](qb))
    rows = xnnpack_offload(to_tflite(g))
    assert [r["op"] for r in rows] == ["SOFTMAX"]
    assert rows[0]["reason"].startswith("VisitSoftmaxNode: CheckTensorFloatType")


def test_max_pool_padding_after_relu_is_a_delegated_pad():
    """-inf padding of a tensor whose zero point is -128 (a ReLU output) quantizes to the
    zero point: the writer emits PAD, which XNNPACK takes, not PADV2, which it leaves."""
    qb = QB(seed=3)
    g = qb.output(CASES["pad_min_before_maxpool"](qb))
    assert xnnpack_coverage(to_tflite(g)) == [("PAD", True), ("MAX_POOL_2D", True)]
    qb = QB(seed=3)
    g = qb.output(CASES["padv2"](qb))  # another value: constant blocks concatenated
    cover = xnnpack_coverage(to_tflite(g))
    assert [op for op, _ in cover] == ["CONCATENATION"] * 2 and all(t for _, t in cover)


def test_grouped_conv_is_one_delegated_conv():
    qb = QB(seed=3)
    g = qb.output(CASES["conv_grouped4_s2"](qb))
    assert xnnpack_coverage(to_tflite(g)) == [("CONV_2D", True)]


def _fine_add(qb, other):
    """conv output on a grid 4000x finer than the ADD's output, plus ``other``."""
    x = qb.input("x", [1, 4, 4, 8], -1, 1)
    y = qb.conv("CONV_2D", x, [8, 1, 1, 8], {"padding": "VALID"}, (-1e-3, 1e-3), wscale=1e-3)
    return qb.op("ADD", [y, other], {"fused_activation": "RELU6"}, (0.0, 6.0), name="add")


def test_fine_add_operand_goes_onto_a_grid_xnnpack_takes():
    """ADD(conv(x), 3) where the conv's grid is under 2^-10 of the ADD's (hard sigmoid's
    +3 after a squeeze-excite conv): the conv output and the constant go onto output
    scale x 2^-10, XNNPACK takes the ADD, and the file is bit-exact on both resolvers."""
    import numpy as np

    from tests.helpers import compare_all

    qb = QB(seed=2)
    three = qb.fq(qb.g.const(np.full([1], 3.0, np.float32), name="three"), 0.0, 6.0)
    g = qb.output(_fine_add(qb, three))
    buf = to_tflite(g)
    assert xnnpack_coverage(buf) == [("CONV_2D", True), ("ADD", True)]
    from qatir.lower import lower

    lg = lower(g)
    add = next(n for n in lg.nodes if n.op == "ADD")
    so = add.outputs[0].quant.scale[0]
    assert add.inputs[0].quant.scale[0] == np.float32(so) * np.float32(2.0**-10)
    assert compare_all(g) == {"reference": 0, "xnnpack": 0}


def test_fine_add_operand_shared_or_an_input_is_requantized():
    """An operand that cannot simply change grid (a graph input) gets a QUANTIZE onto
    output scale x 2^-10; both nodes are delegated, and the file is bit-exact."""
    from tests.helpers import compare_all

    qb = QB(seed=4)
    x = qb.input("x", [1, 4, 4, 8], -1, 1)
    y = qb.conv("CONV_2D", x, [8, 1, 1, 8], {"padding": "VALID"}, (-4.0, 4.0))
    z = qb.input("z", [1, 4, 4, 8], -1e-3, 1e-3)
    g = qb.output(qb.op("ADD", [y, z], None, (-4.0, 4.0), name="add"))
    buf = to_tflite(g)
    cover = xnnpack_coverage(buf)
    assert ("QUANTIZE", True) in cover and ("ADD", True) in cover, cover
    assert all(taken for _, taken in cover), cover
    assert compare_all(g) == {"reference": 0, "xnnpack": 0}


def test_hard_sigmoid_with_alpha_one_sixth_has_no_mul_by_one():
    from qatir.ir import Graph
    from qatir.pipeline import run_pipeline

    g = Graph("hsig")
    x = g.add_input("x", [1, 8])
    g.outputs = [g.add_node("HARD_SIGMOID", [x], {"alpha": 1.0 / 6.0, "beta": 0.5},
                            name="hs").output]
    run_pipeline(g, ["fuse_hard_swish"])
    assert [n.op for n in g.nodes] == ["ADD", "MUL"]


def test_concatenation_of_many_inputs_is_a_delegated_tree():
    """XNNPACK takes a CONCATENATION of 2 to 5 inputs: one of 12 becomes a tree of
    CONCATENATIONs of at most 5 (DenseNet's blocks), all delegated, bit-exact."""
    from tests.helpers import compare_all

    qb = QB(seed=5)
    xs = [qb.input(f"x{i}", [1, 2, 2, 3], -1, 1) for i in range(12)]
    g = qb.output(qb.op("CONCATENATION", xs, {"axis": 3}, (-1, 1), name="cat"))
    cover = xnnpack_coverage(to_tflite(g))
    assert [op for op, _ in cover] == ["CONCATENATION"] * 4 and all(t for _, t in cover)
    assert compare_all(g) == {"reference": 0, "xnnpack": 0}


@pytest.mark.parametrize("act", ["RELU", "RELU6", "RELU_N1_TO_1"])
def test_standalone_int8_clamp_is_a_delegated_add_of_zero(act):
    """XNNPACK takes int8 RELU/RELU6/RELU_N1_TO_1 in float only; ADD(x, 0) with the
    activation fused is the same function bit for bit, and XNNPACK takes it."""
    import numpy as np

    from qatir.reference import run_reference
    from tests.helpers import compare_all, int8_feed

    qb = QB(seed=6)
    x = qb.input("x", [1, 4, 4, 8], -8, 8)
    y = qb.conv("CONV_2D", x, [8, 1, 1, 8], {"padding": "VALID"}, (-8, 8))
    rng = None if act == "RELU" else (-8, 8)  # the input's grid: the clamp alone
    g = qb.output(y, qb.op(act, [y], None, rng, name="clamp"))  # y has two users: not fused
    cover = xnnpack_coverage(to_tflite(g))
    assert cover == [("CONV_2D", True), ("ADD", True)]
    assert compare_all(g) == {"reference": 0, "xnnpack": 0}
    feeds = int8_feed(g, 3)
    yq, out = (run_reference(g, feeds)[t.name].astype(int) for t in g.outputs)
    lo = {"RELU": 0.0, "RELU6": 0.0, "RELU_N1_TO_1": -1.0}[act]
    hi = {"RELU": np.inf, "RELU6": 6.0, "RELU_N1_TO_1": 1.0}[act]
    from qatir.lower import lower

    q = lower(g).outputs[0].quant
    s, z = q.scale[0], q.zero_point[0]
    qlo = max(-128, z + int(np.round(lo / s)))
    qhi = 127 if np.isinf(hi) else min(127, z + int(np.round(hi / s)))
    assert np.array_equal(out, np.clip(yq, qlo, qhi))

"""Hostile pattern tables and plug-in passes: every error names the table entry or the
plug-in pass (and the passes before it); the verifier catches a plug-in that corrupts the IR."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import signal  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import qatir  # noqa: E402
from qatir.errors import PassError, QatirError, TableError, VerifyError  # noqa: E402
from qatir.ir import Graph  # noqa: E402
from qatir.pipeline import register_pass  # noqa: E402
from qatir.table import builtin_tables  # noqa: E402

DEFAULT_TEXT = builtin_tables()["int8_default"].read_text()


def table_file(tmp_path: Path, old: str, new: str, name: str = "hostile.toml") -> str:
    """The default table with one edit, written to a file (so errors can name it)."""
    assert old in DEFAULT_TEXT, old
    path = tmp_path / name
    path.write_text(DEFAULT_TEXT.replace(old, new, 1))
    return str(path)


def gather_net() -> Graph:
    """x[1,8] float; GATHER(x, idx int32 const) along axis 1; FULLY_CONNECTED."""
    g = Graph("gather")
    x = g.add_input("x", [1, 8])
    idx = g.const(np.array([0, 2, 4, 6], np.int32), "idx")
    y = g.add_node("GATHER", [x, idx], {"axis": 1}, name="pick").output
    w = g.const(np.random.default_rng(0).normal(0, 0.3, (3, 4)).astype(np.float32), "w")
    y = g.add_node("FULLY_CONNECTED", [y, w], name="fc", outputs=["out"]).output
    g.outputs = [y]
    g.verify()
    return g


def small_net() -> Graph:
    rng = np.random.default_rng(1)
    g = Graph("small")
    x = g.add_input("x", [1, 4, 4, 2])
    y = g.add_node("CONV_2D", [x, g.const(rng.normal(0, 0.3, (3, 1, 1, 2)).astype(np.float32), "w"),
                               g.const(np.zeros(3, np.float32), "b")], name="conv").output
    y = g.add_node("RELU", [y], name="relu", outputs=["out"]).output
    g.outputs = [y]
    g.verify()
    return g


# ------------------------------------------------------------------ tables
def test_fake_quant_on_integer_weight_names_the_entry(tmp_path):
    path = table_file(tmp_path, 'ops = ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", '
                                '"TRANSPOSE_CONV"]\n# output-channel',
                      'ops = ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", '
                      '"TRANSPOSE_CONV", "GATHER"]\n# output-channel')
    with pytest.raises(TableError, match=r"hostile\.toml: weights\.ops: 'GATHER'.*%idx.*int32"):
        qatir.quantize(gather_net(), table=path)


def test_fixed_output_on_integer_output_names_the_entry(tmp_path):
    path = table_file(tmp_path, "TANH = { scale = 0.0078125, zero_point = 0 }",
                      "TANH = { scale = 0.0078125, zero_point = 0 }\n"
                      "SHAPE = { scale = 1.0, zero_point = 0 }")
    g = small_net()
    shp = g.add_node("SHAPE", [g.outputs[0]], name="shape_of", outputs=["shp"]).output
    g.outputs = [g.outputs[0], shp]
    g.verify()
    with pytest.raises(TableError, match=r"hostile\.toml: constraints\.fixed_output\.SHAPE.*%shp"):
        qatir.quantize(g, table=path)


def test_default_table_leaves_integer_tensors_alone():
    q = qatir.quantize(gather_net())
    fq_inputs = {n.inputs[0].name for n in q.nodes if n.op == "FAKE_QUANT"}
    assert "idx" not in fq_inputs
    assert all(n.inputs[0].dtype.kind == "f" for n in q.nodes if n.op == "FAKE_QUANT")


@pytest.mark.parametrize("kind", ["activation", "weight", "fixed"])
def test_unknown_quantizer_names_the_entry(tmp_path, kind):
    old = {"activation": 'activation = "minmax"', "weight": 'weight = "minmax"',
           "fixed": 'fixed = "fixed"'}[kind]
    path = table_file(tmp_path, old, f'{kind} = "no_such_quantizer"')
    with pytest.raises(TableError, match=rf"hostile\.toml: calibration\.{kind}:.*no_such_quantizer"):
        qatir.quantize(small_net(), table=path)


def test_quantizer_name_is_never_evaluated(tmp_path):
    path = table_file(tmp_path, 'activation = "minmax"',
                      'activation = "__import__(\'os\').system(\'touch PWNED\')"')
    with pytest.raises(TableError, match=r"calibration\.activation"):
        qatir.quantize(small_net(), table=path)
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e308"])
def test_non_finite_fixed_output_scale_names_the_entry(tmp_path, value):
    path = table_file(tmp_path, "TANH = { scale = 0.0078125, zero_point = 0 }",
                      f"TANH = {{ scale = {value}, zero_point = 0 }}")
    with pytest.raises(TableError, match=r"hostile\.toml: constraints\.fixed_output\.TANH\.scale"):
        qatir.quantize(small_net(), table=path)


@pytest.mark.parametrize("value", ["[nan, 6.0]", "[-inf, 6.0]", "[1.0, 6.0]", "[6.0, -6.0]"])
def test_bad_initial_range_names_the_entry(tmp_path, value):
    path = table_file(tmp_path, "initial_range = [-6.0, 6.0]", f"initial_range = {value}")
    with pytest.raises(TableError, match=r"hostile\.toml: activations\.initial_range"):
        qatir.quantize(small_net(), table=path)


def test_op_both_inherit_and_same_scale_is_refused(tmp_path):
    path = table_file(tmp_path, 'same_scale = ["AVERAGE_POOL_2D",',
                      'same_scale = ["MAX_POOL_2D", "AVERAGE_POOL_2D",')
    with pytest.raises(TableError, match=r"hostile\.toml: constraints:.*MAX_POOL_2D"):
        qatir.quantize(small_net(), table=path)


def same_scale_web(n: int) -> Graph:
    """Concats and average pools that tie every activation to every other one, repeatedly:
    c_i = CONCAT(c_{i-1}, p_{i-1}, x) with p_i = AVG_POOL(c_i) (same-scale groups overlap)."""
    g = Graph("web")
    x = g.add_input("x", [1, 4, 4, 1])
    c = x
    p = x
    for i in range(n):
        c = g.add_node("CONCATENATION", [c, p, x], {"axis": 3}, name=f"cat{i}").output
        p = g.add_node("AVERAGE_POOL_2D", [c], {"filter": [1, 1], "stride": [1, 1]},
                       name=f"pool{i}").output
    g.outputs = [c, p]
    g.verify()
    return g


def _alarm(signum, frame):
    raise TimeoutError("same-scale propagation did not terminate")


@pytest.mark.parametrize("untie", [[], ["CONCATENATION"]])
def test_cyclic_same_scale_constraints_merge_into_one_group(untie):
    """Overlapping same-scale ties (a cycle of 'equal scale' constraints) terminate and are merged
    (documented: union-find, one shared min/max for the whole group). With the default
    ``requantize_shared_inputs`` the inputs other nodes read too stay out of the group, and
    calibration ties back those whose range holds the output's: here all of them."""
    from qatir.table import load_table

    g = same_scale_web(12)
    data = load_table().data
    table = {**data, "constraints": {**data["constraints"], "requantize_shared_inputs": untie}}
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(60)
    try:
        t0 = time.perf_counter()
        q = qatir.quantize(g, table=table)
        elapsed = time.perf_counter() - t0
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert elapsed < 30
    fqs = [n for n in q.nodes if n.op == "FAKE_QUANT" and n.attrs["kind"] == "activation"]
    assert len(fqs) > 10
    groups = len({id(n.inputs[1]) for n in fqs})
    assert groups == 1 if not untie else groups > 1  # one group: all share the same tensors
    if not untie:
        assert len({id(n.inputs[2]) for n in fqs}) == 1
        assert len({n.output.quant.scale for n in fqs}) == 1
    qatir.calibrate(q, [{"x": np.random.default_rng(0).normal(size=(1, 4, 4, 1)).astype(np.float32)}])
    assert len({n.output.quant.scale for n in fqs}) == 1


# ------------------------------------------------------------------ plug-in passes
@register_pass("hostile_raises", replace=True)
def _raises(graph: Graph, ctx) -> bool:
    """A plug-in that blows up."""
    raise ValueError("plug-in bug")


@register_pass("hostile_bad_order", replace=True)
def _bad_order(graph: Graph, ctx) -> bool:
    """A plug-in that breaks the topological order."""
    graph.nodes.reverse()
    return True


@register_pass("hostile_bad_shape", replace=True)
def _bad_shape(graph: Graph, ctx) -> bool:
    """A plug-in that records a wrong shape."""
    graph.nodes[0].output.shape = (7, 7)
    return True


@register_pass("hostile_bad_uses", replace=True)
def _bad_uses(graph: Graph, ctx) -> bool:
    """A plug-in that swaps an input behind the use lists' back."""
    node = graph.nodes[-1]
    node._inputs[0] = graph.inputs[0]
    return True


@register_pass("hostile_returns_graph", replace=True)
def _returns_graph(graph: Graph, ctx):
    """A plug-in that builds a new graph and returns it instead of editing in place."""
    return Graph("replacement")


def test_plugin_that_raises_names_pass_and_predecessors():
    with pytest.raises(PassError) as info:
        qatir.quantize(small_net(), passes=["fold_constants", "remove_identities", "hostile_raises"])
    msg = str(info.value)
    assert "'hostile_raises'" in msg and "plug-in bug" in msg and "ValueError" in msg
    assert "fold_constants" in msg and "remove_identities" in msg


def test_plugin_that_raises_first_says_none_ran_before():
    with pytest.raises(PassError, match=r"'hostile_raises'.*none"):
        qatir.quantize(small_net(), passes=["hostile_raises", "fold_constants"])


@pytest.mark.parametrize("name, what", [("hostile_bad_order", "before it is defined"),
                                        ("hostile_bad_shape", "recorded shape"),
                                        ("hostile_bad_uses", "use list")])
def test_verifier_catches_a_plugin_that_corrupts_the_ir(name, what):
    g = small_net()
    with pytest.raises(PassError) as info:
        qatir.quantize(g, passes=["fold_constants", name, "insert_fake_quant"])
    msg = str(info.value)
    assert f"verifier failed after pass {name!r}" in msg and what in msg
    assert "fold_constants" in msg and "insert_fake_quant" not in msg.split("(passes run")[1]
    assert isinstance(info.value, VerifyError)
    g.verify()  # quantize works on a clone: the caller's graph is intact


def test_plugin_returning_a_graph_is_refused():
    with pytest.raises(PassError, match=r"'hostile_returns_graph'.*returned a Graph"):
        qatir.quantize(small_net(), passes=["hostile_returns_graph"])


def test_unknown_pass_lists_the_known_ones():
    with pytest.raises(QatirError, match=r"unknown pass 'no_such_pass'.*insert_fake_quant"):
        qatir.quantize(small_net(), passes=["fold_constants", "no_such_pass"])


def test_broken_input_graph_is_not_blamed_on_the_first_pass():
    g = small_net()
    g.nodes.reverse()  # the caller's graph is out of order before any pass runs
    with pytest.raises(VerifyError, match=r"no pass has run") as info:
        qatir.quantize(g)
    assert not isinstance(info.value, PassError)


def test_already_quantized_integer_tensors_are_not_a_table_error():
    """An imported int8 model (integer tensors with quant params) passes insert_fake_quant."""
    from qatir.ir import QuantParams

    g = Graph("int8")
    x = g.add_input("x", [1, 4], dtype=np.int8)
    x.quant = QuantParams((0.1,), (0,), None, 8, False, "int8")
    y = g.add_node("LOGISTIC", [x], name="sig", outputs=["y"]).output
    y.dtype = np.dtype(np.int8)
    y.quant = QuantParams((1 / 256,), (-128,), None, 8, False, "int8")
    g.outputs = [y]
    q = qatir.quantize(g)
    assert not any(n.op == "FAKE_QUANT" for n in q.nodes)

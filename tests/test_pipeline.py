"""The pass manager: registration, plug-ins through real entry points, verification,
IR dumps after passes, timing, and errors that name the failing pass."""

from __future__ import annotations

import ast
import importlib
import io
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

import qatir
from qatir.errors import PassError, QatirError
from qatir.ir import Graph
from qatir.pipeline import (
    DEFAULT_PIPELINE,
    FLOAT_PIPELINE,
    get_pass,
    list_passes,
    list_pipelines,
    list_quantizers,
    list_tables,
    load_plugins,
    quantize,
    register_pass,
    run_pipeline,
)
from tests.helpers.graphs import mobile_block

ROOT = Path(__file__).resolve().parent.parent


def _tiny() -> Graph:
    g = Graph("tiny")
    x = g.add_input("x", [1, 4])
    y = g.add_node("RELU", [x], name="relu").output
    y = g.add_node("IDENTITY", [y], name="ident").output
    g.outputs = [g.add_node("NEG", [y], name="neg").output]
    return g


def test_builtin_passes_come_through_the_entry_point():
    eps = [ep for ep in metadata.entry_points(group="qatir.passes") if ep.value == "qatir.passes"]
    assert eps, "the qatir distribution declares the built-in entry point"
    names = list_passes()
    for p in DEFAULT_PIPELINE:
        assert p in names and names[p]
        assert get_pass(p).origin.startswith("qatir.passes.")
    assert list_pipelines()["float"] == list(FLOAT_PIPELINE)
    assert "int8_default" in list_tables()
    assert {"minmax", "fixed"} <= set(list_quantizers())


def test_core_never_imports_a_builtin_pass():
    for path in (ROOT / "qatir").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            mods = []
            if isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            assert not any(m == "qatir.passes" or m.startswith("qatir.passes.") for m in mods), path


def test_function_and_class_passes_and_report():
    calls = []

    @register_pass("test_count_relu")
    def count_relu(graph, ctx):
        """Counts RELU nodes (test)."""
        calls.append(("fn", ctx.options.get("flag")))
        return False

    @register_pass("test_class_pass")
    class Doubler:
        """Records that it ran (test)."""

        def run(self, graph, ctx):
            calls.append(("cls", ctx.pass_name))
            graph.metadata["doubler"] = True
            return True

    assert qatir.register_pass is register_pass
    g = _tiny()
    report = run_pipeline(g, ["test_count_relu", "remove_identities", "test_class_pass"], flag=7)
    assert calls == [("fn", 7), ("cls", "test_class_pass")]
    assert [r.name for r in report.records] == ["test_count_relu", "remove_identities",
                                                "test_class_pass"]
    assert [r.modified for r in report.records] == [False, True, True]
    assert all(r.seconds >= 0 and r.verify_seconds >= 0 for r in report.records)
    assert report.records[1].nodes_after == 2
    assert "remove_identities" in report.format()
    assert list_passes()["test_class_pass"] == "Records that it ran (test)."


def test_duplicate_registration_needs_replace():
    @register_pass("test_dup")
    def first(graph, ctx):
        return False

    with pytest.raises(QatirError, match="'test_dup' is already registered"):
        @register_pass("test_dup")
        def second(graph, ctx):
            return False

    @register_pass("test_dup", replace=True)
    def third(graph, ctx):
        return True

    assert get_pass("test_dup").fn is third


def test_exception_names_the_pass_and_the_passes_before_it():
    @register_pass("test_boom")
    def boom(graph, ctx):
        raise ZeroDivisionError("bad math")

    with pytest.raises(PassError) as info:
        run_pipeline(_tiny(), ["fold_constants", "remove_identities", "test_boom", "eliminate_dead_code"])
    msg = str(info.value)
    assert "pass 'test_boom' failed" in msg and "bad math" in msg
    assert "['fold_constants', 'remove_identities']" in msg
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_verifier_runs_after_each_pass_and_can_be_switched_off():
    @register_pass("test_corrupt")
    def corrupt(graph, ctx):
        graph.nodes.reverse()  # breaks topological order
        return True

    with pytest.raises(PassError, match=r"verifier failed after pass 'test_corrupt'.*before it"):
        run_pipeline(_tiny(), ["fold_constants", "test_corrupt"])
    run_pipeline(_tiny(), ["fold_constants", "test_corrupt"], verify=False)


def test_unknown_pass():
    with pytest.raises(QatirError, match="unknown pass 'no_such_pass'.*fold_batch_norm"):
        run_pipeline(_tiny(), ["no_such_pass"])


def test_print_ir_after_stream_selection_and_folder(tmp_path):
    buf = io.StringIO()
    run_pipeline(_tiny(), ["fold_constants", "remove_identities"], print_ir_after="all", ir_out=buf)
    text = buf.getvalue()
    assert "// IR after pass 0: fold_constants" in text
    assert "// IR after pass 1: remove_identities" in text
    after_remove = text.split("// IR after pass 1: remove_identities")[1]
    assert "IDENTITY" not in after_remove and "IDENTITY" in text

    buf = io.StringIO()
    run_pipeline(_tiny(), ["fold_constants", "remove_identities"],
                 print_ir_after=["remove_identities"], ir_out=buf)
    assert "fold_constants" not in buf.getvalue() and "remove_identities" in buf.getvalue()

    run_pipeline(_tiny(), "float", print_ir_after="all", ir_out=tmp_path / "dumps")
    files = sorted(p.name for p in (tmp_path / "dumps").iterdir())
    assert files[0] == "00_fold_constants.txt" and len(files) == len(FLOAT_PIPELINE)


def test_print_ir_after_defaults_to_stdout(capsys):
    run_pipeline(_tiny(), ["remove_identities"], print_ir_after="all")
    assert "// IR after pass 0: remove_identities" in capsys.readouterr().out


def test_quantize_returns_a_new_graph_and_leaves_input_untouched():
    g = mobile_block()
    before = str(g)
    arrays = {name: t.data.copy() for name, t in g.tensors.items() if t.is_const}
    q = quantize(g)
    assert str(g) == before
    assert all(np.array_equal(g.tensors[k].data, v) for k, v in arrays.items())
    assert any(n.op == "FAKE_QUANT" for n in q.nodes)
    assert not any(n.op == "FAKE_QUANT" for n in g.nodes)
    rep = q.metadata["pipeline"]
    assert [p["name"] for p in rep["passes"]] == list(DEFAULT_PIPELINE)
    q2 = qatir.quantize(g, passes="float")
    assert not any(n.op == "FAKE_QUANT" for n in q2.nodes)


def _make_dist(root: Path, dist: str, ep_name: str, module: str, source: str) -> None:
    (root / module).mkdir(parents=True)
    (root / module / "__init__.py").write_text(textwrap.dedent(source))
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[qatir.passes]\n{ep_name} = {module}\n")


def test_custom_pass_through_a_real_entry_point(tmp_path, monkeypatch):
    _make_dist(tmp_path, "qatir_demo_plugin", "demo", "qatir_demo_plugin_mod", '''
        from qatir import register_pass

        @register_pass("demo_tag_relus")
        def tag_relus(graph, ctx):
            """Tags every RELU node with an attribute (demo plug-in)."""
            for n in graph.nodes:
                if n.op == "RELU":
                    n.attrs["tagged_by_plugin"] = True
            graph.metadata["demo_plugin"] = ctx.options.get("who", "plugin")
            return True
    ''')
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with pytest.raises(QatirError, match="unknown pass 'demo_tag_relus'"):
        get_pass("demo_tag_relus")  # not visible before the group is rescanned
    assert load_plugins(rescan=True) == ["demo"]
    assert load_plugins(rescan=True) == []  # loaded once
    q = quantize(_tiny(), passes=["remove_identities", "demo_tag_relus", "insert_fake_quant"],
                 who="test")
    assert q.metadata["demo_plugin"] == "test"
    assert [n.attrs.get("tagged_by_plugin") for n in q.nodes if n.op == "RELU"] == [True]
    assert "demo_tag_relus" in list_passes()
    sys.modules.pop("qatir_demo_plugin_mod", None)


def test_broken_plugin_names_itself(tmp_path, monkeypatch):
    _make_dist(tmp_path, "qatir_broken_plugin", "broken_one", "qatir_broken_plugin_mod",
               "raise ImportError('missing dependency xyz')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with pytest.raises(QatirError, match=r"pass plug-in 'broken_one'.*qatir_broken_plugin.*"
                                         r"missing dependency xyz"):
        load_plugins(rescan=True)


def test_builtin_passes_load_only_through_the_plugin_mechanism():
    import subprocess

    code = textwrap.dedent("""
        import sys
        import qatir
        from qatir.table import load_table
        load_table()
        assert "qatir.passes" not in sys.modules, "core imported the built-in passes"
        from qatir.pipeline import get_pass
        get_pass("fold_batch_norm")
        assert "qatir.passes.fold_batch_norm" in sys.modules
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr

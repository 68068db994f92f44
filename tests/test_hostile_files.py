"""Files and resource bounds: atomic outputs, old outputs kept on failure, inputs never
overwritten, and models too big for memory or a 2 GB flatbuffer refused up front."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import io  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
import tracemalloc  # noqa: E402
import zipfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import pytest  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

import qatir  # noqa: E402
from qatir.cli import main  # noqa: E402
from qatir.errors import ExportError, ModelFormatError, NumericsError, QatirError  # noqa: E402
from qatir.ir import Graph  # noqa: E402
from tests.helpers.onnx_models import conv_chain, save  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def fc_graph(w: np.ndarray | None = None) -> Graph:
    g = Graph("fc")
    x = g.add_input("x", [1, 4])
    w = np.random.default_rng(0).normal(0, 0.5, (3, 4)).astype(np.float32) if w is None else w
    y = g.add_node("FULLY_CONNECTED", [x, g.const(w, "w")], name="fc", outputs=["out"]).output
    g.outputs = [y]
    g.verify()
    return g


def stray_temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")


def run_cli(capfd, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capfd.readouterr()
    return rc, out, err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("qatir: error:"), err
    assert "Traceback" not in err
    return lines[-1]


# ------------------------------------------------------------------ atomic writes (API)
@pytest.mark.parametrize("suffix", [".tflite", ".qatir", ".json"])
def test_save_replaces_by_rename(tmp_path, suffix):
    """A reader holding the old file keeps reading the old bytes: the new file is a new inode."""
    path = tmp_path / f"m{suffix}"
    path.write_bytes(b"old contents")
    with open(path, "rb") as reader:
        qatir.save(fc_graph(), path)
        assert reader.read() == b"old contents"
    assert path.read_bytes() != b"old contents"
    assert qatir.load(path).nodes[0].op == "FULLY_CONNECTED" if suffix != ".tflite" else True
    assert stray_temp_files(tmp_path) == []


def test_failed_export_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.tflite"
    qatir.save(fc_graph(), path)
    old = path.read_bytes()
    bad = fc_graph(np.array([[np.nan, 1, 2, 3]] * 3, np.float32))
    with pytest.raises(NumericsError, match=r"%w\b"):
        qatir.save(bad, path)
    assert path.read_bytes() == old
    assert stray_temp_files(tmp_path) == []


def test_unknown_suffix_writes_nothing(tmp_path):
    with pytest.raises(QatirError, match="unknown output suffix"):
        qatir.save(fc_graph(), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_save_into_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(QatirError, match="does not exist"):
        qatir.save(fc_graph(), tmp_path / "no" / "m.qatir")


# ------------------------------------------------------------------ the CLI
@pytest.fixture()
def onnx_model(tmp_path) -> Path:
    return Path(save(conv_chain(1, channels=2, size=4), tmp_path / "m.onnx"))


def test_compile_output_equal_to_onnx_input_is_refused_subprocess(onnx_model):
    before = onnx_model.read_bytes()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    p = subprocess.run([sys.executable, "-m", "qatir.cli", "compile", str(onnx_model), "-o",
                        str(onnx_model)], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("qatir: error:"), p.stderr
    assert onnx_model.read_bytes() == before


@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink"])
def test_compile_output_equal_to_tflite_input_is_refused(capfd, tmp_path, spelling):
    model = tmp_path / "m.tflite"
    qatir.save(fc_graph(), model)
    before = model.read_bytes()
    out = {"same": model, "dotdot": tmp_path / "sub" / ".." / "m.tflite",
           "symlink": tmp_path / "link.tflite"}[spelling]
    (tmp_path / "sub").mkdir()
    if spelling == "symlink":
        out.symlink_to(model)
    rc, _, err = run_cli(capfd, "compile", model, "-o", out, "--calib-random", "1")
    assert rc == 2
    assert "refusing to overwrite the input" in one_error_line(err)
    assert model.read_bytes() == before


def test_save_ir_equal_to_input_is_refused(capfd, onnx_model, tmp_path):
    before = onnx_model.read_bytes()
    rc, _, err = run_cli(capfd, "compile", onnx_model, "-o", tmp_path / "o.tflite",
                         "--calib-random", "1", "--save-ir", onnx_model)
    assert rc == 2 and "refusing to overwrite" in one_error_line(err)
    assert onnx_model.read_bytes() == before
    assert not (tmp_path / "o.tflite").exists()


def test_dump_output_equal_to_input_is_refused(capfd, onnx_model):
    before = onnx_model.read_bytes()
    rc, _, err = run_cli(capfd, "dump", onnx_model, "-o", onnx_model)
    assert rc == 2 and "refusing to overwrite" in one_error_line(err)
    assert onnx_model.read_bytes() == before


def test_failed_compile_keeps_old_output_and_names_the_tensor(capfd, tmp_path):
    """A NaN weight is found while quantizing: the existing output stays byte for byte."""
    m = conv_chain(1, channels=2, size=4)
    init = m.graph.initializer[0]
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.flat[0] = np.nan
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    model = save(m, tmp_path / "nan.onnx")
    out = tmp_path / "keep.tflite"
    out.write_bytes(b"previous model")
    rc, _, err = run_cli(capfd, "compile", model, "-o", out, "--calib-random", "1", "--no-progress")
    assert rc == 2
    line = one_error_line(err)
    conv = next(n.name for n in m.graph.node if init.name in n.input)
    # the IR renames a transposed weight; the ONNX node that reads it is named either way
    assert (init.name in line or repr(conv) in line) and "NaN" in line
    assert out.read_bytes() == b"previous model"
    assert stray_temp_files(tmp_path) == []


def test_failed_save_ir_leaves_no_new_output(capfd, onnx_model, tmp_path):
    """All outputs or none: a --save-ir that cannot be written must not leave a new .tflite
    behind while the command reports failure (the old output must survive)."""
    out = tmp_path / "o.tflite"
    out.write_bytes(b"previous model")
    rc, _, err = run_cli(capfd, "compile", onnx_model, "-o", out, "--calib-random", "1",
                         "--no-progress", "--save-ir", tmp_path / "no_dir" / "m.qatir")
    assert rc == 2 and "does not exist" in one_error_line(err)
    assert out.read_bytes() == b"previous model"


# ------------------------------------------------------------------ resource bounds
def _peak_mib(fn) -> float:
    tracemalloc.start()
    try:
        fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak / 2**20


def test_onnx_initializer_with_huge_declared_dims_is_refused_by_size(tmp_path):
    """dims say 2^20 x 2^20 floats (4 TiB), the file holds 16 bytes: refused, nothing allocated."""
    init = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20],
                       raw_data=b"\0" * 16)
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    graph = helper.make_graph([node], "huge", [helper.make_tensor_value_info("x", 1, [1, 1 << 20])],
                              [helper.make_tensor_value_info("y", 1, [1, 1 << 20])], [init])
    path = tmp_path / "huge.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)

    def load():
        with pytest.raises(ModelFormatError) as info:
            qatir.load(path)
        msg = str(info.value)
        assert "'w'" in msg or "w:" in msg or "%w" in msg
        assert "1048576" in msg or "TiB" in msg or "bytes" in msg  # the declared size

    assert _peak_mib(load) < 64


def test_onnx_external_data_is_refused_without_reading_it(tmp_path):
    init = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 16, 1 << 16])
    init.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "weights.bin"), ("length", str(1 << 34))):
        init.external_data.add(key=k, value=v)
    (tmp_path / "weights.bin").write_bytes(b"\0" * 64)
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    graph = helper.make_graph([node], "ext", [helper.make_tensor_value_info("x", 1, [1, 1 << 16])],
                              [helper.make_tensor_value_info("y", 1, [1, 1 << 16])], [init])
    path = tmp_path / "ext.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    with pytest.raises(ModelFormatError, match="external data"):
        qatir.load(path)


def _qatir_with_declared_shape(tmp_path: Path, shape: tuple[int, ...]) -> Path:
    """A valid .qatir whose one array member has its .npy header rewritten to ``shape``."""
    good = tmp_path / "good.qatir"
    qatir.save(fc_graph(), good)
    evil = tmp_path / "evil.qatir"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(evil, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name.endswith(".npy"):
                hdr = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    hdr, {"descr": "<f4", "fortran_order": False, "shape": shape})
                data = hdr.getvalue() + b"\0" * 48
            zout.writestr(name, data)
    return evil


def run_limited(code: str, limit_mib: int = 1200) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter whose address space is capped: an allocation driven
    by a declared size then fails loudly (MemoryError) instead of quietly using the machine."""
    prelude = (f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({limit_mib} << 20, "
               "resource.RLIM_INFINITY))\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, env=env, timeout=120, cwd=REPO)


def test_qatir_file_with_huge_declared_array_is_refused(tmp_path):
    """A .qatir member whose header declares 2^40 x 4 floats (16 TiB) but holds 48 bytes."""
    evil = _qatir_with_declared_shape(tmp_path, (1 << 40, 4))
    p = run_limited(f"""
        import qatir
        from qatir.errors import ModelFormatError
        try:
            qatir.load({str(evil)!r})
        except ModelFormatError as e:
            print("REFUSED", e)
        """)
    assert "REFUSED" in p.stdout, p.stderr[-2000:]
    assert "MemoryError" not in p.stderr


def test_constants_over_2gb_are_refused_before_any_copy():
    """A graph holding 2 GiB + 64 bytes of float constants (a broadcast view: nothing allocated),
    exported in a process capped at 1.2 GiB of address space. The writer can address > 2 GB
    (offset buffers), but this model cannot fit in the memory available: to_tflite must refuse
    it up front with the size in the message, not die in a copy (clone, lowering, buffers)."""
    p = run_limited("""
        import numpy as np
        import qatir
        from qatir.errors import QatirError
        from qatir.ir import Graph
        g = Graph("big")
        x = g.add_input("x", [1, 4])
        n = (2**31) // 16 + 4
        t = g.const(np.zeros((1, 4), np.float32), "huge_w")
        t.data = np.broadcast_to(np.float32(0.5), (n, 4))
        t.shape = (n, 4)
        y = g.add_node("FULLY_CONNECTED", [x, t], name="fc", outputs=["out"]).output
        g.outputs = [y]
        g.verify()
        try:
            qatir.to_tflite(g)
        except QatirError as e:
            print("REFUSED", e)
        """)
    assert "REFUSED" in p.stdout, p.stderr[-2000:]
    assert "GiB" in p.stdout or "bytes" in p.stdout


def test_writer_size_guard_names_the_size():
    from qatir.tflite_writer import MAX_FLATBUFFER, check_size

    check_size(MAX_FLATBUFFER)
    with pytest.raises(ExportError, match=r"2\.00 GiB \(2147483648 bytes\)"):
        check_size(MAX_FLATBUFFER + 1)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_new_output_gets_ordinary_permissions(tmp_path):
    """The temp file behind an atomic write is 0600; the output must not keep that mode."""
    path = tmp_path / "m.qatir"
    qatir.save(fc_graph(), path)
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_replaced_output_gets_ordinary_permissions(tmp_path):
    """An old 0600 output (as mkstemp used to leave) is replaced by one with the umask's mode."""
    path = tmp_path / "m.tflite"
    path.write_bytes(b"old")
    path.chmod(0o600)
    qatir.save(fc_graph(), path)
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()


# ------------------------------------------------------------------ IR files with wrong types
def _edited_ir(tmp_path: Path, edit) -> Path:
    g = qatir.quantize(fc_graph())
    d = __import__("json").loads(g.to_json(include_data=True))
    edit(d)
    path = tmp_path / "edited.json"
    path.write_text(__import__("json").dumps(d))
    return path


def _load_and_export(path: Path) -> None:
    g = qatir.load(path)
    qatir.to_tflite(g)


def test_ir_file_with_mismatched_quant_lengths_is_a_format_error(tmp_path):
    def edit(d):
        t = next(t for t in d["tensors"] if t.get("quant"))
        t["quant"]["zero_point"] = [0, 0]

    with pytest.raises(QatirError):
        _load_and_export(_edited_ir(tmp_path, edit))


def test_ir_file_with_a_list_where_a_name_belongs_is_a_format_error(tmp_path):
    def edit(d):
        fc = next(n for n in d["nodes"] if n["op"] == "FULLY_CONNECTED")
        fc["attrs"]["fused_activation"] = ["RELU"]

    with pytest.raises(QatirError):
        _load_and_export(_edited_ir(tmp_path, edit))


def test_fuzzed_qatir_files_fail_cleanly(tmp_path):
    """500 mutated .qatir files (tools/fuzz.py's mutator): success or a QatirError, nothing else."""
    import random

    sys.path.insert(0, str(REPO / "tools"))
    try:
        import fuzz
    finally:
        sys.path.remove(str(REPO / "tools"))
    seeds = fuzz.qatir_seed_models()
    path = tmp_path / "case.qatir"
    crashes = []
    for i in range(500):
        rng = random.Random(20261123 + i)
        base = sorted(seeds)[i % len(seeds)]
        data, desc = fuzz.qatir_mutate(seeds[base], rng)
        path.write_bytes(data)
        try:
            qatir.load(path)
        except QatirError:
            pass
        except Exception as e:  # noqa: BLE001 - what the test looks for
            crashes.append(f"#{i} {base} {desc}: {type(e).__name__}: {e}")
    assert not crashes, f"{len(crashes)} crashes, e.g.\n" + "\n".join(crashes[:5])

"""Every ```python block in docs/ runs: each page's blocks in order, one namespace, a tmp dir.

Shell commands are fenced as ```console and sample output as ```text; any other
fence (or a fence without a language) fails the test, so a snippet cannot
quietly escape being run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
README = DOCS.parent / "README.md"
PAGES = sorted(DOCS.glob("*.md")) + [README]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.S | re.M)
ALLOWED = {"python", "console", "text", "toml"}


def blocks(page: Path) -> list[tuple[str, str, int]]:
    """(language, code, line number) of every fenced block."""
    text = page.read_text()
    return [(m.group(1).strip(), m.group(2), text[:m.start()].count("\n") + 1)
            for m in FENCE.finditer(text)]


def test_docs_exist_and_link_to_each_other():
    names = {p.name for p in PAGES}
    assert {"getting-started.md", "ir.md", "pattern-tables.md", "extending.md",
            "qat-distributed.md", "parity-report.md"} <= names
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name} links to missing {target}"


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_fences_have_known_languages(page):
    for lang, _, line in blocks(page):
        assert lang in ALLOWED, f"{page.name}:{line}: fence language {lang!r}"


@pytest.mark.parametrize("page", [p for p in PAGES if any(b[0] == "python" for b in blocks(p))],
                         ids=lambda p: p.stem)
def test_python_blocks_run(page, tmp_path, monkeypatch, capsys):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for lang, code, line in blocks(page):
        if lang != "python":
            continue
        try:
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)  # noqa: S102
        except Exception as e:
            raise AssertionError(f"{page.name}, block at line {line} failed: "
                                 f"{type(e).__name__}: {e}") from e
    capsys.readouterr()


def console_commands(page: Path) -> list[str]:
    """qatir commands of the console blocks made only of qatir commands (comments dropped)."""
    out = []
    for lang, code, _ in blocks(page):
        if lang != "console":
            continue
        joined = code.replace("\\\n", " ")
        lines = [ln.split("  #")[0].strip() for ln in joined.splitlines() if ln.strip()]
        if lines and all(ln.startswith("qatir ") for ln in lines):
            out += lines
    return out


def test_getting_started_shell_commands_run(tmp_path, monkeypatch, capsys):
    """The shell commands of getting-started.md run as written, on a small model and data."""
    import shlex

    import numpy as np
    import onnx

    from qatir.cli import main
    from qatir.demo import digits_cnn_onnx, load_digits_nchw

    monkeypatch.chdir(tmp_path)
    onnx.save(digits_cnn_onnx(channels=(8, 8, 8)), "model.onnx")
    x, y, x_test, _ = load_digits_nchw()
    np.savez("calib.npz", image=x[:64])
    np.savez("train.npz", image=x[:256], y=y[:256])
    np.savez("test.npz", image=x_test[:8])
    commands = console_commands(DOCS / "getting-started.md")
    assert len(commands) >= 8, commands
    for command in commands:
        argv = shlex.split(command)[1:]
        if argv[0] == "bench":
            argv += ["--repeat", "2"]
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 0, f"{command!r} exited {rc}: {err[-2000:]}"
    assert Path("model_int8.tflite").is_file() and Path("model.qatir").is_file()
    assert Path("fold.html").read_text().count("<svg") == 2

"""The README's two set-up commands work in a fresh virtual environment, as a newcomer runs them.

The README's "Set-up" section holds one ```console block of two lines: the
main job (install + ``qatir demo``) and the tests (install with the test
extras + pytest). Both run here on the committed tree (what a fresh clone
holds, via ``git archive HEAD``) in a new ``python -m venv`` (no system
site-packages), so missing dependencies, files that were never committed, or
a README that drifted from the code show up. Line 1 runs exactly as
written. Running the whole suite from line 2 would recurse into this test, so
line 2 runs its install part, then ``pytest --collect-only`` (every test file
imports in the fresh environment) and one small test file.

It takes a few minutes (pip resolves and installs TensorFlow from its cache).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMALL_TEST_FILE = "tests/test_draw.py"


def setup_commands(root: Path = ROOT) -> list[str]:
    """The two lines of the README's Set-up code block."""
    text = (root / "README.md").read_text()
    section = re.search(r"^## Set-up\s*$(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert section, "README.md has no '## Set-up' section"
    block = re.search(r"^```(?:console|bash|sh|shell)?\n(.*?)^```", section.group(1), re.S | re.M)
    assert block, "the Set-up section has no code block"
    lines = [ln.strip().removeprefix("$ ") for ln in block.group(1).splitlines() if ln.strip()]
    assert len(lines) == 2, f"expected two set-up commands, got {lines}"
    return lines


def copy_checkout(dest: Path) -> Path:
    """What a fresh clone holds: the committed tree (``git archive HEAD``); without git, a copy."""
    src = dest / "src"
    archive = dest / "src.tar"
    try:
        subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), "HEAD"], cwd=ROOT,
                       capture_output=True, check=True, timeout=120)
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
            ".git", "__pycache__", "*.egg-info", "build", ".venv", ".pytest_cache"))
        return src
    with tarfile.open(archive) as tar:
        tar.extractall(src, filter="data")
    archive.unlink()
    return src


def run_in_venv(venv: Path, cwd: Path, command: str, timeout: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
               PIP_DISABLE_PIP_VERSION_CHECK="1", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_readme_has_two_setup_commands():
    main_job, tests = setup_commands()
    assert "pip install" in main_job and "qatir demo" in main_job
    assert "pip install" in tests and "pytest" in tests


@pytest.mark.skipif(os.environ.get("QATIR_IN_README_VENV") == "1",
                    reason="already inside the README set-up test's virtual environment")
def test_readme_setup_in_fresh_venv(tmp_path):
    src = copy_checkout(tmp_path)
    main_job, tests = setup_commands(src)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)

    first = run_in_venv(venv, src, main_job, timeout=1500)
    assert first.returncode == 0, f"{main_job!r} failed:\n{first.stdout[-3000:]}\n{first.stderr[-3000:]}"
    assert "int8 .tflite in LiteRT" in first.stdout
    assert (src / "qatir-demo" / "digits_int8.tflite").is_file()

    install = tests.split("&&")[0].strip()
    second = run_in_venv(venv, src, install, timeout=1500)
    assert second.returncode == 0, f"{install!r} failed:\n{second.stderr[-3000:]}"
    env_flag = "QATIR_IN_README_VENV=1 "
    collect = run_in_venv(venv, src, env_flag + "python -m pytest --collect-only -q", timeout=600)
    assert collect.returncode == 0, collect.stdout[-3000:] + collect.stderr[-3000:]
    assert re.search(r"\d+ tests? collected", collect.stdout), collect.stdout[-500:]
    small = run_in_venv(venv, src, env_flag + f"python -m pytest -q {SMALL_TEST_FILE}",
                        timeout=600)
    assert small.returncode == 0, small.stdout[-3000:] + small.stderr[-3000:]

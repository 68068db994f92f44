"""Atomic output files: write to a temp file beside the target, then rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from qatir.errors import QatirError


def check_distinct(output: str | os.PathLike, *inputs: str | os.PathLike | None) -> None:
    """Refuse to write over one of the inputs."""
    out = Path(output).resolve()
    for inp in inputs:
        if inp is not None and Path(inp).resolve() == out:
            raise QatirError(f"{output}: refusing to overwrite the input file")


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise QatirError(f"{path}: directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, _default_mode())  # mkstemp makes 0600; outputs get the usual umask mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise

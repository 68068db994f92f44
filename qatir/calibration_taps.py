"""What a calibration engine exchanges with the orchestrator (:mod:`qatir.calibration`):
the :class:`Tap` it observes, the :class:`CaptureEngine` protocol, and the per-channel
min/max reduction. A leaf module, so the engines (LiteRT, TF) do not import the
orchestrator that imports them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from qatir.numerics import normalize_axis


@dataclass(frozen=True)
class Tap:
    """A calibrated FAKE_QUANT input: which node, its channel axis, whether rows are needed."""

    node: str
    axis: int | None
    rows: bool


class CaptureEngine(Protocol):
    """Runs the float graph on one batch; returns, by FAKE_QUANT name, the input's rows
    (``tap.rows``: the whole activation) or its ``[2, channels]`` per-channel min and max."""

    def run(self, xs: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]: ...


def as_rows(x: np.ndarray, axis: int | None) -> np.ndarray:
    """[rows, channels] view of a captured activation (one column when per-tensor)."""
    if axis is None:
        return x.reshape(-1, 1)
    return np.moveaxis(x, normalize_axis(axis, x.ndim), -1).reshape(-1, x.shape[axis])


def minmax(x: np.ndarray, axis: int | None) -> np.ndarray:
    """``[2, channels]``: per-channel min and max of ``x`` (NaN propagates)."""
    if axis is None:
        return np.array([[x.min()], [x.max()]], np.float32)
    rows = as_rows(x, axis)
    return np.stack([rows.min(axis=0), rows.max(axis=0)]).astype(np.float32, copy=False)

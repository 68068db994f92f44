"""Quantizers: how a FAKE_QUANT range is chosen from data and held during training.

A FAKE_QUANT node names its quantizer in ``attrs["quantizer"]``; pattern tables
refer to the same names. Each quantizer says

- how calibration turns observed values into a range (:meth:`Quantizer.observe`
  accumulates statistics, :meth:`Quantizer.compute_range` returns ``(lo, hi)``;
  a quantizer that needs only each batch's min/max overrides
  :meth:`Quantizer.observe_minmax` instead, and calibration never copies whole
  activations for it);
- how ``fit`` treats an *activation* range: held fixed, updated by an
  exponential moving average of batch min/max (``ema_in_fit``), or trained by
  gradient (``trainable``). Weight ranges of calibrating, non-trainable
  quantizers follow the current weights in every training step whatever the
  quantizer (``qatir/tf/fake_quant.py``); ``fixed`` ranges never move.

The registry is public: ``@register_quantizer("name")`` adds a user's class.
Options (``quantizer_options`` of ``qatir.calibrate``) reach the instance that
calibration builds; ``fit`` reads only the class flags and node attributes.
Observed values are numpy arrays shaped ``[rows, channels]`` (one column for a
per-tensor range) or per-channel ``[channels]`` min/max vectors, so a quantizer
knows nothing of TensorFlow. Scoring a candidate range uses
:func:`qatir.numerics.fake_quant`, TF's fake-quant bit for bit.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from qatir.errors import QatirError
from qatir.numerics import fake_quant

_QUANTIZERS: dict[str, type[Quantizer]] = {}


def register_quantizer(name: str):
    """Class decorator: register a :class:`Quantizer` subclass under ``name``."""

    def deco(cls: type[Quantizer]) -> type[Quantizer]:
        if name in _QUANTIZERS and _QUANTIZERS[name] is not cls:
            raise QatirError(f"quantizer {name!r} is already registered")
        cls.name = name
        _QUANTIZERS[name] = cls
        return cls

    return deco


def get_quantizer(name: str) -> type[Quantizer]:
    """The quantizer class registered as ``name``; QatirError lists the known names."""
    try:
        return _QUANTIZERS[name]
    except KeyError:
        known = ", ".join(sorted(_QUANTIZERS))
        raise QatirError(f"unknown quantizer {name!r} (known: {known})") from None


def all_quantizers() -> dict[str, type[Quantizer]]:
    """A copy of the registry: name -> class."""
    return dict(_QUANTIZERS)


def include_zero(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Widen a range so 0.0 is exactly representable (needed for zero padding)."""
    return (np.minimum(np.asarray(lo, np.float32), 0).astype(np.float32),
            np.maximum(np.asarray(hi, np.float32), 0).astype(np.float32))


def symmetric_range(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[-m, m] with m = max(|lo|, |hi|)."""
    m = np.maximum(np.abs(lo), np.abs(hi)).astype(np.float32)
    return -m, m


class Quantizer:
    """Base class. Subclasses override ``new_state``, ``observe`` or ``observe_minmax``,
    ``compute_range`` and the flags."""

    name: ClassVar[str] = ""
    #: the range is a trainable variable in ``fit`` (gradients from TF's fake-quant op)
    trainable: ClassVar[bool] = False
    #: ``fit`` updates an activation range by an EMA of the batch min/max (decay: the
    #: node's ``ema_decay`` attribute, default ``qatir.tf.fake_quant.DEFAULT_EMA_DECAY``)
    ema_in_fit: ClassVar[bool] = False
    #: calibration sets the range (False: the range is fixed by the graph)
    calibrates: ClassVar[bool] = True

    def __init__(self, **options: Any):
        self.options = options

    def new_state(self, channels: int) -> dict[str, Any]:
        return {"min": np.full(channels, np.inf, np.float32),
                "max": np.full(channels, -np.inf, np.float32), "batches": 0}

    @classmethod
    def needs_rows(cls) -> bool:
        """True when :meth:`observe` is overridden: calibration must copy whole activations.

        A quantizer that keeps the base ``observe`` only ever sees each batch's
        per-channel min/max (:meth:`observe_minmax`), which calibration computes
        inside the runtime without copying activations out.
        """
        return cls.observe is not Quantizer.observe

    def observe(self, state: dict[str, Any], x: np.ndarray) -> None:
        """Accumulate one batch; ``x`` is ``[rows, channels]`` float32."""
        self.observe_minmax(state, x.min(axis=0), x.max(axis=0))

    def observe_minmax(self, state: dict[str, Any], lo: np.ndarray, hi: np.ndarray) -> None:
        """Accumulate one batch given its per-channel min ``lo`` and max ``hi``."""
        state["min"] = np.minimum(state["min"], lo)
        state["max"] = np.maximum(state["max"], hi)
        state["batches"] += 1

    def compute_range(self, state: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The calibrated ``(lo, hi)``, before widening to include zero."""
        return state["min"], state["max"]


@register_quantizer("minmax")
class MinMaxQuantizer(Quantizer):
    """Range = overall min/max of everything observed. ``fit`` holds an activation
    range fixed (a weight range follows the weights)."""


@register_quantizer("moving_average")
class MovingAverageQuantizer(Quantizer):
    """Calibration: mean of per-batch min/max. ``fit``: EMA of batch min/max."""

    ema_in_fit = True

    def new_state(self, channels: int) -> dict[str, Any]:
        state = super().new_state(channels)
        state["sum_min"] = np.zeros(channels, np.float64)
        state["sum_max"] = np.zeros(channels, np.float64)
        return state

    def observe_minmax(self, state: dict[str, Any], lo: np.ndarray, hi: np.ndarray) -> None:
        super().observe_minmax(state, lo, hi)
        state["sum_min"] += lo
        state["sum_max"] += hi

    def compute_range(self, state: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        n = max(state["batches"], 1)
        return ((state["sum_min"] / n).astype(np.float32),
                (state["sum_max"] / n).astype(np.float32))


@register_quantizer("ema")
class EmaQuantizer(Quantizer):
    """Calibration: exponential moving average of per-batch min/max, started at the first
    batch's, ``r <- d*r + (1 - d)*r_batch`` (``decay`` option, default 0.95): the first
    batches weigh most (with 8 batches, the first 0.95^7 = 0.70). ai-edge-quantizer's
    rule for every activation (``qsv_utils.moving_average_update``, per-sample min/max).
    ``fit``: EMA of batch min/max."""

    ema_in_fit = True

    def new_state(self, channels: int) -> dict[str, Any]:
        state = super().new_state(channels)
        state["ema_min"] = np.zeros(channels, np.float64)
        state["ema_max"] = np.zeros(channels, np.float64)
        return state

    def observe_minmax(self, state: dict[str, Any], lo: np.ndarray, hi: np.ndarray) -> None:
        d = float(self.options.get("decay", 0.95))
        first = state["batches"] == 0
        super().observe_minmax(state, lo, hi)
        for key, v in (("ema_min", lo), ("ema_max", hi)):
            state[key] = np.asarray(v, np.float64) if first else d * state[key] + (1 - d) * v

    def compute_range(self, state: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        return state["ema_min"].astype(np.float32), state["ema_max"].astype(np.float32)


class _SampledQuantizer(Quantizer):
    """Keeps a uniform random sample of the observed rows (reservoir by random keys)."""

    def new_state(self, channels: int) -> dict[str, Any]:
        state = super().new_state(channels)
        state["keys"] = np.zeros(0, np.float64)
        state["rows"] = np.zeros((0, channels), np.float32)
        state["rng"] = np.random.default_rng(int(self.options.get("seed", 0)))
        return state

    def observe(self, state: dict[str, Any], x: np.ndarray) -> None:
        super().observe(state, x)
        cap = int(self.options.get("max_samples", 1 << 17))
        keys = state["rng"].random(x.shape[0])
        if x.shape[0] > cap:
            keep = np.argpartition(keys, cap)[:cap]
            keys, x = keys[keep], x[keep]
        keys = np.concatenate([state["keys"], keys])
        rows = np.concatenate([state["rows"], x])
        if keys.size > cap:
            keep = np.argpartition(keys, cap)[:cap]
            keys, rows = keys[keep], rows[keep]
        state["keys"], state["rows"] = keys, rows


@register_quantizer("percentile")
class PercentileQuantizer(_SampledQuantizer):
    """Range = [P(100 - p), P(p)] of the observed values (``percentile`` p, default 99.99)."""

    def compute_range(self, state: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        p = float(self.options.get("percentile", 99.99))
        rows = state["rows"]
        return (np.percentile(rows, 100.0 - p, axis=0).astype(np.float32),
                np.percentile(rows, p, axis=0).astype(np.float32))


@register_quantizer("mse")
class MseQuantizer(_SampledQuantizer):
    """Range minimizing the mean squared fake-quantization error on the observed values.

    Coordinate search over clipped upper and lower bounds, each candidate scored
    on the kept sample with TF's fake-quant (:func:`qatir.numerics.fake_quant`,
    ``bits`` option, default 8).
    """

    def compute_range(self, state: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        rows = state["rows"]
        bits = int(self.options.get("bits", 8))
        out = [_mse_search(rows[:, c], bits) for c in range(rows.shape[1])]
        return (np.array([o[0] for o in out], np.float32), np.array([o[1] for o in out], np.float32))


def _mse_search(v: np.ndarray, bits: int, max_points: int = 1 << 15, steps: int = 100,
                ) -> tuple[float, float]:
    lo0, hi0 = float(min(v.min(), 0.0)), float(max(v.max(), 0.0))
    if hi0 - lo0 <= 0:
        return lo0, hi0
    if v.size > max_points:  # the sample is already uniform: any slice of it is too
        v = v[:max_points]

    def err(lo: float, hi: float) -> float:
        d = v - fake_quant(v, lo, hi, bits)
        return float(np.dot(d, d))

    fracs = np.linspace(1.0 / steps, 1.0, steps)
    lo, hi = lo0, hi0
    for _ in range(2):
        if hi0 > 0:
            hi = min((hi0 * f for f in fracs), key=lambda h: err(lo, h))
        if lo0 < 0:
            lo = min((lo0 * f for f in fracs), key=lambda low: err(low, hi))
    return float(lo), float(hi)


@register_quantizer("fixed")
class FixedQuantizer(Quantizer):
    """The range is set by the graph (LOGISTIC/SOFTMAX/TANH outputs) and never changes."""

    calibrates = False


@register_quantizer("learned")
class LearnedQuantizer(Quantizer):
    """Calibrated like ``minmax``, then trained in ``fit`` by the gradients TF's
    fake-quant op gives ``min`` and ``max`` (clipping gradients, PACT-like)."""

    trainable = True


@register_quantizer("auto")
class AutoQuantizer(MinMaxQuantizer):
    """Calibration chooses each range's rule among ``candidates`` (default minmax and
    ema) by the int8 file's output error on held-out calibration batches
    (:mod:`qatir.auto_range`); alone (outside ``qatir.calibrate``) it is ``minmax``.
    ``fit`` holds an activation range fixed."""

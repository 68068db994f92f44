"""Callbacks of ``qatir.fit``: plain callables and Keras callbacks.

A plain callback is ``cb(epoch, logs)`` or an object with ``on_epoch_end(epoch,
logs)``; a true return value stops training. A ``keras.callbacks.Callback``
(EarlyStopping, ReduceLROnPlateau, LearningRateScheduler, your own) gets the
epoch-level hooks (``on_train_begin``, ``on_epoch_begin``, ``on_epoch_end``,
``on_train_end``) and, as ``self.model``, a :class:`FitModel`: ``stop_training``,
``optimizer``, ``get_weights``/``set_weights`` over every variable of the graph's
program. Batch-level hooks are not called.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from qatir.errors import QatirError


class FitModel:
    """What a Keras callback sees as ``self.model`` during ``qatir.fit``."""

    def __init__(self, prog: Any, optimizer: Any):
        self.stop_training = False
        self.optimizer = optimizer
        self.metrics: list[Any] = []  # Keras looks metric directions up here
        self._prog = prog

    def get_weights(self) -> list[np.ndarray]:
        """Every variable of the program (weights, ranges, batch-norm statistics)."""
        return [v.numpy() for v in self._prog.params.values()]

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        params = list(self._prog.params.values())
        if len(weights) != len(params):
            raise QatirError(f"set_weights: {len(weights)} arrays for {len(params)} variables")
        for var, w in zip(params, weights):
            var.assign(w)

    def __getattr__(self, name: str) -> Any:  # only reached for attributes not set above
        raise QatirError(f"a Keras callback asked for model.{name}, which qatir.fit does not "
                         "provide (it offers stop_training, optimizer, get_weights, "
                         "set_weights); use a plain callback cb(epoch, logs) instead")


class Callbacks:
    """The callbacks of one ``fit`` call, called at the epoch boundaries."""

    def __init__(self, callbacks: Sequence[Any] | None, prog: Any, optimizer: Any):
        import keras

        self.model = FitModel(prog, optimizer)
        self.keras = [cb for cb in callbacks or () if isinstance(cb, keras.callbacks.Callback)]
        self.plain = [cb for cb in callbacks or () if not isinstance(cb, keras.callbacks.Callback)]
        for cb in self.plain:
            if not callable(getattr(cb, "on_epoch_end", None) or cb):
                raise QatirError(f"fit: callback {cb!r} is neither callable nor has on_epoch_end")
        for cb in self.keras:
            cb.set_model(self.model)

    def train_begin(self) -> None:
        for cb in self.keras:
            cb.on_train_begin({})

    def epoch_begin(self, epoch: int) -> None:
        for cb in self.keras:
            cb.on_epoch_begin(epoch, {})

    def epoch_end(self, epoch: int, logs: dict[str, float]) -> bool:
        """Call every callback; True when one asks to stop."""
        stop = False
        for cb in self.plain:
            fn = getattr(cb, "on_epoch_end", None) or cb
            stop |= bool(fn(epoch, dict(logs)))
        for cb in self.keras:
            cb.on_epoch_end(epoch, dict(logs))
        return stop or self.model.stop_training

    def train_end(self, logs: dict[str, float]) -> None:
        for cb in self.keras:
            cb.on_train_end(dict(logs))

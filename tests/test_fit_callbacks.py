"""fit with validation data and Keras callbacks (EarlyStopping, ReduceLROnPlateau, ...)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import qatir
from qatir.errors import QatirError
from tests.helpers.graphs import qat_net


def regression(rng, sign: float, n: int = 256):
    """y = sign * (x @ w): training on one sign and validating on the other makes every
    step that lowers the training loss raise the validation loss."""
    x = rng.standard_normal((n, 6)).astype(np.float32)
    w = np.linspace(-1, 1, 18, dtype=np.float32).reshape(6, 3)
    return {"x": x}, (sign * np.clip(x @ w, -3.5, 3.5)).astype(np.float32)


def mse(g, data) -> float:
    out = qatir.run(g, data[0])[g.outputs[0].name]
    return float(np.mean((out - data[1]) ** 2))


def test_validation_loss_is_the_loss_of_the_trained_graph(rng):
    g = qat_net(rng)
    train, val = regression(rng, 1.0), regression(rng, 1.0)
    hist = qatir.fit(g, train, loss="mse", optimizer=keras.optimizers.Adam(1e-2), epochs=2,
                     validation_data=val, batch_size=64, verbose=False)
    assert len(hist["val_loss"]) == 2
    np.testing.assert_allclose(hist["val_loss"][-1], mse(g, val), rtol=1e-4)


def test_early_stopping_stops_and_restores_the_best_weights(rng):
    g = qat_net(rng)
    train, val = regression(rng, 1.0), regression(rng, -1.0)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=1,
                                         restore_best_weights=True)
    hist = qatir.fit(g, train, loss="mse", optimizer=keras.optimizers.Adam(3e-2), epochs=10,
                     validation_data=val, callbacks=[stop], batch_size=32, verbose=False)
    assert len(hist["loss"]) == 2 and hist["val_loss"][1] > hist["val_loss"][0]
    np.testing.assert_allclose(mse(g, val), hist["val_loss"][0], rtol=1e-4)  # epoch 0's weights


def test_reduce_lr_on_plateau_changes_the_optimizer(rng):
    g = qat_net(rng)
    opt = keras.optimizers.SGD(0.1)
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss", patience=0, factor=0.5,
                                                min_delta=1e9)  # nothing counts as progress
    qatir.fit(g, regression(rng, 1.0), loss="mse", optimizer=opt, epochs=3,
              callbacks=[plateau], batch_size=64, verbose=False)
    assert float(opt.learning_rate) == pytest.approx(0.025)


def test_keras_callback_needing_more_of_the_model_gets_a_clear_error(rng, tmp_path):
    g = qat_net(rng)
    ckpt = keras.callbacks.ModelCheckpoint(str(tmp_path / "m.keras"))
    with pytest.raises(QatirError, match=r"model\.save"):
        qatir.fit(g, regression(rng, 1.0), loss="mse", epochs=1, callbacks=[ckpt],
                  verbose=False)

"""Training of the IR in TensorFlow: float training and quantization-aware fine-tuning.

``fit`` trains exactly the graph it is given: a float graph in float (batch
norm in training mode, moving statistics updated like Keras), a quantized graph
with its FAKE_QUANT nodes (straight-through gradients; ranges follow their
quantizer: EMA, learned, or fixed). Under a ``tf.distribute`` strategy the
variables are mirrored, gradients are all-reduced by the optimizer and range
statistics are reduced over all replicas (see ``qatir.tf.fake_quant``), so
every replica and the exported model share the same ranges. Trained values are
written back into the IR constants.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from qatir.calibration import refresh_weight_ranges
from qatir.errors import NumericsError, QatirError
from qatir.ir import Graph
from qatir.quant import refresh_quant
from qatir.tf.callbacks import Callbacks
from qatir.tf.data import as_dataset
from qatir.tf.env import import_tensorflow
from qatir.tf.executor import Program, program_for
from qatir.tf.kernels import KernelContext

tf = import_tensorflow()

__all__ = ["fit", "make_train_step"]


def resolve_loss(loss: Any) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """A Keras loss name, Keras loss object or callable ``(y_true, y_pred) -> loss``."""
    import keras

    if loss is None:
        loss = "mean_squared_error"
    if isinstance(loss, str):
        try:
            return keras.losses.get(loss)
        except ValueError as e:
            raise QatirError(f"fit: unknown loss {loss!r}: {e}") from None
    if not callable(loss):
        raise QatirError(f"fit: loss must be a name or a callable, got {type(loss).__name__}")
    if isinstance(loss, keras.losses.Loss):
        # per-sample values: Loss.__call__ would also divide by the replica count, and fit
        # scales for distribution itself
        return loss.call
    return loss


def resolve_optimizer(optimizer: Any):
    """A Keras optimizer from a name (e.g. "adam") or an optimizer instance."""
    import keras

    if isinstance(optimizer, str):
        try:
            return keras.optimizers.get(optimizer)
        except ValueError as e:
            raise QatirError(f"fit: unknown optimizer {optimizer!r}: {e}") from None
    return optimizer


def optimizer_for_strategy(optimizer: Any, strategy: Any):
    """``optimizer`` usable under ``strategy``: call inside ``strategy.scope()``.

    A Keras optimizer made outside the scope (what one writes first) belongs to
    another strategy, and Keras refuses it at its first step. An unused one is
    re-created here from its config (learning rate, schedule and every other
    hyper-parameter kept); the copy is the one that trains. One that has
    already taken steps holds state that cannot move, so it is refused.
    """
    owner = getattr(optimizer, "_distribution_strategy", None)  # Keras 3 TF backend
    if owner is None or owner is strategy:
        return optimizer
    steps = int(optimizer.iterations.numpy()) if hasattr(optimizer, "iterations") else 0
    name = type(optimizer).__name__
    if steps:
        raise QatirError(
            f"fit: the {name} optimizer was created outside strategy.scope() and has already "
            f"taken {steps} steps; create it inside `with strategy.scope():` (or pass a fresh "
            "one or a name such as 'adam') to train under the strategy")
    try:
        return type(optimizer).from_config(optimizer.get_config())
    except Exception as e:  # a custom optimizer whose config does not round-trip
        raise QatirError(
            f"fit: the {name} optimizer was created outside strategy.scope() and could not be "
            f"re-created from its config ({type(e).__name__}: {e}); create it inside "
            "`with strategy.scope():`") from None


def _loss_value(loss_fn, graph: Graph, y: Any, outs: Sequence[tf.Tensor]) -> tf.Tensor:
    """Mean loss over the (local) batch: first output, or a dict of y by output name."""
    if isinstance(y, dict):
        by_name = {t.name: o for t, o in zip(graph.outputs, outs)}
        return tf.add_n([tf.reduce_mean(loss_fn(v, by_name[k])) for k, v in y.items()])
    return tf.reduce_mean(loss_fn(y, outs[0]))


def make_train_step(prog: Program, loss_fn, optimizer, strategy=None, jit_compile: bool = False,
                    fast_fake_quant: bool = True):
    """A compiled ``step(inputs, y) -> mean loss`` that updates ``prog``'s variables."""
    graph = prog.graph
    variables = prog.trainable_params

    def replica_step(inputs, y):
        ctx = KernelContext(prog.params, training=True, fast_fake_quant=fast_fake_quant)
        with tf.GradientTape() as tape:
            outs = prog.forward(list(inputs), ctx)
            loss = _loss_value(loss_fn, graph, y, outs)
            replicas = tf.distribute.get_replica_context().num_replicas_in_sync
            scaled = loss / tf.cast(replicas, loss.dtype)
        grads = tape.gradient(scaled, variables)
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        optimizer.apply_gradients(pairs)
        return scaled

    if strategy is None:
        return tf.function(replica_step, jit_compile=jit_compile, reduce_retracing=True,
                           autograph=False)

    def dist_step(inputs, y):
        per_replica = strategy.run(replica_step, args=(inputs, y))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return tf.function(dist_step, reduce_retracing=True, autograph=False)


def make_eval_step(prog: Program, loss_fn):
    """A compiled ``step(inputs, y) -> (summed loss, batch size)`` in inference mode."""
    graph = prog.graph

    def step(inputs, y):
        outs = prog.forward(list(inputs), KernelContext(prog.params, live_weight_ranges=True))
        n = tf.shape(inputs[0])[0]
        return _loss_value(loss_fn, graph, y, outs) * tf.cast(n, tf.float32), n

    return tf.function(step, reduce_retracing=True, autograph=False)


def evaluate(step, ds) -> float:
    """Mean loss over a dataset, weighting each batch by its size."""
    total, count = 0.0, 0
    for inputs, y in ds:
        value, n = step(inputs, y)
        total, count = total + float(value), count + int(n)
    if count == 0:
        raise QatirError("fit: validation_data yielded no batches")
    return total / count


def fit(graph: Graph, dataset: Any, loss: Any = None, optimizer: Any = "adam", epochs: int = 1,
        strategy: Any = None, callbacks: Sequence[Any] | None = None, batch_size: int = 32,
        verbose: bool | None = None, jit_compile: bool = False, fast_fake_quant: bool = True,
        steps_per_epoch: int | None = None, validation_data: Any = None,
        ) -> dict[str, list[float]]:
    """Train ``graph`` in place; returns ``{"loss": [...], "time": [...]}`` per epoch
    (and ``"val_loss"`` with ``validation_data``).

    ``dataset``: a batched ``tf.data.Dataset`` of ``({input_name: x}, y)``, an
    iterable of such batches, or one ``({input_name: X}, Y)`` pair of whole
    arrays (batched by ``batch_size``). ``loss``: a Keras loss name/object or a
    callable (default mean squared error). ``optimizer``: a name or Keras
    optimizer (under a strategy, an unused optimizer made outside
    ``strategy.scope()`` is re-created inside it from its config, so the copy
    trains and ``optimizer`` itself stays unused; make it inside the scope to
    keep using the same object). ``strategy``: any ``tf.distribute.Strategy``. ``callbacks``:
    callables ``cb(epoch, logs)``, objects with ``on_epoch_end(epoch, logs)`` (a true
    return value stops training) or Keras callbacks such as ``EarlyStopping``
    (``qatir.tf.callbacks``). ``validation_data``: the same forms as ``dataset``;
    its mean loss (inference mode, fake quant on) is ``logs["val_loss"]`` after
    each epoch. ``verbose``: show a progress bar with
    the running loss (default: when stderr is a terminal). ``jit_compile``:
    XLA-compile the step (off by default: on CPU it measured ~20x slower than
    TF's own kernels in ``tools/bench_train.py``, mostly depthwise convolutions).
    ``fast_fake_quant``: run per-tensor fake quant with fixed ranges as small
    XLA kernels (same values and input gradients, faster); False uses TF's op.
    """
    if epochs < 1:
        raise QatirError(f"fit: epochs must be >= 1, got {epochs}")
    loss_fn = resolve_loss(loss)
    ds = as_dataset(graph, dataset, batch_size)
    if strategy is None:
        prog = program_for(graph)
        prog.sync_from_graph()
        opt = resolve_optimizer(optimizer)
        opt.build(prog.trainable_params)
    else:
        with strategy.scope():
            prog = Program(graph)
            opt = optimizer_for_strategy(resolve_optimizer(optimizer), strategy)
            opt.build(prog.trainable_params)
        ds = strategy.experimental_distribute_dataset(ds)
    step = make_train_step(prog, loss_fn, opt, strategy, jit_compile, fast_fake_quant)
    val = None
    if validation_data is not None:
        val = (make_eval_step(prog, loss_fn), as_dataset(graph, validation_data, batch_size))
    cbs = Callbacks(callbacks, prog, opt)
    show = sys.stderr.isatty() if verbose is None else verbose
    history: dict[str, list[float]] = {"loss": [], "time": []}
    if val is not None:
        history["val_loss"] = []
    cbs.train_begin()
    logs: dict[str, float] = {}
    for epoch in range(epochs):
        cbs.epoch_begin(epoch)
        start = time.perf_counter()
        try:
            mean_loss = _epoch(step, ds, _bar(show, epoch, epochs), steps_per_epoch)
        except tf.errors.InvalidArgumentError as e:
            msg = e.message.splitlines()[0]
            if "NaN" in msg or "Inf" in msg:  # from the check_numerics on the input data
                raise NumericsError(f"fit: {msg}") from None
            raise QatirError(f"fit: graph {graph.name!r}: {msg}") from None
        history["time"].append(time.perf_counter() - start)
        logs = {"loss": mean_loss}
        if val is not None:
            logs["val_loss"] = evaluate(*val)
        for key, value in logs.items():
            history[key].append(value)
        if cbs.epoch_end(epoch, logs):
            break
    cbs.train_end(logs)  # e.g. EarlyStopping restores its best weights here
    _write_back(graph, prog)
    return history


def _epoch(step, ds, bar, steps_per_epoch: int | None) -> float:
    """One pass over the data; returns the mean loss."""
    total, count = 0.0, 0
    for inputs, y in ds:
        if steps_per_epoch is not None and count >= steps_per_epoch:
            break
        value = float(step(inputs, y))
        if not np.isfinite(value):
            raise NumericsError("fit: the loss became NaN or Inf (check the data and learning rate)")
        total, count = total + value, count + 1
        bar.update(1)
        bar.set_postfix(loss=f"{total / count:.4f}")
    bar.close()
    if count == 0:
        raise QatirError("fit: the dataset yielded no batches")
    return total / count


def _bar(show: bool, epoch: int, epochs: int):
    from tqdm.auto import tqdm

    return tqdm(desc=f"epoch {epoch + 1}/{epochs}", disable=not show, unit="step")


def _write_back(graph: Graph, prog: Program) -> None:
    """Trained variables -> IR constants; weight ranges follow the final weights."""
    prog.write_back()
    if any(n.op == "FAKE_QUANT" for n in graph.nodes):
        refresh_weight_ranges(graph)
        refresh_quant(graph)

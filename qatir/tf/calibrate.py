"""The TensorFlow calibration engine: the graph's TF program run in float.

One traced function returns, per calibrated FAKE_QUANT, either its input
(quantizers that need rows) or the input's per-channel ``[2, C]`` min/max,
reduced inside TensorFlow so no whole activation is copied out.
"""

from __future__ import annotations

import numpy as np

from qatir.calibration_taps import Tap
from qatir.ir import Graph
from qatir.numerics import normalize_axis
from qatir.tf.env import import_tensorflow
from qatir.tf.executor import program_for
from qatir.tf.kernels import KernelContext

tf = import_tensorflow()


def _minmax(x: tf.Tensor, axis: int | None) -> tf.Tensor:
    x = tf.cast(x, tf.float32)
    if axis is None:
        return tf.stack([tf.reshape(tf.reduce_min(x), [1]), tf.reshape(tf.reduce_max(x), [1])])
    rank = x.shape.rank
    others = [d for d in range(rank) if d != normalize_axis(axis, rank)]
    return tf.stack([tf.reduce_min(x, axis=others), tf.reduce_max(x, axis=others)])


class TfCapture:
    """Capture engine on the graph's cached TF program (``qatir.tf.executor.program_for``)."""

    def __init__(self, graph: Graph, taps: list[Tap]):
        self.prog = program_for(graph)
        self.prog.sync_from_graph()
        key = "capture:" + ",".join(sorted(f"{t.node}/{t.axis}/{t.rows}" for t in taps))
        fn = self.prog.extra_functions.get(key)
        if fn is None:
            fn = self._trace(taps)
            self.prog.extra_functions[key] = fn
        self.fn = fn

    def _trace(self, taps: list[Tap]):
        prog = self.prog
        by_name = {t.node: t for t in taps}
        sig = [tf.TensorSpec(t.shape, tf.as_dtype(t.dtype)) for t in prog.graph.inputs]

        def capture(*inputs):
            ctx = KernelContext(prog.params, fake_quant=False, capture=frozenset(by_name))
            prog.forward(list(inputs), ctx)
            return {name: x if by_name[name].rows else _minmax(x, by_name[name].axis)
                    for name, x in ctx.captured.items()}

        return tf.function(capture, input_signature=sig, autograph=False)

    def run(self, xs: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.fn(*xs).items()}

"""``qatir bench``: seconds per stage of a compile, and LiteRT latency of the result.

Honest figures for one model on this machine: first TF runs include tracing
(that is what a user waits for), the TensorFlow import is timed on its own,
and LiteRT is timed with the default (XNNPACK) and the reference kernels.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from qatir.data import batch_size_for, random_batches
from qatir.metrics import format_size
from qatir.timing import StageTimer


@dataclass
class BenchResult:
    """Seconds per stage of one compile, plus LiteRT latency of the written model."""

    model: str
    nodes: int
    stage_seconds: dict[str, float]
    invoke_ms: dict[str, float]
    tflite_bytes: int

    def format(self) -> str:
        lines = [f"model: {self.model} ({self.nodes} IR nodes, int8 .tflite "
                 f"{format_size(self.tflite_bytes)})", f"{'stage':<28}{'seconds':>10}"]
        lines += [f"{k:<28}{v:>10.3f}" for k, v in self.stage_seconds.items()]
        lines.append(f"{'total':<28}{sum(self.stage_seconds.values()):>10.3f}")
        lines.append(f"{'LiteRT invoke (batch 1)':<28}{'ms':>10}")
        lines += [f"  {k:<26}{v:>10.4f}" for k, v in self.invoke_ms.items()]
        return "\n".join(lines)


def bench_model(model: str | None, input_shapes: Mapping[str, Sequence[int]] | None = None,
                calib_batches: int = 4, repeat: int = 20,
                import_tf: Callable[[], None] | None = None) -> BenchResult:
    """Time load, quantize, calibrate, float/fake-quant TF run, to_tflite and LiteRT invoke.

    ``model=None`` times the demo CNN (written to a temporary .onnx file first).
    ``import_tf`` imports TensorFlow the caller's way (the CLI hides its start-up chatter).
    First TF runs include tracing; that is what a user waits for, so it is reported.
    """
    import tempfile

    import qatir

    timer = StageTimer()
    with tempfile.TemporaryDirectory() as tmp:
        if model is None:
            from qatir.demo import digits_cnn_onnx

            model = os.path.join(tmp, "digits_cnn.onnx")
            with open(model, "wb") as f:
                f.write(digits_cnn_onnx().SerializeToString())
            label = "demo digits CNN (built in)"
        else:
            label = model
        with timer("load"):
            graph = qatir.load(model, input_shapes=dict(input_shapes or {}) or None)
        feeds = random_batches(graph, calib_batches, batch_size_for(graph, 1))
        with timer("import tensorflow"):
            if import_tf is not None:
                import_tf()
            from qatir.tf.env import import_tensorflow

            import_tensorflow()
        with timer("float run (first, traces)"):
            qatir.run(graph, feeds[0])
        with timer("float run (second)"):
            qatir.run(graph, feeds[0])
        with timer("quantize (passes)"):
            q = qatir.quantize(graph)
        with timer(f"calibrate ({calib_batches} batches)"):
            qatir.calibrate(q, feeds, progress=False)
        with timer("fake-quant run"):
            qatir.run(q, feeds[0])
        with timer("to_tflite (lower + write)"):
            buf = qatir.to_tflite(q, io="int8")
    return BenchResult(label, len(graph.nodes), timer.seconds, _invoke_ms(buf, repeat), len(buf))


def _invoke_ms(buf: bytes, repeat: int) -> dict[str, float]:
    """Median LiteRT invoke time, with the default (XNNPACK) and the reference kernels."""
    from qatir.litert_run import interpreter

    out = {}
    for label, resolver in (("default (XNNPACK)", "default"), ("reference kernels", "ref")):
        interp = interpreter(buf, resolver)
        for d in interp.get_input_details():
            interp.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
        interp.invoke()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            interp.invoke()
            times.append(time.perf_counter() - t0)
        out[label] = 1e3 * float(np.median(times))
    return out


def interleaved_latency_ms(bufs: Mapping[str, bytes], runs: int = 100, threads: int = 1,
                           feeds: Mapping[str, Sequence[np.ndarray]] | None = None,
                           ) -> dict[str, float]:
    """Median LiteRT invoke time (default resolver, XNNPACK) of each model, in ms.

    The models take turns invoke by invoke, the order rotating each turn, so load from
    other processes on a shared machine hits all of them alike; compare ratios measured
    in one call. ``feeds`` maps a label to its input arrays, in the file's input order
    (cast to each input's dtype); zeros otherwise.
    """
    from qatir.litert_run import interpreter

    its = {}
    for label, buf in bufs.items():
        it = interpreter(buf, "default", threads=threads)
        given = list((feeds or {}).get(label, ()))
        for i, d in enumerate(it.get_input_details()):
            x = given[i] if i < len(given) else np.zeros(d["shape"])
            it.set_tensor(d["index"], np.asarray(x).astype(d["dtype"]).reshape(d["shape"]))
        for _ in range(3):
            it.invoke()
        its[label] = it
    labels = list(its)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(runs):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            t0 = time.perf_counter()
            its[label].invoke()
            times[label].append(time.perf_counter() - t0)
    return {label: 1e3 * float(np.median(t)) for label, t in times.items()}

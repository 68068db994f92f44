"""Training-step time: qatir QAT vs qatir float (same folded graph) vs tfmot's quantize_model.

One run prints, per step (median of timed steps after warm-up, same batch):

- qatir float step of the folded float graph (what QAT trains, without FAKE_QUANT),
- qatir QAT step of the quantized graph (as ``fit`` runs it; with TF's fake-quant
  gradient op instead of the fused input-only gradient; optionally XLA ``jit_compile``),
- tf-keras float step and ``tensorflow_model_optimization`` ``quantize_model`` QAT step
  of the same architecture (needs ``tf-keras`` and ``tensorflow-model-optimization``,
  which are not qatir dependencies; when they are missing the reason is printed).

Architecture (NHWC 32x32x3, 10 classes): conv3x3-BN-ReLU, depthwise-BN-ReLU6,
strided conv-BN-ReLU, depthwise-BN-ReLU6, strided conv-BN-ReLU, global average
pool, dense. Usage: ``python tools/bench_train.py [--batch 64] [--steps 30]
[--jit] [--remapper]``; ``--remapper`` adds the qatir steps with grappler's
remapper on, timed in the same round-robin: the cost of qatir's oneDNN guard.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf.keras = tf-keras for tfmot; qatir uses keras 3

import numpy as np  # noqa: E402

# (kind, out channels, stride) in order; every conv is followed by BN and an activation
LAYERS = [("conv", 32, 1, "relu"), ("dw", 32, 1, "relu6"), ("conv", 64, 2, "relu"),
          ("dw", 64, 1, "relu6"), ("conv", 128, 2, "relu")]
SIZE, CLASSES = 32, 10


def build_onnx(path: str, seed: int = 0) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    x, c = "x", 3
    for i, (kind, out, stride, act) in enumerate(LAYERS):
        group = c if kind == "dw" else 1
        w = rng.standard_normal((out, c // group, 3, 3)) * np.sqrt(2.0 / (9 * c // group))
        pads = [1, 1, 1, 1] if stride == 1 else [0, 0, 1, 1]  # = Keras/TF "same" padding
        nodes.append(helper.make_node("Conv", [x, const(f"w{i}", w)], [f"c{i}"], group=group,
                                      kernel_shape=[3, 3], pads=pads, strides=[stride] * 2))
        bn = [const(f"bn{i}.{k}", v) for k, v in (("g", np.ones(out)), ("b", np.zeros(out)),
                                                  ("m", np.zeros(out)), ("v", np.ones(out)))]
        nodes.append(helper.make_node("BatchNormalization", [f"c{i}", *bn], [f"n{i}"], epsilon=1e-3))
        if act == "relu":
            nodes.append(helper.make_node("Relu", [f"n{i}"], [f"a{i}"]))
        else:
            nodes.append(helper.make_node("Clip", [f"n{i}", const(f"lo{i}", 0.0),
                                                   const(f"hi{i}", 6.0)], [f"a{i}"]))
        x, c = f"a{i}", out
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1))
    nodes.append(helper.make_node("Gemm", ["flat", const("fc.w", rng.standard_normal((CLASSES, c))
                                                           / np.sqrt(c)),
                                           const("fc.b", np.zeros(CLASSES))], ["y"], transB=1))
    graph = helper.make_graph(
        nodes, "bench", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", CLASSES])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def time_steps(steps: dict[str, tuple], n: int, rounds: int | None = None, warmup: int = 3,
               ) -> dict[str, float]:
    """Median seconds per call for each ``label -> (fn, args)``.

    The configurations are timed round-robin (``rounds`` x ``n // rounds`` calls
    each, one call per round by default) so background load on a shared machine
    hits them all alike.
    """
    rounds = rounds or n
    times: dict[str, list[float]] = {k: [] for k in steps}
    for fn, args in steps.values():
        for _ in range(warmup):
            float(fn(*args))
    per_round = max(1, n // rounds)
    for _ in range(rounds):
        for label, (fn, args) in steps.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                float(fn(*args))
                times[label].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def qatir_steps(x, y, jit: bool) -> dict[str, tuple]:
    import keras
    import tensorflow as tf

    import qatir
    from qatir.tf.executor import Program
    from qatir.tf.train import make_train_step

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "bench.onnx")
        build_onnx(path)
        g = qatir.load(path)
    folded = qatir.quantize(g, passes="float")
    quantized = qatir.quantize(g)
    qatir.calibrate(quantized, [{"x": x}], progress=False)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    xs, ys = (tf.constant(x),), tf.constant(y)
    out = {}
    configs = [("qatir float (folded graph)", folded, False, True),
               ("qatir QAT", quantized, False, True),
               ("qatir QAT, TF fake-quant gradient op", quantized, False, False)]
    if jit:
        configs += [("qatir float, jit_compile", folded, True, True),
                    ("qatir QAT, jit_compile", quantized, True, True)]
    for label, graph, use_jit, fast in configs:
        prog = Program(graph)
        opt = keras.optimizers.Adam(1e-3)
        opt.build(prog.trainable_params)
        step = make_train_step(prog, loss.call, opt, jit_compile=use_jit, fast_fake_quant=fast)
        try:
            float(step(xs, ys))
        except Exception as e:  # report, keep benchmarking the rest
            print(f"{label}: failed: {type(e).__name__}: {str(e).splitlines()[0]}")
            continue
        out[label] = (step, (xs, ys))
    return out


def keras_model():
    import tensorflow as tf

    layers = tf.keras.layers
    inp = tf.keras.Input((SIZE, SIZE, 3))
    h = inp
    for kind, out, stride, act in LAYERS:
        if kind == "dw":
            h = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(h)
        else:
            h = layers.Conv2D(out, 3, strides=stride, padding="same", use_bias=False)(h)
        h = layers.BatchNormalization(epsilon=1e-3)(h)
        h = layers.ReLU(6.0 if act == "relu6" else None)(h)
    h = layers.GlobalAveragePooling2D()(h)
    return tf.keras.Model(inp, layers.Dense(CLASSES)(h))


def keras_steps(x, y) -> dict[str, tuple]:
    import tensorflow as tf

    try:
        import tensorflow_model_optimization as tfmot
    except Exception as e:
        print(f"tfmot: not available ({type(e).__name__}: {e}); "
              "pip install tf-keras tensorflow-model-optimization to compare")
        return {}
    out = {}
    base = keras_model()
    for label, model in (("tf-keras float", base),
                         ("tfmot quantize_model QAT", tfmot.quantization.keras.quantize_model(base))):
        opt = tf.keras.optimizers.Adam(1e-3)
        loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        @tf.function
        def step(xb, yb, model=model, opt=opt, loss=loss):
            with tf.GradientTape() as tape:
                value = loss(yb, model(xb, training=True))
            grads = tape.gradient(value, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return value

        out[label] = (step, (tf.constant(x), tf.constant(y)))
    return out


def with_remapper(tf, fns: dict[str, tuple]) -> dict[str, tuple]:
    """The same steps, each call run with grappler's remapper on, then back to qatir's setting.

    TF passes the optimizer options with every function call and instantiates a
    function once per setting, so both variants stay compiled side by side.
    """
    opt = tf.config.optimizer
    current = opt.get_experimental_options().get("remapping", True)

    def remapped(fn):
        def call(*a):
            opt.set_experimental_options({"remapping": True})
            try:
                return fn(*a)
            finally:
                opt.set_experimental_options({"remapping": current})
        return call

    return {f"{label}, remapper on": (remapped(fn), a) for label, (fn, a) in fns.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--jit", action="store_true", help="also time XLA jit_compile steps")
    ap.add_argument("--remapper", action="store_true",
                    help="also time the qatir steps with grappler's remapper on (TF's default, "
                         "which qatir switches off under oneDNN: qatir/tf/env.py), interleaved")
    args = ap.parse_args()
    from qatir.tf.env import import_tensorflow, onednn_enabled

    tf = import_tensorflow()  # qatir's settings apply to the tf-keras/tfmot steps too
    remap = tf.config.optimizer.get_experimental_options().get("remapping", True)
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, SIZE, SIZE, 3), dtype=np.float32)
    y = rng.integers(0, CLASSES, args.batch).astype(np.int32)
    print(f"TensorFlow {tf.__version__}, batch {args.batch}, {args.steps} timed steps, "
          f"{os.cpu_count()} CPUs, oneDNN {'on' if onednn_enabled() else 'off'}, "
          f"grappler remapper {'on' if remap else 'off'}")
    fns = qatir_steps(x, y, args.jit)
    if args.remapper:
        fns.update(with_remapper(tf, fns))
    fns.update(keras_steps(x, y))
    res = time_steps(fns, args.steps)
    for label, sec in res.items():
        print(f"  {label:45s} {sec * 1e3:8.2f} ms/step")
    fl, qat = res.get("qatir float (folded graph)"), res.get("qatir QAT")
    if fl and qat:
        best = min(v for k, v in res.items()
                   if k.startswith("qatir QAT") and not k.endswith("remapper on"))
        print(f"qatir QAT / qatir float: {qat / fl:.2f}x (goal <= 1.3x); best QAT {best * 1e3:.2f} ms")
    if qat and "tfmot quantize_model QAT" in res:
        print(f"tfmot QAT / qatir QAT: {res['tfmot quantize_model QAT'] / qat:.2f}x (goal > 1)")


if __name__ == "__main__":
    main()

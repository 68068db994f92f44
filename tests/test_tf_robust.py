"""TF execution that cannot take the process down, fit under a strategy, bias rounding at ties.

TensorFlow 2.21's oneDNN graph rewrite segfaults on BlazeFace's block
``bias_add(conv2d(x)) + pad(x)`` once grappler's remapper has fused it
(``qatir/tf/env.py``). The block runs here in fresh processes, through
``qatir.run``, ``qatir.fit`` and ``qatir compile --train``, each of which must
exit 0. ``test_canary_the_crash_is_real`` shows that the same block does crash
when the protection is defeated, so the other tests can fail; where it does not
crash (another CPU, oneDNN off) it is skipped and says so.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

C_IN, C_OUT, SIZE = 24, 28, 16


def blaze_block_onnx(seed: int = 0):
    """Conv 1x1 24->28 with bias + the input padded from 24 to 28 channels, then a mean."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((C_OUT, C_IN, 1, 1)) * 0.2).astype(np.float32)
    b = (rng.standard_normal(C_OUT) * 0.1).astype(np.float32)
    pads = np.array([0, 0, 0, 0, 0, C_OUT - C_IN, 0, 0], np.int64)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("Pad", ["x", "pads"], ["p"], mode="constant"),
             helper.make_node("Add", ["c", "p"], ["a"]),
             helper.make_node("ReduceMean", ["a"], ["y"], axes=[2, 3], keepdims=0)]
    graph = helper.make_graph(
        nodes, "blaze_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C_IN, SIZE, SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", C_OUT])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
         numpy_helper.from_array(pads, "pads")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture
def block_path(tmp_path):
    import onnx

    path = tmp_path / "blaze_block.onnx"
    onnx.save(blaze_block_onnx(), str(path))
    return path


def _python(code: str, cwd, *args: str, env_extra: dict | None = None,
            timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with TF's own oneDNN default (the variable unset)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", **(env_extra or {}))
    return subprocess.run([sys.executable, *args] if not code else
                          [sys.executable, "-c", textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def _ok(proc: subprocess.CompletedProcess, marker: str) -> None:
    assert proc.returncode == 0, (f"exit {proc.returncode} (-11: segmentation fault)\n"
                                  f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-3000:]}")
    assert marker in proc.stdout, proc.stdout[-2000:]


# The float result must be the block's own math, so the run really executed it.
RUN = """
    import sys
    import numpy as np
    import qatir
    g = qatir.load(sys.argv[1])
    x = np.random.default_rng(0).random((2, 16, 16, 24), np.float32)
    y = qatir.run(g, {"x": x})["y"]
    import onnx
    from onnx import numpy_helper
    init = {t.name: numpy_helper.to_array(t) for t in onnx.load(sys.argv[1]).graph.initializer}
    w = init["w"][:, :, 0, 0]
    ref = (x @ w.T + init["b"] + np.pad(x, [(0, 0)] * 3 + [(0, 4)])).mean(axis=(1, 2))
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    q = qatir.quantize(g)
    qatir.calibrate(q, [{"x": x}], progress=False)
    qatir.run(q, {"x": x})
    print("RUN-OK")
"""

FIT = """
    import sys
    import numpy as np
    import qatir
    g = qatir.load(sys.argv[1])
    rng = np.random.default_rng(0)
    data = [({"x": rng.random((2, 16, 16, 24), np.float32)}, rng.random((2, 28), np.float32))
            for _ in range(3)]
    h = qatir.fit(g, data, loss="mse", optimizer="adam", epochs=1, verbose=False)
    q = qatir.quantize(g)
    qatir.calibrate(q, [b[0] for b in data], progress=False)
    h = qatir.fit(q, data, loss="mse", optimizer="adam", epochs=1, verbose=False)
    assert np.isfinite(h["loss"][0]), h
    qatir.to_tflite(q)
    print("FIT-OK")
"""


def test_run_blaze_block_exits_0(block_path, tmp_path):
    _ok(_python(RUN, tmp_path, str(block_path)), "RUN-OK")


def test_fit_blaze_block_exits_0(block_path, tmp_path):
    _ok(_python(FIT, tmp_path, str(block_path)), "FIT-OK")


def test_compile_train_blaze_block_exits_0(block_path, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((8, C_IN, SIZE, SIZE), np.float32)  # the model's own layout (NCHW)
    np.savez(tmp_path / "calib.npz", x=x[:4])
    np.savez(tmp_path / "train.npz", x=x, y=rng.random((8, C_OUT), np.float32))
    out = tmp_path / "block_int8.tflite"
    proc = _python("", tmp_path, "-m", "qatir.cli", "compile", str(block_path), "-o", str(out),
                   "--calib", str(tmp_path / "calib.npz"), "--train", str(tmp_path / "train.npz"),
                   "--loss", "mse", "--batch-size", "2", "--no-progress")
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert out.stat().st_size > 0


def blaze_block_tflite() -> bytes:
    """The same block as a float TFLite file, as MediaPipe ships it: CONV_2D, PAD, ADD+RELU."""
    from qatir.tf.env import import_tensorflow

    tf = import_tensorflow()
    rng = np.random.default_rng(0)
    k = tf.constant((rng.standard_normal((1, 1, C_IN, C_OUT)) * 0.2).astype(np.float32))
    b = tf.constant((rng.standard_normal(C_OUT) * 0.1).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, C_IN], tf.float32)])
    def block(x):
        pad = tf.pad(x, [[0, 0], [0, 0], [0, 0], [0, C_OUT - C_IN]])
        return tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, k, 1, "VALID"), b) + pad)

    conv = tf.lite.TFLiteConverter.from_concrete_functions([block.get_concrete_function()], block)
    return conv.convert()


def test_float_tflite_blaze_block_run_and_fit_exit_0(tmp_path):
    path = tmp_path / "blaze_block.tflite"
    path.write_bytes(blaze_block_tflite())
    code = """
        import sys
        import numpy as np
        import qatir
        g = qatir.load(sys.argv[1])
        assert [n.op for n in g.nodes] == ["CONV_2D", "PAD", "ADD"], g
        rng = np.random.default_rng(0)
        data = [({g.inputs[0].name: rng.random((1, 16, 16, 24), np.float32)},
                 rng.random((1, 16, 16, 28), np.float32)) for _ in range(2)]
        qatir.run(g, data[0][0])
        qatir.fit(g, data, loss="mse", optimizer="adam", verbose=False)
        q = qatir.quantize(g)
        qatir.calibrate(q, [d[0] for d in data], progress=False)
        qatir.fit(q, data, loss="mse", optimizer="adam", verbose=False)
        print("TFLITE-OK")
    """
    _ok(_python(code, tmp_path, str(path)), "TFLITE-OK")


def test_tf_imported_first_with_onednn_on(block_path, tmp_path):
    """The user's TF came first (oneDNN on, runtime started): qatir still must not crash."""
    code = """
        import sys
        import tensorflow as tf
        from tensorflow.python.util import _pywrap_util_port
        print("oneDNN", _pywrap_util_port.IsMklEnabled())
        print(float(tf.constant(1.0) + 1.0))  # the runtime is up before qatir arrives
        import numpy as np
        import qatir
        g = qatir.load(sys.argv[1])
        rng = np.random.default_rng(0)
        data = [({"x": rng.random((2, 16, 16, 24), np.float32)},
                 rng.random((2, 28), np.float32)) for _ in range(2)]
        qatir.run(g, data[0][0])
        qatir.fit(g, data, loss="mse", optimizer="adam", verbose=False)
        print("remapping", tf.config.optimizer.get_experimental_options().get("remapping"))
        print("FIRST-OK")
    """
    proc = _python(code, tmp_path, str(block_path))
    _ok(proc, "FIRST-OK")
    if "oneDNN True" in proc.stdout:
        assert "remapping False" in proc.stdout, proc.stdout


def test_canary_the_crash_is_real(block_path, tmp_path):
    """With the remapper switched on explicitly, qatir warns at once, and (here) the block crashes."""
    code = """
        import sys
        import warnings
        import tensorflow as tf
        from tensorflow.python.util import _pywrap_util_port
        if not _pywrap_util_port.IsMklEnabled():
            print("NO-ONEDNN")
            sys.exit(0)
        tf.config.optimizer.set_experimental_options({"remapping": True})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import qatir.tf.executor  # noqa: F401
        print("WARNED" if any("segmentation fault" in str(w.message) for w in caught) else "SILENT",
              flush=True)
        import numpy as np
        import qatir
        g = qatir.load(sys.argv[1])
        qatir.run(g, {"x": np.ones((2, 16, 16, 24), np.float32)})
        print("NO-CRASH")
    """
    proc = _python(code, tmp_path, str(block_path))
    if "NO-ONEDNN" in proc.stdout:
        pytest.skip("this TensorFlow runs without oneDNN: the crash cannot happen here")
    assert "WARNED" in proc.stdout, (proc.stdout, proc.stderr[-2000:])
    if proc.returncode == 0 and "NO-CRASH" in proc.stdout:
        pytest.skip("TF's oneDNN rewrite does not crash on this CPU: the exit-0 tests above "
                    "prove nothing here")
    assert proc.returncode == -11, (proc.returncode, proc.stderr[-2000:])


class _FakeOptimizerConfig:
    def __init__(self, options):
        self.options = dict(options)

    def get_experimental_options(self):
        return dict(self.options)

    def set_experimental_options(self, options):
        self.options.update(options)


@pytest.mark.parametrize("before, after, warns", [
    ({}, False, False),                    # unset: qatir switches the remapper off
    ({"remapping": False}, False, False),  # already off: left so
    ({"remapping": True}, True, True),     # the user's explicit choice: kept, with a warning
])
def test_remapper_policy_under_onednn(before, after, warns, recwarn):
    from types import SimpleNamespace

    from qatir.tf.env import _disable_remapper

    fake = SimpleNamespace(config=SimpleNamespace(optimizer=_FakeOptimizerConfig(before)))
    _disable_remapper(fake)
    assert fake.config.optimizer.options["remapping"] is after
    msgs = [str(w.message) for w in recwarn if "qatir:" in str(w.message)]
    assert bool(msgs) == warns
    if warns:
        assert "TF_ENABLE_ONEDNN_OPTS=0" in msgs[0] and "segmentation fault" in msgs[0]


def test_this_process_runs_without_the_remapper_when_onednn_is_on():
    import tensorflow as tf

    from qatir.tf.env import import_tensorflow, onednn_enabled

    assert import_tensorflow() is tf
    if onednn_enabled():
        assert tf.config.optimizer.get_experimental_options().get("remapping") is False


# ------------------------------------------------------------- fit under a strategy
def _data():
    rng = np.random.default_rng(0)
    return [({"x": rng.random((2, SIZE, SIZE, C_IN), np.float32)},
             rng.random((2, C_OUT), np.float32)) for _ in range(3)]


def test_fit_strategy_optimizer_made_outside_scope(block_path):
    import keras
    import tensorflow as tf

    import qatir
    from qatir.tf.train import optimizer_for_strategy

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    sched = keras.optimizers.schedules.ExponentialDecay(3e-3, decay_steps=7, decay_rate=0.5)
    opt = keras.optimizers.Adam(sched, beta_1=0.8, epsilon=1e-5)  # outside strategy.scope()
    with strategy.scope():
        copy = optimizer_for_strategy(opt, strategy)
    assert copy is not opt
    cfg, new = opt.get_config(), copy.get_config()
    assert new["learning_rate"] == cfg["learning_rate"]  # the schedule, serialized
    assert (new["beta_1"], new["epsilon"]) == (0.8, 1e-5)
    g = qatir.load(str(block_path))
    h = qatir.fit(g, _data(), loss="mse", optimizer=opt, strategy=strategy, verbose=False)
    assert np.isfinite(h["loss"][0])
    with strategy.scope():  # made inside: used as it is
        inside = keras.optimizers.SGD(1e-2)
        assert optimizer_for_strategy(inside, strategy) is inside
    qatir.fit(g, _data(), loss="mse", optimizer=inside, strategy=strategy, verbose=False)
    assert int(inside.iterations.numpy()) == 3


def test_fit_strategy_refuses_used_optimizer_from_outside(block_path):
    import keras
    import tensorflow as tf

    import qatir

    g = qatir.load(str(block_path))
    opt = keras.optimizers.Adam(1e-3)
    qatir.fit(g, _data(), loss="mse", optimizer=opt, verbose=False)  # no strategy: used
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with pytest.raises(qatir.QatirError, match=r"strategy\.scope\(\).*3 steps"):
        qatir.fit(g, _data(), loss="mse", optimizer=opt, strategy=strategy, verbose=False)


# ------------------------------------------------------------- rounding half away
TIES = [0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 3.5, -3.5, 1e6 + 0.5, -(1e6 + 0.5), 4194304.5,
        -4194304.5, 0.49999997, -0.49999997, 8388609.0, -8388609.0, 16777215.0, 2.0**30, 0.0,
        -0.0, 0.25, -0.75]


def _c_round(v: float) -> float:
    """C round() of a float, exactly (decimal's ROUND_HALF_UP is half away from zero)."""
    from decimal import ROUND_HALF_UP, Decimal

    return float(Decimal(float(v)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def test_round_half_away_matches_numpy():
    import tensorflow as tf

    from qatir.reference_math import round_half_away as np_round
    from qatir.tf.kernels import round_half_away

    rng = np.random.default_rng(0)
    x32 = np.concatenate([np.asarray(TIES, np.float32),
                          rng.uniform(-300, 300, 5000).astype(np.float32),
                          (rng.integers(-1000, 1000, 500) + 0.5).astype(np.float32)])
    got = round_half_away(tf.constant(x32)).numpy()
    assert got.dtype == np.float32
    # numpy's helper on float64 copies (float32 inputs and |x| + 0.5 are exact there)
    np.testing.assert_array_equal(got, np_round(x32.astype(np.float64)).astype(np.float32))
    np.testing.assert_array_equal(got[:len(TIES)], [_c_round(v) for v in x32[:len(TIES)]])
    ties = x32[:10]
    assert not np.array_equal(got[:10], np.round(ties)), "must differ from half-to-even"
    x64 = np.concatenate([[0.5, -2.5, 1e9 + 0.5, 0.49999999999999994, 2.0**52 + 1, -(2.0**53)],
                          rng.uniform(-1e9, 1e9, 500)])
    np.testing.assert_array_equal(round_half_away(tf.constant(x64)).numpy(),
                                  [_c_round(v) for v in x64])


def _conv_tie_model():
    """Conv 1x1, 1 -> 6 channels, whose biases sit exactly on ties of their int32 grid."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.full((6, 1, 1, 1), 127 / 128, np.float32)  # weight scale 1/128 (symmetric, narrow)
    b = (np.array([0.5, -0.5, 1.5, -1.5, 2.5, -2.5]) / 8192).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[1, 1])]
    graph = helper.make_graph(
        nodes, "tie", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 1, 1])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_trained_bias_equals_exported_bias_at_a_tie(tmp_path):
    """What is trained is what is deployed: the fake-quant bias is the int32 bias x its scale."""
    import onnx
    from ai_edge_litert.interpreter import Interpreter

    import qatir
    from qatir.quant import refresh_quant

    onnx.save(_conv_tie_model(), str(tmp_path / "tie.onnx"))
    q = qatir.quantize(qatir.load(str(tmp_path / "tie.onnx")))
    qatir.calibrate(q, [{"x": np.zeros((1, 1, 1, 1), np.float32)}], progress=False)
    ranges = {"x": (-2.0, 127 / 64), "y": (-128 / 8192, 127 / 8192)}  # scales 1/64, 1/8192
    for node in q.nodes:
        if node.op == "FAKE_QUANT" and node.attrs["kind"] == "activation":
            src = node.outputs[0].name
            lo, hi = ranges["x" if src.startswith("x") else "y"]
            node.inputs[1].data = np.asarray(lo, np.float32)
            node.inputs[2].data = np.asarray(hi, np.float32)
    refresh_quant(q)
    trained = qatir.run(q, {"x": np.zeros((1, 1, 1, 1), np.float32)})
    got = next(iter(trained.values())).reshape(-1) * 8192  # conv(0) = its fake-quant bias
    np.testing.assert_array_equal(got, [1, -1, 2, -2, 3, -3])  # half away, not [0, 0, 2, -2, 2, -2]

    interp = Interpreter(model_content=qatir.to_tflite(q))
    biases = [d for d in interp.get_tensor_details() if d["dtype"] == np.int32
              and d["shape"].tolist() == [6]]
    assert len(biases) == 1, biases
    d = biases[0]
    exported = interp.get_tensor(d["index"]).astype(np.float64)
    scale = d["quantization_parameters"]["scales"].astype(np.float64)
    np.testing.assert_array_equal(exported, [1, -1, 2, -2, 3, -3])
    np.testing.assert_array_equal(got / 8192, exported * scale)

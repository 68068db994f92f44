"""QAT under tf.distribute.MirroredStrategy on two logical CPUs matches single-device training.

Logical devices must be configured before TensorFlow initializes, so the
comparison runs in a fresh interpreter (independent of test order).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import qatir
sys.path.insert(0, sys.argv[1])
from test_train import _conv_only, classification_data, float_cnn, qat_net

rng = np.random.default_rng(7)
single = qat_net(rng)
mirrored = single.clone()
x, y = classification_data(np.random.default_rng(8), n=384)
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

def train(graph, strategy):
    if strategy is None:
        opt = keras.optimizers.SGD(0.2, momentum=0.5)
    else:
        with strategy.scope():
            opt = keras.optimizers.SGD(0.2, momentum=0.5)
    return qatir.fit(graph, ({"x": x}, y), loss=loss, optimizer=opt, epochs=3, batch_size=64,
                     strategy=strategy, verbose=False)

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
h1 = train(single, None)
h2 = train(mirrored, strategy)
diffs, moved = {}, {}
init = qat_net(np.random.default_rng(7))
for name, t in single.tensors.items():
    if t.is_const:
        diffs[name] = float(np.abs(t.data - mirrored.tensors[name].data).max())
        moved[name] = float(np.abs(t.data - init.tensors[name].data).max())
ranges = [[float(n.inputs[1].data.min()), float(n.inputs[2].data.max())]
          for n in mirrored.nodes if n.op == "FAKE_QUANT" and n.attrs["kind"] != "weight"]
out1 = qatir.run(single, {"x": x})[single.outputs[0].name]
out2 = qatir.run(mirrored, {"x": x})[mirrored.outputs[0].name]
# float training with batch norm under the strategy: moving statistics are updated (mean of replicas)
cnn = float_cnn(np.random.default_rng(3))
xc = np.random.default_rng(4).standard_normal((64, 8, 8, 3)).astype(np.float32)
with strategy.scope():
    opt = keras.optimizers.SGD(0.0)
qatir.fit(cnn, ({"x": xc}, np.zeros((64, 2), np.float32)), loss="mse", optimizer=opt,
          batch_size=64, strategy=strategy, verbose=False)
conv = qatir.run(_conv_only(cnn), {"x": xc})["conv"]
bn_err = float(np.abs(cnn.tensors["mmean"].data - 0.1 * conv.mean((0, 1, 2))).max())
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "loss1": h1["loss"], "bn_err": bn_err,
                  "loss2": h2["loss"], "diffs": diffs, "moved": moved, "ranges": ranges,
                  "out_diff": float(np.abs(out1 - out2).max())}))
"""


def test_mirrored_qat_matches_single_device():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    tests_dir = str(Path(__file__).parent)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, tests_dir], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["replicas"] == 2
    # training did something: weights and EMA ranges moved
    assert res["moved"]["w1"] > 1e-2
    assert res["loss1"][-1] < res["loss1"][0]
    # same data + seed: the two runs agree closely
    for a, b in zip(res["loss1"], res["loss2"]):
        assert abs(a - b) < 1e-4 * max(1.0, abs(a)), (res["loss1"], res["loss2"])
    worst = max(res["diffs"].items(), key=lambda kv: kv[1])
    assert worst[1] < 1e-4, worst
    assert res["out_diff"] < 1e-3
    # batch-norm moving mean = momentum update with the mean of the replicas' batch means
    assert res["bn_err"] < 1e-5

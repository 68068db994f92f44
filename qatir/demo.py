"""``qatir demo``: the whole job on an embedded default, in a couple of minutes.

A small CNN (built here with ``onnx.helper``, written as an .onnx file and
imported like any user's model) is trained in float on scikit-learn's 8x8
handwritten digits, quantized, calibrated, fine-tuned with QAT, written as an
int8 .tflite by qatir's own writer, and run in LiteRT. It prints float,
fake-quant (before and after QAT) and int8 accuracy on held-out digits, and
the files it wrote.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SEED = 0
INPUT = "image"
OUTPUT = "logits"


# --------------------------------------------------------------------------- the model
def digits_cnn_onnx(seed: int = SEED, channels: Sequence[int] = (16, 32, 32)):
    """An ONNX CNN for 1x8x8 digits: 3x (Conv-BN-Relu), global average pool, Gemm -> 10.

    Weights are He-initialised from ``seed``; batch norm starts as identity. The
    batch dimension is dynamic ("N").
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    x, c_in = INPUT, 1
    for i, c_out in enumerate(channels):
        stride = 2 if i == 1 else 1
        w = rng.standard_normal((c_out, c_in, 3, 3)) * np.sqrt(2.0 / (9 * c_in))
        conv = f"conv{i}"
        nodes.append(helper.make_node(
            "Conv", [x, const(f"{conv}.w", w), const(f"{conv}.b", np.zeros(c_out))], [conv],
            kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride, stride], name=conv))
        bn = f"bn{i}"
        nodes.append(helper.make_node(
            "BatchNormalization",
            [conv, const(f"{bn}.gamma", np.ones(c_out)), const(f"{bn}.beta", np.zeros(c_out)),
             const(f"{bn}.mean", np.zeros(c_out)), const(f"{bn}.var", np.ones(c_out))],
            [bn], epsilon=1e-5, name=bn))
        nodes.append(helper.make_node("Relu", [bn], [f"relu{i}"], name=f"relu{i}"))
        x, c_in = f"relu{i}", c_out
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1, name="flatten"))
    w = rng.standard_normal((10, c_in)) * np.sqrt(1.0 / c_in)
    nodes.append(helper.make_node("Gemm", ["flat", const("fc.w", w), const("fc.b", np.zeros(10))],
                                  [OUTPUT], transB=1, name="fc"))
    graph = helper.make_graph(
        nodes, "digits_cnn",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="qatir-demo")
    onnx.checker.check_model(model)
    return model


def load_digits_nchw(seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits as float32 [N,1,8,8] in [0,1]; a seeded 80/20 split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    tr, te = order[:cut], order[cut:]
    return x[tr], y[tr], x[te], y[te]


# --------------------------------------------------------------------------- helpers
def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))


def _dataset(x: np.ndarray, y: np.ndarray, batch: int, seed: int) -> list[tuple[dict, np.ndarray]]:
    order = np.random.default_rng(seed).permutation(len(x))
    return [({INPUT: x[order[i:i + batch]]}, y[order[i:i + batch]])
            for i in range(0, len(x), batch)]


def accuracy_ir(graph, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of the IR executed by TensorFlow (float or fake-quant)."""
    import qatir

    logits = qatir.run(graph, {INPUT: x})[graph.outputs[0].name]
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def accuracy_litert(buf: bytes, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a .tflite run in LiteRT, one image at a time (batch 1 model)."""
    from qatir.compile import run_litert

    outs = run_litert(buf, [{INPUT: x[i:i + 1]} for i in range(len(x))])
    pred = np.array([np.argmax(o[0]) for o in outs])
    return float(np.mean(pred == y))


def _loss():
    from qatir.tf.env import import_tensorflow

    tf = import_tensorflow()
    return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _adam(lr: float):
    from qatir.tf.env import import_tensorflow

    tf = import_tensorflow()
    return tf.keras.optimizers.Adam(lr)


# --------------------------------------------------------------------------- the demo
@dataclass
class DemoResult:
    """Accuracies on the held-out digits, the files written, seconds per stage."""

    float_acc: float
    ptq_acc: float
    qat_acc: float
    int8_acc: float
    test_size: int
    files: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    tflite_bytes: int = 0
    reference_max_lsb: int | None = None
    reference_checked: int = 0

    def format(self) -> str:
        n = self.test_size
        lines = [
            f"accuracy on {n} held-out digits:",
            f"  float (TF execution of the IR)           {self.float_acc:7.2%}",
            f"  fake-quant after calibration (PTQ)       {self.ptq_acc:7.2%}",
            f"  fake-quant after QAT                     {self.qat_acc:7.2%}",
            f"  int8 .tflite in LiteRT                   {self.int8_acc:7.2%}",
            f"int8 model size: {self.tflite_bytes} bytes",
            f"LiteRT vs qatir's integer reference on {self.reference_checked} digits, every "
            f"int8 tensor: max difference {self.reference_max_lsb} LSB"
            + (" (bit-exact)" if self.reference_max_lsb == 0 else ""),
            "time: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())
            + f" (total {sum(self.seconds.values()):.1f}s)",
            "files written:",
        ]
        lines += [f"  {f}" for f in self.files]
        return "\n".join(lines)


def run_demo(out_dir: str | os.PathLike = "qatir-demo", fast: bool = False,
             progress: bool | None = None, echo: Callable[[str], None] = print) -> DemoResult:
    """Train, quantize, QAT, export and check the digits CNN; files go to ``out_dir``."""
    import qatir
    from qatir import draw
    from qatir.compile import StageTimer
    from qatir.fileio import atomic_write

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    float_epochs, qat_epochs = (5, 1) if fast else (15, 3)
    timer = StageTimer()
    files: list[str] = []

    with timer("data"):
        x_tr, y_tr, x_te, y_te = load_digits_nchw()
        x_tr, x_te = _nhwc(x_tr), _nhwc(x_te)
    echo(f"digits: {len(x_tr)} training / {len(x_te)} test images (8x8, 10 classes)")

    with timer("build+import"):
        onnx_path = out / "digits_cnn.onnx"
        atomic_write(onnx_path, digits_cnn_onnx().SerializeToString())
        files.append(str(onnx_path))
        g = qatir.load(onnx_path)
    echo(f"imported {onnx_path}: {len(g.nodes)} IR nodes")

    with timer("float training"):
        echo(f"training in float for {float_epochs} epochs")
        qatir.fit(g, _dataset(x_tr, y_tr, 32, SEED), loss=_loss(), optimizer=_adam(3e-3),
                  epochs=float_epochs, verbose=progress)
        float_acc = accuracy_ir(g, x_te, y_te)
        float_path = out / "digits_float.qatir"
        qatir.save(g, float_path)
        files.append(str(float_path))
    echo(f"float accuracy {float_acc:.2%}")

    with timer("quantize+calibrate"):
        q = qatir.quantize(g)
        qatir.calibrate(q, [b for b, _ in _dataset(x_tr, y_tr, 64, SEED + 1)][:8],
                        progress=progress)
        ptq_acc = accuracy_ir(q, x_te, y_te)
    echo(f"fake-quant accuracy after calibration {ptq_acc:.2%}")

    with timer("QAT"):
        echo(f"quantization-aware training for {qat_epochs} epoch(s)")
        qatir.fit(q, _dataset(x_tr, y_tr, 32, SEED + 2), loss=_loss(), optimizer=_adam(3e-4),
                  epochs=qat_epochs, verbose=progress)
        qat_acc = accuracy_ir(q, x_te, y_te)
        qat_path = out / "digits_qat.qatir"
        qatir.save(q, qat_path)
        files.append(str(qat_path))

    with timer("export+LiteRT"):
        tflite_path = out / "digits_int8.tflite"
        buf = qatir.to_tflite(q, io="int8")
        atomic_write(tflite_path, buf)
        files.append(str(tflite_path))
        int8_acc = accuracy_litert(buf, x_te, y_te)

    with timer("reference check"):
        from qatir.compile import batch_one
        from qatir.parity import parity_report

        checked = 8
        rows = parity_report(buf, batch_one(q), inputs=[{INPUT: x_te[i:i + 1]}
                                                        for i in range(checked)])
        max_lsb = max(r.max_lsb for r in rows)

    with timer("pictures"):
        pic = out / "digits_qat.html"
        atomic_write(pic, draw.to_html(q, title="digits CNN after quantize + QAT").encode())
        pair = out / "quantize_before_after.html"
        draw.draw_diff(g, q, str(pair), title="digits CNN: float (left) and quantized (right)")
        files += [str(pic), str(pair)]
    return DemoResult(float_acc, ptq_acc, qat_acc, int8_acc, len(y_te), files, timer.seconds,
                      len(buf), max_lsb, checked)


def main() -> None:
    """``python -m qatir.demo``: the same as ``qatir demo``."""
    print(run_demo().format())


if __name__ == "__main__":
    main()

"""Quantize a PyTorch model with qatir: export to ONNX, import, calibrate, QAT, int8 .tflite.

Needs PyTorch (``pip install torch``), which qatir itself does not depend on.
This is an example, not a test: run it by hand.

    python examples/pytorch_to_int8.py [--out DIR]

A small MobileNet-style network (depthwise separable blocks, batch norm,
ReLU6, a residual add) is trained briefly in PyTorch on scikit-learn's 8x8
digits, exported with ``torch.onnx.export``, and handed to qatir, which
folds batch norm, inserts fake-quant, calibrates, fine-tunes with QAT and
writes an int8 TFLite file that LiteRT runs. It prints the accuracy of each
step and checks LiteRT against qatir's integer reference.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import qatir  # noqa: E402
from qatir.compile import batch_one  # noqa: E402
from qatir.demo import load_digits_nchw  # noqa: E402
from qatir.parity import parity_report  # noqa: E402


class Block(nn.Module):
    """Depthwise 3x3 -> BN -> ReLU6 -> pointwise 1x1 -> BN, with a residual when shapes allow."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.dw = nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.pw = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.pw(nn.functional.relu6(self.bn1(self.dw(x)))))
        return x + y if self.residual else y


class TinyMobileNet(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU6())
        self.blocks = nn.Sequential(Block(16, 16, 1), Block(16, 32, 2), Block(32, 32, 1))
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))


def train_torch(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int) -> None:
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt)).split(32):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    model.eval()


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, -1) == y))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="pytorch-example")
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    x_tr, y_tr, x_te, y_te = load_digits_nchw()  # NCHW float32, as PyTorch wants
    model = TinyMobileNet()
    train_torch(model, x_tr, y_tr, args.epochs)
    with torch.no_grad():
        torch_acc = accuracy(model(torch.from_numpy(x_te)).numpy(), y_te)

    onnx_path = out / "tiny_mobilenet.onnx"
    torch.onnx.export(model, (torch.from_numpy(x_te[:1]),), str(onnx_path),
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)  # the TorchScript exporter: no onnxscript

    g = qatir.load(onnx_path)  # NCHW in ONNX -> NHWC in the IR
    nhwc_tr, nhwc_te = x_tr.transpose(0, 2, 3, 1), x_te.transpose(0, 2, 3, 1)
    float_acc = accuracy(qatir.run(g, {"image": nhwc_te})["logits"], y_te)

    q = qatir.quantize(g)
    qatir.calibrate(q, [{"image": nhwc_tr[i:i + 64]} for i in range(0, 512, 64)], progress=False)
    ptq_acc = accuracy(qatir.run(q, {"image": nhwc_te})["logits"], y_te)
    import tensorflow as tf

    qatir.fit(q, ({"image": nhwc_tr}, y_tr), loss="sparse_categorical_crossentropy",
              optimizer=tf.keras.optimizers.Adam(1e-4), epochs=2, batch_size=32, verbose=False)
    qat_acc = accuracy(qatir.run(q, {"image": nhwc_te})["logits"], y_te)

    tflite_path = out / "tiny_mobilenet_int8.tflite"
    qatir.save(q, tflite_path)
    qatir.save(q, out / "tiny_mobilenet_qat.qatir")

    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tflite_path))
    interp.allocate_tensors()
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    s, z = inp["quantization"]
    preds = []
    for i in range(len(nhwc_te)):
        xq = np.clip(np.round(nhwc_te[i:i + 1] / s) + z, -128, 127).astype(np.int8)
        interp.set_tensor(inp["index"], xq)
        interp.invoke()
        preds.append(int(np.argmax(interp.get_tensor(outp["index"]))))
    int8_acc = float(np.mean(np.array(preds) == y_te))

    rows = parity_report(tflite_path.read_bytes(), batch_one(q),
                         inputs=[{"image": nhwc_te[i:i + 1]} for i in range(8)])

    print(f"PyTorch float accuracy        {torch_acc:.2%}")
    print(f"qatir float (TF) accuracy     {float_acc:.2%}")
    print(f"fake-quant after calibration  {ptq_acc:.2%}")
    print(f"fake-quant after QAT          {qat_acc:.2%}")
    print(f"int8 .tflite in LiteRT        {int8_acc:.2%}")
    print(f"LiteRT vs integer reference: max {max(r.max_lsb for r in rows)} LSB; "
          f"output SQNR vs float {min(r.sqnr_db for r in rows if r.kind == 'output'):.1f} dB")
    print(f"ops: {sorted({n.op for n in q.nodes})}")
    print(f"wrote {onnx_path}, {tflite_path}, {out / 'tiny_mobilenet_qat.qatir'}")


if __name__ == "__main__":
    main()

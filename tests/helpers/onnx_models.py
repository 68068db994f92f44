"""Reusable ONNX model builders (onnx.helper) for tests: single ops and CNN-style graphs.

Every builder returns an ``onnx.ModelProto`` with random (seeded) weights. The CNN
builders add the exporter-style dynamic-batch plumbing (Shape -> Gather ->
Unsqueeze -> Concat -> Reshape) before the classifier, as PyTorch produces it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 8  # understood by every onnxruntime the tests use


class OnnxBuilder:
    """A small graph builder: ``b.node("Relu", [x])`` returns the output name."""

    def __init__(self, opset: int = 13, seed: int = 0, name: str = "g"):
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._n = 0

    def fresh(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def input(self, name: str, shape: Sequence[int | str | None] | None,
              dtype: int = TensorProto.FLOAT) -> str:
        """Add a graph input; ``shape=None`` declares no shape (unknown rank)."""
        self.inputs.append(helper.make_tensor_value_info(
            name, dtype, None if shape is None else list(shape)))
        return name

    def output(self, name: str, shape: Sequence[int | str | None] | None = None,
               dtype: int = TensorProto.FLOAT) -> str:
        self.outputs.append(helper.make_tensor_value_info(name, dtype, shape))
        return name

    def init(self, arr: Any, base: str = "w") -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def ints(self, values: Sequence[int], base: str = "c") -> str:
        return self.init(np.asarray(values, np.int64), base)

    def node(self, op: str, inputs: Sequence[str], n_out: int = 1, out: str | None = None,
             name: str | None = None, **attrs: Any) -> Any:
        outs = [out] if out and n_out == 1 else [self.fresh(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name or self.fresh(op),
                                           **attrs))
        return outs[0] if n_out == 1 else outs

    def randn(self, *shape: int, scale: float = 0.5) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    # ------------------------------------------------------------ composites
    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        if self.opset >= 13:
            return self.node("Unsqueeze", [x, self.ints(axes)])
        return self.node("Unsqueeze", [x], axes=list(axes))

    def conv(self, x: str, cin: int, cout: int, k: int = 3, s: int = 1, p: int | None = None,
             group: int = 1, bias: bool = True, dilation: int = 1) -> str:
        p = (k // 2) * dilation if p is None else p
        w = self.init(self.randn(cout, cin // group, k, k, scale=1.0 / np.sqrt(cin // group * k * k)))
        ins = [x, w] + ([self.init(self.randn(cout, scale=0.1), "b")] if bias else [])
        return self.node("Conv", ins, kernel_shape=[k, k], strides=[s, s], pads=[p] * 4,
                         group=group, dilations=[dilation, dilation])

    def bn(self, x: str, c: int) -> str:
        gamma = self.rng.uniform(0.5, 1.5, c).astype(np.float32)
        beta = self.randn(c, scale=0.1)
        mean = self.randn(c, scale=0.1)
        var = self.rng.uniform(0.5, 1.5, c).astype(np.float32)
        return self.node("BatchNormalization", [x] + [self.init(v, "bn") for v in
                                                      (gamma, beta, mean, var)], epsilon=1e-5)

    def act(self, x: str, kind: str | None) -> str:
        if kind is None:
            return x
        if kind == "relu":
            return self.node("Relu", [x])
        if kind == "relu6":
            if self.opset >= 11:
                return self.node("Clip", [x, self.init(np.float32(0), "lo"),
                                          self.init(np.float32(6), "hi")])
            return self.node("Clip", [x], min=0.0, max=6.0)
        if kind == "hswish":
            return self.node("HardSwish", [x])
        if kind == "xhsig":  # x * HardSigmoid(x), how older exporters write hard-swish
            return self.node("Mul", [x, self.node("HardSigmoid", [x], alpha=1 / 6, beta=0.5)])
        raise ValueError(kind)

    def cbr(self, x: str, cin: int, cout: int, k: int = 3, s: int = 1, group: int = 1,
            act: str | None = "relu") -> str:
        return self.act(self.bn(self.conv(x, cin, cout, k, s, group=group, bias=False), cout), act)

    def flatten_dynamic(self, x: str) -> str:
        """``x.view(x.size(0), -1)`` as a PyTorch exporter writes it."""
        shape = self.node("Shape", [x])
        n = self.node("Gather", [shape, self.init(np.asarray(0, np.int64), "i")], axis=0)
        cat = self.node("Concat", [self.unsqueeze(n, [0]), self.ints([-1])], axis=0)
        return self.node("Reshape", [x, cat])

    def gemm(self, x: str, k: int, n: int, out: str | None = None) -> str:
        return self.node("Gemm", [x, self.init(self.randn(n, k, scale=1 / np.sqrt(k))),
                                  self.init(self.randn(n, scale=0.1), "b")], out=out, transB=1)

    def model(self) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)],
                              producer_name="qatir-tests")
        m.ir_version = 10 if self.opset >= 21 else 9 if self.opset >= 19 else IR_VERSION
        return m


def single_op_model(op: str, in_shapes: Sequence[Sequence[int | str | None]],
                    consts: Sequence[Any] = (), opset: int = 13, n_out: int = 1,
                    out_shape: Sequence[int | str | None] | None = None,
                    **attrs: Any) -> onnx.ModelProto:
    """One node with graph inputs ``x0, x1, ...`` followed by constant inputs ``consts``.

    A ``None`` in ``consts`` leaves that optional input empty.
    """
    b = OnnxBuilder(opset)
    ins = [b.input(f"x{i}", s) for i, s in enumerate(in_shapes)]
    ins += ["" if c is None else b.init(c, "k") for c in consts]
    while ins and ins[-1] == "":
        ins.pop()
    outs = [f"y{i}" if n_out > 1 else "y" for i in range(n_out)]
    b.nodes.append(helper.make_node(op, ins, outs, name="op", **attrs))
    for o in outs:
        b.output(o, out_shape)
    return b.model()


# ------------------------------------------------------------------ CNNs
def resnet_like(opset: int = 13, size: int = 32, seed: int = 0) -> onnx.ModelProto:
    """Conv/BN/ReLU stem, max pool, two basic blocks (one downsampling), GAP, Gemm."""
    b = OnnxBuilder(opset, seed, "resnet_like")
    x = b.input("input", ["batch", 3, size, size])
    y = b.cbr(x, 3, 8, k=7, s=2)
    y = b.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    for cin, cout, s in ((8, 8, 1), (8, 16, 2)):
        r = b.cbr(y, cin, cout, s=s)
        r = b.bn(b.conv(r, cout, cout, bias=False), cout)
        short = y if s == 1 and cin == cout else b.bn(b.conv(y, cin, cout, k=1, s=s, bias=False),
                                                      cout)
        y = b.node("Relu", [b.node("Add", [r, short])])
    y = b.node("GlobalAveragePool", [y])
    y = b.flatten_dynamic(y)
    b.gemm(y, 16, 10, out="logits")
    b.output("logits", ["batch", 10])
    return b.model()


def _se(b: OnnxBuilder, x: str, c: int, r: int = 4) -> str:
    s = b.node("GlobalAveragePool", [x])
    s = b.node("Relu", [b.conv(s, c, c // r, k=1)])
    s = b.node("HardSigmoid", [b.conv(s, c // r, c, k=1)], alpha=1 / 6, beta=0.5)
    return b.node("Mul", [x, s])


def _inverted(b: OnnxBuilder, x: str, cin: int, exp: int, cout: int, s: int, act: str,
              se: bool) -> str:
    y = b.cbr(x, cin, exp, k=1, act=act)
    y = b.cbr(y, exp, exp, k=3, s=s, group=exp, act=act)
    if se:
        y = _se(b, y, exp)
    y = b.cbr(y, exp, cout, k=1, act=None)
    return b.node("Add", [x, y]) if s == 1 and cin == cout else y


def mobilenet_like(opset: int = 14, size: int = 32, seed: int = 0) -> onnx.ModelProto:
    """MobileNetV2/V3 blocks: depthwise, BN, ReLU6 (Clip), HardSwish, x*HardSigmoid(x), SE."""
    b = OnnxBuilder(opset, seed, "mobilenet_like")
    x = b.input("image", ["N", 3, size, size])
    y = b.cbr(x, 3, 8, s=2, act="hswish" if opset >= 14 else "xhsig")
    y = _inverted(b, y, 8, 16, 8, 1, "relu6", se=False)
    y = _inverted(b, y, 8, 24, 12, 2, "xhsig", se=True)
    y = _inverted(b, y, 12, 24, 12, 1, "hswish" if opset >= 14 else "xhsig", se=True)
    y = b.cbr(y, 12, 32, k=1, act="relu6")
    y = b.node("GlobalAveragePool", [y])
    y = b.flatten_dynamic(y)
    b.gemm(y, 32, 10, out="probs_logits")
    b.node("Softmax", ["probs_logits"], out="probs", axis=1)
    b.output("probs", ["N", 10])
    return b.model()


def inception_like(opset: int = 13, size: int = 24, seed: int = 0) -> onnx.ModelProto:
    """Inception branches (1x1, 3x3, 5x5 as two 3x3, avg-pool + 1x1) and a dense block."""
    b = OnnxBuilder(opset, seed, "inception_like")
    x = b.input("x", ["batch", 3, size, size])
    y = b.cbr(x, 3, 8)
    br1 = b.cbr(y, 8, 4, k=1)
    br2 = b.cbr(b.cbr(y, 8, 4, k=1), 4, 6)
    br3 = b.cbr(b.cbr(b.cbr(y, 8, 4, k=1), 4, 4), 4, 4)
    pool = b.node("AveragePool", [y], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1],
                  count_include_pad=0)
    br4 = b.cbr(pool, 8, 4, k=1)
    y = b.node("Concat", [br1, br2, br3, br4], axis=1)  # 18 channels
    c = 18
    feats = [y]
    for _ in range(3):  # dense block: each layer sees all previous features
        inp = feats[0] if len(feats) == 1 else b.node("Concat", feats, axis=1)
        feats.append(b.cbr(b.act(b.bn(inp, c), "relu"), c, 6, k=3, act=None))
        c += 6
    y = b.node("Concat", feats, axis=1)
    y = b.cbr(y, c, 16, k=1)
    y = b.node("AveragePool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = b.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    y = b.node("GlobalAveragePool", [y])
    y = b.flatten_dynamic(y)
    b.gemm(y, 16, 7, out="scores")
    b.output("scores", ["batch", 7])
    return b.model()


def digits_cnn_onnx(size: int = 8, channels: int = 8, num_classes: int = 10, seed: int = 0,
                    opset: int = 13, batch: int | str | None = "batch") -> onnx.ModelProto:
    """A small CNN for 1 x size x size digit images (e.g. scikit-learn's 8x8 digits).

    conv3x3+BN+ReLU, depthwise3x3+BN+ReLU6, strided conv3x3+BN+ReLU, GAP, Gemm.
    Input ``"input"`` [batch, 1, size, size]; output ``"logits"`` [batch, num_classes].
    """
    b = OnnxBuilder(opset, seed, "digits_cnn")
    x = b.input("input", [batch, 1, size, size])
    y = b.cbr(x, 1, channels)
    y = b.cbr(y, channels, channels, group=channels, act="relu6")
    y = b.cbr(y, channels, 2 * channels, s=2)
    y = b.node("GlobalAveragePool", [y])
    y = b.node("Flatten", [y], axis=1)
    b.gemm(y, 2 * channels, num_classes, out="logits")
    b.output("logits", [batch, num_classes])
    return b.model()


def conv_chain(blocks: int, channels: int = 8, size: int = 8, seed: int = 0) -> onnx.ModelProto:
    """``blocks`` repeats of conv -> relu -> add(residual): 3 nodes per block (for benchmarks)."""
    b = OnnxBuilder(13, seed, "chain")
    y = b.input("x", [1, channels, size, size])
    for _ in range(blocks):
        r = b.node("Relu", [b.conv(y, channels, channels, k=3)])
        y = b.node("Add", [y, r])
    b.node("Identity", [y], out="y")
    b.output("y", [1, channels, size, size])
    return b.model()


def save(model: onnx.ModelProto, path: Any) -> str:
    """Write ``model`` to ``path`` and return the path as a string."""
    onnx.save(model, str(path))
    return str(path)


# ------------------------------------------------------------ comparisons
def to_nhwc(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``model`` in onnxruntime (CPU) on NCHW ``feeds``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def compare_with_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray], tmp_dir: Any = None,
                     rtol: float = 1e-4, input_shapes: dict | None = None,
                     reference: onnx.ModelProto | None = None) -> Any:
    """Import ``model`` with qatir, run it and onnxruntime on ``feeds`` (NCHW) and compare.

    ``reference`` is the model onnxruntime runs instead (e.g. a legacy opset's upgrade,
    which onnxruntime no longer implements).

    Graph inputs/outputs of rank 4 are NHWC in qatir: feeds are transposed in and
    outputs back. The error, relative to the largest reference magnitude, must stay
    within ``rtol``. Returns the imported graph.
    """
    import tempfile
    from pathlib import Path

    import qatir

    with tempfile.TemporaryDirectory(dir=tmp_dir) as d:
        path = save(model, Path(d) / "model.onnx")
        g = qatir.load(path, input_shapes=input_shapes)
    g.verify()
    ref = run_ort(model if reference is None else reference, feeds)
    out = qatir.run(g, {k: to_nhwc(v) for k, v in feeds.items()})
    for vi, r in zip(model.graph.output, ref):
        y = np.asarray(out[vi.name])
        if r.ndim == 4:
            y = y.transpose(0, 3, 1, 2)
        assert y.shape == r.shape, f"{vi.name}: shape {y.shape} != onnxruntime {r.shape}"
        scale = max(float(np.max(np.abs(r))) if r.size else 0.0, 1e-6)
        err = float(np.max(np.abs(y.astype(np.float64) - r))) if r.size else 0.0
        assert err <= rtol * scale, f"{vi.name}: max error {err:.3g} > {rtol} x {scale:.3g}"
    return g


def rnd(*shape: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """Seeded standard-normal float32 data."""
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def ops_of(g: Any) -> list[str]:
    """The op names of an IR graph's nodes, in order."""
    return [n.op for n in g.nodes]


def tiny_onnx(path, batch: str | int = "N") -> str:
    """Conv(3->4) + BatchNorm + Relu + GlobalAveragePool + Flatten + Gemm(4->3), NCHW."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in [
        ("w", rng.standard_normal((4, 3, 3, 3)) * 0.3), ("b", rng.standard_normal(4) * 0.1),
        ("g", 1 + 0.1 * rng.standard_normal(4)), ("be", 0.1 * rng.standard_normal(4)),
        ("m", 0.1 * rng.standard_normal(4)), ("v", 1 + 0.1 * rng.random(4)),
        ("fw", rng.standard_normal((3, 4)) * 0.5), ("fb", np.zeros(3))]]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "be", "m", "v"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return str(path)

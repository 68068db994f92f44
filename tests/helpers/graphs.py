"""Hand-built graphs: float ones for the pass tests (a small MobileNet-like block and
friends) and a small fake-quantized MLP for the training tests."""

from __future__ import annotations

import numpy as np

from qatir.ir import Graph, Tensor
from qatir.quant import refresh_quant


def _w(rng: np.random.Generator, *shape: int, scale: float = 0.3) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def batch_norm(g: Graph, x: Tensor, rng: np.random.Generator, name: str) -> Tensor:
    c = x.shape[-1]
    params = [rng.uniform(0.5, 1.5, c), rng.uniform(-0.5, 0.5, c), rng.uniform(-0.5, 0.5, c),
              rng.uniform(0.2, 2.0, c)]
    consts = [g.const(p.astype(np.float32), name=f"{name}_{k}")
              for p, k in zip(params, ("gamma", "beta", "mean", "var"))]
    return g.add_node("BATCH_NORM", [x] + consts, {"epsilon": 1e-3}, name=name).output


def mobile_block(seed: int = 0, c_in: int = 3, c: int = 8, hw: int = 8) -> Graph:
    """conv→BN→clip(0,6) → depthwise→BN→RELU6 → 1x1 conv→BN → x·hardsigmoid(x)
    → avgpool ∥ maxpool → concat → reshape → FC→BN→RELU → FC → softmax."""
    rng = np.random.default_rng(seed)
    g = Graph("mobile_block")
    x = g.add_input("x", [1, hw, hw, c_in])
    y = g.add_node("CONV_2D", [x, g.const(_w(rng, c, 3, 3, c_in), "w0"),
                               g.const(_w(rng, c), "b0")],
                   {"padding": "SAME"}, name="conv0").output
    y = batch_norm(g, y, rng, "bn0")
    y = g.add_node("CLIP", [y], {"min": 0.0, "max": 6.0}, name="clip0").output
    y = g.add_node("DEPTHWISE_CONV_2D", [y, g.const(_w(rng, 1, 3, 3, c), "w1"),
                                         g.const(_w(rng, c), "b1")],
                   {"padding": "SAME"}, name="dw1").output
    y = batch_norm(g, y, rng, "bn1")
    y = g.add_node("RELU6", [y], name="relu1").output
    y = g.add_node("CONV_2D", [y, g.const(_w(rng, c, 1, 1, c), "w2")], name="conv2").output
    y = batch_norm(g, y, rng, "bn2")
    hs = g.add_node("HARD_SIGMOID", [y], {"alpha": 1.0 / 6.0, "beta": 0.5}, name="hsig").output
    y = g.add_node("MUL", [y, hs], name="hswish").output
    a = g.add_node("AVERAGE_POOL_2D", [y], {"filter": [2, 2], "stride": [2, 2]}, name="avg").output
    m = g.add_node("MAX_POOL_2D", [y], {"filter": [2, 2], "stride": [2, 2]}, name="maxp").output
    y = g.add_node("CONCATENATION", [a, m], {"axis": 3}, name="cat").output
    flat = (hw // 2) * (hw // 2) * 2 * c
    y = g.add_node("RESHAPE", [y], {"new_shape": [1, flat]}, name="flat").output
    y = g.add_node("FULLY_CONNECTED", [y, g.const(_w(rng, 16, flat, scale=0.05), "w3"),
                                       g.const(_w(rng, 16), "b3")], name="fc3").output
    y = batch_norm(g, y, rng, "bn3")
    y = g.add_node("RELU", [y], name="relu3").output
    y = g.add_node("FULLY_CONNECTED", [y, g.const(_w(rng, 10, 16), "w4")], name="fc4").output
    y = g.add_node("SOFTMAX", [y], name="softmax", outputs=["probs"]).output
    g.outputs = [y]
    g.verify()
    return g


def transpose_conv_bn(seed: int = 1) -> Graph:
    """TRANSPOSE_CONV → BN → TANH, and a BN on a graph input (→ MUL+ADD)."""
    rng = np.random.default_rng(seed)
    g = Graph("tconv")
    x = g.add_input("x", [1, 4, 4, 3])
    y = batch_norm(g, x, rng, "bn_in")
    y = g.add_node("TRANSPOSE_CONV", [y, g.const(_w(rng, 5, 3, 3, 3), "wt"),
                                      g.const(_w(rng, 5), "bt")],
                   {"stride": [2, 2], "padding": "SAME"}, name="tconv").output
    y = batch_norm(g, y, rng, "bn_t")
    y = g.add_node("TANH", [y], name="tanh", outputs=["out"]).output
    g.outputs = [y]
    g.verify()
    return g


def chain(n_blocks: int, seed: int = 0, c: int = 4) -> Graph:
    """A long graph of conv→BN→RELU blocks with residual ADDs: about 5 nodes per block."""
    rng = np.random.default_rng(seed)
    g = Graph("chain")
    x = g.add_input("x", [1, 4, 4, c])
    y = x
    for i in range(n_blocks):
        z = g.add_node("CONV_2D", [y, g.const(_w(rng, c, 1, 1, c), f"w{i}"),
                                   g.const(_w(rng, c), f"b{i}")], name=f"conv{i}").output
        z = batch_norm(g, z, rng, f"bn{i}")
        z = g.add_node("RELU", [z], name=f"relu{i}").output
        z = g.add_node("IDENTITY", [z], name=f"id{i}").output
        y = g.add_node("ADD", [y, z], name=f"add{i}").output
    g.outputs = [y]
    return g


# ------------------------------------------------------------ fake-quantized
def fq(g, x, lo, hi, **attrs):
    """Add a FAKE_QUANT with fresh min/max constants; returns its output tensor."""
    lo_t = g.const(np.asarray(lo, np.float32), "fq_min")
    hi_t = g.const(np.asarray(hi, np.float32), "fq_max")
    return g.add_node("FAKE_QUANT", [x, lo_t, hi_t], attrs).output


def wfq(g, w, name):
    """A per-channel symmetric weight FAKE_QUANT on OHWI/[N,K] weights (axis 0)."""
    m = np.abs(w.reshape(w.shape[0], -1)).max(1)
    return fq(g, g.const(w, name), -m, m, axis=0, narrow_range=True, symmetric=True, kind="weight")


def qat_net(rng, act_quantizer="moving_average"):
    """x -> FQ -> FC(FQ w) + b -> RELU -> FQ -> FC(FQ w) -> FQ : a small quantized MLP."""
    g = Graph("qmlp")
    x = g.add_input("x", [None, 6])
    h = fq(g, x, -3.0, 3.0, quantizer=act_quantizer)
    w1 = 0.5 * rng.standard_normal((8, 6)).astype(np.float32)
    h = g.add_node("FULLY_CONNECTED", [h, wfq(g, w1, "w1"), g.const(np.zeros(8, np.float32), "b1")],
                   {"fused_activation": "RELU"}).output
    h = fq(g, h, 0.0, 4.0, quantizer=act_quantizer)
    w2 = 0.5 * rng.standard_normal((3, 8)).astype(np.float32)
    h = g.add_node("FULLY_CONNECTED", [h, wfq(g, w2, "w2"), g.const(np.zeros(3, np.float32), "b2")]).output
    g.outputs = [fq(g, h, -4.0, 4.0, quantizer=act_quantizer)]
    refresh_quant(g)
    return g


def bad_layer_chain(seed: int = 0, hw: int = 8) -> Graph:
    """Four 1x1 convs; ``bad`` has one output channel biased to 400 that the next conv
    ignores (zero weights), so one int8 scale must cover 400 while the signal is ~1: only
    quantizing ``bad``'s output costs the model its accuracy."""
    rng = np.random.default_rng(seed)
    g = Graph("bad_layer_chain")
    x = g.add_input("x", [1, hw, hw, 4])

    def conv(y: Tensor, cin: int, cout: int, name: str, w=None, b=None) -> Tensor:
        w = _w(rng, cout, 1, 1, cin, scale=0.4) if w is None else w
        b = _w(rng, cout, scale=0.1) if b is None else b
        return g.add_node("CONV_2D", [y, g.const(w, f"{name}_w"), g.const(b, f"{name}_b")],
                          {"padding": "SAME"}, name=name).output

    y = conv(x, 4, 8, "c1")
    b = np.zeros(8, np.float32)
    b[0] = 400.0
    y = conv(y, 8, 8, "bad", b=b)
    w = _w(rng, 8, 1, 1, 8, scale=0.4)
    w[:, :, :, 0] = 0.0
    y = conv(y, 8, 8, "c3", w=w)
    g.outputs = [conv(y, 8, 4, "c4")]
    g.verify()
    return g

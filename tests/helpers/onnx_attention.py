"""ONNX attention blocks as torch.onnx.export writes them (onnx.helper, seeded weights).

``attention_block(heads, form)`` is a pre-projection self-attention block with a
residual: x [B, N, D] -> qkv projection -> heads -> softmax(q·kᵀ·s) -> ·v -> merge ->
output projection -> + x. ``form`` picks how the two activation products are spelled:
``"matmul"`` (MatMul with a Transpose of k, as timm's ViT exports) or ``"einsum"``
(Einsum equations, as hand-written attention exports).
"""

from __future__ import annotations

import numpy as np
import onnx

from tests.helpers.onnx_models import OnnxBuilder


def _proj(b: OnnxBuilder, x: str, d_in: int, d_out: int, form: str) -> str:
    """x [B, N, d_in] @ W + bias, as MatMul + Add or as Einsum("bid,jd->bij") + Add."""
    w = b.randn(d_in, d_out, scale=1 / np.sqrt(d_in))
    if form == "einsum":
        y = b.node("Einsum", [x, b.init(np.ascontiguousarray(w.T), "w")], equation="bid,jd->bij")
    else:
        y = b.node("MatMul", [x, b.init(w, "w")])
    return b.node("Add", [y, b.init(b.randn(d_out, scale=0.1), "b")])


def _split_heads(b: OnnxBuilder, t: str, n: int, heads: int, dh: int) -> str:
    """[B, N, H·dh] -> [B, H, N, dh]."""
    r = b.node("Reshape", [t, b.ints([1, n, heads, dh])])
    return b.node("Transpose", [r], perm=[0, 2, 1, 3])


def attention_block(heads: int = 2, form: str = "matmul", n: int = 6, d: int = 8,
                    seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """Self-attention with a residual; input "x" [1, n, d], output "y" [1, n, d]."""
    b = OnnxBuilder(opset, seed=seed, name=f"attn_{form}_{heads}")
    x = b.input("x", [1, n, d])
    dh = d // heads
    q, k, v = (_split_heads(b, _proj(b, x, d, d, form), n, heads, dh) for _ in range(3))
    q = b.node("Mul", [q, b.init(np.float32(dh ** -0.5), "scale")])
    if form == "einsum":
        s = b.node("Einsum", [q, k], equation="bhid,bhjd->bhij")
    else:
        s = b.node("MatMul", [q, b.node("Transpose", [k], perm=[0, 1, 3, 2])])
    p = b.node("Softmax", [s], axis=-1)
    if form == "einsum":
        o = b.node("Einsum", [p, v], equation="bhij,bhjd->bhid")
    else:
        o = b.node("MatMul", [p, v])
    o = b.node("Reshape", [b.node("Transpose", [o], perm=[0, 2, 1, 3]), b.ints([1, n, d])])
    b.node("Add", [_proj(b, o, d, d, form), x], out="y")
    b.output("y", [1, n, d])
    return b.model()


def qkv_block(heads: int = 2, n: int = 6, d: int = 8, seed: int = 0,
              opset: int = 17) -> onnx.ModelProto:
    """timm's ViT spelling: one qkv projection, Reshape [B, N, 3, H, dh], Transpose
    [2, 0, 3, 1, 4], Gather 0/1/2, q·kᵀ (MatMul of a Transpose), softmax, ·v."""
    b = OnnxBuilder(opset, seed=seed, name="attn_qkv")
    x = b.input("x", [1, n, d])
    dh = d // heads
    qkv = _proj(b, x, d, 3 * d, "matmul")
    t = b.node("Transpose", [b.node("Reshape", [qkv, b.ints([1, n, 3, heads, dh])])],
               perm=[2, 0, 3, 1, 4])
    q, k, v = (b.node("Gather", [t, b.init(np.asarray(i, np.int64), "i")], axis=0)
               for i in range(3))
    s = b.node("MatMul", [b.node("Mul", [q, b.init(np.float32(dh ** -0.5), "scale")]),
                          b.node("Transpose", [k], perm=[0, 1, 3, 2])])
    o = b.node("MatMul", [b.node("Softmax", [s], axis=-1), v])
    o = b.node("Reshape", [b.node("Transpose", [o], perm=[0, 2, 1, 3]), b.ints([1, n, d])])
    b.node("Add", [_proj(b, o, d, d, "matmul"), x], out="y")
    b.output("y", [1, n, d])
    return b.model()

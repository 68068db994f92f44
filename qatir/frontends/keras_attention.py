"""Keras MultiHeadAttention as FULLY_CONNECTED, RESHAPE, TRANSPOSE, MUL, BATCH_MATMUL and
SOFTMAX: the ops the ONNX frontend gives torch's attention, which quantize to int8
BATCH_MATMULs with a symmetric right-hand side (bit-exact in LiteRT).

Keras's math (``keras/src/layers/attention/multi_head_attention.py``) for a query
``[B, *Lq, Dq]`` and a key and value ``[B, *Lk, D]`` (the key defaults to the value),
attending over every axis between batch and features (the default ``attention_axes``;
an image ``[B, H, W, C]`` attends over its H·W positions as one axis):

- ``q = query·Wq + bq`` ``[B, T, N, dk]`` (EinsumDense ``abc,cde->abde``), likewise
  ``k`` ``[B, S, N, dk]`` and ``v`` ``[B, S, N, dv]``;
- ``p = softmax_S((q / √dk)·kᵀ)`` ``[B, N, T, S]``, the query scaled before the product;
  dropout is the identity at inference;
- ``out = (p·v)·Wo + bo`` with ``p·v`` ``[B, T, N, dv]`` (EinsumDense ``abcd,cde->abe``),
  the last dims ``output_shape`` (by default ``Dq``).

``use_gate=True`` multiplies ``p·v`` by ``sigmoid(query·Wg + bg)`` before ``Wo``. Nodes
are named after the sublayers: ``mha/query``, ``mha/key``, ``mha/value``, ``mha/scores``
(q·kᵀ and its softmax), ``mha/attention`` (p·v), ``mha/gate``, ``mha/attention_output``.
Masks (``attention_mask``, ``use_causal_mask``, Keras masks, ``sliding_window``), returned
attention scores and other ``attention_axes`` are refused, naming the layer and option.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np

from qatir.frontends.keras_act import activate, softmax
from qatir.frontends.keras_ctx import Ctx, converter, to_numpy
from qatir.frontends.keras_layers import check_dense, fully_connected
from qatir.frontends.keras_misc import reshape, static_tail
from qatir.ir import Tensor

MASKS = ("attention_mask", "query_mask", "value_mask", "key_mask")


def _parts(layer: Any) -> list[Any]:
    """The EinsumDense sublayers, in the order they are applied."""
    gate = [layer._gate_dense] if getattr(layer, "_use_gate", False) else []
    return [layer.query_dense, layer.key_dense, layer.value_dense, *gate, layer.output_dense]


def _bound(dense: Any) -> int:
    """How many leading kernel dims an MHA projection contracts with the input's last dims
    (Keras writes ``{free}{bound},{bound}{out}->{free}{out}``); ValueError for another form."""
    lhs, out = dense.equation.split("->")
    x, w = lhs.split(",")
    n = len(set(x) & set(w))
    if not n or x[-n:] != w[:n] or out != x[:-n] + w[n:]:
        raise ValueError(f"EinsumDense {dense.name!r} has equation {dense.equation!r}")
    return n


def _check_mha(layer: Any) -> str | None:
    if getattr(layer, "_query_dense", None) is None:
        return "not built (call it on a keras.Input first)"
    if getattr(layer, "_sliding_window", None) is not None:
        return f"sliding_window={layer._sliding_window} (a mask)"
    rank = len(layer.value_dense.equation.split(",")[0])
    if tuple(layer.attention_axes) != tuple(range(1, rank - 1)):
        return (f"attention_axes={tuple(layer.attention_axes)} (only the default, every axis "
                "between batch and features)")
    for part in _parts(layer):
        why = check_dense(part)
        if why is None:
            try:
                _bound(part)
            except ValueError as e:
                why = str(e)
        if why:
            return f"its {part.name}: {why}"
    for node in layer._inbound_nodes:
        why = _call_refusal(layer, node.arguments.args, node.arguments.kwargs)
        if why:
            return why
    return None


def _call_refusal(layer: Any, args: Any, kwargs: Any) -> str | None:
    """Why one call of the layer (its arguments) cannot be imported, or None."""
    call = inspect.signature(layer.call).bind(*args, **kwargs).arguments
    masks = [m for m in MASKS if call.get(m) is not None]
    masks += [f"a Keras mask on the {name}" for name in ("query", "value", "key")
              if getattr(call.get(name), "_keras_mask", None) is not None]
    why = [f"{', '.join(masks)} (masked attention)"] if masks else []
    why += [f"{flag}=True" for flag in ("use_causal_mask", "return_attention_scores")
            if call.get(flag)]
    return "; ".join(why) or None


def _project(ctx: Ctx, dense: Any, x: Tensor) -> Tensor:
    """``x [B, *L, K]`` by the EinsumDense ``dense`` (kernel ``[*bound, *out]``, ``K`` the
    bound dims flattened): ``[B, *L, prod(out)]``, its activation applied."""
    w = to_numpy(dense.kernel)
    bound = _bound(dense)
    kernel = w.reshape(math.prod(w.shape[:bound]), -1)
    bias = None if dense.bias is None else to_numpy(dense.bias).reshape(-1)
    return activate(ctx, fully_connected(ctx, x, kernel, bias), dense.activation)


def _heads(ctx: Ctx, layer: Any, dense: Any, x: Tensor, scale: float | None = None) -> Tensor:
    """``x [B, *L, D]`` projected and split into heads, ``[B, N, prod(L), d]``; the query
    is multiplied by ``scale`` before the heads move ahead of the positions."""
    heads, d = (int(s) for s in dense.kernel.shape[-2:])
    positions = math.prod(static_tail(ctx, layer, x, "attention over the positions")[:-1])
    y = reshape(ctx, layer, _project(ctx, dense, x), [positions, heads, d])
    if scale is not None:
        y = ctx.node("MUL", [y, ctx.const(np.float32(scale), "scale")])
    return ctx.node("TRANSPOSE", [y], {"perm": [0, 2, 1, 3]})


@converter("MultiHeadAttention", check=_check_mha)
def _mha(ctx: Ctx, layer: Any, args: list, kwargs: dict) -> Tensor:
    call = inspect.signature(layer.call).bind(*args, **kwargs).arguments
    query, value = call["query"], call["value"]
    key = value if call.get("key") is None else call["key"]
    with ctx.part("query"):
        q = _heads(ctx, layer, layer.query_dense, query, 1.0 / math.sqrt(float(layer.key_dim)))
    with ctx.part("key"):
        k = _heads(ctx, layer, layer.key_dense, key)
    with ctx.part("value"):
        v = _heads(ctx, layer, layer.value_dense, value)
    with ctx.part("scores"):
        p = softmax(ctx, ctx.node("BATCH_MATMUL", [q, k], {"adj_x": False, "adj_y": True}), -1)
    with ctx.part("attention"):
        o = ctx.node("BATCH_MATMUL", [p, v], {"adj_x": False, "adj_y": False})
        o = ctx.node("TRANSPOSE", [o], {"perm": [0, 2, 1, 3]})       # [B, T, N, dv]
        lq = static_tail(ctx, layer, query, "attention over the positions")[:-1]
        o = reshape(ctx, layer, o, [*lq, layer.num_heads * layer.value_dim])
    if getattr(layer, "_use_gate", False):
        with ctx.part("gate"):
            o = ctx.node("MUL", [o, _project(ctx, layer._gate_dense, query)])
    with ctx.part("attention_output"):
        out_dims = [int(s) for s in layer.output_dense.kernel.shape[_bound(layer.output_dense):]]
        y = _project(ctx, layer.output_dense, o)
        return reshape(ctx, layer, y, [*lq, *out_dims]) if len(out_dims) > 1 else y

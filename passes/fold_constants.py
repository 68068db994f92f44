"""fold_constants: evaluate, with numpy, every node whose inputs are all constants."""

from __future__ import annotations

import numpy as np
from qatir.passes.numpy_eval import EVALUATORS

from qatir.ir import Graph
from qatir.pipeline import PassContext, register_pass

#: Results larger than this many elements are left unfolded (they would bloat the model).
MAX_FOLDED_ELEMENTS = 1 << 24


@register_pass("fold_constants")
def fold_constants(graph: Graph, ctx: PassContext) -> bool:
    """Replace all-constant nodes by their value (numpy evaluators; graph outputs stay computed)."""
    outputs = {id(t) for t in graph.outputs}
    dead = []
    for node in graph.nodes:
        fn = EVALUATORS.get(node.op)
        ins = node.inputs
        if fn is None or not ins or any(t is not None and not t.is_const for t in ins):
            continue
        if len(node.outputs) != 1 or id(node.output) in outputs:
            continue
        out = node.output
        try:
            with np.errstate(all="ignore"):
                value = np.asarray(fn(node, *[None if t is None else t.data for t in ins]))
        except (ValueError, IndexError, TypeError, KeyError):
            _note(ctx, node.name, "numpy evaluation failed")
            continue
        if value.size > MAX_FOLDED_ELEMENTS or tuple(value.shape) != out.shape:
            _note(ctx, node.name, f"result shape {list(value.shape)} not foldable")
            continue
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            _note(ctx, node.name, "result is not finite")
            continue
        const = graph.const(value.astype(out.dtype), name=out.name)
        graph.replace_all_uses_with(out, const)
        dead.append(node)
        if ctx.trace is not None:
            ctx.trace.record("fold_constants", node.name, True, "", ctx.pass_name)
    if dead:
        graph.erase_many(dead)
    return bool(dead)


def _note(ctx: PassContext, node: str, reason: str) -> None:
    if ctx.trace is not None:
        ctx.trace.record("fold_constants", node, False, reason, ctx.pass_name)

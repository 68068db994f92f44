"""Layer/instance normalization as the chain of TFLite builtins LiteRT runs in int8.

TFLite has no normalization builtin: the converter writes Keras ``LayerNormalization``
as MEAN, SQUARED_DIFFERENCE, MEAN, ADD ε, RSQRT and MUL/ADD for γ and β, and LiteRT
runs each of them in int8. The frontends (ONNX ``LayerNormalization`` /
``InstanceNormalization``, Keras ``LayerNormalization``) emit that chain at import,
so that the graph the passes quantize, QAT trains and the writer exports is the same
one (every intermediate gets its own fake-quant from the pattern table):

    m = MEAN(x, axes, keep_dims)             μ
    v = MEAN(SQUARED_DIFFERENCE(x, m))       σ² = mean((x - μ)²)
    r = RSQRT(ADD(v, ε))                     1/√(σ² + ε)
    y = MUL(SUB(x, m), r)                    (x - μ)/√(σ² + ε)
    y = ADD(MUL(y, γ), β)                    (γ = 1 and β = 0 are left out)

``SUB(x, m)`` centres before the scale (the converter multiplies ``x·(r·γ)`` and adds
``-μ·r·γ``, which cancels in int8); same op count over the full tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from qatir.ir import Tensor

#: emit(op, inputs, attrs, suffix) -> output tensor; const(array, suffix) -> tensor
Emit = Callable[[str, list, dict, str], Tensor]
Const = Callable[[np.ndarray, str], Tensor]


def normalize(emit: Emit, const: Const, x: Tensor, axes: Sequence[int], epsilon: float,
              gamma: np.ndarray | None = None, beta: np.ndarray | None = None,
              last_suffix: str = "") -> Tensor:
    """``γ·(x - μ)/√(σ² + ε) + β`` over IR ``axes`` of ``x``, as the chain above.

    ``gamma``/``beta`` are float constants already broadcast-aligned to ``x``'s rank and
    layout (or None); the final node's output gets ``last_suffix`` (the frontends' name).
    """
    axes = sorted(int(a) for a in axes)
    has_gamma = gamma is not None and not np.all(gamma == 1.0)
    has_beta = beta is not None and np.any(beta != 0.0)
    reduce = {"axis": axes, "keep_dims": True}
    mean = emit("MEAN", [x], reduce, "__mean")
    sq = emit("SQUARED_DIFFERENCE", [x, mean], {}, "__sqdiff")
    var = emit("MEAN", [sq], reduce, "__var")
    eps = const(np.full((1,) * len(x.shape), epsilon, np.float32), "__eps")
    inv = emit("RSQRT", [emit("ADD", [var, eps], {}, "__var_eps")], {}, "__rsqrt")
    centred = emit("SUB", [x, mean], {}, "__centred")
    steps: list[tuple[str, Any]] = [("MUL", None)]
    if has_gamma:
        steps.append(("MUL", gamma))
    if has_beta:
        steps.append(("ADD", beta))
    y = centred
    for k, (op, param) in enumerate(steps):
        last = k == len(steps) - 1
        other = inv if param is None else const(np.asarray(param, np.float32),
                                                "__gamma" if op == "MUL" else "__beta")
        suffix = last_suffix if last else ("__normed" if param is None else "__scaled")
        y = emit(op, [y, other], {}, suffix)
    return y

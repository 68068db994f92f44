"""Numbers qatir reports about a model: SQNR, ops in a written file, parameter bytes."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from qatir.ir import Graph


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio, 10·log10(|ref|² / |ref - test|²), in dB.

    ``inf`` when the two are identical, ``-inf`` when the reference is all
    zeros and the test is not.
    """
    ref = np.asarray(reference, np.float64).ravel()
    noise = float(np.sum((ref - np.asarray(test, np.float64).ravel()) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def squared_error(got, want) -> float:
    """Sum of squared differences of a model's outputs ``got`` against ``want`` (same
    order; ``want`` reshaped to each output's shape), in float64."""
    return float(sum(np.sum((np.asarray(g, np.float64) - np.reshape(w, np.shape(g))) ** 2)
                     for g, w in zip(got, want)))


def tflite_op_counts(buf: bytes) -> dict[str, int]:
    """Ops by builtin name in a TFLite flatbuffer (read back from the file itself)."""
    import tflite

    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    model = tflite.Model.GetRootAsModel(buf, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        codes.append(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()))
    counts: Counter[str] = Counter()
    for s in range(model.SubgraphsLength()):
        sub = model.Subgraphs(s)
        for j in range(sub.OperatorsLength()):
            code = codes[sub.Operators(j).OpcodeIndex()]
            counts[names.get(code, f"BUILTIN_{code}")] += 1
    return dict(counts)


def float_param_bytes(graph: Graph) -> int:
    """Bytes of the float model's constants (what a float32 file would mostly hold)."""
    return sum(t.data.nbytes for t in graph.tensors.values() if t.data is not None)


def format_size(n: int) -> str:
    """Bytes as KiB or MiB."""
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


def format_db(v: float | None) -> str:
    """An SQNR for people: ``31.2 dB``, ``inf dB (exact)`` or ``n/a``."""
    if v is None or math.isnan(v):
        return "n/a"
    return "inf dB (exact)" if math.isinf(v) and v > 0 else f"{v:.1f} dB"

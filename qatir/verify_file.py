"""``qatir verify``: compare a written .tflite with the quantized IR it was written from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qatir.data import batch_one, batches, load_npz, random_batches
from qatir.errors import QatirError
from qatir.metrics import format_db


@dataclass
class VerifyResult:
    """``qatir verify``: the parity rows and whether LiteRT matched the reference."""

    rows: list[Any]
    tolerance_lsb: int
    resolver: str
    xnnpack: list[tuple[str, bool]]
    inputs: str = ""

    @property
    def max_lsb(self) -> int:
        return max((r.max_lsb for r in self.rows), default=0)

    @property
    def ok(self) -> bool:
        return self.max_lsb <= self.tolerance_lsb

    def format(self) -> str:
        from qatir.parity import format_report

        taken = sum(1 for _, t in self.xnnpack if t)
        out = [r for r in self.rows if r.kind == "output"]
        worst = min((r.sqnr_db for r in out), default=float("nan"))
        verdict = "OK" if self.ok else "MISMATCH"
        return "\n".join([
            f"inputs: {self.inputs}",
            format_report(self.rows),
            f"XNNPACK took {taken}/{len(self.xnnpack)} operators",
            f"{verdict}: LiteRT ({self.resolver} kernels) vs qatir's integer reference: max "
            f"{self.max_lsb} LSB (tolerance {self.tolerance_lsb}); worst output SQNR vs float "
            f"{format_db(worst)}",
        ])


def verify_tflite(tflite_path: str, against: str,
                  input_shapes: Mapping[str, Sequence[int]] | None = None, samples: int = 4,
                  data: str | None = None, resolver: str = "default",
                  tolerance_lsb: int = 0) -> VerifyResult:
    """``qatir verify``: compare a .tflite with the quantized IR it was written from."""
    import qatir
    from qatir.parity import parity_report, xnnpack_coverage

    graph = qatir.load(against, input_shapes=dict(input_shapes or {}) or None)
    if not any(n.op == "FAKE_QUANT" for n in graph.nodes):
        raise QatirError(f"{against}: has no FAKE_QUANT nodes; give the quantized IR the "
                         "model was written from (qatir compile ... --save-ir model.qatir)")
    if data:
        arrays = load_npz(data, graph)
        feeds = batches(arrays, [t.name for t in graph.inputs], 1)[:samples]
        desc = f"{len(feeds)} samples from {data}"
    else:
        feeds = random_batches(graph, samples)
        desc = (f"{samples} random standard-normal samples (SQNR against float means little "
                "on random data; pass --data DATA.npz)")
    with open(tflite_path, "rb") as f:
        buf = f.read()
    rows = parity_report(buf, batch_one(graph), inputs=feeds, resolver=resolver)
    return VerifyResult(rows, tolerance_lsb, resolver, xnnpack_coverage(buf), desc)

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


@dataclass
class ModeVerifyResult:
    """``qatir verify`` of a float-activation file (dynamic range, float16, float32):
    per output, LiteRT against qatir's reference (hybrid kernels / float kernels)."""

    mode: str
    resolver: str
    rows: list[tuple[str, int, int, float, float]]  # name, differing, total, max |diff|, SQNR
    xnnpack: list[tuple[str, bool]]
    inputs: str = ""
    within: bool = True

    @property
    def ok(self) -> bool:
        return self.within

    def format(self) -> str:
        head = f"{'output':<28} {'differing':>14} {'max |diff|':>11} {'SQNR vs float':>14}"
        lines = [f"inputs: {self.inputs}", f"file mode: {self.mode}", head, "-" * len(head)]
        for name, bad, total, diff, db in self.rows:
            lines.append(f"{name[:28]:<28} {f'{bad}/{total}':>14} {diff:>11.3g} "
                         f"{format_db(db):>14}")
        taken = sum(1 for _, t in self.xnnpack if t)
        exact = all(bad == 0 for _, bad, *_ in self.rows)
        verdict = "OK" if self.ok else "MISMATCH"
        lines += [f"XNNPACK took {taken}/{len(self.xnnpack)} operators",
                  f"{verdict}: LiteRT ({self.resolver} kernels) vs qatir's reference: "
                  + ("bit-exact" if exact else "within the float tolerance" if self.ok
                     else "outside the float tolerance")]
        return "\n".join(lines)


def verify_mode_file(buf: bytes, graph: Any, mode: str, feeds: Sequence[Mapping[str, Any]],
                     resolver: str = "default", desc: str = "") -> ModeVerifyResult:
    """LiteRT's outputs of a ``mode`` file against :func:`qatir.modes.run_mode_reference`
    of ``graph`` (the float or quantized model it was written from); SQNR against the
    float32 export."""
    import numpy as np

    import qatir
    from qatir.litert_run import LiteRTRunner
    from qatir.metrics import sqnr_db
    from qatir.modes import run_mode_reference
    from qatir.parity import xnnpack_coverage
    from qatir.reference_float import close

    runner = LiteRTRunner(buf, resolver, threads=1)
    floats = LiteRTRunner(qatir.to_tflite(graph, mode="float"))
    kernels = "reference" if resolver == "ref" else "xnnpack"
    names = [t.name for t in graph.outputs]
    acc = {n: [0, 0, 0.0, [], []] for n in names}
    within = True
    for feed in feeds:
        got = runner.run(feed)
        want = run_mode_reference(graph, dict(feed), mode, kernels)
        flt = floats.run(feed)
        for n, g, f in zip(names, got, flt):
            w = want[n]
            a = acc[n]
            a[0] += int(np.sum(g != w))
            a[1] += int(g.size)
            a[2] = max(a[2], float(np.abs(np.asarray(g, np.float64) - w).max()))
            a[3].append(np.ravel(f))
            a[4].append(np.ravel(g))
            within &= close(g, w)
    rows = [(n, a[0], a[1], a[2], sqnr_db(np.concatenate(a[3]), np.concatenate(a[4])))
            for n, a in acc.items()]
    return ModeVerifyResult(mode, resolver, rows, xnnpack_coverage(buf), desc, within)


def _feeds(graph: Any, samples: int, data: str | None) -> tuple[list, str]:
    if data:
        arrays = load_npz(data, graph)
        feeds = batches(arrays, [t.name for t in graph.inputs], 1)[:samples]
        return feeds, f"{len(feeds)} samples from {data}"
    return random_batches(graph, samples), (
        f"{samples} random standard-normal samples (SQNR against float means little "
        "on random data; pass --data DATA.npz)")


def verify_tflite(tflite_path: str, against: str,
                  input_shapes: Mapping[str, Sequence[int]] | None = None, samples: int = 4,
                  data: str | None = None, resolver: str = "default",
                  tolerance_lsb: int = 0) -> VerifyResult | ModeVerifyResult:
    """``qatir verify``: compare a .tflite with the quantized IR it was written from (an
    int8 file), or with the model a dynamic-range / float16 file was written from."""
    import qatir
    from qatir.modes import file_mode
    from qatir.parity import parity_report, xnnpack_coverage

    graph = qatir.load(against, input_shapes=dict(input_shapes or {}) or None)
    with open(tflite_path, "rb") as f:
        buf = f.read()
    mode = file_mode(buf)
    if mode != "int8":
        feeds, desc = _feeds(batch_one(graph), samples, data)
        return verify_mode_file(buf, batch_one(graph), mode, feeds, resolver, desc)
    if not any(n.op == "FAKE_QUANT" for n in graph.nodes):
        raise QatirError(f"{against}: has no FAKE_QUANT nodes; give the quantized IR the "
                         "model was written from (qatir compile ... --save-ir model.qatir)")
    feeds, desc = _feeds(graph, samples, data)
    rows = parity_report(buf, batch_one(graph), inputs=feeds, resolver=resolver)
    return VerifyResult(rows, tolerance_lsb, resolver, xnnpack_coverage(buf), desc)

"""Calibration at scale: N images at 640×640 through YOLOv8n, qatir against ai-edge-quantizer.

    python tools/bench_calibration.py [--images 512] [--model tools/corpus/models/yolov8n.onnx]

The images are smooth random fields in [0, 1] (two octaves of bilinear-upsampled
uniform noise, one seed per image), synthesized one at a time by a generator, so
the set is never in memory. Each tool runs in its own child process, whose peak
resident set (``VmHWM``) is read at its end:

- ``qatir``: ``qatir.load`` → ``qatir.quantize`` → ``qatir.calibrate`` fed by the
  generator (LiteRT engine, all cores), and once more on one thread over fewer
  images (``--single-images``) to show what the cores bring;
- ``aeq``: ai-edge-quantizer's ``static_wi8_ai8`` recipe, ``Quantizer.calibrate`` on
  qatir's own float TFLite export of the same model (as ``tools/compare_peers.py``
  compares them), all cores. Its ``calibrate`` takes an iterable per signature but
  first counts it with ``len(list(dataset))``, so a one-shot generator would be
  consumed by the count: it is given what it wants, lists of images. Once as one
  list of all of them (``--aeq-chunk 0``; the images then all sit in memory), and
  once in lists of 32 resumed with ``previous_calibration_result``, its own way to
  stream.

Prints the table the README quotes. The aeq child runs under ``tools/.venv-aeq``
(``tools/README.md``); ``--skip-aeq`` leaves it out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODEL = os.path.join(HERE, "corpus", "models", "yolov8n.onnx")
AEQ_PYTHON = os.path.join(HERE, ".venv-aeq", "bin", "python")
SIZE = 640


# ----------------------------------------------------------------------- data (numpy only)
def _upsample(x: np.ndarray, size: int) -> np.ndarray:
    """[c, n, n] -> [c, size, size], bilinear (half-pixel centres, edges clamped)."""
    n = x.shape[1]
    pos = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    f = (pos - lo).astype(np.float32)
    rows = x[:, lo, :] * (1 - f)[None, :, None] + x[:, hi, :] * f[None, :, None]
    return rows[:, :, lo] * (1 - f) + rows[:, :, hi] * f


def image(k: int, size: int = SIZE) -> np.ndarray:
    """Image k: [1, size, size, 3] float32 in [0, 1], the same on every call."""
    rng = np.random.default_rng(1000 + k)
    out = np.zeros((3, size, size), np.float32)
    for cells, weight in ((size // 32, 0.8), (size // 8, 0.2)):
        out += np.float32(weight) * _upsample(rng.random((3, cells, cells), dtype=np.float32),
                                              size)
    np.clip(out, 0, 1, out=out)
    return np.ascontiguousarray(out.transpose(1, 2, 0))[None]


def images(n: int, size: int = SIZE):
    """Generator of n images, one at a time."""
    for k in range(n):
        yield image(k, size)


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------- children
def child_export(model: str, out: str) -> dict:
    """qatir's float TFLite of the model (every FAKE_QUANT stripped), for aeq."""
    import qatir
    from qatir.evaluate import strip_fake_quant

    g = qatir.load(model)
    with open(out, "wb") as f:
        f.write(qatir.to_tflite(strip_fake_quant(qatir.quantize(g))))
    return {"input": g.inputs[0].name, "shape": list(g.inputs[0].shape)}


def child_qatir(model: str, n: int, threads: int | None) -> dict:
    import qatir

    t0 = time.perf_counter()
    q = qatir.quantize(qatir.load(model))
    t1 = time.perf_counter()
    name = q.inputs[0].name
    qatir.calibrate(q, ({name: x} for x in images(n)), progress=False, engine="litert",
                    threads=threads)
    t2 = time.perf_counter()
    return {"setup_s": t1 - t0, "calib_s": t2 - t1, "images": n}


def child_threads(model: str, rounds: int) -> dict:
    """qatir's LiteRT capture on one thread and on all, invoke by invoke in turn (so both
    see the same load from other jobs): median ms per image."""
    import statistics

    import qatir
    from qatir.calibration import range_groups
    from qatir.calibration_taps import Tap
    from qatir.litert_capture import LiteRTCapture
    from qatir.litert_run import all_threads

    q = qatir.quantize(qatir.load(model))
    taps = [Tap(n.name, n.attrs.get("axis"), False) for ns in range_groups(q).values() for n in ns]
    caps = {t: LiteRTCapture(q, taps, threads=t) for t in sorted({1, all_threads()})}
    times: dict[int, list[float]] = {t: [] for t in caps}
    for k in range(rounds + 1):
        xs = (image(k),)
        for t, c in caps.items():
            t0 = time.perf_counter()
            c.run(xs)
            if k:  # the first builds the interpreter
                times[t].append(time.perf_counter() - t0)
    return {"ms": {str(t): 1000 * statistics.median(v) for t, v in times.items()}}


def child_aeq(float_path: str, input_name: str, n: int, chunk: int, threads: int) -> dict:
    import contextlib
    import io

    from ai_edge_quantizer import quantizer, recipe

    t0 = time.perf_counter()
    qt = quantizer.Quantizer(float_path)
    qt.load_quantization_recipe(recipe.static_wi8_ai8())
    t1 = time.perf_counter()
    result = None
    step = chunk or n
    with contextlib.redirect_stdout(io.StringIO()):
        for start in range(0, n, step):
            samples = [{input_name: image(k)} for k in range(start, min(n, start + step))]
            result = qt.calibrate({"serving_default": samples}, result, num_threads=threads)
            del samples
    t2 = time.perf_counter()
    return {"setup_s": t1 - t0, "calib_s": t2 - t1, "images": n, "tensors": len(result)}


def run_child(python: str, args: list[str], timeout: float) -> dict:
    """Run this file as a child (``--child ...``); its JSON result with its peak RSS."""
    cmd = [python, os.path.abspath(__file__), "--child", *args]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    wall = time.perf_counter() - t0
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode or not lines:
        raise RuntimeError(f"{' '.join(cmd[2:])} exited {r.returncode}: "
                           f"{(r.stderr or r.stdout).strip()[-2000:]}")
    res = json.loads(lines[-1])
    res["wall_s"] = wall
    return res


# ----------------------------------------------------------------------- parent
def row(label: str, r: dict) -> str:
    return (f"{label:<42} {r['images']:>6} {r['calib_s']:>9.1f} {r['images'] / r['calib_s']:>9.2f}"
            f" {r['peak_rss_mb']:>9.0f} {r['setup_s']:>8.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--single-images", type=int, default=64,
                    help="images for the one-thread qatir run (0: skip it)")
    ap.add_argument("--aeq-images", type=int, help="images for aeq (default: --images)")
    ap.add_argument("--aeq-chunk", type=int, nargs="+", default=[0, 32],
                    help="samples per aeq.calibrate call, one aeq run each (0: one list of all)")
    ap.add_argument("--skip-aeq", action="store_true")
    ap.add_argument("--threads-only", action="store_true",
                    help="only the interleaved one-thread / all-threads capture timing")
    ap.add_argument("--timeout", type=float, default=7200)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        kind, *rest = a.child
        if kind == "export":
            res = child_export(*rest)
        elif kind == "threads":
            res = child_threads(rest[0], int(rest[1]))
        elif kind == "qatir":
            res = child_qatir(rest[0], int(rest[1]), int(rest[2]) or None)
        else:
            res = child_aeq(rest[0], rest[1], int(rest[2]), int(rest[3]), int(rest[4]))
        res["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(res), flush=True)
        return 0

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"calibration: {a.images} images {SIZE}x{SIZE} (smooth random fields, streamed), "
          f"{os.path.basename(a.model)}, {cores} cores", flush=True)
    th = run_child(sys.executable, ["threads", a.model, "10"], a.timeout)["ms"]
    print("LiteRT capture per image, invokes in turn (median of 10): "
          + ", ".join(f"{t} thread{'s' if t != '1' else ''} {ms:.0f} ms" for t, ms in th.items()),
          flush=True)
    if a.threads_only:
        return 0
    results = []
    qa = run_child(sys.executable, ["qatir", a.model, str(a.images), "0"], a.timeout)
    results.append((f"qatir (LiteRT, {cores} threads)", qa))
    print(row(*results[-1]), flush=True)
    if a.single_images:
        n1 = min(a.single_images, a.images)
        q1 = run_child(sys.executable, ["qatir", a.model, str(n1), "1"], a.timeout)
        results.append(("qatir (LiteRT, 1 thread)", q1))
        print(row(*results[-1]), flush=True)
    if not a.skip_aeq:
        if not os.path.exists(AEQ_PYTHON):
            print(f"aeq: {AEQ_PYTHON} missing (tools/README.md); skipped")
        else:
            with tempfile.TemporaryDirectory() as tmp:
                float_path = os.path.join(tmp, "float.tflite")
                info = run_child(sys.executable, ["export", a.model, float_path], a.timeout)
                n = a.aeq_images or a.images
                for chunk in a.aeq_chunk:
                    ae = run_child(AEQ_PYTHON, ["aeq", float_path, info["input"], str(n),
                                                str(chunk), str(cores)], a.timeout)
                    feed = f"lists of {chunk}" if 0 < chunk < n else "one list"
                    results.append((f"ai-edge-quantizer ({feed}, {cores} threads)", ae))
                    print(row(*results[-1]), flush=True)
    print()
    print(f"{'calibrating':<42} {'images':>6} {'calib s':>9} {'images/s':>9} "
          f"{'peak MB':>9} {'setup s':>8}")
    for label, r in results:
        print(row(label, r))
    print("(calib s: the calibrate call; setup s: load + quantize for qatir, Quantizer() + "
          "recipe for aeq; peak MB: the child process's VmHWM)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

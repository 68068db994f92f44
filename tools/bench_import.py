"""Import and first-run time of the ONNX frontend against graph size (100 to 10,000 nodes).

The graphs are chains of conv -> relu -> add(residual) blocks (tests/helpers/onnx_models.conv_chain).
Import cost should grow linearly: the "us/node" column should stay flat.

    python tools/bench_import.py [--sizes 100,1000,3000,10000] [--no-run]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

import qatir  # noqa: E402
from tests.helpers.onnx_models import conv_chain, save  # noqa: E402


def bench(n_nodes: int, run: bool, repeat: int = 3) -> dict[str, float]:
    """Best-of-``repeat`` import time (and one first-run time) for a ~``n_nodes`` graph.

    The first run includes building and tracing the TF program of the graph.
    """
    model = conv_chain(max(1, n_nodes // 3), channels=4, size=4)
    with tempfile.TemporaryDirectory() as d:
        path = save(model, os.path.join(d, "chain.onnx"))
        times = []
        for _ in range(repeat):
            gc.collect()
            t0 = time.perf_counter()
            g = qatir.load(path)
            times.append(time.perf_counter() - t0)
    row = {"onnx_nodes": len(model.graph.node), "ir_nodes": len(g.nodes), "import_s": min(times)}
    if run:
        x = np.random.default_rng(0).standard_normal((1, 4, 4, 4)).astype(np.float32)
        t0 = time.perf_counter()
        qatir.run(g, {"x": x})
        row["first_run_s"] = time.perf_counter() - t0
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,300,1000,3000,10000")
    ap.add_argument("--no-run", action="store_true", help="skip the first-run (TF) timing")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'onnx nodes':>10} {'IR nodes':>9} {'import s':>9} {'us/node':>8} {'first run s':>12}")
    if not args.no_run:
        bench(3, run=True, repeat=1)  # import TensorFlow and trace once before timing
    rows = []
    for n in sizes:
        r = bench(n, run=not args.no_run)
        rows.append(r)
        per = 1e6 * r["import_s"] / r["onnx_nodes"]
        run_s = f"{r['first_run_s']:12.3f}" if "first_run_s" in r else f"{'-':>12}"
        print(f"{r['onnx_nodes']:10d} {r['ir_nodes']:9d} {r['import_s']:9.4f} {per:8.1f} {run_s}",
              flush=True)
    if len(rows) >= 2:
        small, big = rows[0], rows[-1]
        ratio = (big["import_s"] / big["onnx_nodes"]) / (small["import_s"] / small["onnx_nodes"])
        print(f"per-node import cost, largest vs smallest graph: x{ratio:.2f} "
              "(1.0 = perfectly linear)")


if __name__ == "__main__":
    main()

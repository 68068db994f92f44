"""Pipeline time against graph size: the default pipeline on 100 .. 10,000-node graphs.

The graph is a chain of conv → batch norm → relu → identity → residual add blocks
(5 nodes each, all foldable/fusable), so every built-in pass has work to do.
Prints, per size, the pipeline time without and with the verifier after every
pass, the time of ``graph.clone()`` (what :func:`qatir.quantize` adds), and
microseconds per input node, which stays flat when cost grows linearly.

    python tools/bench_passes.py [--sizes 100,1000,10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from qatir.ir import Graph
from qatir.pipeline import run_pipeline


def chain_graph(n_nodes: int, c: int = 4, seed: int = 0) -> Graph:
    """About ``n_nodes`` nodes: blocks of CONV_2D, BATCH_NORM, RELU, IDENTITY, ADD."""
    rng = np.random.default_rng(seed)
    g = Graph("bench")
    x = y = g.add_input("x", [1, 4, 4, c])
    for i in range(max(1, n_nodes // 5)):
        w = g.const((rng.standard_normal((c, 1, 1, c)) * 0.3).astype(np.float32), f"w{i}")
        b = g.const(np.zeros(c, np.float32), f"b{i}")
        z = g.add_node("CONV_2D", [y, w, b], name=f"conv{i}").output
        bn = [g.const(v.astype(np.float32), f"bn{i}_{k}") for k, v in
              (("g", rng.uniform(0.5, 1.5, c)), ("b", rng.uniform(-0.5, 0.5, c)),
               ("m", rng.uniform(-0.5, 0.5, c)), ("v", rng.uniform(0.5, 1.5, c)))]
        z = g.add_node("BATCH_NORM", [z] + bn, name=f"bn{i}").output
        z = g.add_node("RELU", [z], name=f"relu{i}").output
        z = g.add_node("IDENTITY", [z], name=f"id{i}").output
        y = g.add_node("ADD", [y, z], name=f"add{i}").output
    g.outputs = [y]
    del x
    return g


def _time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def pipeline_time(base: Graph, verify: bool, repeat: int) -> tuple[float, float, int]:
    """Best wall and CPU time of the default pipeline on fresh clones; nodes afterwards.

    CPU time (this process only) is shown too: on a shared, loaded machine it is
    the steadier figure.
    """
    best, best_cpu, after = float("inf"), float("inf"), 0
    for _ in range(repeat):
        g = base.clone()
        t0, c0 = time.perf_counter(), time.process_time()
        run_pipeline(g, "default", verify=verify)
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
        after = len(g.nodes)
    return best, best_cpu, after


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,300,1000,3000,10000")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--detail", action="store_true",
                    help="also print the per-pass report for the largest size")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    run_pipeline(chain_graph(50), "default")  # warm-up: loads plug-ins, imports jsonschema
    print(f"{'nodes':>7} {'after':>7} {'no verify s':>12} {'verify s':>10} {'cpu s':>7} "
          f"{'cpu s(v)':>9} {'clone s':>8} {'us/node':>8} {'us/node(v)':>11}")
    for n in sizes:
        base = chain_graph(n)
        n_in = len(base.nodes)
        t_clone = _time(base.clone, args.repeat)
        t_nov, c_nov, after = pipeline_time(base, False, args.repeat)
        t_ver, c_ver, _ = pipeline_time(base, True, args.repeat)
        print(f"{n_in:>7} {after:>7} {t_nov:>12.3f} {t_ver:>10.3f} {c_nov:>7.3f} {c_ver:>9.3f} "
              f"{t_clone:>8.3f} "
              f"{t_nov / n_in * 1e6:>8.1f} {t_ver / n_in * 1e6:>11.1f}")
    if args.detail:
        g = chain_graph(sizes[-1])
        print(f"\nper pass, {len(g.nodes)} nodes, verifier on:")
        print(run_pipeline(g, "default").format())
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    raise SystemExit(main())

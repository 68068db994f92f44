"""A longer fuzz campaign against the ONNX frontend (the CI test runs 2,000 cases).

Prints cases tried, outcomes by class, the slowest case and any crash (an
exception that is not a QatirError) with its traceback. Exit status 1 on crashes.

    python tools/fuzz_onnx.py [--cases 50000] [--seed 0] [--minutes 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.test_fuzz_onnx import run_campaign  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=None, help="stop after this long")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = run_campaign(args.cases, seed=args.seed,
                       time_limit=None if args.minutes is None else 60 * args.minutes)
    wall = time.perf_counter() - t0
    print(f"cases tried: {res.cases} in {wall:.1f} s ({res.cases / max(wall, 1e-9):.0f}/s)")
    print("outcomes:")
    for outcome, count in res.outcomes.most_common():
        print(f"  {outcome:<28} {count:7d}")
    print(f"slowest case: {res.slowest[0] * 1000:.1f} ms ({res.slowest[1]})")
    seen = set()
    for desc, tb in res.crashes:
        key = tb.strip().splitlines()[-1]
        if key in seen:
            continue
        seen.add(key)
        print(f"\nCRASH after {desc}:\n{tb}")
    print(f"crashes: {len(res.crashes)} ({len(seen)} distinct)")
    return 1 if res.crashes else 0


if __name__ == "__main__":
    sys.exit(main())

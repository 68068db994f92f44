"""Which nodes of qatir's int8 files XNNPACK leaves to LiteRT's builtin kernels, and why.

    python tools/xnn_offload.py [--models a,b,... | --only PATTERN] [--timeout 300]
                                [--json OUT] [--detail] [--variant NAME]

For each corpus model (``tools/corpus/models/manifest.json``), a child process loads it,
quantizes it with the default table, calibrates on 4 inputs (the corpus's real samples
where the model has a task, standard normal otherwise, as ``tools/compare_peers.py``
picks them), writes the int8 file (``io="int8"``) and lists the operators the XNNPACK
delegate did not take with the delegate's check that refuses each
(:func:`qatir.xnn_offload.xnnpack_offload`). No timing. Prints one line per model:
the share of nodes taken and ``op xN (reason)`` per refused op; ``--detail`` adds one
line per refused node with its tensors' scales; ``--variant`` quantizes with one of
``tools/compare_peers.py``'s one-change tables (e.g. ``scale_shift``).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def measure(name: str, variant: str | None = None) -> dict:
    """One model's row: nodes taken, and the refused nodes with reasons."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from compare_peers import load_model, model_feeds, variant_table

    import qatir
    from qatir.xnn_offload import xnnpack_offload

    entry, g, models_dir = load_model(name)
    calib, _, _ = model_feeds(entry, g, models_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatir.quantize(g, table=variant_table(variant) if variant else None)
        qatir.calibrate(q, calib[:4], progress=False)
        buf = qatir.to_tflite(q, io="int8")
    from qatir.parity import xnnpack_share

    share = xnnpack_share(buf)
    rows = xnnpack_offload(buf)
    for r in rows:
        for t in (*r["inputs"], *r["outputs"]):
            t["dtype"] = str(t["dtype"])
    return {"model": name, "nodes": share["nodes"], "macs": share["macs"], "off": rows}


def summary(row: dict) -> str:
    if "error" in row:
        return f"{row['model']:<36} failed: {row['error']}"
    taken, total = row["nodes"]
    groups: dict[tuple[str, str], int] = {}
    for r in row["off"]:
        reason = r["reason"] or "not modelled"
        key = (r["op"], reason.split(",")[0])
        groups[key] = groups.get(key, 0) + 1
    off = "; ".join(f"{op} x{n} ({why})" for (op, why), n in sorted(groups.items())) or "none"
    return f"{row['model']:<36} {taken:>4}/{total:<4} {off}"


def detail(row: dict) -> list[str]:
    def t(d):
        return f"{d['name'][:32]} {d['dtype']} s={d['scale']:.3g} z={d['zero_point']}" + \
            (" const" if d["const"] else "")
    return [f"    #{r['index']} {r['op']}: {' | '.join(t(d) for d in r['inputs'])} -> "
            f"{' | '.join(t(d) for d in r['outputs'])}  [{r['reason']}]" for r in row["off"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated corpus names (default: all)")
    ap.add_argument("--only", help="fnmatch pattern on corpus names")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per model")
    ap.add_argument("--json")
    ap.add_argument("--detail", action="store_true")
    ap.add_argument("--variant", help="a tools/compare_peers.py table variant")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        try:
            row = measure(args.one, args.variant)
        except Exception as e:  # noqa: BLE001 — reported as the row, the run goes on
            row = {"model": args.one, "error": f"{type(e).__name__}: {str(e)[:200]}"}
        print("ROW " + json.dumps(row))
        return
    from compare_peers import MANIFEST

    with open(MANIFEST) as f:
        names = [e["name"] for e in json.load(f)["models"]]
    if args.models:
        names = args.models.split(",")
    elif args.only:
        names = [n for n in names if fnmatch.fnmatch(n, args.only)]
    rows = []
    for name in names:
        try:
            extra = ["--variant", args.variant] if args.variant else []
            proc = subprocess.run([sys.executable, __file__, "--one", name, *extra],
                                  capture_output=True, text=True, timeout=args.timeout)
            found = [ln[4:] for ln in proc.stdout.splitlines() if ln.startswith("ROW ")]
            row = json.loads(found[-1]) if found else {
                "model": name, "error": f"child exit {proc.returncode}: "
                f"{(proc.stderr.strip().splitlines() or [''])[-1][:200]}"}
        except subprocess.TimeoutExpired:
            row = {"model": name, "error": f"timeout after {args.timeout} s"}
        rows.append(row)
        print(summary(row), flush=True)
        if args.detail and "off" in row:
            print("\n".join(detail(row)), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

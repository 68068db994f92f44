"""Sensitivity analysis and suggested recipes on the hardest corpus models.

For each model (``tools/corpus/models``, default: timm_repvgg_a0, tv_efficientnet_v2_s,
tv_fcn_resnet50, tv_efficientnet_b0, mp_pose_landmark_full and the YOLO-style yolov8n; a
model not built yet is skipped with a message), as the corpus has them (torchvision/timm
random init, MediaPipe as published):

1. ``qatir.analyze`` on 4 calibration samples (the corpus' real task samples where it has
   them, else standard normal inputs in the source layout), timed;
2. ``Report.suggest(TARGET, margin_db=MARGIN, check=CHECK)`` (greedy by SQNR gain per
   MAC; each table checked on the calibration samples, by default on the exported file in
   LiteRT, against TARGET + MARGIN);
3. both tables (the default full-int8 one and the suggested one) quantized, calibrated on
   the same samples and exported with float edges; the file run in LiteRT (default
   resolver) on 4 held-out samples and its output SQNR measured against qatir's float run.

Printed per model: full-int8 SQNR of the file, the suggestion's SQNR of the file, its int8
MAC share and int8-or-int16 MAC share, analysis and suggestion seconds, "input q" (the
fake-quant SQNR on the calibration samples with only the graph inputs' FAKE_QUANTs on, at
int8: what int8 graph inputs alone leave, a cap on any recipe that keeps them int8; the
suggestion puts a graph input in int16 when its cap is less than 3 dB above the target plus
margin, and "out of int8" then counts it as an int16 input), the
units taken out of int8 (``--time`` also prints where the analysis' time went: quantize +
calibrate, building the gated program, evaluations; ``--caps`` what caps the suggested
table: its fake-quant SQNR on the calibration samples as it is, with its weights float and
with its activations float). Usage:
``python tools/bench_sensitivity.py [--only NAME] [--target 30] [--margin 0.5]
[--check file|fake_quant] [--time] [--caps]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(HERE, "corpus", "models")
DEFAULT = ["timm_repvgg_a0", "tv_efficientnet_v2_s", "tv_fcn_resnet50", "tv_efficientnet_b0",
           "mp_pose_landmark_full", "yolov8n"]


def _corpus():
    spec = importlib.util.spec_from_file_location("corpus_run", os.path.join(HERE, "corpus",
                                                                               "run.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _feeds(run, entry, g, n: int, seed0: int) -> list[dict]:
    real = run.task_samples(entry, g, os.path.join(MODELS, "data"))
    if real:
        return [dict(f) for f in real[seed0:seed0 + n]]
    by_src = entry["inputs"]
    return [{t.name: run._to_ir(t, f[s["name"]]) for t, s in zip(g.inputs, by_src)}
            for f in (run._random_source_feed(entry, seed=seed0 + i) for i in range(n))]


def _input_only_sqnr(rep) -> float | None:
    """Fake-quant SQNR on the calibration samples with only the graph inputs' FAKE_QUANTs
    on: what int8 graph inputs alone leave (None when the graph has none)."""
    from qatir.sensitivity import sqnrs

    gated = rep.gated
    g8, g16 = np.zeros(len(gated.fqs), np.float32), np.zeros(len(gated.fqs), np.float32)
    idx = [gated.index[id(f)] for node, _, fqs in rep.units if node is None for f in fqs]
    if not idx:
        return None
    g8[idx] = 1.0
    return sqnrs(gated, [(g8, g16)], rep.ref)[0]


def _recipe_caps(g, table, calib) -> dict[str, float]:
    """Fake-quant SQNR on the calibration samples of ``g`` quantized with ``table``: as it is,
    with its weights float (what its activations, int8 or int16, leave; with bias
    correction on, the corrected biases stay, so this falls below "as it is") and with its
    activations float (what its int8 weights leave)."""
    import qatir
    from qatir.sensitivity import float_ref, sqnrs
    from qatir.tf.gated import Gated

    q = qatir.quantize(g, table=table)
    qatir.calibrate(q, calib, progress=False)
    gated = Gated(q, calib)
    w = np.array([f.attrs.get("kind") == "weight" for f in gated.fqs], np.float32)
    zero = np.zeros(len(w), np.float32)
    got = sqnrs(gated, [(np.ones(len(w), np.float32), zero), (1.0 - w, zero), (w, zero)],
                float_ref(g, q, calib))
    return dict(zip(("as_is", "weights_float", "activations_float"), got))


def bench_one(name: str, target: float, margin: float, check: str, caps: bool = False) -> dict:
    import qatir
    from qatir.recipes import file_sqnr

    run = _corpus()
    path = os.path.join(MODELS, f"{name}.entry.json")
    with open(path) as f:
        entry = json.load(f)
    shapes = {s["name"]: s["shape"] for s in entry["inputs"]} if entry["format"] == "onnx" \
        else None
    g = qatir.load(os.path.join(MODELS, entry["path"]), input_shapes=shapes)
    calib = _feeds(run, entry, g, 4, 0)
    evals = _feeds(run, entry, g, 4, 4) or calib
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = qatir.analyze(g, calib)
        t0 = time.perf_counter()
        table = rep.suggest(target, margin_db=margin, check=check)
        t_suggest = time.perf_counter() - t0
    s = rep.suggestion
    from qatir.table import load_table

    return {"model": name, "units": len(rep.rows), "evaluations": rep.evaluations,
            "analysis_s": rep.seconds, "suggest_s": t_suggest,
            "int8_fake_quant_db": rep.full_int8_sqnr_db,
            "int8_file_db": file_sqnr(g, dict(load_table(None).data), calib, evals),
            "suggest_file_db": file_sqnr(g, table, calib, evals),
            "input_only_db": _input_only_sqnr(rep), "checked_db": s.sqnr_db, "check": s.check,
            "checks": s.checks,
            "int8_mac_share": s.int8_mac_share, "int8_or_int16_mac_share": s.int8_or_int16_mac_share,
            "int16": s.int16, "float": s.float, "int16_inputs": s.inputs,
            "reached_on_calib": s.reached,
            "top": [(r.node, r.op, round(r.sqnr_db, 2)) for r in rep.rows[:5]],
            "timing": rep.timing, "caps": _recipe_caps(g, table, calib) if caps else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", help="Model name (repeatable).")
    ap.add_argument("--target", type=float, default=30.0)
    ap.add_argument("--margin", type=float, default=0.5,
                    help="dB above the target the suggestion's checks aim at.")
    ap.add_argument("--check", choices=("file", "fake_quant"), default="file",
                    help="What the suggestion is checked on (calibration samples).")
    ap.add_argument("--json", help="Also write the results here.")
    ap.add_argument("--time", action="store_true",
                    help="Also print where each analysis' time went.")
    ap.add_argument("--caps", action="store_true",
                    help="Also print what caps the suggested table: its fake-quant SQNR with "
                         "its weights float, and with its activations float.")
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.dirname(HERE))
    wanted = args.only or DEFAULT
    missing = [n for n in wanted if not os.path.exists(os.path.join(MODELS, f"{n}.entry.json"))]
    names = [n for n in wanted if n not in missing]
    print(f"# tools/bench_sensitivity.py, {time.strftime('%Y-%m-%d')}, {platform.machine()} "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; target {args.target:g} dB "
          f"(checks on the {args.check.replace('_', '-')} run, {args.margin:g} dB margin); corpus models (torchvision/timm "
          "random init; MediaPipe as published), real task samples where the corpus has them")
    if missing:
        print(f"# skipped, not in tools/corpus/models (build it with tools/corpus/build.py): "
              f"{', '.join(missing)}")
    print(f"{'model':<24} {'int8 dB':>8} {'recipe dB':>9} {'int8 MACs':>9} {'8|16 MACs':>9} "
          f"{'analysis':>9} {'suggest':>8} {'input q':>8}  out of int8")
    results = []
    for name in names:
        r = bench_one(name, args.target, args.margin, args.check, args.caps)
        results.append(r)
        out = f"int16 {len(r['int16'])}, float {len(r['float'])}"
        if r["int16_inputs"]:
            out += f", int16 inputs {len(r['int16_inputs'])}"
        inq = "-" if r["input_only_db"] is None else f"{r['input_only_db']:8.2f}"
        print(f"{name:<24} {r['int8_file_db']:8.2f} {r['suggest_file_db']:9.2f} "
              f"{100 * r['int8_mac_share']:8.1f}% {100 * r['int8_or_int16_mac_share']:8.1f}% "
              f"{r['analysis_s']:8.1f}s {r['suggest_s']:7.1f}s {inq:>8}  {out}", flush=True)
        print(f"    on the calibration samples: fake-quant int8 {r['int8_fake_quant_db']:.2f} dB,"
              f" recipe {r['checked_db']:.2f} dB ({r['check']}, {r['checks']} checks); "
              f"{r['units']} units, "
              f"{r['evaluations']} evaluations; most sensitive: {r['top'][:3]}", flush=True)
        if args.time:
            t = r["timing"]
            print(f"    analysis time: quantize + calibrate {t['quantize']:.1f} s, gated program "
                  f"{t['build']:.1f} s, {r['evaluations']} evaluations {t['evaluate']:.1f} s "
                  f"(up to {t['batch']:.0f} per call)", flush=True)
        if r["caps"]:
            c = r["caps"]
            print(f"    recipe caps (fake-quant, calibration samples): as suggested "
                  f"{c['as_is']:.2f} dB, its weights float {c['weights_float']:.2f} dB, its "
                  f"activations float (int8 weights) {c['activations_float']:.2f} dB", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

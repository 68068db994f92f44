"""Is each ``xnn_forms`` rewrite faster? Interleaved LiteRT latency with and without it.

    python tools/bench_xnn_forms.py [--forms strided_slice_s2d,...] [--models tv_swin_t,...]
                                    [--runs 100]

For each form of :data:`qatir.lowering.xnn_forms.FORMS` and each model (a corpus name from
``tools/corpus/models/manifest.json``, or ``synth:patch_merging`` — Swin-T's first patch
merging, ``x[:, i::2, j::2, :]`` of a 56x56x96 conv output concatenated, then a
FULLY_CONNECTED; ``synth:upsample`` — an FPN step, a 40x40x64 conv output upsampled 2x by
RESIZE_NEAREST_NEIGHBOR and added to an 80x80x64 one), qatir's int8 file is written twice from the same calibrated graph: with
the default forms plus that one ("on") and without it ("off"). Printed: the nodes
XNNPACK takes in each, and the median invoke time on LiteRT's default path (XNNPACK, 1
thread, batch 1), the files taking turns invoke by invoke; "off again" is a second
interpreter of the "off" file, so ``off again / off`` is the row's noise floor. A form is
worth its place when ``on / off`` is at or below 1 beyond that noise. Each model runs in a
child process.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
MODELS = {"strided_slice_s2d": ["synth:patch_merging", "tv_swin_t", "ddddocr_common_det"],
          "nearest_as_d2s": ["synth:upsample", "ddddocr_common_det"],
          "gather_as_slices": ["tv_swin_t"], "squeeze_as_reshape": ["ppocrv4_rec"], "maxpool_pad_at_zero": ["tv_densenet121"],
          "pad_as_concat": ["timm_efficientvit_b0"], "avgpool_as_dwconv": ["keras_nasnet_mobile"],
          "concat_tree": ["tv_densenet121"]}  # clamp_as_add: DenseNet-121 gives the same file with and without it


def _synth_patch_merging():
    import numpy as np

    from qatir.ir import Graph

    g = Graph("patch_merging")
    x = g.add_input("x", [1, 56, 56, 96])
    rng = np.random.default_rng(0)
    w = g.const(rng.normal(0, 0.1, (96, 1, 1, 96)).astype(np.float32), name="w")
    b = g.const(np.zeros(96, np.float32), name="b")
    y = g.add_node("CONV_2D", [x, w, b], {"padding": "VALID"}, name="conv").output
    parts = [g.add_node("STRIDED_SLICE", [y], {"begin": [0, i, j, 0],
                                               "end": [1, 56, 56, 96],
                                               "strides": [1, 2, 2, 1]}).output
             for i, j in ((0, 0), (1, 0), (0, 1), (1, 1))]
    cat = g.add_node("CONCATENATION", parts, {"axis": 3}).output
    fw = g.const(rng.normal(0, 0.05, (192, 384)).astype(np.float32), name="fw")
    fb = g.const(np.zeros(192, np.float32), name="fb")
    g.outputs = [g.add_node("FULLY_CONNECTED", [cat, fw, fb], {"keep_num_dims": True}).output]
    g.verify()
    calib = [{"x": rng.normal(size=(1, 56, 56, 96)).astype(np.float32)} for _ in range(4)]
    return g, calib


def _conv1x1(g, x, ch: int, rng, name: str):
    import numpy as np

    w = g.const(rng.normal(0, 0.1, (ch, 1, 1, x.shape[3])).astype(np.float32), name=f"{name}_w")
    b = g.const(np.zeros(ch, np.float32), name=f"{name}_b")
    return g.add_node("CONV_2D", [x, w, b], {"padding": "VALID"}, name=name).output


def _synth_upsample():
    import numpy as np

    from qatir.ir import Graph

    g = Graph("upsample")
    rng = np.random.default_rng(1)
    lo, hi = g.add_input("lo", [1, 40, 40, 64]), g.add_input("hi", [1, 80, 80, 64])
    up = g.add_node("RESIZE_NEAREST_NEIGHBOR", [_conv1x1(g, lo, 64, rng, "c1")],
                    {"size": [80, 80]}).output
    g.outputs = [g.add_node("ADD", [up, _conv1x1(g, hi, 64, rng, "c2")]).output]
    g.verify()
    calib = [{"lo": rng.normal(size=(1, 40, 40, 64)).astype(np.float32),
              "hi": rng.normal(size=(1, 80, 80, 64)).astype(np.float32)} for _ in range(4)]
    return g, calib


def _graph(name: str):
    if name == "synth:patch_merging":
        return _synth_patch_merging()
    if name == "synth:upsample":
        return _synth_upsample()
    from compare_peers import load_model, model_feeds

    entry, g, models_dir = load_model(name)
    calib, _, _ = model_feeds(entry, g, models_dir)
    return g, calib[:4]


def measure(form: str, name: str, runs: int) -> dict:
    """One row: node counts and latency of the file with ``form`` and without it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import qatir
    from qatir.bench import interleaved_latency_ms
    from qatir.parity import xnnpack_share

    forms = importlib.import_module("qatir.lowering.xnn_forms")
    g, calib = _graph(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatir.quantize(g)
        qatir.calibrate(q, calib, progress=False)
        default = forms.DEFAULT_FORMS
        bufs = {}
        try:
            for label, chosen in (("on", default | {form}), ("off", default - {form})):
                forms.DEFAULT_FORMS = chosen  # the lowering step reads it at each call
                bufs[label] = qatir.to_tflite(q, io="int8")
        finally:
            forms.DEFAULT_FORMS = default
        on, off = bufs["on"], bufs["off"]
    ms = interleaved_latency_ms({"on": on, "off": off, "off again": off}, runs=runs)
    row = {"form": form, "model": name, "ms": ms, "ratio": ms["on"] / ms["off"],
           "noise": ms["off again"] / ms["off"]}
    for label, buf in (("on", on), ("off", off)):
        share = xnnpack_share(buf)
        row[label] = {"nodes": share["nodes"], "off": share["off"]}
    return row


def format_row(r: dict) -> str:
    if "error" in r:
        return f"{r['form']:<20}{r['model']:<24}failed: {r['error']}"
    nodes = " ".join(f"{k} {v['nodes'][0]}/{v['nodes'][1]}" for k, v in
                     (("on", r["on"]), ("off", r["off"])))
    return (f"{r['form']:<20}{r['model']:<24}{r['ms']['on']:>9.3f}{r['ms']['off']:>9.3f}"
            f"{r['ratio']:>7.3f}{r['noise']:>7.3f}  XNNPACK nodes {nodes}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--forms", default=",".join(MODELS))
    ap.add_argument("--models", help="comma-separated models for every form (default: "
                                     "each form's own list)")
    ap.add_argument("--runs", type=int, default=100, help="invokes per file")
    ap.add_argument("--json")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        try:
            row = measure(*args.one, args.runs)
        except Exception as e:  # noqa: BLE001 — reported as the row, the run goes on
            row = {"form": args.one[0], "model": args.one[1],
                   "error": f"{type(e).__name__}: {str(e)[:200]}"}
        print("ROW " + json.dumps(row))
        return
    print(f"{'form':<20}{'model':<24}{'on ms':>9}{'off ms':>9}{'on/off':>7}{'noise':>7}")
    rows = []
    for form in args.forms.split(","):
        for name in (args.models.split(",") if args.models else MODELS.get(form, [])):
            proc = subprocess.run([sys.executable, __file__, "--one", form, name,
                                   "--runs", str(args.runs)], capture_output=True, text=True)
            found = [ln[4:] for ln in proc.stdout.splitlines() if ln.startswith("ROW ")]
            row = json.loads(found[-1]) if found else {
                "form": form, "model": name, "error": f"child exit {proc.returncode}: "
                f"{(proc.stderr.strip().splitlines() or [''])[-1][:200]}"}
            rows.append(row)
            print(format_row(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

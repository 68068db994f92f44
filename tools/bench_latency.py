"""Deployed speed: qatir's int8 file against the best other tool's, on LiteRT's default path.

    python tools/bench_latency.py [--models keras:ResNet50,tv_regnet_y_400mf,...] [--runs 60]

For each model, qatir's int8 file (float I/O edges) and the other tool's int8 file of the
same float model, built from the same 8 calibration inputs:

- a Keras application (``keras:NAME``; ``weights=None``, 224x224, batch-norm statistics
  set from synthetic images, as ``tools/bench_keras.py`` does): ``qatir.load(model)``
  against ``tf.lite.TFLiteConverter`` PTQ (int8 builtins);
- a corpus ONNX/TFLite model (``tools/corpus/models``): qatir against ai-edge-quantizer's
  static int8 recipe on qatir's own float export of the same graph (its own venv,
  ``tools/.venv-aeq``; ``tools/compare_peers.py`` does the quantizing).

Printed per model: the share of nodes and MACs XNNPACK takes in each file, the ops it
leaves to the builtin kernels, and LiteRT latency (XNNPACK, 1 thread, batch 1): the files
take turns invoke by invoke, the other file runs twice so its ratio to itself is the
noise floor of that row. Each model runs in a child process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
MODELS = ["keras:MobileNetV3Small", "keras:EfficientNetB0", "keras:ResNet50",
          "keras:DenseNet121", "tv_mobilenet_v3_large", "tv_regnet_y_400mf",
          "tv_resnext50_32x4d"]


def keras_files(name: str, workdir: str) -> tuple[bytes, bytes, str]:
    """(qatir's file, the converter's file, the other tool's name) for a Keras application."""
    import numpy as np
    from bench_keras import build, converter_int8, images, qatir_int8, to_model_range

    stats = to_model_range(name, images(32, 1))
    model = build(name, stats)
    calib = to_model_range(name, images(8, 2))
    qatir_buf = qatir_int8(model, calib)[0]
    other = converter_int8(model, calib.astype(np.float32))[0]
    return qatir_buf, other, "TFLite converter PTQ"


def corpus_files(name: str, workdir: str) -> tuple[bytes, bytes, str]:
    """(qatir's file, ai-edge-quantizer's file, its name) for a corpus model."""
    import warnings

    from compare_peers import aeq_quantize, load_model, model_feeds

    import qatir
    from qatir.evaluate import strip_fake_quant

    entry, g, models_dir = load_model(name)
    calib, _, _ = model_feeds(entry, g, models_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatir.quantize(g)
        float_path = os.path.join(workdir, f"{name}.float.tflite")
        with open(float_path, "wb") as f:
            f.write(qatir.to_tflite(strip_fake_quant(q)))
        qatir.calibrate(q, calib, progress=False)
        qatir_buf = qatir.to_tflite(q, io="float")
    other = aeq_quantize(float_path, calib, os.path.join(workdir, f"{name}.aeq.tflite"), 900)
    return qatir_buf, other, "ai-edge-quantizer static int8"


def measure(name: str, runs: int) -> dict:
    """One model's row (see the module doc)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from qatir.bench import interleaved_latency_ms
    from qatir.parity import xnnpack_share

    with tempfile.TemporaryDirectory() as tmp:
        if name.startswith("keras:"):
            qatir_buf, other, tool = keras_files(name.split(":", 1)[1], tmp)
        else:
            qatir_buf, other, tool = corpus_files(name, tmp)
    ms = interleaved_latency_ms({"qatir": qatir_buf, "other": other, "other again": other},
                                runs=runs)
    row = {"model": name, "other_tool": tool, "ms": ms,
           "ratio": ms["qatir"] / ms["other"], "noise": ms["other again"] / ms["other"]}
    for label, buf in (("qatir", qatir_buf), ("other", other)):
        share = xnnpack_share(buf)
        row[label] = {"nodes": share["nodes"], "macs": share["macs"], "off": share["off"]}
    return row


def _pct(pair) -> str:
    taken, total = pair
    return f"{100 * taken / total:.0f}%" if total else "-"


def format_rows(rows: list[dict]) -> str:
    head = (f"{'model':<24}{'other tool':<32}{'qatir ms':>9}{'other ms':>9}{'ratio':>7}"
            f"{'noise':>7}  {'XNNPACK nodes/MACs qatir':<26}{'other':<12}builtin-kernel ops "
            "(qatir | other)")
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['model']:<24}failed: {r['error']}")
            continue
        q, o = r["qatir"], r["other"]
        off = (", ".join(f"{k} x{v}" for k, v in sorted(q["off"].items())) or "none") + " | " + \
            (", ".join(f"{k} x{v}" for k, v in sorted(o["off"].items())) or "none")
        lines.append(f"{r['model']:<24}{r['other_tool']:<32}{r['ms']['qatir']:>9.2f}"
                     f"{r['ms']['other']:>9.2f}{r['ratio']:>7.2f}{r['noise']:>7.2f}  "
                     f"{_pct(q['nodes']) + ' / ' + _pct(q['macs']):<26}"
                     f"{_pct(o['nodes']) + ' / ' + _pct(o['macs']):<12}{off}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--runs", type=int, default=60, help="invokes per file")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.one:
        try:
            row = measure(args.one, args.runs)
        except Exception as e:  # noqa: BLE001 — reported as the row, the run goes on
            row = {"model": args.one, "error": f"{type(e).__name__}: {str(e)[:200]}"}
        print("ROW " + json.dumps(row))
        return
    rows = []
    for name in args.models.split(","):
        proc = subprocess.run([sys.executable, __file__, "--one", name, "--runs", str(args.runs)],
                              capture_output=True, text=True)
        found = [ln[4:] for ln in proc.stdout.splitlines() if ln.startswith("ROW ")]
        rows.append(json.loads(found[-1]) if found else
                    {"model": name, "error": f"child exit {proc.returncode}: "
                     f"{(proc.stderr.strip().splitlines() or [''])[-1][:200]}"})
        print(format_rows(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(format_rows(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

"""qatir's post-training int8 vs ai-edge-quantizer's, on the same float file and data.

    python tools/compare_peers.py [--models a,b,...] [--table T] [--timeout 900]
                                  [--tests 2] [--variant V ...] [--json OUT] [--workdir DIR]

For each corpus model (``tools/corpus/models/manifest.json``; default: the
CNN subset in :data:`DEFAULT_MODELS`), a child process

1. loads it with qatir, quantizes it (``--table``, default ``int8_default``) and
   writes qatir's own float export of that graph (``strip_fake_quant``, the
   graph calibration runs) as ``MODEL.float.tflite``;
2. calibrates qatir on 8 inputs and writes qatir's int8 file (float edges);
3. runs ai-edge-quantizer (static int8 recipe, ``recipe.static_wi8_ai8``) on the
   same float file with the same 8 inputs, in its own venv
   (``tools/.venv-aeq``, see ``tools/README.md``) via ``tools/_aeq_quantize.py``;
4. measures, on 2 further inputs (``--tests``), each int8 file's output SQNR (dB) against the
   float file (all run by LiteRT's default resolver): the outputs of both inputs
   concatenated, as ``tools/corpus/run.py`` measures;
5. where qatir is behind by more than ``--behind`` dB, runs qatir's parity
   report (``qatir.parity.parity_report``) on the test inputs and names the
   first tensor, in graph order, whose SQNR is more than ``--behind`` dB below
   the same tensor in ai-edge-quantizer's file (tensors matched by name; both
   files keep the float file's names).

Inputs: models with a real task (``task`` in the entry) use the corpus's real
samples (8 for calibration, the next 2 for the test: crops of the corpus's two photos,
or its 16 text lines, so at most 8 tests there); the others get standard normal
inputs (seeds 0-7 calibrate, 100-101 test, 100-115 with ``--tests 16``), as the
corpus run does.
Prints one table; ``--json`` also writes the per-model results.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "corpus"))
MANIFEST = os.path.join(HERE, "corpus", "models", "manifest.json")
AEQ_PYTHON = os.path.join(HERE, ".venv-aeq", "bin", "python")
AEQ_SCRIPT = os.path.join(HERE, "_aeq_quantize.py")
DEFAULT_MODELS = ["tv_mobilenet_v3_large", "timm_lcnet_050", "tv_lraspp_mobilenet_v3_large",
                  "timm_repvgg_a0", "tv_resnet18", "tv_mobilenet_v2", "tv_efficientnet_b0",
                  "timm_mixnet_s", "mp_face_landmark", "mp_hand_landmark_lite", "ppocrv4_det",
                  "ppocr_mobile_v2_cls", "ppocrv4_rec"]
N_CALIB, N_TEST = 8, 2
#: one-change variants of the table (``--variant``): what each technique is worth alone
VARIANTS: dict[str, dict] = {
    "fc_per_tensor": {"per_channel_axis": lambda axes: {k: v for k, v in axes.items()
                                                        if k != "FULLY_CONNECTED"}},
    "bias_correction": {"bias_correction": True},
    "bias_correction_auto": {"bias_correction": "auto"},
    "no_bias_correction": {"bias_correction": False},
    "gptq": {"weight_rounding": "gptq"},
    "cle": {"fusions": {"name": "cle", "kind": "cross_layer_equalization",
                        "ops": ["DEPTHWISE_CONV_2D", "CONV_2D"], "note": "W1/s, b1/s, W2*s"}},
    "no_cle": {"no_fusion": "cross_layer_equalization"},
    "no_scale_shift": {"no_fusion": "scale_shift"},
    "scale_shift": {"fusions": {"name": "fold_scale_shift", "kind": "scale_shift",
                                "ops": ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED",
                                        "TRANSPOSE_CONV"],
                                "note": "op(x)·s = op'(x); op(x) + t: b' = b + t"}},
    "percentile": {"activation": "percentile"},
    "mse": {"activation": "mse"},
    "moving_average": {"activation": "moving_average"},
    "minmax": {"activation": "minmax"},
    # ai-edge-quantizer's range rule (EMA of per-sample min/max, decay 0.95, started at the
    # first sample's): on every activation, or on the graph inputs only
    "ema": {"activation": "ema"},
    "input_ema": {"input": "ema"},
    # each range's rule (minmax or ema) chosen by the held-out output error (qatir.auto_range)
    "auto": {"activation": "auto"},
    "auto_no_refine": {"activation": "auto", "quantizer_options": {"auto": {"refine": 0}}},
    "auto_one_fold": {"activation": "auto", "quantizer_options": {"auto": {"folds": 1}}},
    # each range minmax or percentile (99.99), chosen by the held-out output error
    "auto_percentile": {"activation": "auto",
                        "quantizer_options": {"auto": {"candidates": ["minmax", "percentile"]}}},
    # PRELU float, as ai-edge-quantizer 0.10.0 leaves it (LiteRT's int8 PRELU has one alpha scale)
    "float_prelu": {"exclude": {"ops": ["PRELU"]}},
    # a CONCATENATION input other nodes read too keeps its own range (requantized at export)
    "requant_shared": {"constraints": {"requantize_shared_inputs": ["CONCATENATION"]}},
    "tie_shared": {"constraints": {"requantize_shared_inputs": []}},
    "input_moving_average": {"input": "moving_average"},
    "input_mse": {"input": "mse"},
    "input_percentile": {"input": "percentile"},
}
BEHIND_DB = 0.5


# =========================================================================== child
def model_feeds(entry: dict, g, models_dir: str, n_test: int = N_TEST
                ) -> tuple[list[dict], list[dict], str]:
    """(calibration feeds, test feeds, what they are), keyed by the IR's input names.
    Real samples give at most what the data holds (text lines: 16, so 8 tests)."""
    import run as corpus  # tools/corpus/run.py

    real = corpus.task_samples(entry, g, os.path.join(models_dir, "data"),
                               crops=N_CALIB + n_test)
    if real and len(real) > N_CALIB:
        return real[:N_CALIB], real[N_CALIB:N_CALIB + n_test], "real"
    by_src = [s["name"] for s in entry["inputs"]]

    def feed(seed: int) -> dict:
        src = corpus._random_source_feed(entry, seed)
        return {t.name: corpus._to_ir(t, src[s]) for t, s in zip(g.inputs, by_src)}

    return ([feed(i) for i in range(N_CALIB)], [feed(100 + i) for i in range(n_test)],
            "normal")


def set_inputs(it, feed: dict) -> None:
    """Set each input by name; an int8 input (ai-edge-quantizer's files have them) gets the
    float feed quantized with its parameters, as LiteRT's QUANTIZE would."""
    import numpy as np

    for d in it.get_input_details():
        x = np.asarray(feed[d["name"]], np.float32).reshape(d["shape"])
        if d["dtype"] == np.int8:
            scale, zp = d["quantization"]
            x = np.clip(np.round(x / np.float32(scale)) + zp, -128, 127).astype(np.int8)
        it.set_tensor(d["index"], x)


def tensor_values(buf: bytes, feed: dict) -> dict:
    """Every tensor LiteRT (default resolver) computes for ``feed``, as float (int8 ones
    dequantized with their per-tensor parameters), by name."""
    import numpy as np

    from qatir.litert_run import interpreter

    it = interpreter(buf, "default", threads=1, preserve_all=True)
    set_inputs(it, feed)
    it.invoke()
    out = {}
    for d in it.get_tensor_details():
        scale, zp = d["quantization"]
        kind = np.dtype(d["dtype"]).kind
        if kind not in "fi" or d["dtype"] == np.int32 and scale:
            continue
        try:
            v = it.get_tensor(d["index"])
        except ValueError:
            continue
        if kind == "f":
            out[d["name"]] = v.astype(np.float64)
        elif scale and d["dtype"] == np.int8:
            out[d["name"]] = (v.astype(np.float64) - zp) * scale
    return out


def outputs_of(buf: bytes, feed: dict) -> list:
    """The file's outputs (dequantized) for ``feed``, in the file's order."""
    import numpy as np

    from qatir.litert_run import interpreter

    it = interpreter(buf, "default", threads=1)
    set_inputs(it, feed)
    it.invoke()
    res = []
    for d in it.get_output_details():
        y = it.get_tensor(d["index"]).astype(np.float64)
        scale, zp = d["quantization"]
        res.append((y - zp) * scale if d["dtype"] != np.float32 and scale else y)
    return res


def output_sqnr(float_buf: bytes, buf: bytes, tests: list[dict]) -> float:
    """SQNR of ``buf``'s outputs against the float file's, all outputs and tests joined."""
    import numpy as np

    from qatir.metrics import sqnr_db

    ref, got = [], []
    for feed in tests:
        ref += [a.ravel() for a in outputs_of(float_buf, feed)]
        got += [a.ravel() for a in outputs_of(buf, feed)]
    return float(sqnr_db(np.concatenate(ref), np.concatenate(got)))


def first_behind(q, qatir_buf: bytes, aeq_buf: bytes, float_buf: bytes, tests: list[dict],
                 behind: float) -> dict | None:
    """The first tensor (graph order) where qatir's parity-report SQNR is more than
    ``behind`` dB below ai-edge-quantizer's for the same tensor."""
    import numpy as np

    from qatir.metrics import sqnr_db
    from qatir.parity import parity_report

    rows = {r.tensor: r for r in parity_report(qatir_buf, q, inputs=tests, fake_quant=False,
                                               reference_samples=0)}
    f_vals = [tensor_values(float_buf, t) for t in tests]
    a_vals = [tensor_values(aeq_buf, t) for t in tests]
    for node in q.nodes:
        if node.op == "FAKE_QUANT":
            continue
        for t in node.outputs:
            r = rows.get(t.name)
            if r is None or not all(t.name in v for v in f_vals + a_vals):
                continue
            a = sqnr_db(np.concatenate([v[t.name].ravel() for v in f_vals]),
                        np.concatenate([v[t.name].ravel() for v in a_vals]))
            if r.sqnr_db < a - behind:
                return {"tensor": t.name, "node": node.name, "op": node.op,
                        "qatir_db": round(float(r.sqnr_db), 2), "aeq_db": round(float(a), 2)}
    return None


def file_tensors(buf: bytes) -> tuple[dict, list]:
    """(tensor details by name, ops) of a file, as LiteRT reads it."""
    from qatir.litert_run import interpreter

    it = interpreter(buf, "default", threads=1, preserve_all=True)
    by_index = {d["index"]: d for d in it.get_tensor_details()}
    ops = [{"op": o["op_name"], "inputs": [by_index[i]["name"] for i in o["inputs"] if i >= 0],
            "outputs": [by_index[i]["name"] for i in o["outputs"]]}
           for o in it._get_ops_details() if o["op_name"] != "DELEGATE"]
    return {d["name"]: d for d in by_index.values()}, ops


def aeq_params(aeq_buf: bytes) -> dict[str, tuple[float, int]]:
    """ai-edge-quantizer's (scale, zero point) per float-file tensor name: its int8 tensors',
    and for a tensor it leaves float, the QUANTIZE that follows it."""
    import numpy as np

    details, ops = file_tensors(aeq_buf)
    out = {n: (float(d["quantization"][0]), int(d["quantization"][1]))
           for n, d in details.items() if d["dtype"] == np.int8 and d["quantization"][0]}
    for o in ops:
        if o["op"] == "QUANTIZE" and details[o["inputs"][0]]["dtype"] == np.float32:
            out.setdefault(o["inputs"][0], out.get(o["outputs"][0]))
    return {k: v for k, v in out.items() if v is not None}


def aeq_float_ops(aeq_buf: bytes) -> list[str]:
    """The ops ai-edge-quantizer's file computes in float (not QUANTIZE/DEQUANTIZE)."""
    import numpy as np

    details, ops = file_tensors(aeq_buf)
    return [o["op"] for o in ops if o["op"] not in ("QUANTIZE", "DEQUANTIZE")
            and any(details[t]["dtype"] == np.float32 for t in o["outputs"])]


def with_aeq_ranges(q, aeq_buf: bytes) -> bytes:
    """qatir's int8 file (float edges) with every per-tensor activation range set to
    ai-edge-quantizer's for the same tensor (a shared range: the union of its members');
    ``q`` is left as it was. Same ranges, same file: what is left is not the ranges."""
    import numpy as np

    import qatir
    from qatir.calibration import range_groups, set_range
    from qatir.quant import refresh_quant

    params = aeq_params(aeq_buf)
    saved = []
    for nodes in range_groups(q).values():
        spans = [params[n.inputs[0].name] for n in nodes if n.inputs[0].name in params]
        if not spans or nodes[0].inputs[1].data.size != 1:
            continue
        saved.append((nodes[0], nodes[0].inputs[1].data.copy(), nodes[0].inputs[2].data.copy()))
        set_range(nodes[0], np.float32(min(sc * (-128 - z) for sc, z in spans)),
                  np.float32(max(sc * (127 - z) for sc, z in spans)))
    refresh_quant(q)
    buf = qatir.to_tflite(q, io="float")
    for node, lo, hi in saved:
        set_range(node, lo, hi)
    refresh_quant(q)
    return buf


def tensor_rows(float_buf: bytes, qatir_buf: bytes, aeq_buf: bytes, tests: list[dict]) -> list:
    """Per tensor of the float file (its op order): op, name, qatir's and
    ai-edge-quantizer's (scale, zero point) ("f32" where float) and SQNR vs float."""
    import numpy as np

    from qatir.metrics import sqnr_db

    _, ops = file_tensors(float_buf)
    vals = {k: [tensor_values(b, t) for t in tests]
            for k, b in (("float", float_buf), ("qatir", qatir_buf), ("aeq", aeq_buf))}
    info = {"qatir": file_tensors(qatir_buf)[0], "aeq": file_tensors(aeq_buf)[0]}

    def grid(who: str, name: str) -> str:
        d = info[who].get(name)
        if d is None:
            return "-"
        if d["dtype"] == np.float32:
            return "f32"
        return f"{d['quantization'][0]:.4g}/{d['quantization'][1]}"

    def db(who: str, name: str) -> float:
        if not all(name in v for v in vals[who] + vals["float"]):
            return float("nan")
        return float(sqnr_db(np.concatenate([v[name].ravel() for v in vals["float"]]),
                             np.concatenate([v[name].ravel() for v in vals[who]])))

    return [[o["op"], n, grid("qatir", n), grid("aeq", n), round(db("qatir", n), 2),
             round(db("aeq", n), 2)] for o in ops for n in o["outputs"]]


def format_tensors(r: dict) -> str:
    """``--tensors``: one model's per-tensor rows."""
    lines = [f"{r['name']}: qatir {_db(r['qatir_db'])} dB, aeq {_db(r['aeq_db'])} dB, qatir "
             f"with aeq's ranges {_db(r.get('aeq_ranges_db'))} dB; ops aeq leaves float: "
             f"{dict(collections.Counter(r.get('aeq_float_ops', []))) or 'none'}",
             f"  {'op':<18} {'qatir s/zp':<16} {'aeq s/zp':<16} {'qatir':>6} {'aeq':>6}  tensor"]
    for op, name, qg, ag, qd, ad in r.get("tensors", []):
        lines.append(f"  {op:<18} {qg:<16} {ag:<16} {_db(qd):>6} {_db(ad):>6}  {name[:60]}")
    return "\n".join(lines)


def aeq_quantize(float_path: str, calib: list[dict], out_path: str, timeout: float,
                 recipe: str = "static_wi8_ai8") -> bytes:
    """ai-edge-quantizer's file for ``float_path`` (in its own venv) with ``recipe``
    (``RECIPES`` in ``tools/_aeq_quantize.py``; default its static int8 one)."""
    import numpy as np

    if not os.path.exists(AEQ_PYTHON):
        raise RuntimeError(f"{AEQ_PYTHON} missing: create tools/.venv-aeq (tools/README.md)")
    npz = out_path + ".calib.npz"
    np.savez(npz, **{f"{name}__{k}": x for k, feed in enumerate(calib)
                     for name, x in feed.items()})
    proc = subprocess.run([AEQ_PYTHON, AEQ_SCRIPT, float_path, npz, out_path, recipe],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"ai-edge-quantizer exit {proc.returncode}: {tail[0][:300]}")
    with open(out_path, "rb") as f:
        return f.read()


def variant_table(variant: str, table: str | None = None) -> dict:
    """The table data of ``variant`` (:data:`VARIANTS`): ``table`` (default int8_default)
    with that one change."""
    from qatir.table import load_table

    data = load_table(table).data
    data = {**data, "fusions": list(data["fusions"]), "calibration": dict(data["calibration"]),
            "weights": dict(data["weights"])}
    for key, value in VARIANTS[variant].items():
        if key == "fusions":
            data["fusions"] = [f for f in data["fusions"] if f["kind"] != value["kind"]] + [value]
        elif key == "no_fusion":
            data["fusions"] = [f for f in data["fusions"] if f["kind"] != value]
        elif key == "quantizer_options":
            continue  # calibrate's argument (run_one), not table data
        elif key == "constraints":
            data["constraints"] = {**data["constraints"], **value}
        elif key == "exclude":  # ops kept float (ai-edge-quantizer's float islands)
            data["exclude"] = list(data.get("exclude", [])) + [value]
        elif key == "per_channel_axis":
            data["weights"]["per_channel_axis"] = value(data["weights"]["per_channel_axis"])
        else:
            data["calibration"][key] = value
    return data


def load_model(name: str) -> tuple[dict, Any, str]:
    """A corpus model by manifest name: (its manifest entry, ``qatir.load`` of it, the folder)."""
    import qatir

    with open(MANIFEST) as f:
        man = json.load(f)
    entry = next((e for e in man["models"] if e["name"] == name), None)
    if entry is None:
        raise KeyError(f"{name!r} is not in {MANIFEST}")
    models_dir = man.get("models_dir") or os.path.dirname(MANIFEST)
    shapes = {s["name"]: s["shape"] for s in entry["inputs"]} \
        if entry["format"] == "onnx" else None
    return entry, qatir.load(os.path.join(models_dir, entry["path"]), input_shapes=shapes), \
        models_dir


def run_one(name: str, table: str | None, workdir: str, behind: float, timeout: float,
            variants: list[str] | None = None, n_test: int = N_TEST,
            tensors: bool = False, more_tests: int = 0) -> dict:
    """Measure one model (see the module doc); the result dict, also on failure. With
    ``more_tests`` > ``n_test``, every file is also measured on that many test inputs (the
    first ``n_test`` of them the same), in ``res["more"]``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    res: dict = {"name": name, "status": "fail"}
    t0 = time.time()
    try:
        import warnings

        import qatir
        from qatir.evaluate import strip_fake_quant

        entry, g, models_dir = load_model(name)
        calib, all_tests, res["data"] = model_feeds(entry, g, models_dir,
                                                    max(n_test, more_tests))
        tests = all_tests[:n_test]
        res["tests"] = len(tests)
        if len(tests) < n_test:
            res["data"] += f"/{len(tests)}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = qatir.quantize(g, table=table)
            float_buf = qatir.to_tflite(strip_fake_quant(q))
            float_path = os.path.join(workdir, f"{name}.float.tflite")
            with open(float_path, "wb") as f:
                f.write(float_buf)
            t1 = time.time()
            qatir.calibrate(q, calib, progress=False)
            qatir_buf = qatir.to_tflite(q, io="float")
            res["qatir_s"] = round(time.time() - t1, 1)
            res["variants_db"], res["variants_s"], bufs = {}, {}, {"qatir": qatir_buf}
            for v in variants or []:  # the same float reference: each variant is exact in float
                qv = qatir.quantize(g, table=variant_table(v, table))
                t1 = time.time()
                qatir.calibrate(qv, calib, progress=False,
                                quantizer_options=VARIANTS[v].get("quantizer_options"))
                res["variants_s"][v] = round(time.time() - t1, 1)
                bufs[v] = qatir.to_tflite(qv, io="float")
                res["variants_db"][v] = output_sqnr(float_buf, bufs[v], tests)
        res["qatir_db"] = output_sqnr(float_buf, qatir_buf, tests)
        t1 = time.time()
        try:  # the peer failing (its quantizer, or LiteRT on its file) is a result too
            aeq_buf = aeq_quantize(float_path, calib, os.path.join(workdir, f"{name}.aeq.tflite"),
                                   timeout)
            res["aeq_s"] = round(time.time() - t1, 1)
            res["aeq_db"] = output_sqnr(float_buf, aeq_buf, tests)
            bufs["aeq"] = aeq_buf
        except Exception as e:  # noqa: BLE001
            res["aeq_error"] = f"{type(e).__name__}: {str(e).strip()[:200]}"
            res["status"] = "ok"
            return res
        finally:
            if len(all_tests) > len(tests):
                db = {k: output_sqnr(float_buf, b, all_tests) for k, b in bufs.items()}
                res["more"] = {"tests": len(all_tests), "qatir_db": db.pop("qatir"),
                               "aeq_db": db.pop("aeq", None), "variants_db": db}
        if res["qatir_db"] < res["aeq_db"] - behind:
            res["first_behind"] = first_behind(q, qatir_buf, aeq_buf, float_buf, tests, behind)
        if tensors:
            res["aeq_float_ops"] = aeq_float_ops(aeq_buf)
            res["aeq_ranges_db"] = output_sqnr(float_buf, with_aeq_ranges(q, aeq_buf), tests)
            res["tensors"] = tensor_rows(float_buf, qatir_buf, aeq_buf, tests)
        res["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - every failure is a result of this tool
        res["error"] = f"{type(e).__name__}: {str(e).strip()[:300]}"
        res["traceback"] = traceback.format_exc()[-2000:]
    res["seconds"] = round(time.time() - t0, 1)
    return res


# =========================================================================== parent
def run_child(name: str, args: argparse.Namespace) -> dict:
    """One model in its own process (a crash or hang there is a row, not the end)."""
    out = os.path.join(args.workdir, f"{name}.peers.json")
    if os.path.exists(out):
        os.remove(out)
    cmd = [sys.executable, os.path.abspath(__file__), "--one", name, "--result", out,
           "--workdir", args.workdir, "--behind", str(args.behind),
           "--timeout", str(args.timeout), "--tests", str(args.tests),
           "--more-tests", str(args.more_tests)] \
        + (["--tensors"] if args.tensors else []) + (["--table", args.table] if args.table else []) \
        + [f"--variant={v}" for v in args.variant]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        return {"name": name, "status": "HANG", "error": f"timeout after {args.timeout} s"}
    if os.path.exists(out):
        with open(out) as f:
            return json.load(f)
    return {"name": name, "status": "CRASH" if rc < 0 else "fail",
            "error": f"exit {rc}: {(proc.stderr.strip().splitlines() or [''])[-1][:200]}"}


def _db(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return "inf" if math.isinf(v) else f"{v:.1f}"


def format_variants(results: list[dict]) -> str:
    """Per model, qatir's SQNR under each ``--variant`` (and the default, and aeq's)."""
    ok = [r for r in results if r.get("status") == "ok" and r.get("variants_db") and "aeq_db" in r]
    if not ok:
        return ""
    names = list(ok[0]["variants_db"])
    head = f"{'model':<30} {'default':>8} " + " ".join(f"{v[:14]:>14}" for v in names) \
        + f" {'aeq':>8}"
    lines = [head, "-" * len(head)]
    for r in ok:
        lines.append(f"{r['name']:<30} {_db(r['qatir_db']):>8} "
                     + " ".join(f"{_db(r['variants_db'][v]):>14}" for v in names)
                     + f" {_db(r['aeq_db']):>8}")
    med = lambda xs: statistics.median([x for x in xs if math.isfinite(x)])  # noqa: E731
    lines.append(f"{'median':<30} {med([r['qatir_db'] for r in ok]):>8.1f} "
                 + " ".join(f"{med([r['variants_db'][v] for r in ok]):>14.1f}" for v in names)
                 + f" {med([r['aeq_db'] for r in ok]):>8.1f}")
    lines.append(f"more than {BEHIND_DB} dB behind ai-edge-quantizer: default "
                 f"{sum(r['qatir_db'] < r['aeq_db'] - BEHIND_DB for r in ok)}"
                 + "".join(f"; {v} {sum(r['variants_db'][v] < r['aeq_db'] - BEHIND_DB for r in ok)}"
                           for v in names) + f" (of {len(ok)})")
    return "\n".join(lines)


def format_more(results: list[dict], behind: float) -> str:
    """``--more-tests``: per model, the figures on the first ``--tests`` inputs and on all."""
    ok = [r for r in results if r.get("status") == "ok" and r.get("more", {}).get("aeq_db")
          is not None and "aeq_db" in r]
    if not ok:
        return "(no model measured on more inputs)"
    names = list(ok[0]["more"]["variants_db"])
    head = (f"{'model':<30} {'tests':>5} {'qatir':>7} {'aeq':>7} {'qatir@N':>8} {'aeq@N':>7} "
            + " ".join(f"{v[:12] + '@N':>14}" for v in names))
    lines = [head, "-" * len(head)]
    for r in ok:
        m = r["more"]
        lines.append(f"{r['name']:<30} {m['tests']:>5} {_db(r['qatir_db']):>7} "
                     f"{_db(r['aeq_db']):>7} {_db(m['qatir_db']):>8} {_db(m['aeq_db']):>7} "
                     + " ".join(f"{_db(m['variants_db'][v]):>14}" for v in names))
    med = lambda xs: statistics.median([x for x in xs if math.isfinite(x)])  # noqa: E731
    lines.append(f"{'median':<30} {'':>5} {med([r['qatir_db'] for r in ok]):>7.1f} "
                 f"{med([r['aeq_db'] for r in ok]):>7.1f} "
                 f"{med([r['more']['qatir_db'] for r in ok]):>8.1f} "
                 f"{med([r['more']['aeq_db'] for r in ok]):>7.1f} "
                 + " ".join(f"{med([r['more']['variants_db'][v] for r in ok]):>14.1f}"
                            for v in names))
    worse = sum(r["more"]["qatir_db"] < r["more"]["aeq_db"] - behind for r in ok)
    lines.append(f"on all N inputs qatir more than {behind} dB behind on {worse} of {len(ok)}"
                 + "".join(f"; {v}: " + str(sum(r["more"]["variants_db"][v]
                                                 < r["more"]["aeq_db"] - behind for r in ok))
                           for v in names))
    return "\n".join(lines)


def format_table(results: list[dict], behind: float) -> str:
    """The per-model table and a summary line (median, models behind)."""
    head = f"{'model':<30} {'data':<18} {'qatir dB':>8} {'aeq dB':>8} {'diff':>6}  first tensor behind"
    lines = [head, "-" * len(head)]
    ok = [r for r in results if r.get("status") == "ok" and "aeq_db" in r]
    for r in results:
        if r.get("status") != "ok":
            lines.append(f"{r['name']:<30} {r.get('status', 'fail')}: {r.get('error', '')[:90]}")
            continue
        if "aeq_db" not in r:
            lines.append(f"{r['name']:<30} {r['data']:<18} {_db(r['qatir_db']):>8} {'-':>8} "
                         f"{'':>6}  ai-edge-quantizer failed: {r['aeq_error'][:70]}")
            continue
        d = r["qatir_db"] - r["aeq_db"]
        fb = r.get("first_behind")
        where = "" if not fb else (f"{fb['node']} ({fb['op']}): {fb['qatir_db']:.1f} vs "
                                   f"{fb['aeq_db']:.1f} dB")
        if r["qatir_db"] < r["aeq_db"] - behind and not fb:
            where = "(no single tensor behind by the margin)"
        lines.append(f"{r['name']:<30} {r['data']:<18} {_db(r['qatir_db']):>8} "
                     f"{_db(r['aeq_db']):>8} {d:>+6.1f}  {where}")
    if ok:
        finite = lambda k: [r[k] for r in ok if math.isfinite(r[k])]  # noqa: E731
        worse = sum(r["qatir_db"] < r["aeq_db"] - behind for r in ok)
        lines.append(f"median: qatir {statistics.median(finite('qatir_db')):.1f} dB, "
                     f"ai-edge-quantizer {statistics.median(finite('aeq_db')):.1f} dB; "
                     f"qatir more than {behind} dB behind on {worse} of {len(ok)}")
    peer_failed = [r["name"] for r in results if r.get("status") == "ok" and "aeq_db" not in r]
    qatir_failed = [r["name"] for r in results if r.get("status") != "ok"]
    if peer_failed or qatir_failed:
        lines.append(f"ai-edge-quantizer failed where qatir ran: {len(peer_failed)} "
                     f"({', '.join(peer_failed) or 'none'}); qatir failed: {len(qatir_failed)} "
                     f"({', '.join(qatir_failed) or 'none'})")
    return "\n".join(lines)


def _model_names(spec: str) -> list[str]:
    """``--models``: comma-separated names, or ``all`` for the manifest's models in order."""
    if spec != "all":
        return [m for m in spec.split(",") if m]
    with open(MANIFEST) as f:
        manifest = json.load(f)
    return [e["name"] for e in manifest["models"]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="qatir vs ai-edge-quantizer post-training int8")
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help="comma-separated corpus model names, or 'all' (every model of "
                         "the manifest)")
    ap.add_argument("--table", help="qatir pattern table (name or path); default int8_default")
    ap.add_argument("--behind", type=float, default=BEHIND_DB,
                    help="dB margin that counts as behind (default %(default)s)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per model")
    ap.add_argument("--tests", type=int, default=N_TEST,
                    help="test inputs per model (default %(default)s; real text lines "
                         "give at most 8)")
    ap.add_argument("--more-tests", type=int, default=0,
                    help="also measure every file on this many test inputs (the first "
                         "--tests of them the same ones): a second table")
    ap.add_argument("--tensors", action="store_true",
                    help="also print, per model, every tensor's scale/zero point and SQNR in "
                         "both files, the ops ai-edge-quantizer leaves float, and qatir's "
                         "SQNR with ai-edge-quantizer's activation ranges")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", help="write the per-model results here")
    ap.add_argument("--variant", action="append", default=[], choices=sorted(VARIANTS),
                    help="also measure qatir with this one table change (repeatable)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.workdir = a.workdir or tempfile.mkdtemp(prefix="qatir-peers-")
    os.makedirs(a.workdir, exist_ok=True)
    if a.one:
        res = run_one(a.one, a.table, a.workdir, a.behind, a.timeout, a.variant, a.tests,
                      a.tensors, a.more_tests)
        with open(a.result, "w") as f:
            json.dump(res, f, indent=1)
        return 0
    results = []
    for name in _model_names(a.models):
        results.append(run_child(name, a))
        r = results[-1]
        print(f"  {name}: {r.get('status')} qatir {_db(r.get('qatir_db'))} dB, "
              f"aeq {_db(r.get('aeq_db'))} dB ({r.get('seconds', '-')} s)", file=sys.stderr)
    print(f"# compare_peers: table {a.table or 'int8_default'}; {N_CALIB} calibration and "
          f"{a.tests} test inputs per model (data: real samples or standard normal; "
          f"'real/N': only N test samples); SQNR vs qatir's float export on LiteRT (XNNPACK)")
    print(format_table(results, a.behind))
    if a.variant:
        print("\nvariants (qatir SQNR dB, each one change to the table):")
        print(format_variants(results))
    if a.more_tests > a.tests:
        print(f"\nthe same files on up to {a.more_tests} test inputs (SQNR dB; the first "
              f"{a.tests} are the inputs above):")
        print(format_more(results, a.behind))
    for r in results if a.tensors else []:
        if r.get("tensors"):
            print("\n" + format_tensors(r))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run every corpus model through qatir, each in its own process.

    python tools/corpus/run.py [--only PATTERN] [--jobs 1] [--json OUT] [--timeout 300]
                               [--manifest tools/corpus/models/manifest.json]

For every manifest entry a child process (``run.py --one NAME``) runs the stages
below and stops at the first failure; before each stage it writes the stage's
name to a file, so a child killed by a signal (**CRASH**) or by the time limit
(**HANG**) still reports where it was.

1. ``load``      ``qatir.load(path, input_shapes=...)``
2. ``float``     ``qatir.run`` of the float IR on one random feed
   ``runtime``   the source model in its own runtime, onnxruntime (ONNX) / LiteRT (float
                 TFLite), same feed; max abs error and max error relative to max
                 |runtime| of qatir's float run (fails above ``FLOAT_TOL``)
3. ``quantize``  ``qatir.quantize(g)`` (float islands are counted, not failed)
4. ``calibrate`` ``qatir.calibrate(q, 4 batches of 1)`` (random normal; the task's real
                 samples where the model has a task)
5. ``export``    ``qatir.to_tflite(q, io="int8")``
6. ``litert``    LiteRT load + invoke of the file, default resolver (XNNPACK)
   ``bitexact_xnn``  its outputs vs ``qatir.run_reference(q, feeds_int8, kernels="xnnpack")``
   ``litert_ref``  the same file with ``OpResolverType.BUILTIN_REF``
7. ``bitexact``  its outputs vs ``qatir.run_reference(q, feeds_int8)`` (REF): max LSB
                 difference, % equal
8. ``sqnr``      SQNR (dB) of the int8 file's outputs (XNNPACK, dequantized) vs ``qatir.run``
                 float, on the same random feed
9. ``task``      (models with a real task only) float vs int8 agreement on real data
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MANIFEST = os.path.join(HERE, "models", "manifest.json")
STAGES = ["load", "float", "runtime", "quantize", "calibrate", "export", "litert", "bitexact_xnn",
          "litert_ref", "bitexact", "sqnr", "task"]
FLOAT_TOL = 1e-3  # max |qatir - runtime| / max |runtime| above which "runtime" fails
FEEDS = int(os.environ.get("QATIR_CORPUS_FEEDS", "3"))  # inputs the bit-exact stages compare on


class FloatMismatch(Exception):
    """qatir.run and the model's own runtime disagree beyond FLOAT_TOL."""


# =========================================================================== worker
def _np():
    import numpy as np

    return np


def _to_ir(t, x):
    """A source-layout array (NCHW for ONNX 4-D inputs) in the IR's layout (NHWC)."""
    np = _np()
    if getattr(t, "source_layout", None) == "NCHW" and x.ndim == 4:
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    return x


def _from_ir_output(t, y):
    """An IR output in the source layout, to compare with the source runtime."""
    np = _np()
    if getattr(t, "source_layout", None) == "NCHW" and np.ndim(y) == 4:
        return np.ascontiguousarray(np.asarray(y).transpose(0, 3, 1, 2))
    return np.asarray(y)


def _interp(buf_or_path, ref: bool = False):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = OpResolverType.BUILTIN_REF if ref else OpResolverType.AUTO
    kw = {"model_content": buf_or_path} if isinstance(buf_or_path, (bytes, bytearray)) \
        else {"model_path": buf_or_path}
    it = Interpreter(**kw, experimental_op_resolver_type=kind, num_threads=1)
    it.allocate_tensors()
    return it


def _invoke(it, feeds_by_name: dict, order: list) -> list:
    """Set inputs by name (else by position), invoke, outputs in the file's order."""
    ins = it.get_input_details()
    by_name = all(d["name"] in feeds_by_name for d in ins)
    for k, d in enumerate(ins):
        x = feeds_by_name[d["name"]] if by_name else feeds_by_name[order[k]]
        it.set_tensor(d["index"], x.astype(d["dtype"]).reshape(d["shape"]))
    it.invoke()
    return [(d, it.get_tensor(d["index"]).copy()) for d in it.get_output_details()]


def _quantize_in(detail, x):
    np = _np()
    if detail["dtype"] == np.float32:
        return x.astype(np.float32)
    scale, zp = detail["quantization"]
    v = np.round(np.asarray(x, np.float32) / np.float32(scale)) + zp
    return np.clip(v, -128, 127).astype(np.int8)


def _deq(detail, y):
    np = _np()
    if detail["dtype"] == np.float32:
        return y.astype(np.float32)
    scale, zp = detail["quantization"]
    return (y.astype(np.float32) - zp) * np.float32(scale)


def sqnr_db(ref, test) -> float:
    np = _np()
    ref = np.asarray(ref, np.float64).ravel()
    noise = float(np.sum((ref - np.asarray(test, np.float64).ravel()) ** 2))
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(float(np.sum(ref ** 2)), 1e-30) / noise)


def _random_source_feed(entry, seed: int) -> dict:
    np = _np()
    rng = np.random.default_rng(seed)
    out = {}
    for spec in entry["inputs"]:
        shape = [1 if d is None else d for d in spec["shape"]]
        dt = spec.get("dtype", "float32")
        if dt.startswith("int"):
            out[spec["name"]] = rng.integers(0, 10, size=shape).astype(dt)
        else:
            out[spec["name"]] = rng.standard_normal(shape).astype(np.float32)
    return out


def _float_equivalent(path):
    """For an onnxruntime dynamically quantized file, the float model qatir imports
    (qatir.frontends.onnx_dynq) as bytes; None for any other file."""
    import onnx

    from qatir.frontends.onnx_dynq import dequantize_dynamic

    model = onnx.load(path)
    return model.SerializeToString() if dequantize_dynamic(model.graph, path) else None


def _source_run(entry, path, feed, as_file: bool = False) -> list:
    """The model in its own runtime: onnxruntime for ONNX, LiteRT (float) for TFLite.

    A dynamically quantized ONNX file runs as its float equivalent (the network qatir
    imports) unless ``as_file``: the file's own activation rounding is not qatir's to match.
    """
    if entry["format"] == "onnx":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        src = None if as_file else _float_equivalent(path)
        sess = ort.InferenceSession(path if src is None else src, so,
                                    providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        return list(zip(names, sess.run(None, feed)))
    it = _interp(path)
    return [(d["name"], y) for d, y in _invoke(it, feed, [s["name"] for s in entry["inputs"]])]


# --------------------------------------------------------------------------- real tasks
def _resize(img, h, w):
    """Bilinear resize of an HWC uint8/float image with scipy (no PIL in this env)."""
    np = _np()
    from scipy.ndimage import zoom

    img = np.asarray(img, np.float32)
    return zoom(img, (h / img.shape[0], w / img.shape[1], 1), order=1)


def _norm(x, how: str):
    np = _np()
    x = x.astype(np.float32)
    if how == "pm1":
        return x / 127.5 - 1.0
    if how == "imagenet":
        m = np.array([0.485, 0.456, 0.406], np.float32) * 255
        s = np.array([0.229, 0.224, 0.225], np.float32) * 255
        return (x - m) / s
    return x / 255.0


def task_samples(entry, g, data_dir, crops: int = 12) -> list | None:
    """Real-data feeds for the IR (NHWC) for an entry's task, or None. Image tasks get
    ``crops`` crops of the two photos (the first 12 are the same whatever ``crops``);
    text tasks get every stored text line (16)."""
    np = _np()
    task = entry.get("task")
    if not task:
        return None
    t = g.inputs[0]
    shape = [1 if d is None else d for d in t.shape]  # IR layout, NHWC
    h, w = shape[1], shape[2]
    kind = task["kind"]
    if kind in ("ocr_rec", "ocr_cls"):
        p = os.path.join(data_dir, "text_lines.npz")
        if not os.path.exists(p):
            return None
        imgs = np.load(p)["images"]
        feeds = []
        for k, im in enumerate(imgs):
            if kind == "ocr_cls" and k % 2 == 1:
                im = im[::-1, ::-1]  # upside down: class 1
            x = _resize(im, h, w) if im.shape[:2] != (h, w) else im.astype(np.float32)
            x = (x / 255.0 - 0.5) / 0.5
            feeds.append({t.name: x[None].astype(np.float32)})
        return feeds
    p = os.path.join(data_dir, "sample_images.npz")
    if not os.path.exists(p):
        return None
    photos = np.load(p)["images"]
    rng = np.random.default_rng(0)
    feeds = []
    for k in range(crops):  # crops of the two photos
        im = photos[k % 2]
        side = int(rng.integers(min(im.shape[:2]) // 3, min(im.shape[:2])))
        y0 = int(rng.integers(0, im.shape[0] - side + 1))
        x0 = int(rng.integers(0, im.shape[1] - side + 1))
        crop = _resize(im[y0:y0 + side, x0:x0 + side], h, w)
        feeds.append({t.name: _norm(crop, task.get("norm", "01"))[None].astype(np.float32)})
    return feeds


def _sigmoid(x):
    np = _np()
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _ctc(seq):
    out, prev = [], -1
    for s in seq:
        if s != prev and s != 0:
            out.append(int(s))
        prev = s
    return out


def task_metric(entry, path, float_outs: list, int8_outs: list, labels: list) -> dict:
    """float_outs / int8_outs: per sample, the list of output arrays (same order)."""
    np = _np()
    kind = entry["task"]["kind"]
    n = len(float_outs)
    res: dict = {"kind": kind, "samples": n}
    if kind == "ocr_rec":
        chars = None
        try:
            import onnx

            meta = {p.key: p.value for p in onnx.load(path).metadata_props}
            if "character" in meta:
                chars = meta["character"].splitlines()
        except Exception:
            pass
        same, steps, tot = 0, 0, 0
        exs = []
        for k, (f, q) in enumerate(zip(float_outs, int8_outs)):
            fa, qa = f[0][0].argmax(-1), q[0][0].argmax(-1)
            steps += int((fa == qa).sum())
            tot += fa.size
            fs, qs = _ctc(fa), _ctc(qa)
            same += fs == qs
            if chars and k < 3:
                dec = lambda s: "".join(chars[i - 1] if 0 < i <= len(chars) else "?" for i in s)  # noqa: E731
                exs.append({"truth": labels[k], "float": dec(fs), "int8": dec(qs)})
        res.update(decoded_equal_pct=100.0 * same / n, timestep_argmax_equal_pct=100.0 * steps / tot)
        if exs:
            res["examples"] = exs
        res["summary"] = f"decoded text int8==float {same}/{n}"
    elif kind == "ocr_cls":
        fa = [int(np.argmax(f[0])) for f in float_outs]
        qa = [int(np.argmax(q[0])) for q in int8_outs]
        truth = [k % 2 for k in range(n)]
        agree = sum(a == b for a, b in zip(fa, qa))
        res.update(class_agreement_pct=100.0 * agree / n,
                   float_acc_pct=100.0 * sum(a == t for a, t in zip(fa, truth)) / n,
                   int8_acc_pct=100.0 * sum(a == t for a, t in zip(qa, truth)) / n)
        res["summary"] = f"class int8==float {agree}/{n}"
    elif kind == "det_scores":
        # the score output: the one whose last dim is 1 (mediapipe: classificators [1,A,1])
        idx = [i for i, a in enumerate(float_outs[0]) if a.shape[-1] == 1]
        i = idx[0] if idx else len(float_outs[0]) - 1
        top_same, diffs, overlap = 0, [], []
        for f, q in zip(float_outs, int8_outs):
            fs, qs = _sigmoid(f[i]).ravel(), _sigmoid(q[i]).ravel()
            top_same += int(fs.argmax() == qs.argmax())
            diffs.append(abs(float(fs.max() - qs.max())))
            overlap.append(len(set(np.argsort(-fs)[:10]) & set(np.argsort(-qs)[:10])) / 10)
        res.update(top1_anchor_equal_pct=100.0 * top_same / n,
                   max_abs_top_score_diff=float(max(diffs)),
                   top10_overlap_pct=100.0 * float(np.mean(overlap)),
                   score_sqnr_db=sqnr_db(np.concatenate([f[i].ravel() for f in float_outs]),
                                         np.concatenate([q[i].ravel() for q in int8_outs])))
        res["summary"] = (f"top anchor int8==float {top_same}/{n}, top-score |diff| max "
                          f"{max(diffs):.3f}")
    else:
        flat = lambda outs: np.concatenate([a.ravel() for o in outs for a in o])  # noqa: E731
        res["sqnr_db_real"] = sqnr_db(flat(float_outs), flat(int8_outs))
        res["summary"] = f"SQNR on real images {res['sqnr_db_real']:.1f} dB"
    return res


# --------------------------------------------------------------------------- one model
def run_one(entry: dict, models_dir: str, result_path: str, stage_path: str) -> dict:
    """Run the stages for one manifest entry; write the result JSON (also on failure)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    res: dict = {"name": entry["name"], "source": entry.get("source", "?"), "status": "fail",
                 "stage": None, "error": None, "seconds": {}}
    t_all = time.time()

    def save():
        res["total_s"] = round(time.time() - t_all, 2)
        tmp = result_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=1, default=lambda o: repr(o))
        os.replace(tmp, result_path)

    fault = os.environ.get("QATIR_CORPUS_FAULT", "")  # tests only: "crash:STAGE" / "hang:STAGE"

    def enter(stage):
        res["stage"] = stage
        with open(stage_path, "w") as f:
            f.write(stage)
        save()
        if fault == f"crash:{stage}":
            os.kill(os.getpid(), signal.SIGSEGV)
        if fault == f"hang:{stage}":
            time.sleep(3600)
        return time.time()

    try:
        np = _np()
        path = os.path.join(models_dir, entry["path"])
        t0 = enter("load")  # importing qatir counts as loading
        import qatir

        shapes = {s["name"]: s["shape"] for s in entry["inputs"]} if entry["format"] == "onnx" \
            else None
        g = qatir.load(path, input_shapes=shapes)
        res["nodes"] = len(g.nodes)
        res["seconds"]["load"] = round(time.time() - t0, 2)

        t0 = enter("float")
        src_feed = _random_source_feed(entry, seed=100)
        by_src = {s["name"]: s for s in entry["inputs"]}
        ir_feed = {t.name: _to_ir(t, src_feed[t.name]) if t.name in src_feed else None
                   for t in g.inputs}
        if any(v is None for v in ir_feed.values()):
            # names differ (a frontend renamed inputs): match by position
            ir_feed = {t.name: _to_ir(t, src_feed[s]) for t, s in zip(g.inputs, by_src)}
        data_dir = os.path.join(models_dir, "data")
        real = task_samples(entry, g, data_dir)
        if real:  # a model with real data is measured on it: the first sample after calibration's
            ir_feed = dict(real[4])
            src_feed = {s: _from_ir_output(t, ir_feed[t.name]) for t, s in zip(g.inputs, by_src)}
        res["feed"] = "real sample" if real else "standard normal"
        got = qatir.run(g, ir_feed)
        res["seconds"]["float"] = round(time.time() - t0, 2)
        t0 = enter("runtime")  # the model's own runtime (not qatir): a crash here is theirs
        want = _source_run(entry, path, src_feed)
        errs = []
        for k, t in enumerate(g.outputs):
            name, w = want[k] if t.name not in dict(want) else (t.name, dict(want)[t.name])
            y = _from_ir_output(t, got[t.name])
            if y.shape != w.shape and y.size == w.size:
                y = y.reshape(w.shape)
            if y.shape != w.shape:
                raise FloatMismatch(f"output {t.name!r}: qatir shape {list(y.shape)} vs runtime "
                                    f"{list(w.shape)}")
            d = float(np.max(np.abs(y.astype(np.float64) - w))) if w.size else 0.0
            errs.append((d, d / max(float(np.max(np.abs(w))) if w.size else 0.0, 1e-12)))
        res["float_abs_err"] = max(e[0] for e in errs)
        res["float_rel_err"] = max(e[1] for e in errs)
        if entry["format"] == "onnx" and _float_equivalent(path) is not None:
            orig = _source_run(entry, path, src_feed, as_file=True)
            res["runtime_reference"] = "float equivalent of a dynamically quantized file"
            res["dynamic_quant_rel_err"] = max(
                float(np.max(np.abs(w - o))) / max(float(np.max(np.abs(o))), 1e-12)
                for (_, w), (_, o) in zip(want, orig))
        res["seconds"]["runtime"] = round(time.time() - t0, 2)
        if not res["float_rel_err"] <= FLOAT_TOL:
            raise FloatMismatch(f"max |qatir - runtime| = {res['float_abs_err']:.3g} "
                                f"({res['float_rel_err']:.3g} of max |runtime|)")
        float_out = {t.name: np.asarray(got[t.name]) for t in g.outputs}

        t0 = enter("quantize")
        with warnings.catch_warnings(record=True) as wlist:
            warnings.simplefilter("always")
            q = qatir.quantize(g)
        res["quantize_warnings"] = [str(w.message)[:300] for w in wlist][:5]
        res["fake_quant_nodes"] = sum(1 for n in q.nodes if n.op == "FAKE_QUANT")
        res["seconds"]["quantize"] = round(time.time() - t0, 2)

        t0 = enter("calibrate")
        if real:
            calib = real[:4]
            res["calibration"] = "4 real task samples"
        else:
            calib = [{t.name: _to_ir(t, f[s]) for t, s in zip(g.inputs, by_src)}
                     for f in (_random_source_feed(entry, seed=i) for i in range(4))]
            res["calibration"] = "4 random normal batches of 1"
        qatir.calibrate(q, calib, progress=False)
        res["seconds"]["calibrate"] = round(time.time() - t0, 2)

        t0 = enter("export")
        with warnings.catch_warnings(record=True) as wlist:
            warnings.simplefilter("always")
            buf = qatir.to_tflite(q, io="int8")
        res["export_warnings"] = [str(w.message)[:300] for w in wlist][:5]
        res["tflite_bytes"] = len(buf)
        from qatir.lowering.islands import summary as islands_summary

        res["int8_mac_share"] = islands_summary(q)["int8_mac_share"]
        try:
            from qatir.compile import tflite_op_counts

            ops = tflite_op_counts(buf)
            res["ops"] = sum(ops.values())
            res["float_island_ops"] = ops.get("DEQUANTIZE", 0)
        except Exception:
            pass
        res["seconds"]["export"] = round(time.time() - t0, 2)

        t0 = enter("litert")
        names = [t.name for t in g.inputs]
        it_x = _interp(bytes(buf), ref=False)
        ins = it_x.get_input_details()
        det_by = {d["name"]: d for d in ins}

        def quant_feed(feed):
            return {t.name: _quantize_in(det_by.get(t.name, ins[k]), feed[t.name])
                    for k, t in enumerate(g.inputs)}

        # bit-exactness is checked on FEEDS inputs: the measured feed, then more of the same kind
        more = real[5:4 + FEEDS] if real else [
            {t.name: _to_ir(t, f[s]) for t, s in zip(g.inputs, by_src)}
            for f in (_random_source_feed(entry, seed=200 + i) for i in range(FEEDS - 1))]
        q_feeds = [quant_feed(f) for f in [ir_feed] + list(more)]
        outs_x = [_invoke(it_x, qf, names) for qf in q_feeds]
        out_x = outs_x[0]
        res["bitexact_feeds"] = len(q_feeds)
        res["seconds"]["litert"] = round(time.time() - t0, 2)

        def compare(lites, wants):
            worst, eq, tot = 0, 0, 0
            for lite, want in zip(lites, wants):
                for k, (d, y) in enumerate(lite):
                    key = d["name"] if d["name"] in want else list(want)[k]
                    r = np.asarray(want[key])
                    if y.dtype != np.int8 or r.dtype != np.int8:
                        res.setdefault("non_int8_outputs", []).append(d["name"])
                        continue
                    diff = np.abs(y.astype(np.int32) - r.reshape(y.shape).astype(np.int32))
                    worst = max(worst, int(diff.max()) if diff.size else 0)
                    eq += int((diff == 0).sum())
                    tot += diff.size
            return worst, (100.0 * eq / tot if tot else float("nan"))

        t0 = enter("bitexact_xnn")  # before BUILTIN_REF, so a REF crash still leaves this measured
        refs = [qatir.run_reference(q, qf, kernels="xnnpack") for qf in q_feeds]
        res["lsb_xnn"], res["equal_pct_xnn"] = compare(outs_x, refs)
        res["seconds"]["bitexact_xnn"] = round(time.time() - t0, 2)

        t0 = enter("litert_ref")
        it_r = _interp(bytes(buf), ref=True)
        outs_r = [_invoke(it_r, qf, names) for qf in q_feeds]
        res["seconds"]["litert_ref"] = round(time.time() - t0, 2)

        t0 = enter("bitexact")
        refs = [qatir.run_reference(q, qf) for qf in q_feeds]
        res["lsb_ref"], res["equal_pct_ref"] = compare(outs_r, refs)
        res["bit_exact"] = res["lsb_ref"] == 0 and res["lsb_xnn"] == 0
        res["seconds"]["bitexact"] = round(time.time() - t0, 2)

        t0 = enter("sqnr")
        outs_f, outs_q = [], []
        for k, (d, y) in enumerate(out_x):
            t = next((t for t in g.outputs if t.name == d["name"]), g.outputs[k])
            outs_f.append(float_out[t.name].ravel())
            outs_q.append(_deq(d, y).ravel())
        res["sqnr_db"] = sqnr_db(np.concatenate(outs_f), np.concatenate(outs_q))
        res["sqnr_db_per_output"] = [sqnr_db(f, q_) for f, q_ in zip(outs_f, outs_q)]
        res["seconds"]["sqnr"] = round(time.time() - t0, 2)

        if real:
            t0 = enter("task")
            evals = real[4:]
            labels = []
            if entry["task"]["kind"] == "ocr_rec":
                p = os.path.join(data_dir, "text_lines.npz")
                labels = [str(s) for s in np.load(p)["texts"]][4:]
            f_all, q_all = [], []
            for feed in evals:
                fo = qatir.run(g, feed)
                qo = _invoke(it_x, quant_feed(feed), names)
                f_all.append([np.asarray(fo[(next((t for t in g.outputs if t.name == d["name"]),
                                                   g.outputs[k])).name]) for k, (d, _) in
                              enumerate(qo)])
                q_all.append([_deq(d, y).reshape(f_all[-1][k].shape)
                              for k, (d, y) in enumerate(qo)])
            res["task"] = task_metric(entry, path, f_all, q_all, labels)
            res["seconds"]["task"] = round(time.time() - t0, 2)
        res["status"] = "ok"
    except BaseException as e:  # noqa: BLE001 - everything is a result here
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        msg = msg.replace(os.path.join(models_dir, ""), "")  # model paths: names suffice
        res["error"] = f"{type(e).__name__}: {msg[:400]}"
        res["traceback"] = traceback.format_exc()[-3000:]
    save()
    return res


# =========================================================================== parent
def run_child(entry: dict, manifest: str, timeout: float, workdir: str) -> dict:
    """One model in a child process; CRASH on a signal, HANG on the time limit."""
    name = entry["name"]
    result = os.path.join(workdir, f"{name}.result.json")
    stage = os.path.join(workdir, f"{name}.stage")
    for p in (result, stage):
        if os.path.exists(p):
            os.remove(p)
    cmd = [sys.executable, os.path.abspath(__file__), "--one", name, "--manifest", manifest,
           "--result", result, "--stage-file", stage]
    t0 = time.time()
    with open(os.path.join(workdir, f"{name}.log"), "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    wall = time.time() - t0
    res = {"name": name, "source": entry.get("source", "?"), "status": "fail", "stage": None,
           "error": None}
    if os.path.exists(result):
        with open(result) as f:
            res = json.load(f)
    if os.path.exists(stage):
        with open(stage) as f:
            res["stage"] = f.read().strip() or res.get("stage")
    if rc is None:
        res["status"], res["error"] = "HANG", f"timeout after {timeout:.0f} s"
    elif rc < 0:
        try:
            sig = signal.Signals(-rc).name
        except ValueError:
            sig = f"signal {-rc}"
        res["status"], res["error"] = "CRASH", f"{sig} (returncode {rc})"
    elif rc != 0 and res.get("status") == "ok":
        res["status"], res["error"] = "fail", f"exit {rc} after a result"
    elif rc != 0 and not res.get("error"):
        with open(os.path.join(workdir, f"{name}.log")) as f:
            tail = f.read().strip().splitlines()[-1:] or [""]
        res["error"] = f"exit {rc}: {tail[0][:300]}"
    res["wall_s"] = round(wall, 1)
    res["returncode"] = rc
    return res


def _fmt(v, spec: str, none: str = "-") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return format(v, spec)


def short_error(err: str | None, width: int = 70) -> str:
    return "" if not err else (err if len(err) <= width else err[:width - 3] + "...")


HEADER = (f"{'model':<36} {'source':<22} {'nodes':>5} {'stage':<10} {'status':<6} "
          f"{'float_err':>9} {'LSB ref/xnn':>11} {'SQNR':>6} {'sec':>6}  error")


def row(r: dict) -> str:
    lsb = "-" if r.get("lsb_ref") is None and r.get("lsb_xnn") is None else \
        f"{_fmt(r.get('lsb_ref'), 'd')}/{_fmt(r.get('lsb_xnn'), 'd')}"
    stage = r.get("stage") or "-"
    if r.get("status") == "ok":
        stage = "done"
    return (f"{r['name'][:36]:<36} {str(r.get('source', '?'))[:22]:<22} "
            f"{_fmt(r.get('nodes'), 'd'):>5} {stage:<10} {r.get('status', '?'):<6} "
            f"{_fmt(r.get('float_rel_err'), '.1e'):>9} {lsb:>11} "
            f"{_fmt(r.get('sqnr_db'), '.1f'):>6} {_fmt(r.get('wall_s'), '.0f'):>6}  "
            f"{short_error(r.get('error')) or notes(r)}")


def notes(r: dict) -> str:
    """For a model that went through: what qatir warned about (see the JSON for the text)."""
    ws = r.get("quantize_warnings", []) + r.get("export_warnings", [])
    out = []
    bias = sum(len(re.findall(r"overflows int32", w)) for w in ws)
    if bias:
        out.append(f"bias clipped x{bias}")
    if any("XNNPACK" in w for w in ws):
        out.append("some ops off XNNPACK")
    if r.get("float_island_ops"):
        share = r.get("int8_mac_share")
        macs = f", int8 MACs {100 * share:.1f}%" if share is not None else ""
        out.append(f"{r['float_island_ops']} DEQUANTIZE (float islands{macs})")
    other = [w for w in ws if "overflows int32" not in w and "XNNPACK" not in w]
    if other:
        out.append(f"{len(other)} other warning(s)")
    return ("notes: " + "; ".join(out)) if out else ""


def task_lines(results: list[dict]) -> str:
    lines = []
    for r in results:
        t = r.get("task")
        if isinstance(t, dict):
            lines.append(f"  {r['name']:<36} {t['kind']:<10} {t.get('summary', '')}")
            for ex in t.get("examples", []):
                lines.append(f"  {'':<36} {'':<10} truth {ex['truth']!r} float {ex['float']!r} "
                             f"int8 {ex['int8']!r}")
    return ("real tasks (float vs int8 on real data):\n" + "\n".join(lines)) if lines else ""


def dynamic_quant_lines(results: list[dict]) -> str:
    """Dynamically quantized ONNX files: run against their float equivalent, and how far
    the file's own run (its activation rounding) is from that."""
    lines = [f"  {r['name']:<36} the file vs its float equivalent in onnxruntime: "
             f"{r['dynamic_quant_rel_err']:.3g} of max |output|"
             for r in results if r.get("dynamic_quant_rel_err") is not None]
    return ("dynamically quantized files (float stage against their float equivalent):\n"
            + "\n".join(lines)) if lines else ""


def summary(results: list[dict]) -> str:
    n = len(results)
    exported = sum(1 for r in results if r.get("tflite_bytes") is not None)
    exact = sum(1 for r in results if r.get("bit_exact"))
    crashes = sum(1 for r in results if r.get("status") == "CRASH")
    hangs = sum(1 for r in results if r.get("status") == "HANG")
    fails: dict[str, int] = {}
    for r in results:
        if r.get("status") != "ok":
            fails[r.get("stage") or "?"] = fails.get(r.get("stage") or "?", 0) + 1
    by = ", ".join(f"{s} {fails[s]}" for s in STAGES + sorted(set(fails) - set(STAGES))
                   if s in fails) or "none"
    return (f"corpus: {n} models, {exported} through export, {exact} bit-exact, "
            f"{crashes} crashes, {hangs} hangs, fails by stage: {by}")


def error_head(err: str | None) -> str:
    """An error message with names and numbers blanked, so equal causes count together."""
    if not err:
        return ""
    m = re.match(r"(\w+): no int8 kernel .*?for node\(s\) (.*)", err)
    if m:  # name the op types, not the nodes
        ops = sorted(set(re.findall(r"'[^']*' \((\w+)\)", m.group(2))))
        return f"{m.group(1)}: no int8 kernel for {', '.join(ops)}"
    s = re.sub(r"^(\w+): [^ ]+\.(onnx|tflite): ", r"\1: ", err)
    s = re.sub(r"'[^']*'", "'.'", s)
    s = re.sub(r"(?<![A-Za-z_0-9])-?\d+(\.\d+)?(e[-+]?\d+)?", "N", s)
    s = re.sub(r"('\.' \(\w+\), )+", "'.' (..), ", s)
    return s[:90]


def unsupported_ops(err: str | None) -> list[str]:
    m = re.search(r"unsupported operator\(s\): (.*?)(;|$)", err or "")
    return [re.sub(r" \(x\d+\)$", "", o.strip()) for o in m.group(1).split(", ")] if m else []


def failure_reasons(results: list[dict]) -> str:
    heads: dict[str, list[str]] = {}
    ops: dict[str, list[str]] = {}
    for r in results:
        if r.get("status") == "ok":
            continue
        heads.setdefault(f"[{r.get('status')} at {r.get('stage')}] {error_head(r.get('error'))}",
                         []).append(r["name"])
        for o in unsupported_ops(r.get("error")):
            ops.setdefault(o, []).append(r["name"])
    lines = ["failure reasons (by count):"]
    for h, names in sorted(heads.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        lines.append(f"  {len(names):>3}  {h}")
        lines.append(f"       {', '.join(names)}")
    if ops:
        lines.append("unsupported operators (number of models): " + ", ".join(
            f"{o} {len(n)}" for o, n in sorted(ops.items(), key=lambda kv: (-len(kv[1]), kv[0]))))
    return "\n".join(lines)


def run_corpus(manifest: str, only: str | None = None, jobs: int = 1, timeout: float = 300,
               workdir: str | None = None, out=sys.stdout) -> list[dict]:
    with open(manifest) as f:
        man = json.load(f)
    entries = [e for e in man["models"] if not only or fnmatch.fnmatch(e["name"], only)
               or only in e["name"]]
    workdir = workdir or tempfile.mkdtemp(prefix="qatir-corpus-")
    os.makedirs(workdir, exist_ok=True)
    print(HEADER, file=out, flush=True)
    results: list[dict] = [None] * len(entries)  # type: ignore[list-item]

    def go(k):
        results[k] = run_child(entries[k], manifest, timeout, workdir)
        print(row(results[k]), file=out, flush=True)

    if jobs <= 1:
        for k in range(len(entries)):
            go(k)
    else:
        with ThreadPoolExecutor(jobs) as ex:
            list(ex.map(go, range(len(entries))))
    for e in man.get("failed", []):
        if not only or fnmatch.fnmatch(e["name"], only) or only in e["name"]:
            print(f"{e['name'][:36]:<36} (did not build: {short_error(e['error'], 90)})",
                  file=out)
    if task_lines(results):
        print(task_lines(results), file=out)
    if dynamic_quant_lines(results):
        print(dynamic_quant_lines(results), file=out)
    if any(r.get("status") != "ok" for r in results):
        print(failure_reasons(results), file=out)
    print(summary(results), file=out, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="run the qatir corpus")
    ap.add_argument("--manifest", default=DEFAULT_MANIFEST)
    ap.add_argument("--only", help="fnmatch pattern or substring of model names")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per model")
    ap.add_argument("--json", help="write all results to this file")
    ap.add_argument("--workdir", help="keep per-model logs/results here")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--stage-file", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        import faulthandler

        faulthandler.enable()  # a SIGSEGV/SIGABRT prints the Python stack into the log
        with open(a.manifest) as f:
            man = json.load(f)
        entry = next(e for e in man["models"] if e["name"] == a.one)
        models_dir = man.get("models_dir") or os.path.dirname(os.path.abspath(a.manifest))
        res = run_one(entry, models_dir, a.result, a.stage_file)
        return 0 if res["status"] == "ok" else 1
    results = run_corpus(a.manifest, a.only, a.jobs, a.timeout, a.workdir)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                       "results": results}, f, indent=1, default=repr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

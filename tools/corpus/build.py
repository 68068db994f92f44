"""Build the corpus of real architectures into ``tools/corpus/models/`` (gitignored).

    python tools/corpus/build.py [--only PATTERN] [--skip-torch] [--skip-keras] [--skip-wheels]

Three sources, each model written once (a re-run skips what is already built;
``--force`` rebuilds):

- **torchvision / timm** (random init, eval mode) exported with ``torch.onnx.export``
  by ``_torch_export.py`` in a separate virtual environment, ``tools/.venv-torch``
  (``python3 -m venv tools/.venv-torch && tools/.venv-torch/bin/pip install
  torch==2.14.1 torchvision==0.29.1 timm onnx onnxscript``); torch never enters
  qatir's environment;
- **Keras applications** (``weights=None``) converted to float TFLite with
  ``tf.lite.TFLiteConverter.from_keras_model``, each in its own process;
- **trained models shipped inside pip wheels** (``pip download --no-deps`` into
  ``tools/corpus/wheels/``, the model files extracted from the wheel zip; the
  packages are never installed): mediapipe 0.10.14 (BlazeFace, palm, hand, pose,
  selfie segmentation ... as .tflite), rapidocr-onnxruntime (PP-OCR det/cls/rec
  .onnx), ddddocr (.onnx).

Every model that built gets an entry in ``models/manifest.json`` (name, path,
source, format, inputs with their shapes in the model's own layout, optional
real task); a model that failed to build is listed under ``"failed"``.
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import json
import os
import subprocess
import sys
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MODELS = os.path.join(HERE, "models")
WHEELS = os.path.join(HERE, "wheels")
TORCH_PY = os.path.join(ROOT, "tools", ".venv-torch", "bin", "python")

KERAS: dict[str, tuple[str, dict]] = {
    "keras_mobilenet_v2_035_96": ("MobileNetV2", {"alpha": 0.35, "input_shape": (96, 96, 3)}),
    "keras_mobilenet_v3_small": ("MobileNetV3Small", {"input_shape": (96, 96, 3)}),
    "keras_efficientnet_b0": ("EfficientNetB0", {"input_shape": (128, 128, 3)}),
    "keras_nasnet_mobile": ("NASNetMobile", {"input_shape": (128, 128, 3)}),
    "keras_resnet50": ("ResNet50", {"input_shape": (128, 128, 3)}),
    "keras_densenet121": ("DenseNet121", {"input_shape": (128, 128, 3)}),
    "keras_convnext_tiny": ("ConvNeXtTiny", {"input_shape": (128, 128, 3)}),
}

# wheel spec -> [(member in the zip, corpus name, {input name: shape to fix dynamic dims}, task)]
WHEEL_MODELS: dict[str, list[tuple[str, str, dict, dict | None]]] = {
    "mediapipe==0.10.14": [
        ("mediapipe/modules/face_detection/face_detection_short_range.tflite",
         "mp_face_detection_short_range", {}, {"kind": "det_scores", "norm": "pm1"}),
        ("mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite",
         "mp_face_detection_full_range_sparse", {}, {"kind": "det_scores", "norm": "pm1"}),
        ("mediapipe/modules/palm_detection/palm_detection_lite.tflite",
         "mp_palm_detection_lite", {}, {"kind": "det_scores", "norm": "01"}),
        ("mediapipe/modules/hand_landmark/hand_landmark_lite.tflite",
         "mp_hand_landmark_lite", {}, {"kind": "images", "norm": "01"}),
        ("mediapipe/modules/pose_detection/pose_detection.tflite",
         "mp_pose_detection", {}, {"kind": "det_scores", "norm": "pm1"}),
        ("mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
         "mp_selfie_segmentation", {}, {"kind": "images", "norm": "01"}),
        ("mediapipe/modules/face_landmark/face_landmark.tflite",
         "mp_face_landmark", {}, {"kind": "images", "norm": "01"}),
        ("mediapipe/modules/iris_landmark/iris_landmark.tflite",
         "mp_iris_landmark", {}, {"kind": "images", "norm": "01"}),
        ("mediapipe/modules/palm_detection/palm_detection_full.tflite",
         "mp_palm_detection_full", {}, {"kind": "det_scores", "norm": "01"}),
        ("mediapipe/modules/pose_landmark/pose_landmark_full.tflite",
         "mp_pose_landmark_full", {}, {"kind": "images", "norm": "01"}),
        ("mediapipe/modules/face_landmark/face_landmark_with_attention.tflite",
         "mp_face_landmark_with_attention", {}, {"kind": "images", "norm": "01"}),
    ],
    "rapidocr-onnxruntime==1.4.4": [
        ("rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
         "ppocr_mobile_v2_cls", {"x": [1, 3, 48, 192]}, {"kind": "ocr_cls"}),
        ("rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
         "ppocrv4_rec", {"x": [1, 3, 48, 320]}, {"kind": "ocr_rec"}),
        ("rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
         "ppocrv4_det", {"x": [1, 3, 256, 256]}, {"kind": "images", "norm": "imagenet"}),
    ],
    "ddddocr==1.6.1": [
        ("ddddocr/common_old.onnx", "ddddocr_common_old", {"input1": [1, 1, 64, 256]}, None),
        ("ddddocr/common_det.onnx", "ddddocr_common_det", {}, None),
    ],
}


def log(msg: str) -> None:
    print(msg, flush=True)


def side_path(name: str) -> str:
    return os.path.join(MODELS, f"{name}.entry.json")


def done(name: str, force: bool) -> bool:
    if force or not os.path.exists(side_path(name)):
        return False
    with open(side_path(name)) as f:
        entry = json.load(f)
    return "error" not in entry and os.path.exists(os.path.join(MODELS, entry["path"]))


def write_side(entry: dict) -> None:
    with open(side_path(entry["name"]), "w") as f:
        json.dump(entry, f, indent=1)


# ----------------------------------------------------------------------- torch
def build_torch(names: list[str], force: bool) -> None:
    if not os.path.exists(TORCH_PY):
        for n in names:
            write_side({"name": n, "error": f"no torch environment at {TORCH_PY}"})
        return
    todo = [n for n in names if not done(n, force)]
    for n in todo:  # one process per model: an exporter crash costs one model
        t0 = time.time()
        r = subprocess.run(["nice", TORCH_PY, os.path.join(HERE, "_torch_export.py"), MODELS, n],
                           capture_output=True, text=True, timeout=1800)
        side = os.path.join(MODELS, f"{n}.onnx.json")
        if os.path.exists(side):
            with open(side) as f:
                entry = json.load(f)
            os.remove(side)
        else:
            entry = {"name": n, "error": f"exporter process exited {r.returncode}: "
                     f"{(r.stderr or '').strip().splitlines()[-1:] or ''}"}
        write_side(entry)
        log(f"  {n}: {entry.get('error', 'ok')} ({time.time() - t0:.0f} s, "
            f"exporter: {entry.get('exporter', '-')[:60]})")


def torch_names() -> list[str]:
    src = open(os.path.join(HERE, "_torch_export.py")).read()
    ns: dict = {}
    start = src.index("MODELS: dict")
    end = src.index("\n}\n", start) + 3
    exec(compile(src[start:end].replace("MODELS: dict[str, tuple[str, str, dict, int]]",
                                        "MODELS"), "models", "exec"), ns)
    return list(ns["MODELS"])


# ----------------------------------------------------------------------- keras
def keras_one(name: str) -> None:
    """In a child process: build one Keras application, write float TFLite + entry."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    ctor, kwargs = KERAS[name]
    t0 = time.time()
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, ctor)(weights=None, **kwargs)
    buf = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    path = f"{name}.tflite"
    with open(os.path.join(MODELS, path), "wb") as f:
        f.write(buf)
    write_side({"name": name, "path": path, "format": "tflite", "source": "keras",
                "arch": ctor, "inputs": input_specs_tflite(os.path.join(MODELS, path)),
                "build_s": round(time.time() - t0, 1)})


def build_keras(names: list[str], force: bool) -> None:
    for n in names:
        if done(n, force):
            continue
        t0 = time.time()
        r = subprocess.run(["nice", sys.executable, os.path.abspath(__file__), "--keras-one", n],
                           capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            tail = (r.stderr or "").strip().splitlines()[-1:] or [f"exit {r.returncode}"]
            write_side({"name": n, "error": f"keras build exited {r.returncode}: {tail[0][:300]}"})
        with open(side_path(n)) as f:
            entry = json.load(f)
        log(f"  {n}: {entry.get('error', 'ok')} ({time.time() - t0:.0f} s)")


def input_specs_tflite(path: str) -> list[dict]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=path)
    return [{"name": d["name"], "shape": [int(s) for s in d["shape"]], "layout": "NHWC",
             "dtype": str(d["dtype"].__name__)} for d in it.get_input_details()]


def input_specs_onnx(path: str, fixed: dict) -> list[dict]:
    import onnx

    m = onnx.load(path, load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    specs = []
    for i in m.graph.input:
        if i.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in i.type.tensor_type.shape.dim]
        shape = fixed.get(i.name) or [1 if (d is None and k == 0) else d
                                      for k, d in enumerate(dims)]
        specs.append({"name": i.name, "shape": shape, "source_shape": dims,
                      "layout": "NCHW" if len(dims) == 4 else "ND"})
    return specs


# ----------------------------------------------------------------------- wheels
def build_wheels(only: str | None, force: bool) -> None:
    os.makedirs(WHEELS, exist_ok=True)
    for spec, members in WHEEL_MODELS.items():
        members = [m for m in members if not only or fnmatch.fnmatch(m[1], only)]
        if not members or all(done(m[1], force) for m in members):
            continue
        pkg, ver = spec.split("==")
        pattern = os.path.join(WHEELS, f"{pkg.replace('-', '_')}-{ver}-*.whl")
        if not glob.glob(pattern):
            log(f"  pip download --no-deps {spec}")
            r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec,
                                "-d", WHEELS], capture_output=True, text=True, timeout=900)
            if r.returncode != 0 or not glob.glob(pattern):
                for _, name, _, _ in members:
                    write_side({"name": name, "error": f"pip download {spec} failed: "
                                f"{r.stderr.strip()[-300:]}"})
                continue
        whl = glob.glob(pattern)[0]
        with zipfile.ZipFile(whl) as z:
            for member, name, fixed, task in members:
                if done(name, force):
                    continue
                ext = os.path.splitext(member)[1]
                path = f"{name}{ext}"
                try:
                    with z.open(member) as src, open(os.path.join(MODELS, path), "wb") as dst:
                        dst.write(src.read())
                    fmt = ext[1:]
                    inputs = (input_specs_onnx(os.path.join(MODELS, path), fixed)
                              if fmt == "onnx" else input_specs_tflite(os.path.join(MODELS, path)))
                    entry = {"name": name, "path": path, "format": fmt,
                             "source": f"wheel:{pkg}", "arch": os.path.basename(member),
                             "wheel": os.path.basename(whl), "inputs": inputs}
                    if task:
                        entry["task"] = task
                except Exception as e:
                    entry = {"name": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}
                write_side(entry)
                log(f"  {name}: {entry.get('error', 'ok')}")


def build_data(force: bool) -> None:
    """Real-task data (rendered text, the scikit-learn photos), rendered with PIL in the
    torch environment (qatir's environment has no PIL)."""
    os.makedirs(os.path.join(MODELS, "data"), exist_ok=True)
    out = os.path.join(MODELS, "data")
    if not force and all(os.path.exists(os.path.join(out, f))
                         for f in ("text_lines.npz", "sample_images.npz")):
        return
    import sklearn

    sk = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images")
    if not os.path.exists(TORCH_PY):
        log("  task data: no torch environment (PIL lives there); real tasks are skipped")
        return
    r = subprocess.run([TORCH_PY, os.path.join(HERE, "_torch_export.py"), "--data", out, sk],
                       capture_output=True, text=True, timeout=600)
    log(f"  task data: {'ok' if r.returncode == 0 else r.stderr.strip()[-300:]}")


def write_manifest() -> dict:
    entries, failed = [], []
    for p in sorted(glob.glob(os.path.join(MODELS, "*.entry.json"))):
        with open(p) as f:
            e = json.load(f)
        (failed if "error" in e else entries).append(e)
    order = {n: i for i, n in enumerate(torch_names() + list(KERAS) +
                                        [m[1] for ms in WHEEL_MODELS.values() for m in ms])}
    entries.sort(key=lambda e: order.get(e["name"], 1 << 30))
    man = {"built": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "models": entries,
           "failed": [{"name": e["name"], "error": e["error"]} for e in failed]}
    with open(os.path.join(MODELS, "manifest.json"), "w") as f:
        json.dump(man, f, indent=1)
    return man


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="fnmatch pattern of model names")
    ap.add_argument("--force", action="store_true", help="rebuild models already built")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--skip-keras", action="store_true")
    ap.add_argument("--skip-wheels", action="store_true")
    ap.add_argument("--keras-one", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    os.makedirs(MODELS, exist_ok=True)
    if a.keras_one:
        keras_one(a.keras_one)
        return 0
    sel = lambda names: [n for n in names if not a.only or fnmatch.fnmatch(n, a.only)]  # noqa: E731
    if not a.skip_wheels:
        log("wheels:")
        build_wheels(a.only, a.force)
        build_data(a.force)
    if not a.skip_keras:
        log("keras:")
        build_keras(sel(list(KERAS)), a.force)
    if not a.skip_torch:
        log("torch:")
        build_torch(sel(torch_names()), a.force)
    man = write_manifest()
    log(f"manifest: {len(man['models'])} models, {len(man['failed'])} failed to build "
        f"({', '.join(e['name'] for e in man['failed']) or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

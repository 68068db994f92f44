"""Torch side of the corpus build: run by ``tools/.venv-torch/bin/python`` only.

``python _torch_export.py OUT_DIR NAME [NAME ...]`` exports each named model
(random init, eval mode) with ``torch.onnx.export`` to ``OUT_DIR/NAME.onnx`` and
writes ``OUT_DIR/NAME.onnx.json`` (its manifest entry, or ``{"error": ...}``).
``python _torch_export.py --data OUT_DIR SKLEARN_IMAGES_DIR`` renders the
real-task data with PIL (text lines for PP-OCR, the scikit-learn sample photos).

Nothing here downloads weights: every model is built with ``weights=None`` /
``pretrained=False``. qatir is not imported here, and torch never enters
qatir's environment.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

# name -> (library, constructor name, kwargs, input H=W)
MODELS: dict[str, tuple[str, str, dict, int]] = {
    "tv_resnet18": ("torchvision", "resnet18", {}, 128),
    "tv_mobilenet_v2": ("torchvision", "mobilenet_v2", {}, 128),
    "tv_mobilenet_v3_small": ("torchvision", "mobilenet_v3_small", {}, 128),
    "tv_mobilenet_v3_large": ("torchvision", "mobilenet_v3_large", {}, 128),
    "tv_efficientnet_b0": ("torchvision", "efficientnet_b0", {}, 128),
    "tv_shufflenet_v2_x0_5": ("torchvision", "shufflenet_v2_x0_5", {}, 128),
    "tv_squeezenet1_1": ("torchvision", "squeezenet1_1", {}, 128),
    "tv_mnasnet0_5": ("torchvision", "mnasnet0_5", {}, 128),
    "tv_regnet_x_400mf": ("torchvision", "regnet_x_400mf", {}, 128),
    "tv_regnet_y_400mf": ("torchvision", "regnet_y_400mf", {}, 128),
    "tv_resnext50_32x4d": ("torchvision", "resnext50_32x4d", {}, 128),
    "tv_densenet121": ("torchvision", "densenet121", {}, 128),
    "tv_googlenet": ("torchvision", "googlenet", {"aux_logits": False, "init_weights": True}, 128),
    "tv_convnext_tiny": ("torchvision", "convnext_tiny", {}, 128),
    "tv_swin_t": ("torchvision", "swin_t", {}, 224),
    "tv_lraspp_mobilenet_v3_large": ("torchvision.segmentation", "lraspp_mobilenet_v3_large",
                                     {"weights_backbone": None}, 128),
    "tv_deeplabv3_mobilenet_v3_large": ("torchvision.segmentation",
                                        "deeplabv3_mobilenet_v3_large",
                                        {"weights_backbone": None, "aux_loss": False}, 128),
    "tv_efficientnet_v2_s": ("torchvision", "efficientnet_v2_s", {}, 128),
    "tv_fcn_resnet50": ("torchvision.segmentation", "fcn_resnet50",
                        {"weights_backbone": None, "aux_loss": False}, 128),
    "timm_lcnet_050": ("timm", "lcnet_050", {}, 128),
    "timm_ghostnet_100": ("timm", "ghostnet_100", {}, 128),
    "timm_mixnet_s": ("timm", "mixnet_s", {}, 128),
    "timm_repvgg_a0": ("timm", "repvgg_a0", {}, 128),
    "timm_vit_tiny_patch16": ("timm", "vit_tiny_patch16_224", {"img_size": 128}, 128),
    "timm_mobilevit_xxs": ("timm", "mobilevit_xxs", {}, 128),
    "timm_efficientvit_b0": ("timm", "efficientvit_b0", {}, 128),
    "timm_levit_128s": ("timm", "levit_128s", {"img_size": 128}, 128),
    "timm_poolformer_s12": ("timm", "poolformer_s12", {}, 128),
    "timm_maxvit_nano_rw": ("timm", "maxvit_nano_rw_256", {"img_size": 128}, 128),
    "timm_fastvit_t8": ("timm", "fastvit_t8", {}, 128),
    "yolov8n": ("torch", "yolov8n", {}, 640),  # hand-written in _yolo.py (no ultralytics)
}


def build_model(lib: str, ctor: str, kwargs: dict):
    if lib == "torch":  # a module written out here (_yolo.py)
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import _yolo

        return getattr(_yolo, ctor)(**kwargs)
    if lib == "timm":
        import timm

        return timm.create_model(ctor, pretrained=False, **kwargs)
    import torchvision

    mod = torchvision.models.segmentation if lib == "torchvision.segmentation" else torchvision.models
    return getattr(mod, ctor)(weights=None, **kwargs)


def export_one(out_dir: str, name: str) -> dict:
    import torch

    lib, ctor, kwargs, hw = MODELS[name]
    torch.manual_seed(0)
    model = build_model(lib, ctor, kwargs).eval()
    if lib == "torchvision.segmentation":  # returns a dict: export its 'out' tensor only
        inner = model

        class Wrap(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.m = inner

            def forward(self, x):
                return self.m(x)["out"]

        model = Wrap().eval()
    x = torch.randn(1, 3, hw, hw)
    path = os.path.join(out_dir, f"{name}.onnx")
    exporter = "dynamo"
    t0 = time.time()
    try:
        torch.onnx.export(model, (x,), path, input_names=["input"], output_names=["output"],
                          opset_version=18, dynamo=True, external_data=False)
    except Exception as e:  # the TorchScript exporter is what many people still use
        first = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        exporter = f"torchscript (dynamo failed: {first})"
        torch.onnx.export(model, (x,), path, input_names=["input"], output_names=["output"],
                          opset_version=17, dynamo=False)
    return {"name": name, "path": os.path.basename(path), "format": "onnx",
            "source": lib.split(".")[0], "arch": ctor, "exporter": exporter,
            "inputs": [{"name": "input", "shape": [1, 3, hw, hw], "layout": "NCHW"}],
            "build_s": round(time.time() - t0, 1)}


def render_data(out_dir: str, sk_images: str) -> None:
    """Text lines (PP-OCR rec/cls tasks) and the scikit-learn sample photos, as .npz."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(0)
    words = ["qatir", "int8", "LiteRT", "HELLO", "2026", "tflite", "ONNX", "model", "quant",
             "world", "Python", "graph", "tensor", "12345", "calib", "SQNR"]
    try:
        font = ImageFont.load_default(size=32)
    except TypeError:
        font = ImageFont.load_default()
    texts, imgs = [], []
    for _ in range(16):
        text = " ".join(rng.choice(words, size=2))
        im = Image.new("RGB", (320, 48), (255, 255, 255))
        ImageDraw.Draw(im).text((6, 6), text, fill=(0, 0, 0), font=font)
        texts.append(text)
        imgs.append(np.asarray(im))
    np.savez(os.path.join(out_dir, "text_lines.npz"), images=np.stack(imgs),
             texts=np.array(texts))
    photos = [np.asarray(Image.open(os.path.join(sk_images, f)).convert("RGB"))
              for f in ("china.jpg", "flower.jpg")]
    np.savez(os.path.join(out_dir, "sample_images.npz"), images=np.stack(photos))


def main(argv: list[str]) -> int:
    if argv[0] == "--data":
        render_data(argv[1], argv[2])
        return 0
    import torch

    torch.set_num_threads(1)
    out_dir, names = argv[0], argv[1:]
    for name in names:
        side = os.path.join(out_dir, f"{name}.onnx.json")
        print(f"[torch] {name} ...", flush=True)
        try:
            entry = export_one(out_dir, name)
        except Exception as e:
            entry = {"name": name, "error": f"{type(e).__name__}: {str(e)[:500]}",
                     "traceback": traceback.format_exc()[-2000:]}
        with open(side, "w") as f:
            json.dump(entry, f, indent=1)
        print(f"[torch] {name}: {entry.get('error', 'ok')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

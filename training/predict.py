"""Expression of the faces in image files, through the one analysis path (shared.analyzer.FaceAnalyzer).

    python -m training predict face.png group.jpg [--model-dir shared/bundled_model] [--no-detect]

The same detector, registration, crop and model as the pipeline and ``POST /api/predict``, and the same
JSON per face (``box``, ``emotion``, ``scores``, ``landmarks``). By default an image no larger than 96 px
on its longer side is taken as one face crop and a larger one is searched for faces; ``--no-detect``
takes every image as a face crop, ``--detect`` searches every image.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2


def read_image(path: str | Path):
    """A BGR uint8 image from a file; FileNotFoundError when it cannot be read as an image."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return image


def predict_images(analyzer, paths: list[str | Path], detect: bool | None = None) -> list[dict[str, Any]]:
    """One dict per image: {"image": path, "faces": [face JSON, ...]} (an empty list when no face)."""
    return [{"image": str(p), "faces": analyzer.analyze(read_image(p), detect=detect).to_json()} for p in paths]


def add_cli(sub) -> None:
    p = sub.add_parser("predict", help="expression of the faces in image files",
                       description="Images up to 96 px are taken as face crops; larger ones are searched for "
                                   "faces (the pipeline's detector and registration). Uses the int8 TFLite "
                                   "model by default.")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--model-dir", default=None, help="exported model directory (default: the bundled model)")
    p.add_argument("--backend", choices=["tflite", "keras"], default="tflite")
    p.add_argument("--precision", choices=["int8", "float32"], default="int8", help="TFLite form")
    p.add_argument("--detect", action="store_true", default=None,
                   help="search every image for faces (default: only images over 96 px)")
    p.add_argument("--no-detect", dest="detect", action="store_false",
                   help="the images are face crops: classify each whole image, no detection")
    p.add_argument("--detector", default=None, choices=["yunet", "haar", "blazeface"],
                   help="detector kind (default: the pipeline's, FERLIVE_DETECTOR_KIND or yunet)")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(a) -> int:
    from shared.analyzer import FaceAnalyzer
    from shared.config import Config

    cfg = Config.from_env()
    if a.detector:
        cfg = cfg.replace(detector_kind=a.detector)
    analyzer = FaceAnalyzer.load(a.model_dir, detector=cfg, backend=a.backend, precision=a.precision)
    for r in predict_images(analyzer, a.images, a.detect):
        if a.json:
            print(json.dumps(r))
        elif not r["faces"]:
            print(f"{r['image']}: no face found")
        for f in r["faces"] if not a.json else ():
            s = f["scores"]
            print(f"{r['image']} {f['box']}: {f['emotion']} ({s[f['emotion']]:.2f})  "
                  + " ".join(f"{k}={v:.2f}" for k, v in s.items()))
    return 0

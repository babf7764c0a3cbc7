"""Expression of the faces in image files, with the exported model (TFLite: no TensorFlow).

    python -m training predict face.png group.jpg [--model-dir shared/bundled_model]

An image no larger than 96 px on its longer side is taken as one face crop; a larger one is searched
for faces with OpenCV's frontal-face Haar cascade.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from shared.preprocess import crop_face, to_gray

CROP_MAX_SIDE = 96


@dataclass(frozen=True)
class FacePrediction:
    """One face of one image: its box (x, y, w, h; the whole image for a crop), label and probabilities."""

    image: str
    box_xywh: tuple[int, int, int, int]
    label: str
    probs: np.ndarray


@lru_cache(maxsize=1)
def _cascade() -> cv2.CascadeClassifier:
    """OpenCV's frontal-face Haar cascade, loaded once per process."""
    return cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))


def find_faces(image_gray: np.ndarray, min_size: int = 48) -> list[tuple[int, int, int, int]]:
    """Haar-cascade face boxes (x, y, w, h) in a gray image, largest first."""
    boxes = _cascade().detectMultiScale(cv2.equalizeHist(image_gray), scaleFactor=1.1, minNeighbors=5,
                                        minSize=(min_size, min_size))
    return sorted((tuple(int(v) for v in b) for b in boxes), key=lambda b: -b[2] * b[3])


def face_crops(image_bgr: np.ndarray) -> tuple[list[tuple[int, int, int, int]], list[np.ndarray]]:
    """The image itself when it is crop-sized, else the faces the cascade finds (possibly none)."""
    gray = to_gray(image_bgr)
    h, w = gray.shape
    if max(h, w) <= CROP_MAX_SIDE:
        return [(0, 0, w, h)], [gray]
    from services.detect.detector import FRAMING  # the Haar box -> FER2013 framing measured by detect

    margin, _shift = FRAMING["haar"]
    boxes = find_faces(gray)
    return boxes, [crop_face(gray, b, margin=margin) for b in boxes]


def predict_images(model, paths: list[str | Path]) -> list[FacePrediction]:
    """Predictions for every face of every image, in one model call."""
    found: list[tuple[str, tuple[int, int, int, int]]] = []
    crops: list[np.ndarray] = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"cannot read image {path}")
        boxes, faces = face_crops(image)
        found += [(str(path), b) for b in boxes]
        crops += faces
    probs = model.predict_proba(crops)
    return [FacePrediction(p, b, model.labels[int(np.argmax(pr))], pr) for (p, b), pr in zip(found, probs)]


def add_cli(sub) -> None:
    p = sub.add_parser("predict", help="expression of the faces in image files",
                       description="Images up to 96 px are taken as face crops; larger ones are searched for "
                                   "faces (OpenCV Haar cascade). Uses the int8 TFLite model by default.")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--model-dir", default=None, help="exported model directory (default: the bundled model)")
    p.add_argument("--backend", choices=["tflite", "keras"], default="tflite")
    p.add_argument("--precision", choices=["int8", "float32"], default="int8", help="TFLite form")
    p.add_argument("--json", action="store_true", help="print one JSON object per face")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(a) -> int:
    from shared.model import FacialExpressionModel

    model = FacialExpressionModel(a.model_dir, backend=a.backend, precision=a.precision)
    results = predict_images(model, a.images)
    seen = {r.image for r in results}
    for path in a.images:
        if str(path) not in seen:
            print(json.dumps({"image": str(path), "faces": 0}) if a.json else f"{path}: no face found")
    for r in results:
        probs = {name: round(float(p), 4) for name, p in zip(model.labels, r.probs)}
        if a.json:
            print(json.dumps({"image": r.image, "box_xywh": list(r.box_xywh), "label": r.label, "probs": probs}))
        else:
            print(f"{r.image} {list(r.box_xywh)}: {r.label} ({probs[r.label]:.2f})  "
                  + " ".join(f"{k}={v:.2f}" for k, v in probs.items()))
    return 0

"""One-shot prediction for ``POST /api/predict``: the pipeline's FaceDetector, preprocessing and model.

Built once per process (lazily, on first use) and kept in ``app.extensions``; never per request.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from shared.labels import EMOTIONS

log = logging.getLogger(__name__)

BUNDLED_MODEL_DIR = Path(__file__).resolve().parents[2] / "shared" / "bundled_model"


@dataclass(frozen=True)
class FaceResult:
    """One face: box in the sent image's pixels, the top emotion and all seven scores."""

    box_xywh: tuple[int, int, int, int]
    emotion: str
    scores: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"box": list(self.box_xywh), "emotion": self.emotion, "scores": self.scores}


def faces_to_results(boxes_xywh: np.ndarray, probs: np.ndarray, scale: float = 1.0,
                     labels: tuple[str, ...] = EMOTIONS) -> list[FaceResult]:
    """Detector boxes (N,4) and probabilities (N,7) -> FaceResults, boxes multiplied by `scale`."""
    probs = np.asarray(probs, dtype=np.float32).reshape(-1, len(labels))
    boxes = np.asarray(boxes_xywh).reshape(-1, 4)
    if len(boxes) != len(probs):
        raise ValueError(f"{len(boxes)} boxes but {len(probs)} probability rows")
    out = []
    for box, p in zip(boxes, probs):
        out.append(FaceResult(
            box_xywh=tuple(int(round(float(v) * scale)) for v in box),
            emotion=labels[int(np.argmax(p))],
            scores={name: round(float(v), 4) for name, v in zip(labels, p)},
        ))
    return out


def read_card(model_dir: str | Path | None) -> dict[str, Any]:
    """The model dir's card.json (labels, metrics, version); {} if it has none."""
    path = Path(model_dir or BUNDLED_MODEL_DIR) / "card.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        log.warning("no model card at %s", path)
        return {}


class Predictor:
    """FaceDetector + FacialExpressionModel, thread-safe, for whole images."""

    def __init__(self, detector: Any, model: Any, model_dir: str | Path | None = None) -> None:
        self.detector = detector
        self.model = model
        self.model_dir = Path(model_dir) if model_dir else BUNDLED_MODEL_DIR
        self.card = read_card(self.model_dir)
        self.labels: tuple[str, ...] = tuple(self.card.get("labels") or EMOTIONS)
        if self.labels != EMOTIONS:
            raise ValueError(f"model card labels {self.labels} differ from shared.EMOTIONS {EMOTIONS}")
        self._lock = threading.Lock()  # the TFLite interpreter is not safe to share between threads

    @classmethod
    def load(cls, model_dir: str | Path | None = None) -> "Predictor":
        """The pipeline's detector and the model in `model_dir` (None: the bundled one)."""
        from services.detect.detector import FaceDetector
        from shared.model import FacialExpressionModel
        return cls(FaceDetector(), FacialExpressionModel(str(model_dir) if model_dir else None), model_dir)

    def predict(self, frame_bgr: np.ndarray, scale: float = 1.0) -> tuple[list[FaceResult], dict[str, float]]:
        """Faces in a BGR frame and the time taken per step in ms; boxes multiplied by `scale`."""
        t0 = time.perf_counter()
        with self._lock:
            det = self.detector.detect(frame_bgr)
            t1 = time.perf_counter()
            probs = self.model.predict_proba(det.crops) if len(det.crops) else np.zeros((0, len(self.labels)))
        t2 = time.perf_counter()
        results = faces_to_results(det.boxes_xywh, probs, scale, self.labels)
        return results, {"detect": round((t1 - t0) * 1e3, 2), "classify": round((t2 - t1) * 1e3, 2)}


class LazyPredictor:
    """Builds the Predictor on first use (once, under a lock) so app start-up stays light."""

    def __init__(self, factory: Callable[[], Predictor]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._predictor: Predictor | None = None

    def get(self) -> Predictor:
        if self._predictor is None:
            with self._lock:
                if self._predictor is None:
                    self._predictor = self._factory()
        return self._predictor

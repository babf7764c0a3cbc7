"""One analysis path for every entry point: detector + registration + crop + model -> typed results.

    analyzer = FaceAnalyzer.load()                      # YuNet + the bundled model, each loaded once
    result = analyzer.analyze(image_bgr)                # FaceAnalysis: boxes, landmarks, probs, emotions
    result.to_json()                                    # [{"box", "emotion", "scores", "landmarks"}, ...]
    analyzer.analyze(face_bgr, detect=False)            # the image is already a face crop
    det = analyzer.detect(frame_bgr, source_id="cam0")  # detection and crops only (the detect stage)

``detect=None`` (the default) takes images no larger than ``CROP_MAX_SIDE`` px on their longer side as one
face crop (no detector finds a face that fills a 48x48 image) and searches larger ones. The detect stage,
``POST /api/predict``, ``ferlive predict`` and the notebook all go through this class, so they find the
same boxes and give the same labels for the same image. An analyzer serialises its calls with a lock (the
detector's per-source state and the TFLite interpreter are not thread-safe), so one may serve a threaded
web server.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from shared.detector import NUM_LANDMARKS, Detections, DetectorConfig, FaceDetector
from shared.labels import EMOTIONS
from shared.messages import FaceResult
from shared.preprocess import FACE_SIZE, prepare_faces, to_gray

CROP_MAX_SIDE = 96
"""With detect=None, an image at most this many px on its longer side is taken as one face crop."""


class Model(Protocol):
    labels: tuple[str, ...]

    def predict_proba(self, faces: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class FaceAnalysis:
    """The faces of one image: boxes_xywh int32 (N,4), landmarks float32 (N,5,2) (NaN: not known),
    probs float32 (N,C) in `labels` order; no face is an ordinary empty result. `timing_ms` says what
    each step cost."""

    boxes_xywh: np.ndarray
    landmarks: np.ndarray
    probs: np.ndarray
    labels: tuple[str, ...] = EMOTIONS
    timing_ms: dict[str, float] = field(default_factory=dict, compare=False)
    crops: np.ndarray | None = field(default=None, compare=False, repr=False)  # uint8 (N,48,48): what was classified

    def __post_init__(self) -> None:
        n = len(self.boxes_xywh)
        if self.boxes_xywh.dtype != np.int32 or self.boxes_xywh.shape != (n, 4):
            raise ValueError(f"boxes_xywh must be int32 (N,4), got {self.boxes_xywh.dtype} {self.boxes_xywh.shape}")
        if self.landmarks.dtype != np.float32 or self.landmarks.shape != (n, NUM_LANDMARKS, 2):
            raise ValueError(f"landmarks must be float32 ({n},{NUM_LANDMARKS},2), got "
                             f"{self.landmarks.dtype} {self.landmarks.shape}")
        if self.probs.dtype != np.float32 or self.probs.shape != (n, len(self.labels)):
            raise ValueError(f"probs must be float32 ({n},{len(self.labels)}), got {self.probs.dtype} "
                             f"{self.probs.shape}")

    @classmethod
    def empty(cls, labels: tuple[str, ...] = EMOTIONS) -> "FaceAnalysis":
        return cls(np.zeros((0, 4), np.int32), np.zeros((0, NUM_LANDMARKS, 2), np.float32),
                   np.zeros((0, len(labels)), np.float32), labels)

    def __len__(self) -> int:
        return len(self.boxes_xywh)

    @property
    def emotions(self) -> list[str]:
        """The top label of each face."""
        return [self.labels[int(i)] for i in np.argmax(self.probs, 1)] if len(self) else []

    def to_json(self, scale: float = 1.0) -> list[dict[str, Any]]:
        """One dict per face, coordinates multiplied by `scale`: the JSON shape every entry point answers."""
        return [face_json(b, e, p, lm, scale, self.labels)
                for b, e, p, lm in zip(self.boxes_xywh, self.emotions, self.probs, self.landmarks)]


def landmarks_json(landmarks: np.ndarray, scale: float = 1.0) -> list[list[float]] | None:
    """(5,2) landmarks -> [[x, y], ...] rounded to 0.1 px, or None when the detector gives none."""
    lm = np.asarray(landmarks, np.float64).reshape(NUM_LANDMARKS, 2)
    if not np.isfinite(lm).any():
        return None
    return [[round(float(x) * scale, 1), round(float(y) * scale, 1)] if np.isfinite([x, y]).all() else None
            for x, y in lm]


LANDMARK_COLUMNS: tuple[str, ...] = tuple(f"lm{k}_{c}" for k in range(NUM_LANDMARKS) for c in "xy")
"""Table columns of the five landmarks (CSV of `ferlive predict` and `ferlive analyze`)."""


def face_results(boxes_xywh: np.ndarray, raw_probs: np.ndarray, scores: np.ndarray | None = None,
                 track_ids: np.ndarray | None = None, landmarks: np.ndarray | None = None) -> list[FaceResult]:
    """FaceResults (what shared.draw.annotate paints and the web shows): the label is the argmax of
    ``scores`` (a track's smoothed probabilities; default the raw ones), ``raw_scores`` the model's own;
    track ids default to 0..N-1, landmarks (N,5,2) with NaN where unknown."""
    scores = raw_probs if scores is None else scores
    return [FaceResult(box_xywh=tuple(int(v) for v in boxes_xywh[i]), emotion=EMOTIONS[int(np.argmax(scores[i]))],
                       scores={e: float(p) for e, p in zip(EMOTIONS, scores[i])},
                       raw_scores={e: float(p) for e, p in zip(EMOTIONS, raw_probs[i])},
                       track_id=int(track_ids[i]) if track_ids is not None else i,
                       landmarks=landmarks_json(landmarks[i]) if landmarks is not None else None)
            for i in range(len(boxes_xywh))]


def face_json(box_xywh: Any, emotion: str, probs: Any, landmarks: Any, scale: float = 1.0,
              labels: tuple[str, ...] = EMOTIONS) -> dict[str, Any]:
    """One face as JSON: box (ints), emotion, scores (label -> prob, 4 decimals), landmarks ([[x,y]]*5|None)."""
    return {"box": [int(round(float(v) * scale)) for v in box_xywh], "emotion": emotion,
            "scores": {k: round(float(v), 4) for k, v in zip(labels, probs)},
            "landmarks": landmarks_json(landmarks, scale)}


class FaceAnalyzer:
    """Detector + registration + crop + model, each built once and injected; thread-safe.

    `detector`: a FaceDetector (None: FaceDetector() with the measured defaults); `model`: anything with
    ``labels`` and ``predict_proba(uint8 (N,48,48)) -> (N,C)`` (None: detection only, as in the detect
    stage)."""

    def __init__(self, detector: FaceDetector | None = None, model: Model | None = None) -> None:
        self.detector = detector if detector is not None else FaceDetector()
        self.model = model
        self.labels: tuple[str, ...] = tuple(getattr(model, "labels", EMOTIONS))
        if self.labels != EMOTIONS:
            raise ValueError(f"model labels {self.labels} differ from shared.EMOTIONS {EMOTIONS}")
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model_dir: str | Path | None = None, detector: DetectorConfig | Any | None = None,
             with_model: bool = True, **model_kwargs: Any) -> "FaceAnalyzer":
        """A FaceDetector(detector) and the FacialExpressionModel in `model_dir` (None: the bundled one)."""
        model = None
        if with_model:
            from shared.model import FacialExpressionModel
            model = FacialExpressionModel(str(model_dir) if model_dir else None, **model_kwargs)
        return cls(FaceDetector(detector), model)

    def detect(self, frame_bgr: np.ndarray, source_id: str = "") -> Detections:
        """Faces of a frame: framed boxes, landmarks, 48x48 crops (no classification)."""
        with self._lock:
            return self.detector.detect(frame_bgr, source_id=source_id)

    def _locate(self, image_bgr: np.ndarray, detect: bool | None, source_id: str):
        """(boxes, landmarks, crops) of one image; call under the lock."""
        image = np.asarray(image_bgr)
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or min(image.shape[:2]) < 1:
            raise ValueError(f"image must be uint8 BGR (H,W,3) or gray (H,W), got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        if detect is None:
            detect = max(h, w) > CROP_MAX_SIDE
        if detect:
            det = self.detector.detect(image, source_id=source_id)
            return det.boxes_xywh, det.landmarks, det.crops
        return (np.array([[0, 0, w, h]], np.int32), np.full((1, NUM_LANDMARKS, 2), np.nan, np.float32),
                prepare_faces(to_gray(image)[None], FACE_SIZE))

    def analyze_many(self, images_bgr: list[np.ndarray], detect: bool | None = None) -> list[FaceAnalysis]:
        """analyze() of several images, their faces classified in one model call (batched inference); the
        results equal analyze() of each image."""
        if self.model is None:
            raise ValueError("this FaceAnalyzer has no model (built for detection only): pass model=")
        with self._lock:
            found = [self._locate(image, detect, "") for image in images_bgr]
            crops = [c for _, _, c in found]
            every = np.concatenate(crops) if crops else np.zeros((0, FACE_SIZE, FACE_SIZE), np.uint8)
            probs = (np.asarray(self.model.predict_proba(every), np.float32) if len(every)
                     else np.zeros((0, len(self.labels)), np.float32))
        out, k = [], 0
        for boxes, landmarks, c in found:
            out.append(FaceAnalysis(boxes, landmarks, probs[k:k + len(c)], self.labels, crops=c))
            k += len(c)
        return out

    def analyze(self, image_bgr: np.ndarray, detect: bool | None = None, source_id: str = "") -> FaceAnalysis:
        """Faces and their expressions in a uint8 BGR (or gray) image. detect: True searches the image,
        False takes it as one face crop, None (auto) does the latter only for images of at most
        CROP_MAX_SIDE px."""
        if self.model is None:
            raise ValueError("this FaceAnalyzer has no model (built for detection only): pass model=")
        t0 = time.perf_counter()
        with self._lock:
            boxes, landmarks, crops = self._locate(image_bgr, detect, source_id)
            t1 = time.perf_counter()
            probs = (np.asarray(self.model.predict_proba(crops), np.float32) if len(crops)
                     else np.zeros((0, len(self.labels)), np.float32))
        t2 = time.perf_counter()
        return FaceAnalysis(boxes, landmarks, probs, self.labels,
                            {"detect": round((t1 - t0) * 1e3, 2), "classify": round((t2 - t1) * 1e3, 2)}, crops)


class LazyAnalyzer:
    """Builds a FaceAnalyzer on first use (once, under a lock) so a process starts light."""

    def __init__(self, factory: Callable[[], FaceAnalyzer]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._analyzer: FaceAnalyzer | None = None

    def get(self) -> FaceAnalyzer:
        if self._analyzer is None:
            with self._lock:
                if self._analyzer is None:
                    self._analyzer = self._factory()
        return self._analyzer

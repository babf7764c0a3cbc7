"""Face tracks across the frames of one source, with each track's probabilities smoothed (EMA).

One `Tracker` per source: the live pipeline's annotate stage and `ferlive analyze` use this same class.
A face continues a track when its box overlaps the track's (greedy IoU matching) *and* it looks like the
face the track has followed (normalised cross-correlation of 16x16 thumbnails of the 48x48 crops, when
crops are given, searched over a pixel of shift). So a new face that appears where another just was starts a fresh track with its own
scores instead of inheriting the previous face's smoothed ones; `cut()` ends every track at once (a scene
cut in a recorded video)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np

from shared.labels import NUM_CLASSES

APPEARANCE_SIZE = 16
MIN_APPEARANCE_SIMILARITY = 0.6
"""Below this similarity a face is another face. `python benchmarks/tracking.py` (399 FER2013 PublicTest faces
shown one after another at one place, five frames each, crops re-cut with ±1 or ±3 px jitter and JPEG): at
0.6 99.7% of the faces kept one track while shown and 97.7% started their own (0.5: 100% / 92%; 0.7: 97.5% /
99%; with no appearance gate 0.3% started their own: every face continued the one before)."""


def appearance(crops_gray: np.ndarray) -> np.ndarray:
    """uint8 face crops (N,H,W) -> float32 (N,16,16) thumbnails (INTER_AREA); see `similarity`."""
    crops_gray = np.asarray(crops_gray)
    out = np.zeros((len(crops_gray), APPEARANCE_SIZE, APPEARANCE_SIZE), np.float32)
    for i, c in enumerate(crops_gray):
        out[i] = cv2.resize(c, (APPEARANCE_SIZE, APPEARANCE_SIZE), interpolation=cv2.INTER_AREA)
    return out


def _ncc(a: np.ndarray, b: np.ndarray) -> float | None:
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float((a * b).sum()) / den if den > 1.0 else None


def similarity(a: np.ndarray, b: np.ndarray, shift: int = 1) -> float | None:
    """Best normalised cross-correlation of two thumbnails over shifts of up to `shift` thumbnail pixels
    (3 crop pixels: a detector's frame-to-frame jitter); None when either is flat (no appearance to compare)."""
    s = a.shape[0]
    best = None
    for dy in range(-shift, shift + 1):
        for dx in range(-shift, shift + 1):
            v = _ncc(a[max(0, dy):s + min(0, dy), max(0, dx):s + min(0, dx)],
                     b[max(0, -dy):s + min(0, -dy), max(0, -dx):s + min(0, -dx)])
            if v is None:
                return None
            best = v if best is None else max(best, v)
    return best


def iou_matrix(a_xywh: np.ndarray, b_xywh: np.ndarray) -> np.ndarray:
    """IoU of every box in a (N,4) with every box in b (M,4), xywh -> (N,M)."""
    a = np.asarray(a_xywh, np.float64).reshape(-1, 4)
    b = np.asarray(b_xywh, np.float64).reshape(-1, 4)
    ax1, ay1, ax2, ay2 = a[:, 0, None], a[:, 1, None], (a[:, 0] + a[:, 2])[:, None], (a[:, 1] + a[:, 3])[:, None]
    bx1, by1, bx2, by2 = b[None, :, 0], b[None, :, 1], (b[:, 0] + b[:, 2])[None], (b[:, 1] + b[:, 3])[None]
    iw = np.clip(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0, None)
    ih = np.clip(np.minimum(ay2, by2) - np.maximum(ay1, by1), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


@dataclass
class Track:
    track_id: int
    box_xywh: np.ndarray
    probs: np.ndarray
    missed: int = 0
    look: Optional[np.ndarray] = None  # appearance() of its face, updated as it goes


@dataclass
class Tracker:
    """Greedy IoU tracking across frames of one source, gated by appearance, with an EMA of each track's
    probabilities (``alpha`` = weight of the newest frame; 1 disables smoothing). ``min_similarity`` <= -1
    turns the appearance gate off."""

    alpha: float = 0.5
    iou_threshold: float = 0.3
    max_age: int = 15
    min_similarity: float = MIN_APPEARANCE_SIMILARITY
    tracks: list[Track] = field(default_factory=list)
    _next_id: int = 0

    def cut(self) -> None:
        """End every track (a scene cut): the next faces start new tracks with unsmoothed scores."""
        self.tracks = []

    def update(self, boxes_xywh: np.ndarray, probs: np.ndarray,
               crops_gray: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """One frame's boxes (N,4), probabilities (N,7) and optionally face crops (N,H,W) -> track ids (N,)
        and smoothed probs (N,7)."""
        n = len(boxes_xywh)
        ids = np.full(n, -1, np.int64)
        smoothed = np.array(probs, np.float32, copy=True).reshape(n, NUM_CLASSES)
        looks = appearance(crops_gray) if crops_gray is not None and len(crops_gray) == n else None
        matched_tracks: set[int] = set()
        if n and self.tracks:
            iou = iou_matrix(boxes_xywh, np.stack([t.box_xywh for t in self.tracks]))
            for flat in np.argsort(-iou, axis=None):
                i, j = divmod(int(flat), len(self.tracks))
                if iou[i, j] < self.iou_threshold:
                    break
                if ids[i] >= 0 or j in matched_tracks:
                    continue
                t = self.tracks[j]
                if looks is not None and t.look is not None:
                    sim = similarity(looks[i], t.look)
                    if sim is not None and sim < self.min_similarity:
                        continue  # another face where this track's face was: it gets a track of its own
                t.probs = (self.alpha * smoothed[i] + (1.0 - self.alpha) * t.probs).astype(np.float32)
                t.box_xywh, t.missed = np.asarray(boxes_xywh[i]), 0
                if looks is not None:
                    t.look = looks[i] if t.look is None else 0.5 * t.look + 0.5 * looks[i]
                ids[i], smoothed[i] = t.track_id, t.probs
                matched_tracks.add(j)
        for j, t in enumerate(self.tracks):
            if j not in matched_tracks:
                t.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_age]
        # A track whose box a new face took over ends now: it must not come back on a later frame.
        taken = {j for j, t in enumerate(self.tracks) if t.missed > 0 and n and
                 (iou_matrix(boxes_xywh[ids < 0], t.box_xywh[None]) >= self.iou_threshold).any()}
        self.tracks = [t for j, t in enumerate(self.tracks) if j not in taken]
        for i in np.flatnonzero(ids < 0):
            self.tracks.append(Track(self._next_id, np.asarray(boxes_xywh[i]), smoothed[i].copy(),
                                     look=None if looks is None else looks[i]))
            ids[i] = self._next_id
            self._next_id += 1
        return ids, smoothed

"""The sink's logic, free of sockets: put predictions back in frame order, track faces, smooth labels."""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from shared.analyzer import landmarks_json
from shared.labels import EMOTIONS, NUM_CLASSES
from shared.messages import FaceResult, Predictions


class Reorderer:
    """Releases predictions in detect's send order (``faces.job``) although workers finish out of order.

    A result is held until every earlier job has been released, at most ``timeout_s`` after it arrived
    and while fewer than ``window`` results wait; then the missing jobs are skipped (counted ``skipped``)
    so a late frame never stalls the stream. A result arriving after its place was skipped is dropped
    (counted ``late``): the page never steps backwards. A new detect run (restart) starts a new order.
    """

    def __init__(self, window: int = 8, timeout_s: float = 0.1, counters: Optional[Counter] = None) -> None:
        self.window, self.timeout_s = window, timeout_s
        self.counters = counters if counters is not None else Counter()
        self.run: Optional[int] = None
        self.next_job = 0
        self.held: dict[int, tuple[float, Predictions]] = {}
        self._old_runs: deque[int] = deque(maxlen=8)

    def push(self, preds: Predictions, now: float) -> list[tuple[float, Predictions]]:
        """Add one result (arrived at ``now``); returns the (arrival time, result) pairs now in order."""
        out: list[tuple[float, Predictions]] = []
        run, job = preds.faces.run, preds.faces.job
        if run != self.run:
            if run in self._old_runs:
                self.counters["late"] += 1
                return out
            out += [self.held.pop(j) for j in sorted(self.held)]  # the old run's leftovers, in order
            if self.run is not None:
                self._old_runs.append(self.run)
            self.run = run
            self.next_job = 0 if job < self.window else job
        if job < self.next_job or job in self.held:
            self.counters["late"] += 1
            return out
        self.held[job] = (now, preds)
        return out + self.poll(now)

    def poll(self, now: float) -> list[tuple[float, Predictions]]:
        """Results that may go now (in order), skipping a missing job once its successors waited too long."""
        out: list[tuple[float, Predictions]] = []
        while self.held:
            if self.next_job in self.held:
                out.append(self.held.pop(self.next_job))
                self.next_job += 1
                continue
            first = min(self.held)
            oldest = min(t for t, _ in self.held.values())
            if len(self.held) >= self.window or now - oldest >= self.timeout_s:
                self.counters["skipped"] += first - self.next_job
                self.next_job = first
                continue
            break
        return out


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


@dataclass
class Tracker:
    """Greedy IoU tracking across frames of one source, with an EMA of each track's probabilities
    (``alpha`` = weight of the newest frame; 1 disables smoothing)."""

    alpha: float = 0.5
    iou_threshold: float = 0.3
    max_age: int = 15
    tracks: list[Track] = field(default_factory=list)
    _next_id: int = 0

    def update(self, boxes_xywh: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One frame's boxes (N,4) and probabilities (N,7) -> track ids (N,) and smoothed probs (N,7)."""
        n = len(boxes_xywh)
        ids = np.full(n, -1, np.int64)
        smoothed = np.array(probs, np.float32, copy=True).reshape(n, NUM_CLASSES)
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
                t.probs = (self.alpha * smoothed[i] + (1.0 - self.alpha) * t.probs).astype(np.float32)
                t.box_xywh, t.missed = np.asarray(boxes_xywh[i]), 0
                ids[i], smoothed[i] = t.track_id, t.probs
                matched_tracks.add(j)
        for j, t in enumerate(self.tracks):
            if j not in matched_tracks:
                t.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_age]
        for i in np.flatnonzero(ids < 0):
            self.tracks.append(Track(self._next_id, np.asarray(boxes_xywh[i]), smoothed[i].copy()))
            ids[i] = self._next_id
            self._next_id += 1
        return ids, smoothed


def face_results(preds: Predictions, tracker: Tracker) -> list[FaceResult]:
    """Track the frame's faces and turn them into FaceResults (smoothed label + raw model scores)."""
    boxes, probs = preds.faces.boxes_xywh, preds.probs
    ids, smoothed = tracker.update(boxes, probs)
    return [FaceResult(box_xywh=tuple(int(v) for v in boxes[i]), emotion=EMOTIONS[int(np.argmax(smoothed[i]))],
                       scores={e: float(p) for e, p in zip(EMOTIONS, smoothed[i])},
                       raw_scores={e: float(p) for e, p in zip(EMOTIONS, probs[i])},
                       track_id=int(ids[i]), landmarks=landmarks_json(preds.faces.landmarks[i]))
            for i in range(len(boxes))]

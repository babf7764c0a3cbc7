"""The sink's logic, free of sockets: put predictions back in frame order, then track faces and smooth labels
with shared.tracking's Tracker (the one `ferlive analyze` uses too)."""
from __future__ import annotations

from collections import Counter, deque
from typing import Optional

import numpy as np

from shared.labels import EMOTIONS, NUM_CLASSES
from shared.messages import FaceResult, Predictions
from shared.tracking import Tracker


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


def face_results(preds: Predictions, tracker: Tracker) -> list[FaceResult]:
    """Track the frame's faces and turn them into FaceResults (smoothed label + raw model scores)."""
    boxes, probs = preds.faces.boxes_xywh, preds.probs
    ids, smoothed = tracker.update(boxes, probs, preds.faces.crops)
    return [FaceResult(box_xywh=tuple(int(v) for v in boxes[i]), emotion=EMOTIONS[int(np.argmax(smoothed[i]))],
                       scores={e: float(p) for e, p in zip(EMOTIONS, smoothed[i])},
                       raw_scores={e: float(p) for e, p in zip(EMOTIONS, probs[i])},
                       track_id=int(ids[i]))
            for i in range(len(boxes))]

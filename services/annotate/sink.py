"""The sink's logic, free of sockets: put predictions back in frame order, then track faces and smooth labels
with shared.tracking's Tracker (the one `ferlive analyze` uses too)."""
from __future__ import annotations

from collections import Counter, deque
from typing import Optional

from shared.analyzer import face_results as results_of
from shared.messages import FaceResult, Predictions
from shared.tracking import Tracker


class Reorderer:
    """Releases predictions in the order the faces broker sent them (``faces.job``), although workers finish
    out of order.

    A result is held until every earlier job has been released, at most ``timeout_s`` after it arrived
    and while fewer than ``window`` results wait; then the missing jobs are skipped (counted ``skipped``)
    so a late frame never stalls the stream. A result arriving after its place was skipped is dropped
    (counted ``late``): the page never steps backwards. A new run (annotate restarted) starts a new order.

    Run ids and job numbers come off the bus, so nothing here may trust them to stall the stream: a
    retired run that still sends once the current one has been silent for ``timeout_s`` takes over again
    (a stray message with an unknown run id costs at most ``timeout_s``), and ``window`` late results in
    a row from the current run resynchronise the order at what actually arrives (counted ``resync``).
    """

    def __init__(self, window: int = 8, timeout_s: float = 0.1, counters: Optional[Counter] = None) -> None:
        self.window, self.timeout_s = window, timeout_s
        self.counters = counters if counters is not None else Counter()
        self.run: Optional[int] = None
        self.next_job = 0
        self.held: dict[int, tuple[float, Predictions]] = {}
        self._old_runs: deque[int] = deque(maxlen=8)
        self._last_arrival = float("-inf")
        self._late_streak = 0

    def push(self, preds: Predictions, now: float) -> list[tuple[float, Predictions]]:
        """Add one result (arrived at ``now``); returns the (arrival time, result) pairs now in order."""
        return self._add(preds.faces.run, preds.faces.job, preds, now)

    def skip(self, run: int, job: int, now: float) -> list[tuple[float, Predictions]]:
        """A job a worker dropped (``messages.Skip``): its place is taken, nothing is released for it."""
        self.counters["skipped_by_worker"] += 1
        return self._add(run, job, None, now)

    def _add(self, run: int, job: int, preds: Optional[Predictions], now: float) -> list[tuple[float, Predictions]]:
        out: list = []
        if run != self.run:
            if run in self._old_runs and now - self._last_arrival < self.timeout_s:
                self.counters["late"] += 1
                return out
            out += self._flush()  # the old run's leftovers, in order
            if run in self._old_runs:
                self._old_runs.remove(run)  # the current run went silent: this one is back
            if self.run is not None:
                self._old_runs.append(self.run)
            self.run = run
            self.next_job = 0 if job < self.window else job
            self._late_streak = 0
        self._last_arrival = now
        if job < self.next_job or job in self.held:
            self._late_streak += 1
            if self._late_streak < self.window or job in self.held:
                self.counters["late"] += 1
                return out
            self.counters["resync"] += 1  # the order ran ahead of everything that arrives: follow them
            out += self._flush()
            self.next_job, self._late_streak = job, 0
        else:
            self._late_streak = 0
        self.held[job] = (now, preds)
        return out + self.poll(now)

    def _flush(self) -> list[tuple[float, Predictions]]:
        out = [self.held.pop(j) for j in sorted(self.held)]
        return [(t, p) for t, p in out if p is not None]

    def poll(self, now: float) -> list[tuple[float, Predictions]]:
        """Results that may go now (in order), skipping a missing job once its successors waited too long."""
        out: list[tuple[float, Predictions]] = []
        while self.held:
            if self.next_job in self.held:
                t, p = self.held.pop(self.next_job)
                if p is not None:  # a skipped job only holds its place
                    out.append((t, p))
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
    return results_of(boxes, probs, smoothed, ids, preds.faces.landmarks)

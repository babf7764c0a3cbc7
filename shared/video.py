"""Analyse a recorded video (or a camera / stream for a while): every analysed frame's faces, tracked and
optionally smoothed by the live pipeline's own `Tracker`, written as an annotated video, a CSV row per frame
per face, a JSON summary and timeline figures. `ferlive analyze` and the web app's video jobs call
`analyze_video`; the per-frame work is `FrameAnalyzer` (detector + crops + model, loaded once per process).

Frames stream through: nothing holds more than the frames in flight (two per worker), so memory stays flat
however long the input. With several workers, frames are analysed in worker processes while this process
decodes, tracks and writes in frame order; per-frame analysis keeps no state between frames, so the results
are identical to one worker's.
"""
from __future__ import annotations

import csv
import json
import logging
import multiprocessing as mp
import signal
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

from shared.analyzer import LANDMARK_COLUMNS, FaceAnalysis, face_results
from shared.draw import annotate
from shared.labels import EMOTIONS, NUM_CLASSES
from shared.messages import FaceResult
from shared.tracking import Tracker

log = logging.getLogger(__name__)

VIDEO_FILE = "annotated.webm"
CSV_FILE = "faces.csv"
SUMMARY_FILE = "summary.json"
OVERVIEW_FILE = "overview.png"
TIMELINE_PATTERN = "timeline_track{track}.png"
MAX_TIMELINE_POINTS = 4000
SCENE_CUT_DIFF = 40.0
"""Mean absolute difference (0-255) of consecutive analysed frames' 32x24 gray thumbnails above which the
scene is taken to have cut: every track ends there."""


class VideoError(RuntimeError):
    """A video that cannot be opened or read; the text names it and says why."""


@dataclass(frozen=True)
class AnalyzeOptions:
    every: int = 1                 # analyse every Nth frame (the video keeps every frame, drawn with the latest results)
    start: float = 0.0             # seconds from the start of the input
    end: Optional[float] = None    # seconds; None: to the end
    duration: Optional[float] = None  # live sources (camera index, stream URL): seconds to record
    video: bool = True             # write the annotated video
    smooth: Optional[float] = None  # EMA weight of the newest frame for the tracks (None: raw probabilities)
    workers: int = 1
    figures: bool = True

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"every={self.every}: must be >= 1")
        if self.start < 0 or (self.end is not None and self.end <= self.start):
            raise ValueError(f"start={self.start}, end={self.end}: need 0 <= start < end")
        if self.smooth is not None and not 0 < self.smooth <= 1:
            raise ValueError(f"smooth={self.smooth}: the EMA weight must be in (0, 1]")
        if self.workers < 1:
            raise ValueError(f"workers={self.workers}: must be >= 1")
        if self.duration is not None and self.duration <= 0:
            raise ValueError(f"duration={self.duration}: must be > 0")


class FrameAnalyzer:
    """Detector + crops + model for single frames, loaded once per process; keeps no state between frames."""

    def __init__(self, model_dir: str | Path | None = None, detector_kind: Optional[str] = None,
                 threads: int = 1) -> None:
        from shared.analyzer import FaceAnalyzer
        from shared.config import Config

        cfg = Config.from_env()  # the pipeline's detector settings (FERLIVE_DETECTOR_*), so results match it
        if detector_kind:
            cfg = cfg.replace(detector_kind=detector_kind)
        self.analyzer = FaceAnalyzer.load(model_dir, detector=cfg, num_threads=threads)

    def __call__(self, frame_bgr: np.ndarray) -> FaceAnalysis:
        # detect=True, no source id: every frame is searched whole, so no state carries between frames
        return self.analyzer.analyze(frame_bgr, detect=True)


def _open_capture(source: str, options: AnalyzeOptions):
    target: str | int = int(source) if str(source).isdigit() else str(source)
    live = isinstance(target, int) or "://" in str(target)
    if not live and not Path(str(target)).is_file():
        raise VideoError(f"{source}: no such file")
    if live and options.duration is None:
        raise VideoError(f"{source} is a live source (camera or stream): give --duration SECONDS")
    cap = cv2.VideoCapture(target)
    if not cap.isOpened():
        cap.release()
        raise VideoError(f"{source}: OpenCV cannot open it as a video (not a video file, or a codec it lacks)")
    return cap, live


@dataclass
class _TrackStats:
    first_s: float
    last_s: float
    frames: int = 0
    label_counts: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES, np.int64))
    prob_sum: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES, np.float64))
    times: list = field(default_factory=list)
    probs: list = field(default_factory=list)
    stride: int = 1  # keep every stride-th point of the timeline (doubles when it grows past the cap)

    def add(self, t: float, probs: np.ndarray) -> None:
        self.last_s = t
        self.frames += 1
        self.label_counts[int(np.argmax(probs))] += 1
        self.prob_sum += probs
        if (self.frames - 1) % self.stride == 0:
            self.times.append(t)
            self.probs.append(probs.astype(np.float32))
            if len(self.times) > MAX_TIMELINE_POINTS:  # bounded memory for any length
                self.times, self.probs, self.stride = self.times[::2], self.probs[::2], self.stride * 2

    def summary(self, frame_s: float) -> dict:
        share = self.label_counts / max(1, self.frames)
        return {"first_s": round(self.first_s, 3), "last_s": round(self.last_s, 3),
                "time_on_screen_s": round(self.last_s - self.first_s + frame_s, 3), "frames": self.frames,
                "dominant_emotion": EMOTIONS[int(np.argmax(self.label_counts))],
                "share": {e: round(float(s), 4) for e, s in zip(EMOTIONS, share)},
                "mean_scores": {e: round(float(p), 4) for e, p in zip(EMOTIONS, self.prob_sum / max(1, self.frames))}}


# ------------------------------------------------------------------------------------------------ workers
_WORKER: Optional[FrameAnalyzer] = None


def _worker_init(model_dir, detector_kind) -> None:
    global _WORKER
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _WORKER = FrameAnalyzer(model_dir, detector_kind)


def _worker_call(frame_bgr: np.ndarray) -> FaceAnalysis:
    assert _WORKER is not None
    return _WORKER(frame_bgr)


def _ctrl_c_between_frames(stop: threading.Event) -> Callable[[], None]:
    """In the main thread, Ctrl-C sets ``stop`` instead of raising KeyboardInterrupt wherever the loop happens
    to be, so the loop ends between two frames and the CSV, the video and the counts all hold the same whole
    frames (elsewhere, or where SIGINT is ignored, nothing changes). Returns what restores the old handler."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return lambda: None
    old = signal.signal(signal.SIGINT, lambda *_: stop.set())
    return lambda: signal.signal(signal.SIGINT, old)


def _frames(cap, live: bool, options: AnalyzeOptions, should_stop: Callable[[], bool]):
    """(index, time_s, frame_bgr, analyse?) for every frame in [start, end] (or for `duration` s of a live
    source); time from the container's timestamps (files) or the wall clock (live)."""
    if not live and options.start > 0:
        cap.set(cv2.CAP_PROP_POS_MSEC, options.start * 1000.0)
    t0 = time.monotonic()
    index = 0
    while not should_stop():
        ok, frame = cap.read()
        if not ok or frame is None:
            return
        if live:
            t = time.monotonic() - t0
            if t > options.duration:
                return
        else:
            t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if t < options.start - 1e-6:  # a seek lands on the key frame before start
                continue
            if options.end is not None and t > options.end + 1e-6:
                return
        yield index, t, frame, index % options.every == 0
        index += 1


def _results(frames, analyzer: FrameAnalyzer | None, pool, workers: int):
    """(index, time_s, frame, FaceAnalysis | None) in frame order; at most 2 frames per worker in flight."""
    if pool is None:
        for index, t, frame, analyse in frames:
            yield index, t, frame, (analyzer(frame) if analyse else None)
        return
    pending: deque = deque()
    for index, t, frame, analyse in frames:
        pending.append((index, t, frame, pool.apply_async(_worker_call, (frame,)) if analyse else None))
        while len(pending) > 2 * workers:
            i, tt, f, job = pending.popleft()
            yield i, tt, f, (job.get() if job is not None else None)
    while pending:
        i, tt, f, job = pending.popleft()
        yield i, tt, f, (job.get() if job is not None else None)


def _is_cut(prev_thumb: Optional[np.ndarray], frame_bgr: np.ndarray) -> tuple[bool, np.ndarray]:
    thumb = cv2.resize(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY), (32, 24), interpolation=cv2.INTER_AREA)
    cut = prev_thumb is not None and float(np.abs(thumb.astype(np.int16) - prev_thumb).mean()) > SCENE_CUT_DIFF
    return cut, thumb.astype(np.int16)


def csv_header() -> list[str]:
    return ["time_s", "frame", "track_id", "x", "y", "w", "h", *LANDMARK_COLUMNS, *EMOTIONS, "emotion"]


ProgressFn = Callable[[int, Optional[int], float], None]
"""progress(frames_done, frames_total_or_None, seconds_elapsed)."""


def analyze_video(source: str, out_dir: str | Path, options: AnalyzeOptions = AnalyzeOptions(),
                  model_dir: str | Path | None = None, detector_kind: Optional[str] = None,
                  progress: Optional[ProgressFn] = None, should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Analyse `source` (a video file, a camera index or a stream URL) into `out_dir`; returns the summary
    (also written as summary.json). KeyboardInterrupt or should_stop() ends it early with every output valid
    up to that point (summary "complete": false). VideoError when the source cannot be opened or read."""
    out = Path(out_dir)
    cap, live = _open_capture(source, options)
    out.mkdir(parents=True, exist_ok=True)
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    fps = fps if 1.0 <= fps <= 1000.0 else 30.0
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if not live else None
    if total is not None:
        first = int(options.start * fps)
        last = int(options.end * fps) if options.end is not None else total
        total = max(0, min(total, last) - first) or None
    writer = None
    pool = None
    analyzer = None
    if options.workers > 1:
        pool = mp.get_context("spawn").Pool(options.workers, _worker_init, (model_dir, detector_kind))
    else:
        analyzer = FrameAnalyzer(model_dir, detector_kind)
    tracker = Tracker(alpha=options.smooth if options.smooth is not None else 1.0)
    tracks: dict[int, _TrackStats] = {}
    frames_read = frames_analysed = rows = cuts = 0
    complete, error = False, None
    t_start = time.monotonic()
    latest: list[FaceResult] = []
    prev_thumb = None
    csv_file = open(out / CSV_FILE, "w", newline="", buffering=1)  # line-buffered: rows on disk as they come
    interrupted = threading.Event()
    restore_ctrl_c = _ctrl_c_between_frames(interrupted)
    stop = lambda: should_stop() or interrupted.is_set()  # noqa: E731
    try:
        table = csv.writer(csv_file)
        table.writerow(csv_header())
        for index, t, frame, faces in _results(_frames(cap, live, options, stop), analyzer, pool,
                                                options.workers):
            frames_read += 1
            if writer is None and options.video:
                writer = _open_writer(out, fps, frame.shape[1], frame.shape[0])
            if faces is not None:
                frames_analysed += 1
                cut, prev_thumb = _is_cut(prev_thumb, frame)
                if cut:
                    tracker.cut()
                    cuts += 1
                ids, smoothed = tracker.update(faces.boxes_xywh, faces.probs, faces.crops)
                for i in range(len(faces)):
                    p = smoothed[i]
                    table.writerow([f"{t:.3f}", index, int(ids[i]), *map(int, faces.boxes_xywh[i]),
                                    *(f"{v:.1f}" if np.isfinite(v) else "" for v in faces.landmarks[i].ravel()),
                                    *(f"{v:.4f}" for v in p), EMOTIONS[int(np.argmax(p))]])
                    tracks.setdefault(int(ids[i]), _TrackStats(first_s=t, last_s=t)).add(t, p)
                rows += len(faces)
                latest = face_results(faces.boxes_xywh, faces.probs, smoothed, ids, faces.landmarks)
            if writer is not None:
                writer.write(annotate(frame, latest))
            if progress is not None:
                progress(frames_read, total, time.monotonic() - t_start)
        complete = not stop()
    except KeyboardInterrupt:
        log.warning("interrupted: the outputs hold the %d frames analysed so far", frames_analysed)
    except cv2.error as e:  # a corrupt stream part-way
        error = f"{source}: decoding failed after {frames_read} frames: {e}"
        log.error(error)
    finally:
        restore_ctrl_c()
        csv_file.close()
        if writer is not None:
            writer.release()
        cap.release()
        if pool is not None:
            pool.terminate()
            pool.join()
    elapsed = time.monotonic() - t_start
    frame_s = options.every / fps
    summary = {
        "source": str(source), "complete": complete, "error": error,
        "video": {"fps": round(fps, 3), "width": width, "height": height, "frames_in_range": total},
        "frames_read": frames_read, "frames_analysed": frames_analysed, "face_rows": rows,
        "faces_seen": len(tracks), "scene_cuts": cuts,
        "speed": {"seconds": round(elapsed, 2), "frames_per_s": round(frames_read / elapsed, 2) if elapsed else None,
                  "workers": options.workers},
        "options": asdict(options),
        "tracks": {str(k): v.summary(frame_s) for k, v in sorted(tracks.items())},
        "files": {"csv": CSV_FILE, "video": VIDEO_FILE if options.video and frames_read else None},
    }
    if not tracks:
        summary["note"] = "no face was found in the analysed frames"
    if options.figures and frames_analysed:
        summary["files"]["figures"] = _figures(out, tracks)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    if frames_read == 0 and error is None:
        raise VideoError(f"{source}: no frame could be read (an empty, truncated or unsupported file, or a "
                         f"start past its end)")
    return summary


def _open_writer(out: Path, fps: float, width: int, height: int):
    """VP8 in WebM: plays in browsers and players, and stays playable if cut short."""
    writer = cv2.VideoWriter(str(out / VIDEO_FILE), cv2.VideoWriter_fourcc(*"VP80"), fps, (width, height))
    if not writer.isOpened():
        raise VideoError(f"cannot write {out / VIDEO_FILE}: this OpenCV has no VP8 encoder")
    return writer


def _figures(out: Path, tracks: dict[int, _TrackStats]) -> list[str]:
    """A timeline PNG per track (EMA-smoothed probabilities over time) and one overview."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shared.draw import COLORS_BGR
    colors = {e: tuple(c / 255 for c in reversed(COLORS_BGR[e])) for e in EMOTIONS}
    written = []
    for tid, st in sorted(tracks.items()):
        if not st.times:
            continue
        p = np.stack(st.probs)
        sm = np.empty_like(p)
        acc = p[0]
        for k in range(len(p)):  # display smoothing: EMA 0.3
            acc = 0.3 * p[k] + 0.7 * acc
            sm[k] = acc
        fig, ax = plt.subplots(figsize=(8, 2.8))
        for j, e in enumerate(EMOTIONS):
            ax.plot(st.times, sm[:, j], color=colors[e], label=e, lw=1.4)
        ax.set_ylim(0, 1)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("probability")
        ax.set_title(f"track {tid}: {EMOTIONS[int(np.argmax(st.label_counts))]} most of the time")
        ax.legend(ncol=7, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), frameon=False)
        fig.tight_layout()
        name = TIMELINE_PATTERN.format(track=tid)
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        written.append(name)
    shown = sorted(tracks.items())[:40]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, max(2.5, 0.35 * len(shown) + 1.2)),
                                 gridspec_kw={"width_ratios": [3, 1]})
    for row, (tid, st) in enumerate(shown):
        labels = np.argmax(np.stack(st.probs), axis=1) if st.probs else []
        for k, t in enumerate(st.times):
            t_next = st.times[k + 1] if k + 1 < len(st.times) else t + 0.04
            a1.barh(row, max(t_next - t, 0.04), left=t, color=colors[EMOTIONS[labels[k]]], height=0.8)
    a1.set_yticks(range(len(shown)), [f"#{tid}" for tid, _ in shown])
    a1.set_xlabel("time (s)")
    a1.set_title("label of each track over time")
    counts = sum((st.label_counts for st in tracks.values()), np.zeros(NUM_CLASSES, np.int64))
    share = counts / max(1, counts.sum())
    a2.barh(range(NUM_CLASSES), share, color=[colors[e] for e in EMOTIONS])
    a2.set_yticks(range(NUM_CLASSES), EMOTIONS)
    a2.set_xlim(0, 1)
    a2.set_title("share of face-frames")
    fig.tight_layout()
    fig.savefig(out / OVERVIEW_FILE, dpi=90)
    plt.close(fig)
    return written + [OVERVIEW_FILE]

"""Frame sources: a camera index, a video file, a stream URL, or the built-in demo (no camera needed)."""
from __future__ import annotations

import csv
import importlib.util
import logging
import math
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

log = logging.getLogger(__name__)


class SourceError(RuntimeError):
    """A source that cannot be opened or stopped giving frames; the text says which and why."""


def parse_source(spec: str) -> tuple[str, str | int]:
    """'demo' | '0' (camera index) | 'rtsp://…' / 'http://…' (stream) | path -> (kind, target)."""
    spec = str(spec).strip()
    if spec == "demo":
        return "demo", spec
    if spec.isdigit():
        return "camera", int(spec)
    if "://" in spec:
        return "stream", spec
    return "file", spec


MAX_SOURCES = 16
"""At most this many sources per capture process (each is a thread; each is reported in its heartbeat)."""


def split_list(text: str) -> list[str]:
    """'a, b,"c,d"' -> ['a', 'b', 'c,d']: comma-separated, CSV quoting for an item that holds a comma."""
    text = str(text).strip()
    if not text:
        return []
    row = next(csv.reader([text], skipinitialspace=True))
    return [item.strip() for item in row]


def parse_sources(source: str, source_id: str = "", max_id_chars: int = 128) -> list[tuple[str, str]]:
    """``FERLIVE_SOURCE`` / ``FERLIVE_SOURCE_ID`` -> [(source spec, source id)], one per source.

    ``source`` is one source or several separated by commas ('demo,clip.mp4,0'; quote one that holds a
    comma: '"rtsp://cam/?a=1,2",demo'); ``source_id`` names them in the same order (default: each source
    itself; a repeated name gets '#2', '#3', ...). Raises ConfigError naming what to fix."""
    from shared.config import ConfigError
    from shared.messages import BROWSER_PREFIX
    specs = split_list(source)
    if not specs or any(not s for s in specs):
        raise ConfigError(f"--source / FERLIVE_SOURCE: {str(source)[:80]!r} names an empty source")
    if len(specs) > MAX_SOURCES:
        raise ConfigError(f"--source / FERLIVE_SOURCE: {len(specs)} sources, at most {MAX_SOURCES} per capture "
                          "process (run another capture for more)")
    ids = split_list(source_id) if source_id else []
    if ids and len(ids) != len(specs):
        raise ConfigError(f"--source-id / FERLIVE_SOURCE_ID names {len(ids)} sources but --source has "
                          f"{len(specs)}: give one id per source, comma-separated, or none")
    if not ids:
        ids, seen = [], set()
        for spec in specs:
            name, n = spec, 1
            while name in seen:
                n += 1
                name = f"{spec}#{n}"
            seen.add(name)
            ids.append(name)
    elif len(set(ids)) != len(ids):
        raise ConfigError(f"--source-id / FERLIVE_SOURCE_ID: {str(source_id)[:80]!r} repeats an id; each "
                          "source needs its own")
    for sid in ids:
        if not sid or len(sid) > max_id_chars:
            raise ConfigError(f"source id {sid[:40]!r}{'...' if len(sid) > 40 else ''} has {len(sid)} characters, "
                              f"expected 1..{max_id_chars}: name it with --source-id / FERLIVE_SOURCE_ID")
        if sid.startswith(BROWSER_PREFIX):
            raise ConfigError(f"source id {sid[:40]!r}: ids starting with {BROWSER_PREFIX!r} are browsers' own "
                              "cameras; choose another with --source-id")
    return list(zip(specs, ids))


def fit_frame(frame_bgr: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a BGR frame to width x height (no-op when it already is)."""
    if frame_bgr.ndim == 2:
        frame_bgr = cv2.cvtColor(frame_bgr, cv2.COLOR_GRAY2BGR)
    if frame_bgr.shape[:2] == (height, width):
        return frame_bgr
    interp = cv2.INTER_AREA if frame_bgr.shape[1] > width else cv2.INTER_LINEAR
    return cv2.resize(frame_bgr, (width, height), interpolation=interp)


def demo_image_path() -> Optional[Path]:
    """Grace Hopper's portrait that matplotlib ships (found without importing matplotlib), or None."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "mpl-data" / "sample_data" / "grace_hopper.jpg"
        if p.exists():
            return p
    return None


class DemoSource:
    """A real face photo, slowly panning and zooming, at any size; endless."""

    live = False
    native_fps: Optional[float] = None  # paced by the configured rate

    def __init__(self, width: int, height: int, fps: float = 30.0) -> None:
        path = demo_image_path()
        if path is None:
            raise SourceError("demo source needs matplotlib's sample photo (pip install matplotlib); "
                              "or pass --source 0 / a video file")
        photo = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if photo is None:
            raise SourceError(f"cannot read demo photo {path}")
        # Fit the photo's height to the frame, on a neutral background.
        scale = height / photo.shape[0]
        photo = cv2.resize(photo, (max(1, round(photo.shape[1] * scale)), height), interpolation=cv2.INTER_AREA)
        self.base = np.full((height, width, 3), 96, np.uint8)
        x0 = (width - photo.shape[1]) // 2
        src_x0, dst_x0 = max(0, -x0), max(0, x0)
        w = min(photo.shape[1] - src_x0, width - dst_x0)
        self.base[:, dst_x0:dst_x0 + w] = photo[:, src_x0:src_x0 + w]
        self.width, self.height, self.fps = width, height, fps or 30.0
        self.i = 0

    def read(self) -> Optional[np.ndarray]:
        t = self.i / self.fps
        self.i += 1
        # Zoom stays above 1 and the vertical pan inside the margin it leaves, so the photo always covers
        # the frame's height: no border is ever filled in (replicated edge rows showed as streaks).
        zoom = 1.10 + 0.08 * math.sin(2 * math.pi * t / 8.0)
        dx = 25.0 * math.sin(2 * math.pi * t / 11.0)
        dy = 0.9 * (zoom - 1.0) * self.height / 2 * math.sin(2 * math.pi * t / 7.0)
        m = cv2.getRotationMatrix2D((self.width / 2, self.height / 2), 0.0, zoom)
        m[:, 2] += (dx, dy)
        return cv2.warpAffine(self.base, m, (self.width, self.height), borderMode=cv2.BORDER_CONSTANT,
                              borderValue=(96, 96, 96))

    def close(self) -> None:
        pass


class VideoSource:
    """cv2.VideoCapture over a camera index, a file or a stream. ``read()`` returns None at the end of a
    file and raises SourceError when a camera/stream stops giving frames."""

    def __init__(self, kind: str, target: str | int) -> None:
        self.kind, self.target = kind, target
        self.live = kind in ("camera", "stream")
        if kind == "file" and not Path(str(target)).exists():
            raise FileNotFoundError(f"video file {target} not found")
        params: list[int] = []
        if kind == "stream":
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000]
        self.cap = cv2.VideoCapture(target, cv2.CAP_ANY, params) if params else cv2.VideoCapture(target)
        if not self.cap.isOpened():
            self.cap.release()
            raise SourceError(f"cannot open {kind} {target!r}")
        if kind == "camera":
            self.cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a queue of old ones
        fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        # A file's own frame rate (what capture paces it by); None when the container does not say.
        self.native_fps: Optional[float] = fps if kind == "file" and 1.0 <= fps <= 1000.0 else None

    def grab(self) -> bool:
        """Take the next frame from the device without decoding it (keeps a live source's buffer empty)."""
        return bool(self.cap.grab())

    def retrieve(self) -> Optional[np.ndarray]:
        ok, frame = self.cap.retrieve()
        return frame if ok else None

    def read(self) -> Optional[np.ndarray]:
        ok, frame = self.cap.read()
        if ok:
            return frame
        if self.live:
            raise SourceError(f"{self.kind} {self.target!r} stopped giving frames")
        return None

    def rewind(self) -> None:
        self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)

    def close(self) -> None:
        self.cap.release()


def open_source(spec: str, width: int, height: int, fps: float):
    kind, target = parse_source(spec)
    if kind == "demo":
        return DemoSource(width, height, fps)
    return VideoSource(kind, target)

"""Helpers to run the web stage against a real pipeline: for tests and benchmarks, not for production.

* ``pipeline_config()``: a Config whose endpoints are all on free local ports.
* ``Pipeline``: detect, classify and annotate (and optionally capture) as real processes.
* ``WebServer``: the app on a real threaded HTTP server in this process (WebSockets need one).
* ``place_faces()`` / ``write_y4m()``: real FER2013 faces at chosen places (shared.synthetic); a fake webcam.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import cv2
import numpy as np

from shared.config import Config

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pipeline_config(**overrides: Any) -> Config:
    """Every endpoint on its own free port on 127.0.0.1 (plus the web's browser-frame endpoint)."""
    eps = {name: f"tcp://127.0.0.1:{free_port()}" for name in
           ("frames_endpoint", "detections_endpoint", "faces_endpoint", "predictions_endpoint", "annotated_endpoint",
            "heartbeat_endpoint", "web_frames_endpoint")}
    return Config(**{**eps, "heartbeat_interval": 0.5, **overrides})


def config_env(cfg: Config) -> dict[str, str]:
    """The FERLIVE_* variables that give a child process this config."""
    import dataclasses
    env = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        env["FERLIVE_" + f.name.upper()] = ("1" if v else "0") if isinstance(v, bool) else str(v)
    return env


class Pipeline:
    """The pipeline's stages as processes; capture only if `capture_source` is given (else the web's
    browser frames are the only input)."""

    def __init__(self, cfg: Config, model_dir: Optional[str | Path] = None, *, capture_source: Optional[str] = None,
                 classify_workers: int = 1, log_dir: Optional[Path] = None, extra_env: Optional[Mapping[str, str]] = None):
        self.cfg = cfg
        base = {**os.environ, **config_env(cfg), "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), "FERLIVE_LOG_LEVEL": "WARNING",
                **(extra_env or {})}
        if model_dir:
            base["FERLIVE_MODEL_DIR"] = str(model_dir)
        stages: list[tuple[str, dict[str, str]]] = []
        detect_env = dict(base)
        stages.append(("annotate", base))
        stages += [("classify", base)] * classify_workers
        stages.append(("detect", detect_env))
        if capture_source is not None:
            stages.append(("capture", {**base, "FERLIVE_SOURCE": capture_source, "FERLIVE_LOOP": "1"}))
        self.procs: list[subprocess.Popen] = []
        self.log_dir = log_dir
        for name, env in stages:
            out = open(log_dir / f"{name}-{len(self.procs)}.log", "wb") if log_dir else subprocess.DEVNULL
            self.procs.append(subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=env, cwd=ROOT,
                                               stdout=out, stderr=subprocess.STDOUT))

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class WebServer:
    """``create_app(test_config)`` served by Werkzeug's threaded server on a free port, in a thread."""

    def __init__(self, test_config: Mapping[str, Any], host: str = "127.0.0.1") -> None:
        from werkzeug.serving import make_server
        from services.web import create_app
        self.app = create_app(dict(test_config))
        self.server = make_server(host, 0, self.app, threaded=True)
        self.port = self.server.server_port
        self.url = f"http://{host}:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="web-server", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        from services.web import close_app
        close_app(self.app)  # first: ends MJPEG generators
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------- synthetic frames
def place_faces(faces_gray: Sequence[np.ndarray], positions: Sequence[tuple[int, int]], side: int = 170,
                size: tuple[int, int] = (640, 480), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """FER2013 faces (48x48 gray) as `side`-px squares with top-left corners at `positions` in a BGR frame
    of `size` (w, h), via shared.synthetic, on a background drawn from `seed` (the same frame every run:
    whether a detector finds a face can hinge on the background's shade). Returns (frame_bgr, boxes_xywh (N,4))."""
    from shared import synthetic
    boxes = np.asarray([(x, y, side, side) for x, y in positions], np.int32).reshape(-1, 4)
    return synthetic.place_faces(list(faces_gray), size, boxes_xywh=boxes, background="plain",
                                 rng=np.random.default_rng(seed))


def detectable_faces(sample_faces: np.ndarray, detector: Any, count: int = 4, side: int = 170,
                     positions: Sequence[tuple[int, int]] = ((235, 155), (200, 100)),
                     scales: Sequence[float] = (1.0, 2.0)) -> list[np.ndarray]:
    """The first `count` faces of a FER2013 sample that `detector` finds alone in a frame at every one of
    `positions` and, through a JPEG round trip, with the frame resized by every one of `scales` (a detector's
    answer for a borderline face can flip with a few pixels of shift or resampling)."""
    found = []
    for face in sample_faces:
        ok = True
        for pos in positions:
            frame, _ = place_faces([face], [pos], side)
            for s in scales:
                img = frame if s == 1.0 else cv2.imdecode(np.frombuffer(encode_jpeg(
                    cv2.resize(frame, None, fx=s, fy=s), 70), np.uint8), cv2.IMREAD_COLOR)
                if len(detector.detect(img).boxes_xywh) != 1:
                    ok = False
                    break
            if not ok:
                break
        if ok:
            found.append(face)
            if len(found) == count:
                return found
    raise RuntimeError(f"the detector found only {len(found)} of {len(sample_faces)} sample faces")


def encode_jpeg(frame_bgr: np.ndarray, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", frame_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def write_y4m(frames_bgr: Sequence[np.ndarray], path: str | Path, fps: int = 30) -> Path:
    """Frames -> YUV4MPEG2 for Chromium's --use-file-for-fake-video-capture (shared.synthetic's writer)."""
    from shared import synthetic
    return synthetic.write_y4m(frames_bgr, path, fps=fps)


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def declared_size_jpeg(width: int, height: int) -> bytes:
    """A valid 16x16 JPEG (a few hundred bytes) whose header declares ``width`` x ``height`` instead: what an
    attacker sends to make a decoder allocate ``width*height*3`` bytes."""
    small = np.full((16, 16, 3), 128, np.uint8)
    small[4:12, 4:12] = 40
    data = bytearray(encode_jpeg(small, 50))
    i = data.index(b"\xff\xc0")  # baseline SOF0: FF C0, length (2), precision (1), height (2), width (2)
    data[i + 5:i + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def processes_with_env(key: str, value: str) -> list[int]:
    """pids of this user's processes whose environment holds ``key=value`` (a test's own FERLIVE_PORT)."""
    want, out = f"{key}={value}".encode(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if want in (entry / "environ").read_bytes().split(b"\0"):
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def kill_processes_with_env(key: str, value: str) -> None:
    """SIGKILL every process started with ``key=value``, supervisors first (so nothing is restarted):
    the cleanup of a test that started ``honcho start``, whose children live in sessions of their own."""
    import signal
    pids = [p for p in processes_with_env(key, value) if p != os.getpid()]
    def cmd(pid: int) -> bytes:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return b""
    for pid in sorted(pids, key=lambda p: b"shared.supervise" not in cmd(p)):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass

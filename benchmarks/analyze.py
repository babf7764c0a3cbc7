"""`ferlive analyze` speed and memory: analysed frames/s for 640x480 and 1280x720 videos with one face, with 1
and 2 workers, and the peak memory (RSS of the analysing process and its workers) over a long video. The
videos are made here from a FER2013 face placed into a textured frame.

    python benchmarks/analyze.py [--seconds 10] [--long-seconds 120] [--out benchmarks/results/analyze.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.inference import machine_info  # noqa: E402


def make_video(path: Path, size: tuple[int, int], seconds: float, fps: float = 30.0) -> Path:
    """A video with one real face drifting over a textured background."""
    import cv2
    from shared.synthetic import make_background, place_faces
    from training.data import load_fer2013

    face = load_fer2013().split("PublicTest").faces[1]
    rng = np.random.default_rng(0)
    background = make_background(size, "cluttered", rng)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    side = size[1] // 3
    for k in range(int(seconds * fps)):
        x = int((size[0] - side) * (0.5 + 0.3 * np.sin(2 * np.pi * k / (fps * 6))))
        frame, _ = place_faces([face], frame_size=size, background=background,
                               boxes_xywh=np.array([[x, size[1] // 3, side, side]]))
        writer.write(frame)
    writer.release()
    return path


def run_analyze(video: Path, out: Path, workers: int, no_video: bool) -> dict:
    """Run the CLI in a subprocess; peak RSS of it and its children from /usr/bin/time-like rusage."""
    cmd = [sys.executable, "-m", "training", "analyze", str(video), "--out", str(out), "--workers", str(workers),
           "--no-figures"] + (["--no-video"] if no_video else [])
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_mb(proc.pid))
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}")
    summary = json.loads((out / "summary.json").read_text())
    return {"frames": summary["frames_read"], "analysed_fps": summary["speed"]["frames_per_s"],
            "wall_s_with_startup": round(wall, 2), "peak_rss_mb": round(peak, 1), "faces_rows": summary["face_rows"]}


def _tree_rss_mb(pid: int) -> float:
    """RSS of a process and its children (MB), from /proc."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
            todo += [int(c) for c in children]
        except OSError:
            pass
    return total / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="length of the speed videos")
    p.add_argument("--long-seconds", type=float, default=120.0, help="length of the memory video (640x480)")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ferlive-bench-analyze-") as tmp:
        tmp = Path(tmp)
        for size in ((640, 480), (1280, 720)):
            video = make_video(tmp / f"v{size[0]}.mp4", size, a.seconds)
            for workers in (1, 2):
                r = run_analyze(video, tmp / f"o{size[0]}_{workers}", workers, no_video=False)
                rows.append({"size": f"{size[0]}x{size[1]}", "workers": workers, "seconds": a.seconds, **r})
                print(rows[-1])
        long_video = make_video(tmp / "long.mp4", (640, 480), a.long_seconds)
        short_video = make_video(tmp / "short.mp4", (640, 480), a.long_seconds / 8)
        memory = {}
        for name, v in (("short", short_video), ("long", long_video)):
            memory[name] = run_analyze(v, tmp / f"m_{name}", 1, no_video=False)
            print(name, memory[name])
    result = {"benchmark": "analyze", "machine": machine_info(), "load_at_end": os.getloadavg()[0], "speed": rows,
              "memory": {"long_seconds": a.long_seconds, "short_seconds": a.long_seconds / 8, **memory}}
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Full-frame detection on every frame, or every N-th with a search near the last boxes in between
(``FERLIVE_DETECTOR_REDETECT_EVERY=N``): what the detect stage spends per frame and what it finds. (A face
that walks in is found at the next full detection: up to N - 1 frames late, by construction.)

    python benchmarks/redetect.py [--every 1 2 3 5] [--frames 150] [--people 4] [--out results.json]

The video: 640x480 frames of matplotlib's sample person (her face 70-120 px, with hair, cap and
shoulders) on a textured or cluttered background, several copies moving on their own smooth paths
(2-5 px a frame, turning by up to 15 degrees, growing and shrinking a little), one walking in about a third
of the way through and one leaving at two thirds. A face is *found* in a frame when a detected box has IoU
>= 0.5 with its true FER2013-framed square; a box whose centre lies in no true square is *false*.
Detect ms is ``FaceDetector.detect`` (detection, framing and the 48x48 crops) on one thread
(cv2.setNumThreads(1)), the pipeline's detector settings otherwise; mean, median and p95 over all frames
(with N > 1 the frames are of two kinds, full and regions only, so the mean is the figure to compare).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.detector import match  # noqa: E402
from benchmarks.inference import machine_info  # noqa: E402
from shared.config import Config  # noqa: E402
from shared.detector import DetectorConfig, FaceDetector  # noqa: E402
from shared.synthetic import make_background, person_photo, place_person  # noqa: E402

FRAME = (640, 480)


def moving_people(n_frames: int, people: int, seed: int = 0, background: str = "textured",
                  come_and_go: bool = True) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(frame_bgr, true boxes (K,4) int32, visible (K,) bool) per frame; person 0 walks in at n_frames//3 in
    front of everyone, person 1 leaves at 2*n_frames//3, the others stay throughout (with come_and_go=False
    everyone stays throughout). People pass in front of one another (those drawn later); a face more than
    10% hidden is not visible."""
    rng = np.random.default_rng(seed)
    w, h = FRAME
    bg = make_background(FRAME, background, rng)
    photo = person_photo()
    side = rng.uniform(70, 120, people)
    pos = np.stack([rng.uniform(0.1 * w + 60, 0.9 * w - 60, people), rng.uniform(80, h - 80, people)], 1)
    vel = rng.uniform(2, 5, (people, 2)) * rng.choice([-1, 1], (people, 2))
    phase, flip = rng.uniform(0, 2 * np.pi, people), rng.integers(0, 2, people).astype(bool)
    gain, bias = rng.uniform(0.8, 1.15, people), rng.uniform(-20, 20, people)
    enter, leave = n_frames // 3, 2 * n_frames // 3
    white = np.full_like(photo, 255)
    out = []
    for t in range(n_frames):
        frame, boxes, covers = bg.copy(), [], []
        for k in [*range(1, people), 0]:  # the newcomer, person 0, in front of everyone: always visible
            if come_and_go and ((k == 0 and t < enter) or (k == 1 and t >= leave)):
                continue
            s = side[k] * (1 + 0.08 * np.sin(0.05 * t + phase[k]))
            cx, cy, angle = pos[k][0], pos[k][1], 15 * np.sin(0.07 * t + phase[k])
            place_person(frame, int(round(s)), angle, (cx, cy), photo, flip=bool(flip[k]), gain=float(gain[k]),
                         bias=float(bias[k]))
            cover = np.zeros((h, w, 3), np.uint8)  # what this person's picture covers of those drawn before
            place_person(cover, int(round(s)), angle, (cx, cy), white, flip=bool(flip[k]))
            covers.append(cover[:, :, 0] > 127)
            boxes.append((int(round(cx - s / 2)), int(round(cy - s / 2)), int(round(s)), int(round(s))))
        visible = []
        for i, (x, y, bw, bh) in enumerate(boxes):  # a face more than 10% hidden by a later person: not counted
            later = np.zeros((h, w), bool) if i + 1 == len(boxes) else np.any(covers[i + 1:], 0)
            visible.append(later[max(0, y):y + bh, max(0, x):x + bw].mean() <= 0.1)
        out.append((frame, np.asarray(boxes, np.int32).reshape(-1, 4), np.asarray(visible, bool)))
        pos += vel  # bounce off the frame's edges (the face stays inside)
        for d, lim in ((0, w), (1, h)):
            hit = (pos[:, d] < 70) | (pos[:, d] > lim - 70)
            vel[hit, d] *= -1
            pos[:, d] = np.clip(pos[:, d], 70, lim - 70)
    return out


def run(every: int, video: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict:
    det = FaceDetector(DetectorConfig.from_pipeline(Config(detector_redetect_every=every)))
    det.detect(video[0][0], source_id="warm-up")  # first-call set-up, not counted
    times, n_gt, hit, false = [], 0, 0, 0
    for frame, gt, visible in video:
        t0 = time.perf_counter()
        d = det.detect(frame, source_id="cam")
        times.append((time.perf_counter() - t0) * 1e3)
        best, inside = match(gt.astype(np.float32), np.asarray(d.boxes_xywh, np.float32))
        n_gt += int(visible.sum())
        hit += int((best[visible] >= 0.5).sum()) if len(best) else 0
        false += int((~inside).sum())  # a box on a hidden face is not false
    ms = np.asarray(times)
    return {"redetect_every": every, "detect_ms_p50": round(float(np.median(ms)), 2),
            "detect_ms_p95": round(float(np.percentile(ms, 95)), 2), "detect_ms_mean": round(float(ms.mean()), 2),
            "recall": round(hit / max(1, n_gt), 4), "false_boxes": false, "true_faces": n_gt}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--every", type=int, nargs="+", default=[1, 2, 3, 5])
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--people", type=int, default=4)
    ap.add_argument("--backgrounds", nargs="+", default=["textured", "cluttered"])
    ap.add_argument("--out", help="also write the results here (JSON)")
    a = ap.parse_args(argv)
    cv2.setNumThreads(1)
    machine = machine_info()
    print(f"machine: {machine['label']}, load {os.getloadavg()[0]:.1f}")
    rows = []
    for bg in a.backgrounds:
        video = moving_people(a.frames, a.people, background=bg)
        for n in a.every:
            r = {"background": bg, **run(n, video)}
            rows.append(r)
            print(f"{bg:10s} every {n}: detect mean {r['detect_ms_mean']:.2f} ms (p50 {r['detect_ms_p50']:.2f}, "
                  f"p95 {r['detect_ms_p95']:.2f}), recall {r['recall']:.3f} of {r['true_faces']} faces, "
                  f"false boxes {r['false_boxes']}")
    if a.out:
        Path(a.out).write_text(json.dumps({
            "benchmark": "redetect", "command": "python benchmarks/redetect.py " + " ".join(argv or sys.argv[1:]),
            "machine": machine, "load_at_end": os.getloadavg()[0], "frames": a.frames, "people": a.people,
            "results": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does a new face shown where another just was start its own track? FER2013 faces shown one after another
at one place, a few frames each, every crop re-cut a pixel off and JPEG-compressed like a detector's crops
of a video; for each appearance threshold: the share of faces that kept one track while shown, and the share
that started a track of their own (the rest continued the previous face's track and its smoothed scores).

    python benchmarks/tracking.py [--split PublicTest] [--faces 400] [--frames 5] [--jitters 1,3]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402


def jittered(face: np.ndarray, rng: np.random.Generator, jitter: int) -> np.ndarray:
    big = cv2.resize(face, (56, 56))
    dx, dy = rng.integers(-jitter, jitter + 1, 2)
    crop = big[4 + dy:52 + dy, 4 + dx:52 + dx]
    return cv2.imdecode(cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 75])[1], cv2.IMREAD_GRAYSCALE)


def run(faces: np.ndarray, threshold: float, frames: int, jitter: int) -> dict:
    from shared.tracking import Tracker
    rng = np.random.default_rng(0)
    tracker, per_face = Tracker(alpha=0.3, min_similarity=threshold), []
    box = np.array([[200, 120, 96, 96]])
    for k, face in enumerate(faces):
        seen = set()
        for _ in range(frames):
            ids, _ = tracker.update(box + rng.integers(-2, 3, (1, 4)), np.eye(7, dtype=np.float32)[[k % 7]],
                                    jittered(face, rng, jitter)[None])
            seen.add(int(ids[0]))
        per_face.append(seen)
    return {"threshold": threshold, "faces": len(faces), "kept_one_track": float(np.mean([len(s) == 1 for s in per_face])),
            "started_own_track": len(set().union(*per_face)) / len(faces)}


def main(argv: list[str] | None = None) -> int:
    from training.data import load_fer2013
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", default="PublicTest")
    p.add_argument("--faces", type=int, default=400)
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--jitters", default="1,3", help="crop shifts to try, pixels of a 56-pixel re-cut")
    p.add_argument("--thresholds", default="-1,0.5,0.6,0.7")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    faces = load_fer2013().split(a.split).faces[:a.faces]
    faces = faces[faces.reshape(len(faces), -1).std(axis=1) > 10]  # blank FER2013 images carry no face
    rows = [{**run(faces, float(t), a.frames, int(j)), "jitter": int(j)}
            for j in a.jitters.split(",") for t in a.thresholds.split(",")]
    for r in rows:
        print(f"jitter ±{r['jitter']} px, threshold {r['threshold']:5}: kept one track {r['kept_one_track']:.3f}, "
              f"started their own {r['started_own_track']:.3f} ({r['faces']} faces)")
    if a.out:
        Path(a.out).write_text(json.dumps({"benchmark": "tracking", "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The tracker on real faces: one face keeps its track through small movements; a different face shown where
the last one was starts a new track with its own scores (no carry-over of the previous face's smoothing);
a scene cut ends every track."""
from __future__ import annotations

import cv2
import numpy as np

from shared.tracking import Tracker, appearance

BOX = np.array([[200, 120, 96, 96]])


def _jittered(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same 48x48 face re-cropped a pixel off and JPEG-compressed, as a detector on video gives it."""
    big = cv2.resize(face, (56, 56))
    dx, dy = rng.integers(-1, 2, 2)
    crop = big[4 + dy:52 + dy, 4 + dx:52 + dx]
    return cv2.imdecode(cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 75])[1], cv2.IMREAD_GRAYSCALE)


def test_still_faces_shown_one_after_another_each_get_their_own_track(sample_data):
    rng = np.random.default_rng(0)
    faces = sample_data.faces[:210]
    faces = faces[faces.reshape(len(faces), -1).std(axis=1) > 10][:200]  # FER2013 has a few blank images
    tracker = Tracker(alpha=0.3)
    ids_per_face, carried = [], 0
    for k, face in enumerate(faces):
        probs = np.eye(7, dtype=np.float32)[[k % 7]]
        seen = set()
        for f in range(5):  # five frames of each face, at the same place
            ids, smoothed = tracker.update(BOX + rng.integers(-2, 3, (1, 4)), probs, _jittered(face, rng)[None])
            seen.add(int(ids[0]))
            if f == 0 and not np.allclose(smoothed, probs):
                carried += 1  # the new face's first frame mixed with the previous face's scores
        ids_per_face.append(seen)
    kept = sum(len(s) == 1 for s in ids_per_face)
    assert kept >= 0.98 * len(faces), f"{len(faces) - kept} of {len(faces)} faces lost their track standing still"
    distinct = len(set().union(*ids_per_face))
    assert distinct >= 0.9 * len(faces), f"{len(faces) - distinct} of {len(faces)} faces continued another's track"
    assert carried <= 0.1 * len(faces)


def test_flat_crops_carry_no_appearance_and_do_not_break_tracks():
    t = Tracker(alpha=0.5)
    flat = np.full((1, 48, 48), 128, np.uint8)
    assert not appearance(flat).std()
    a, _ = t.update(BOX, np.eye(7, dtype=np.float32)[[0]], flat)
    b, _ = t.update(BOX, np.eye(7, dtype=np.float32)[[1]], flat)
    assert a.tolist() == b.tolist()


def test_cut_ends_every_track(sample_data):
    t = Tracker(alpha=0.5)
    face = sample_data.faces[:1]
    a, _ = t.update(BOX, np.eye(7, dtype=np.float32)[[0]], face)
    t.cut()
    b, sm = t.update(BOX, np.eye(7, dtype=np.float32)[[1]], face)
    assert a[0] != b[0] and sm[0, 1] == 1.0

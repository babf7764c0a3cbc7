"""Synthetic test frames: real FER2013 faces placed into larger frames at known boxes, and writers for
the videos other tests play (mp4 for OpenCV, YUV4MPEG2 for Chromium's fake webcam).

Pure numpy + OpenCV; no TensorFlow.

    rng = np.random.default_rng(0)
    frame_bgr, boxes_xywh = place_faces(faces_gray[:3], rng=rng, background="cluttered")
    write_video(frames, "faces.mp4", fps=15); write_y4m(frames, "faces.y4m", fps=15)

A placed face is the whole 48x48 FER2013 crop resized to a square of ``side`` px, so its box is the
frame a FER2013 face has: the "true" box detectors and crop framing are measured against.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

BACKGROUNDS: tuple[str, ...] = ("plain", "noise", "cluttered", "textured")
"""plain: one random gray level; noise: smoothed gaussian noise; cluttered: shapes, lines, gradients
and text in colour (for measuring false detections); textured: colour fractal noise with oriented
gratings (fabric, foliage, wood-like detail at every scale: what makes Haar slow and false-positive prone)."""

PERSON_FACE_XYWH: tuple[int, int, int, int] = (170, 120, 198, 198)
"""The face of matplotlib's sample photo grace_hopper.jpg (512x600) framed like FER2013: the square whose
eyes and mouth corners sit where FER_TEMPLATE (shared.registration) puts them. From the hand-checked eye
centres (227, 195), (308, 195) and mouth corners (229, 268), (302, 268): side = 73 px eye-to-mouth height
* 48 / 17.7, top = eye line - 0.381 side, left = eye midpoint - 0.49 side."""


def make_background(frame_size: tuple[int, int] = (640, 480), background: str = "plain",
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """A BGR uint8 frame of frame_size (w, h) with the named background."""
    rng = rng if rng is not None else np.random.default_rng()
    w, h = frame_size
    if background == "plain":
        return np.full((h, w, 3), int(rng.integers(40, 216)), np.uint8)
    if background == "noise":
        noise = rng.normal(128, 40, (h, w)).astype(np.float32)
        noise = cv2.GaussianBlur(noise, (0, 0), 1.5)
        return cv2.cvtColor(np.clip(noise, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    if background == "cluttered":
        gx = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
        gy = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
        c0, c1, c2 = (rng.uniform(30, 225, 3).astype(np.float32) for _ in range(3))
        frame = np.clip(c0 + (c1 - c0) * gx + (c2 - c0) * gy, 0, 255).astype(np.uint8)
        frame = np.ascontiguousarray(frame)
        for _ in range(int(rng.integers(25, 45))):
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            kind = rng.integers(0, 5)
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            if kind == 0:
                cv2.rectangle(frame, (x, y), (x + int(rng.integers(10, 160)), y + int(rng.integers(10, 160))),
                              color, int(rng.choice([-1, 1, 2, 4])))
            elif kind == 1:
                cv2.ellipse(frame, (x, y), (int(rng.integers(5, 80)), int(rng.integers(5, 80))),
                            float(rng.uniform(0, 180)), 0, 360, color, int(rng.choice([-1, 1, 3])))
            elif kind == 2:
                cv2.line(frame, (x, y), (int(rng.integers(0, w)), int(rng.integers(0, h))), color,
                         int(rng.integers(1, 6)))
            elif kind == 3:
                cv2.putText(frame, "".join(chr(int(c)) for c in rng.integers(65, 91, 5)), (x, y),
                            cv2.FONT_HERSHEY_SIMPLEX, float(rng.uniform(0.5, 2.5)), color, int(rng.integers(1, 4)))
            else:
                pts = rng.integers(0, [w, h], (int(rng.integers(3, 7)), 2)).astype(np.int32)
                cv2.fillPoly(frame, [pts], color)
        return frame
    if background == "textured":
        acc = np.zeros((h, w, 3), np.float32)
        for cell in (2, 4, 8, 16, 32, 64):  # fractal (1/f-like) colour noise
            n = rng.normal(0, 1, (h // cell + 2, w // cell + 2, 3)).astype(np.float32)
            acc += cv2.resize(n, (w + 2 * cell, h + 2 * cell), interpolation=cv2.INTER_CUBIC)[
                cell:cell + h, cell:cell + w] * cell ** 0.6
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        for _ in range(int(rng.integers(2, 5))):  # oriented gratings: weave, stripes, grain
            th, period = rng.uniform(0, np.pi), rng.uniform(3, 40)
            wave = np.sin(2 * np.pi * (xx * np.cos(th) + yy * np.sin(th)) / period + rng.uniform(0, 6.3))
            acc += wave[:, :, None] * rng.uniform(0.5, 3.0, 3).astype(np.float32) * 4.0
        acc = (acc - acc.mean((0, 1))) / (acc.std((0, 1)) + 1e-6)
        frame = acc * rng.uniform(25, 55) + rng.uniform(50, 200, 3).astype(np.float32)
        return np.clip(frame, 0, 255).astype(np.uint8)
    raise ValueError(f"unknown background {background!r}; use one of {BACKGROUNDS}")


def person_photo() -> np.ndarray:
    """matplotlib's sample photo grace_hopper.jpg (BGR, 600x512): a real face with hair, cap, shoulders
    and a flag behind; its FER2013-framed face box is PERSON_FACE_XYWH."""
    import matplotlib
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"{path} is missing from the installed matplotlib")
    return img


def place_person(frame_bgr: np.ndarray, face_side: int, angle_deg: float, centre_xy: tuple[float, float],
                 photo: np.ndarray | None = None, flip: bool = False, gain: float = 1.0,
                 bias: float = 0.0) -> np.ndarray:
    """Paste the person of `person_photo()` (face, hair, cap, shoulders and some of the photo's background)
    into frame_bgr in place, scaled so the FER2013-framed face box has side `face_side`, turned by
    `angle_deg` (counter-clockwise on screen) about the face centre, which lands at `centre_xy`.
    Returns the face's (4,2) framed-box corners in the frame (the box turned with the face)."""
    photo = person_photo() if photo is None else photo
    fx, fy, fs, _ = PERSON_FACE_XYWH
    if flip:
        photo = photo[:, ::-1]
        fx = photo.shape[1] - fx - fs
    # the person with context: 0.65 side either side of the face, 0.5 above, 1.3 below (shoulders)
    x0, y0 = max(0, int(fx - 0.65 * fs)), max(0, int(fy - 0.5 * fs))
    x1, y1 = min(photo.shape[1], int(fx + 1.65 * fs)), min(photo.shape[0], int(fy + 2.3 * fs))
    cut = np.clip(photo[y0:y1, x0:x1].astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)
    k = face_side / fs
    c = (fx + fs / 2 - x0, fy + fs / 2 - y0)  # face centre in the cut
    m = cv2.getRotationMatrix2D(c, angle_deg, k)
    m[:, 2] += [centre_xy[0] - c[0], centre_xy[1] - c[1]]
    H, W = frame_bgr.shape[:2]
    warped = cv2.warpAffine(cut, m, (W, H), flags=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
    mask = cv2.warpAffine(np.full(cut.shape[:2], 255, np.uint8), m, (W, H), flags=cv2.INTER_LINEAR)
    a = (mask.astype(np.float32) / 255.0)[:, :, None]
    frame_bgr[:] = (warped * a + frame_bgr * (1 - a)).astype(np.uint8)
    corners = np.array([[fx, fy], [fx + fs, fy], [fx + fs, fy + fs], [fx, fy + fs]], np.float64) - [x0, y0]
    return corners @ m[:, :2].T + m[:, 2]


def person_scene(frame_size: tuple[int, int] = (640, 480), people: int = 1, face_px: tuple[int, int] = (60, 180),
                 angle_deg: tuple[float, float] = (-25.0, 25.0), background: str = "textured",
                 rng: np.random.Generator | None = None, max_tries: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """A frame with `people` copies of the sample person (random size, angle, side, lighting; faces apart)
    on a named background. Returns (frame_bgr, boxes_xywh int32 (K,4)): each face's FER2013-framed square,
    axis-aligned around the face centre with the face's side (the box an upright face of that size has)."""
    rng = rng if rng is not None else np.random.default_rng()
    w, h = frame_size
    frame = make_background(frame_size, background, rng)
    photo = person_photo()
    boxes: list[tuple[int, int, int, int]] = []
    for i in range(people):
        for _ in range(max_tries):
            s = int(rng.integers(face_px[0], face_px[1] + 1))
            cx, cy = float(rng.uniform(0.6 * s, w - 0.6 * s)), float(rng.uniform(0.6 * s, h - 0.6 * s))
            box = (int(round(cx - s / 2)), int(round(cy - s / 2)), s, s)
            if not _overlaps(box, boxes, int(0.6 * max(s, face_px[1]))):
                break
        else:
            raise ValueError(f"could not fit person {i + 1} of {people} into {w}x{h}; use fewer or smaller faces")
        place_person(frame, s, float(rng.uniform(*angle_deg)), (cx, cy), photo, flip=bool(rng.integers(0, 2)),
                     gain=float(rng.uniform(0.7, 1.2)), bias=float(rng.uniform(-25, 25)))
        boxes.append(box)
    return frame, np.asarray(boxes, np.int32).reshape(-1, 4)


def _overlaps(box: tuple[int, int, int, int], others: Sequence[tuple[int, int, int, int]], gap: int) -> bool:
    x, y, s, _ = box
    for ox, oy, os_, _ in others:
        if x < ox + os_ + gap and ox < x + s + gap and y < oy + os_ + gap and oy < y + s + gap:
            return True
    return False


def place_faces(faces_gray: np.ndarray | Sequence[np.ndarray], frame_size: tuple[int, int] = (640, 480),
                face_px: tuple[int, int] = (100, 200), rng: np.random.Generator | None = None,
                background: str | np.ndarray = "plain", boxes_xywh: np.ndarray | None = None,
                gap: float = 0.25, max_tries: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Place gray faces (K,48,48) into a frame (w, h) as squares of a random side in face_px
    (inclusive), at random non-overlapping spots (at least gap * side apart), or at the given square
    boxes_xywh. background: a name from BACKGROUNDS or a BGR frame of frame_size to draw on (copied).
    Returns (frame_bgr uint8 (h,w,3), boxes_xywh int32 (K,4)) with boxes in placement order.
    Raises ValueError when the faces do not fit."""
    faces = [np.asarray(f) for f in faces_gray]
    for i, f in enumerate(faces):
        if f.ndim != 2 or f.dtype != np.uint8:
            raise ValueError(f"face {i}: expected a uint8 (H,W) gray face, got {f.dtype} {f.shape}")
    rng = rng if rng is not None else np.random.default_rng()
    w, h = frame_size
    if isinstance(background, str):
        frame = make_background(frame_size, background, rng)
    else:
        frame = np.array(background, dtype=np.uint8, copy=True)
        if frame.shape != (h, w, 3):
            raise ValueError(f"background frame is {frame.shape}, expected ({h}, {w}, 3) for frame_size {frame_size}")
    lo, hi = int(face_px[0]), int(face_px[1])
    if boxes_xywh is not None:
        boxes = [tuple(int(v) for v in b) for b in np.asarray(boxes_xywh).reshape(-1, 4)]
        if len(boxes) != len(faces):
            raise ValueError(f"{len(boxes)} boxes for {len(faces)} faces")
        for b in boxes:
            if b[2] != b[3] or b[2] < 1 or b[0] < 0 or b[1] < 0 or b[0] + b[2] > w or b[1] + b[3] > h:
                raise ValueError(f"box {b} must be square and inside the {w}x{h} frame")
    else:
        if not 1 <= lo <= hi or hi > min(w, h):
            raise ValueError(f"face_px {face_px} must be 1 <= lo <= hi <= {min(w, h)} for a {w}x{h} frame")
        boxes = []
        for i in range(len(faces)):
            for _ in range(max_tries):
                s = int(rng.integers(lo, hi + 1))
                box = (int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1)), s, s)
                if not _overlaps(box, boxes, int(gap * max(s, hi))):
                    boxes.append(box)
                    break
            else:
                raise ValueError(f"could not fit face {i + 1} of {len(faces)} ({lo}-{hi} px, gap {gap}) "
                                 f"into {w}x{h} after {max_tries} tries; use fewer or smaller faces")
    for face, (x, y, s, _) in zip(faces, boxes):
        big = cv2.resize(face, (s, s), interpolation=cv2.INTER_CUBIC if s > face.shape[0] else cv2.INTER_AREA)
        frame[y:y + s, x:x + s] = big[:, :, None]
    return frame, np.asarray(boxes, np.int32).reshape(-1, 4)


def _frames_of(frames: Iterable[np.ndarray]) -> list[np.ndarray]:
    out = [np.asarray(f) for f in frames]
    if not out:
        raise ValueError("no frames to write")
    shape = out[0].shape
    for i, f in enumerate(out):
        if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
            raise ValueError(f"frame {i}: expected uint8 (H,W,3) BGR, got {f.dtype} {f.shape}")
        if f.shape != shape:
            raise ValueError(f"frame {i} is {f.shape}, frame 0 is {shape}; all frames must share one size")
    return out


def write_video(frames: Iterable[np.ndarray], path: str | Path, fps: float = 15.0) -> Path:
    """Write BGR frames to an mp4 (fourcc 'mp4v') that cv2.VideoCapture reads back."""
    out = _frames_of(frames)
    path = Path(path)
    h, w = out[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    if not writer.isOpened():
        raise OSError(f"cv2.VideoWriter could not open {path} for mp4v at {w}x{h}")
    try:
        for f in out:
            writer.write(np.ascontiguousarray(f))
    finally:
        writer.release()
    return path


def write_y4m(frames: Iterable[np.ndarray], path: str | Path, fps: float = 15.0) -> Path:
    """Write BGR frames as raw YUV4MPEG2 4:2:0 (Chromium's --use-file-for-fake-video-capture).
    Width and height must be even."""
    out = _frames_of(frames)
    path = Path(path)
    h, w = out[0].shape[:2]
    if w % 2 or h % 2:
        raise ValueError(f"y4m 4:2:0 needs an even frame size, got {w}x{h}")
    rate = Fraction(fps).limit_denominator(1001)
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{rate.numerator}:{rate.denominator} Ip A1:1 C420jpeg\n".encode("ascii"))
        for frame in out:
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_BGR2YUV_I420).tobytes())  # Y, U, V planes
    return path


def read_y4m(path: str | Path) -> tuple[list[np.ndarray], float]:
    """Read a 4:2:0 YUV4MPEG2 file back: (BGR frames, fps). Raises ValueError on a malformed file."""
    data = Path(path).read_bytes()
    end = data.find(b"\n")
    if not data.startswith(b"YUV4MPEG2 ") or end < 0:
        raise ValueError(f"{path}: not a YUV4MPEG2 file (no 'YUV4MPEG2 ' header line)")
    tags = {t[:1]: t[1:] for t in data[10:end].decode("ascii").split()}
    try:
        w, h = int(tags["W"]), int(tags["H"])
        num, den = (int(v) for v in tags.get("F", "25:1").split(":"))
    except (KeyError, ValueError):
        raise ValueError(f"{path}: header {data[:end]!r} lacks W/H or has a bad F tag") from None
    if not tags.get("C", "420").startswith("420"):
        raise ValueError(f"{path}: colour space C{tags['C']} is not 4:2:0")
    size = w * h * 3 // 2
    frames, pos = [], end + 1
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0 or not data.startswith(b"FRAME", pos):
            raise ValueError(f"{path}: expected 'FRAME' at byte {pos}")
        pos = nl + 1
        if pos + size > len(data):
            raise ValueError(f"{path}: frame {len(frames)} is truncated")
        yuv = np.frombuffer(data, np.uint8, size, pos).reshape(h * 3 // 2, w)
        frames.append(cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420))
        pos += size
    return frames, num / den

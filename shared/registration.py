"""Face registration: five facial landmarks -> a 48x48 gray face with level eyes, framed like FER2013.

Pure numpy + ``cv2.warpAffine``. The landmarks are YuNet's five points, in its order (``LANDMARKS``): the
subject's right eye (image-left on a frontal face), left eye, nose tip, right and left mouth corners, as
``(5,2)`` float x, y in frame pixels; NaN rows are points the detector does not give (BlazeFace gives the
eyes and the nose only). ``FER_TEMPLATE`` is where those points lie, on average, in a 48x48 FER2013 face
(measured: see its docstring). Registration fits the similarity transform (rotation, uniform scale,
shift) that maps the known points onto the template by least squares and warps the frame with it, so the
eyes come out level and the face is scaled and centred as in FER2013.

    face = register_face(frame_gray, landmarks)            # uint8 (48,48)
    angle = eye_angle(landmarks)                            # degrees the eye line is turned (clockwise +)
"""
from __future__ import annotations

import cv2
import numpy as np

from shared.preprocess import FACE_SIZE

LANDMARKS: tuple[str, ...] = ("right_eye", "left_eye", "nose_tip", "right_mouth", "left_mouth")
"""Order of the five landmarks (the subject's right eye is image-left on a frontal face)."""

FER_TEMPLATE: np.ndarray = np.array([[14.5, 18.3], [32.5, 18.3], [23.5, 28.22],
                                     [16.04, 36.06], [30.96, 36.06]], np.float64)
"""Median positions of the five landmarks in a 48x48 FER2013 face (x, y in the crop's pixel coordinates,
pixel centres at integers as in OpenCV, so the crop's centre is 23.5), measured by YuNet on 1,375 FER2013
Training faces placed at 100-200 px into frames (`python benchmarks/detector.py` prints it as
``template``), made symmetric about x = 23.5."""


class RegistrationError(ValueError):
    """Landmarks that cannot be registered (too few finite points, or all in one spot)."""


def _finite_pairs(landmarks: np.ndarray, template: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lm = np.asarray(landmarks, np.float64)
    if lm.shape != template.shape:
        raise RegistrationError(f"landmarks must have shape {template.shape}, got {lm.shape}")
    ok = np.isfinite(lm).all(1)
    if ok.sum() < 2 or not ok[:2].all():
        raise RegistrationError("registration needs both eyes (landmarks 0 and 1) as finite points")
    return lm[ok], template[ok]


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares similarity (rotation, uniform scale, shift) taking points src (K,2) onto dst
    (K,2), K >= 2, as a 2x3 matrix for cv2.warpAffine (Umeyama's closed form without reflection)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    zs, zd = src[:, 0] + 1j * src[:, 1], dst[:, 0] + 1j * dst[:, 1]
    ms, md = zs.mean(), zd.mean()
    var = float(np.sum(np.abs(zs - ms) ** 2))
    if var < 1e-9:
        raise RegistrationError("landmarks all lie in one spot")
    a = np.sum(np.conj(zs - ms) * (zd - md)) / var  # z' = a z + b: a = scale * e^{i angle}
    b = md - a * ms
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]], np.float64)


def registration_matrix(landmarks: np.ndarray, size: int = FACE_SIZE,
                        template: np.ndarray = FER_TEMPLATE) -> np.ndarray:
    """2x3 matrix taking frame pixels to the size x size registered face (template scaled to size)."""
    src, dst = _finite_pairs(landmarks, np.asarray(template, np.float64))
    return similarity(src, dst * (size / FACE_SIZE))


def eye_angle(landmarks: np.ndarray) -> float:
    """Angle of the line from the image-left eye to the image-right eye, degrees, positive when the
    right-hand eye is lower (the face turned clockwise in the image)."""
    (lx, ly), (rx, ry) = np.asarray(landmarks, np.float64)[:2]
    return float(np.degrees(np.arctan2(ry - ly, rx - lx)))


def register_face(frame_gray: np.ndarray, landmarks: np.ndarray, size: int = FACE_SIZE,
                  template: np.ndarray = FER_TEMPLATE) -> np.ndarray:
    """The face with these landmarks, eyes level, scaled and centred like a FER2013 face: uint8
    (size,size); parts outside the frame are filled by edge replication (as `crop_face` does)."""
    m = registration_matrix(landmarks, size, template)
    return warp_face(frame_gray, m, size)


def level_face(frame_gray: np.ndarray, box_xywh, landmarks: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """The square box_xywh turned about its centre so the eyes are level (scale and centre stay the
    box's): uint8 (size,size). Needs both eyes (landmarks 0 and 1)."""
    lm = np.asarray(landmarks, np.float64)
    if not np.isfinite(lm[:2]).all():
        raise RegistrationError("levelling needs both eyes (landmarks 0 and 1) as finite points")
    x, y, w, h = (float(v) for v in box_xywh)
    side = max(w, h)
    cx, cy = x + w / 2 - 0.5, y + h / 2 - 0.5  # pixel centres at integers
    m = cv2.getRotationMatrix2D((cx, cy), eye_angle(lm), size / side)
    m[:, 2] += [(size - 1) / 2 - cx, (size - 1) / 2 - cy]
    return warp_face(frame_gray, m, size)


def warp_face(frame_gray: np.ndarray, matrix: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """frame -> size x size through a 2x3 matrix, reading only the patch the output comes from: shrunk
    with INTER_AREA first when the warp shrinks a lot (no aliasing), edges replicated outside the frame."""
    m = np.array(matrix, np.float64)
    inv = cv2.invertAffineTransform(m)
    c = warp_points(np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64), inv)
    x0, y0 = (int(np.floor(v)) - 2 for v in c.min(0))
    x1, y1 = (int(np.ceil(v)) + 2 for v in c.max(0))
    H, W = frame_gray.shape[:2]
    pad = max(0, -x0, -y0, x1 - W, y1 - H)
    if pad:
        frame_gray = cv2.copyMakeBorder(frame_gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    patch = frame_gray[y0 + pad:y1 + pad, x0 + pad:x1 + pad]
    m[:, 2] += m[:, :2] @ np.array([x0, y0], np.float64)
    scale = float(np.hypot(m[0, 0], m[1, 0]))
    if scale < 0.5:  # shrink by area first so the small face does not alias, then warp at ~1:2
        f = 2.0 * scale
        h, w = patch.shape[:2]
        nw, nh = max(1, round(w * f)), max(1, round(h * f))
        patch = cv2.resize(patch, (nw, nh), interpolation=cv2.INTER_AREA)
        fx, fy = nw / w, nh / h  # old pixel centre = (new + 0.5) / f - 0.5
        m[:, 2] += m[:, :2] @ np.array([0.5 / fx - 0.5, 0.5 / fy - 0.5])
        m[:, :2] = m[:, :2] / np.array([fx, fy])
    return cv2.warpAffine(patch, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def warp_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Points (K,2) through a 2x3 affine matrix."""
    p = np.asarray(points, np.float64)
    return p @ np.asarray(matrix)[:, :2].T + np.asarray(matrix)[:, 2]

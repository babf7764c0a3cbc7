"""Face crop -> model input. The one preprocessing path, used by training, export and every service.

Pure numpy plus ``cv2.resize``/``cv2.cvtColor``; no TensorFlow.
"""
from __future__ import annotations

import cv2
import numpy as np

FACE_SIZE: int = 48
"""Side of the square grayscale face the models take (FER2013's own size)."""


def to_gray(face: np.ndarray) -> np.ndarray:
    """uint8 (H,W) gray or (H,W,3) BGR or (H,W,1) -> uint8 (H,W) gray."""
    face = np.asarray(face)
    if face.ndim == 3 and face.shape[2] == 1:
        face = face[:, :, 0]
    if face.ndim == 3 and face.shape[2] == 3:
        face = cv2.cvtColor(np.ascontiguousarray(face, dtype=np.uint8), cv2.COLOR_BGR2GRAY)
    if face.ndim != 2:
        raise ValueError(f"expected a face of shape (H,W), (H,W,1) or (H,W,3), got {face.shape}")
    if face.shape[0] < 1 or face.shape[1] < 1:
        raise ValueError(f"empty face crop of shape {face.shape}")
    if face.dtype != np.uint8:
        face = np.clip(face, 0, 255).astype(np.uint8)
    return face


def resize_face(face_gray: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """Resize a gray face to size x size: INTER_AREA when shrinking, INTER_LINEAR when enlarging."""
    h, w = face_gray.shape[:2]
    if (h, w) == (size, size):
        return face_gray
    interp = cv2.INTER_AREA if h * w > size * size else cv2.INTER_LINEAR
    return cv2.resize(face_gray, (size, size), interpolation=interp)


def prepare_faces(faces: np.ndarray | list[np.ndarray], size: int = FACE_SIZE) -> np.ndarray:
    """Face crops (uint8 gray (N,H,W), BGR (N,H,W,3), or a list of any sizes) -> uint8 (N,size,size)."""
    if isinstance(faces, np.ndarray):
        if faces.ndim == 2:  # one gray face
            faces = faces[None]
        if faces.ndim not in (3, 4) or (faces.ndim == 4 and faces.shape[-1] not in (1, 3)):
            raise ValueError(f"expected faces of shape (N,H,W) gray or (N,H,W,3) BGR, got {faces.shape}")
        if faces.ndim == 3 and faces.shape[1:] == (size, size) and faces.dtype == np.uint8:
            return faces
    out = np.empty((len(faces), size, size), dtype=np.uint8)
    for i, face in enumerate(faces):
        out[i] = resize_face(to_gray(face), size)
    return out


def to_model_input(faces_gray: np.ndarray) -> np.ndarray:
    """uint8 (N,48,48) -> float32 (N,48,48,1) in [0,1], the models' input."""
    return (np.asarray(faces_gray, dtype=np.float32) / 255.0)[..., None]


def crop_face(frame_gray: np.ndarray, box_xywh: tuple[int, int, int, int], margin: float = 0.0,
              size: int = FACE_SIZE) -> np.ndarray:
    """Crop a square around a detector box, grown by `margin` (fraction of its side) on each side,
    padded by edge replication where it leaves the frame, and resized to size x size."""
    x, y, w, h = (int(v) for v in box_xywh)
    side = max(w, h) * (1.0 + 2.0 * margin)
    cx, cy = x + w / 2.0, y + h / 2.0
    x0, y0 = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    s = max(1, int(round(side)))
    H, W = frame_gray.shape[:2]
    pad = max(0, -x0, -y0, x0 + s - W, y0 + s - H)
    if pad:
        frame_gray = cv2.copyMakeBorder(frame_gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0 = x0 + pad, y0 + pad
    return resize_face(to_gray(frame_gray[y0:y0 + s, x0:x0 + s]), size)

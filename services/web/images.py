"""Untrusted image bytes -> a BGR frame of bounded size, or an ImageError saying what was wrong.

Pure functions: used by ``POST /api/predict`` and by the WebSocket ingest. Nothing is stored.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_DECODE_PIXELS = 64_000_000
"""Beyond this many pixels a JPEG is decoded at 1/2, 1/4 or 1/8 scale and a PNG is refused."""


class ImageError(ValueError):
    """Bytes that are not a usable image; the message says what is wrong and what is accepted."""


@dataclass(frozen=True)
class DecodedImage:
    """A decoded frame (maybe downscaled) and the size of the image that was sent."""

    frame_bgr: np.ndarray
    original_wh: tuple[int, int]

    @property
    def scale(self) -> float:
        """Original width over decoded width: multiply boxes by this to get original pixels."""
        return self.original_wh[0] / self.frame_bgr.shape[1]


def image_format(data: bytes) -> str:
    """'jpeg' or 'png' from the magic bytes; ImageError for anything else."""
    if not data:
        raise ImageError("empty body: send a JPEG or PNG image (multipart field 'image' or the raw bytes)")
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    raise ImageError(f"not an image: expected JPEG or PNG bytes, got {len(data)} bytes starting {data[:8]!r}")


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first SOF marker, or None if the header is cut short."""
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        seg_len = struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return None
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return int(w), int(h)
        i += 2 + seg_len
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    w, h = struct.unpack(">II", data[16:24])
    return int(w), int(h)


def check_complete(data: bytes, fmt: str) -> None:
    """ImageError if the bytes stop before the format's end marker (a truncated upload)."""
    if fmt == "jpeg":
        # EOI may be followed by a little padding; look at the tail only.
        if b"\xff\xd9" not in data[-64:]:
            raise ImageError(f"truncated JPEG: {len(data)} bytes and no end-of-image marker (FFD9)")
    elif fmt == "png":
        if b"IEND" not in data[-32:]:
            raise ImageError(f"truncated PNG: {len(data)} bytes and no IEND chunk")


def decode_image(data: bytes, max_side: int = 1280, max_pixels: int = MAX_DECODE_PIXELS) -> DecodedImage:
    """JPEG/PNG bytes -> uint8 BGR (H,W,3) whose longer side is at most `max_side` (downscaled if larger).

    Raises ImageError for empty, unknown, truncated, corrupt or absurdly large input.
    """
    fmt = image_format(data)
    check_complete(data, fmt)
    size = _jpeg_size(data) if fmt == "jpeg" else _png_size(data)
    if size is None:
        raise ImageError(f"corrupt {fmt.upper()}: no readable size in its header")
    w, h = size
    if w < 1 or h < 1:
        raise ImageError(f"corrupt {fmt.upper()}: header says {w}x{h} pixels")
    flags = cv2.IMREAD_COLOR
    if w * h > max_pixels:
        if fmt != "jpeg":
            raise ImageError(f"image too large: {w}x{h} pixels; at most {max_pixels} pixels for PNG")
        for factor, flag in ((2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4),
                             (8, cv2.IMREAD_REDUCED_COLOR_8)):
            flags = flag
            if (w // factor) * (h // factor) <= max_pixels:
                break
        else:
            raise ImageError(f"image too large: {w}x{h} pixels")
    frame_bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if frame_bgr is None:
        raise ImageError(f"corrupt {fmt.upper()}: the decoder could not read it")
    return DecodedImage(downscale(frame_bgr, max_side), (w, h))


def downscale(frame_bgr: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink (INTER_AREA) so the longer side is at most max_side; smaller frames are returned as is."""
    h, w = frame_bgr.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return frame_bgr
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(frame_bgr, size, interpolation=cv2.INTER_AREA)

"""Untrusted image bytes -> a BGR frame of bounded size, or an ``ImageError`` saying what was wrong.

The one image decoder every entry point uses (detect's bus frames, ``POST /api/predict``, the WebSocket).
The declared width and height are read from the JPEG/PNG header *before* anything is decoded, so a
few hundred bytes that declare 30000x30000 pixels cost nothing:

* empty bytes, unknown formats, truncated files and corrupt headers -> ``ImageError``;
* more than ``limits.max_pixels`` declared pixels -> ``ImageTooLarge`` (HTTP 413);
* a side under ``limits.min_side`` (before or after scaling to ``max_side``) -> ``ImageError``;
* a JPEG is decoded at 1/2, 1/4 or 1/8 scale when that still leaves its longer side >= ``max_side``
  (libjpeg's scaled decoding), so the decoded buffer is bounded by ``max_side``, not by the input.

Pure functions, nothing stored, safe to call from any thread.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

DEFAULT_MAX_PIXELS = 12_000_000
"""Declared pixels beyond which an image is refused: a 12-megapixel phone photo passes, 8000x8000 does not."""
DEFAULT_MIN_SIDE = 16
"""Shortest side accepted (the face detector needs 8 px; a face needs far more)."""

_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


class ImageError(ValueError):
    """Bytes that are not a usable image; the message says what is wrong and what is accepted."""

    status: int = 400


class ImageTooLarge(ImageError):
    """An image whose header declares more pixels than the configured cap (HTTP 413)."""

    status = 413


@dataclass(frozen=True)
class ImageLimits:
    """What an untrusted image may be: declared pixel cap, shortest side, longest side after decoding."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE
    max_side: int = 1280

    def __post_init__(self) -> None:
        if self.min_side < 8 or self.max_side < self.min_side or self.max_pixels < self.min_side ** 2:
            raise ValueError(f"image limits {self}: need min_side >= 8, max_side >= min_side and "
                             "max_pixels >= min_side**2")


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
        raise ImageError("empty body: no image bytes; send a JPEG or PNG image (multipart field 'image' or the raw bytes)")
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    raise ImageError(f"not an image: expected JPEG or PNG bytes, got {len(data)} bytes starting {data[:8].hex(' ')} (hex)")


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first SOF marker, or None if the header is cut short or malformed."""
    i, n = 2, len(data)
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
        if seg_len < 2:
            return None
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


def declared_size(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) from the header alone; ImageError if there is no readable size."""
    fmt = image_format(data)
    size = _jpeg_size(data) if fmt == "jpeg" else _png_size(data)
    if size is None:
        raise ImageError(f"corrupt {fmt.upper()}: no readable size in its header ({len(data)} bytes)")
    w, h = size
    if w < 1 or h < 1:
        raise ImageError(f"corrupt {fmt.upper()}: header says {w}x{h} pixels")
    return fmt, w, h


def check_complete(data: bytes, fmt: str) -> None:
    """ImageError if the bytes stop before the format's end marker (a truncated upload)."""
    if fmt == "jpeg":
        # EOI may be followed by a little padding; look at the tail only.
        if b"\xff\xd9" not in data[-64:]:
            raise ImageError(f"truncated JPEG: {len(data)} bytes and no end-of-image marker (FFD9)")
    elif fmt == "png":
        if b"IEND" not in data[-32:]:
            raise ImageError(f"truncated PNG: {len(data)} bytes and no IEND chunk")


def check_size(fmt: str, w: int, h: int, limits: ImageLimits) -> float:
    """Refuse a declared size outside ``limits``; returns the downscale factor to ``max_side`` (<= 1)."""
    if w * h > limits.max_pixels:
        raise ImageTooLarge(f"image too large: its header declares {w}x{h} = {w * h} pixels, at most "
                            f"{limits.max_pixels} are accepted (FERLIVE_MAX_IMAGE_PIXELS); send a smaller image")
    if min(w, h) < limits.min_side:
        raise ImageError(f"image too small: {w}x{h} pixels, each side must be at least {limits.min_side}")
    scale = min(1.0, limits.max_side / max(w, h))
    if min(w, h) * scale < limits.min_side:
        raise ImageError(f"image too narrow: {w}x{h} pixels would be {round(w * scale)}x{round(h * scale)} "
                         f"after scaling to {limits.max_side} px, each side must stay at least {limits.min_side}")
    return scale


def check_header(data: bytes, limits: ImageLimits = ImageLimits(), *, expect_wh: tuple[int, int] | None = None,
                 jpeg_only: bool = False) -> tuple[str, int, int, float]:
    """Every check of ``decode_image`` that needs no decoding (format, declared size against the message and the
    limits, the end marker): (format, width, height, downscale factor). Raises ImageError like it."""
    fmt, w, h = declared_size(data)
    if jpeg_only and fmt != "jpeg":
        raise ImageError("frames must be JPEG (PNG is accepted by POST /api/predict only)")
    if expect_wh is not None and (w, h) != tuple(expect_wh):
        raise ImageError(f"image is {w}x{h} by its header, the message says {expect_wh[0]}x{expect_wh[1]}")
    check_complete(data, fmt)
    scale = check_size(fmt, w, h, limits) if expect_wh is None else check_size(
        fmt, w, h, ImageLimits(limits.max_pixels, limits.min_side, max(limits.max_side, w, h)))
    return fmt, w, h, scale


def decode_image(data: bytes, limits: ImageLimits = ImageLimits(), *,
                 expect_wh: tuple[int, int] | None = None, jpeg_only: bool = False) -> DecodedImage:
    """JPEG/PNG bytes -> uint8 BGR (H,W,3) whose longer side is at most ``limits.max_side``.

    ``expect_wh``: the size the sender claims (a bus frame); the header must agree and the image is not
    downscaled. Raises ImageError (ImageTooLarge for the pixel cap) for empty, unknown, truncated,
    corrupt, too large or too small input; nothing is decoded before the header passed.
    """
    data = bytes(data)
    fmt, w, h, scale = check_header(data, limits, expect_wh=expect_wh, jpeg_only=jpeg_only)
    flags = cv2.IMREAD_COLOR
    if fmt == "jpeg" and scale < 1.0:
        for factor, flag in _REDUCED:  # the coarsest scale that keeps the longer side >= max_side
            if max(w, h) // factor >= limits.max_side:
                flags = flag
                break
    try:
        frame_bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:  # OpenCV raises on a few corrupt streams instead of returning None
        raise ImageError(f"corrupt {fmt.upper()}: the decoder failed ({str(exc).strip()[:120]})") from None
    if frame_bgr is None or frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
        raise ImageError(f"corrupt {fmt.upper()}: the decoder could not read it")
    if expect_wh is not None and frame_bgr.shape[:2] != (h, w):
        raise ImageError(f"image decodes to {frame_bgr.shape[1]}x{frame_bgr.shape[0]}, header says {w}x{h}")
    return DecodedImage(downscale(frame_bgr, limits.max_side) if expect_wh is None else frame_bgr, (w, h))


def downscale(frame_bgr: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink (INTER_AREA) so the longer side is at most max_side; smaller frames are returned as is."""
    h, w = frame_bgr.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return frame_bgr
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(frame_bgr, size, interpolation=cv2.INTER_AREA)

"""``/video_feed``: the annotated frames as MJPEG (multipart/x-mixed-replace).

Every viewer reads the hub's newest-frame slot: it blocks until a frame newer than the one it sent last,
then sends that one. A slow viewer therefore skips frames; nothing is queued per viewer.
"""
from __future__ import annotations

import functools
from typing import Iterator, Optional

import cv2
import numpy as np
from flask import Blueprint, Response, abort, current_app, request

from services.web.hub import PipelineHub, source_problem

bp = Blueprint("stream", __name__)
BOUNDARY = "frame"


@functools.lru_cache(maxsize=1)
def placeholder_jpeg(width: int = 640, height: int = 480) -> bytes:
    """A dark frame saying the pipeline has not sent anything yet."""
    img = np.full((height, width, 3), (26, 21, 17), np.uint8)
    text = "waiting for the pipeline..."
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.8, 2)
    cv2.putText(img, text, ((width - tw) // 2, (height + th) // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.8,
                (160, 144, 139), 2, cv2.LINE_AA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return buf.tobytes()


def _part(jpeg: bytes) -> bytes:
    return (b"--" + BOUNDARY.encode() + b"\r\nContent-Type: image/jpeg\r\nContent-Length: "
            + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")


def mjpeg_parts(hub: Optional[PipelineHub], source: Optional[str], idle_s: float = 1.0,
                max_frames: int = 0) -> Iterator[bytes]:
    """MJPEG parts of `source`'s newest frames (the placeholder, or the last frame again, every `idle_s` while none come);
    stops after `max_frames` parts if it is > 0."""
    seen, sent = 0, 0
    last = placeholder_jpeg()
    if hub is None:
        yield _part(last)
        return
    while not hub.closed:
        # While the source is stalled the last frame is repeated every idle_s: a viewer that left is
        # noticed (the write fails) instead of holding its thread until the next frame.
        msg, seen = hub.next_frame(source, seen, timeout=idle_s)
        if msg is not None:
            last = msg.frame.jpeg
        yield _part(last)
        sent += 1
        if max_frames and sent >= max_frames:
            return


@bp.get("/video_feed")
def video_feed() -> Response:
    """MJPEG of the main source (or ?source=ID); browsers' own sources are never streamed here."""
    source = request.args.get("source") or None
    problem = source_problem(source) if source else None
    if problem is not None:
        abort(problem[0], description=problem[1])
    max_frames = request.args.get("frames", default=0, type=int)  # handy for curl and tests
    hub = current_app.extensions["ferlive.hub"]
    return Response(mjpeg_parts(hub, source, max_frames=max(0, max_frames)),
                    mimetype=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                    headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

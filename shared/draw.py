"""Drawing, separate from predicting: ``annotate(frame_bgr, results)`` paints boxes, labels and bars."""
from __future__ import annotations

import cv2
import numpy as np

from shared.labels import EMOTIONS
from shared.messages import FaceResult

COLORS_BGR: dict[str, tuple[int, int, int]] = {
    "angry": (40, 40, 220), "disgust": (40, 140, 40), "fear": (160, 60, 160), "happy": (40, 200, 240),
    "sad": (200, 120, 40), "surprise": (40, 160, 255), "neutral": (190, 190, 190)}


def annotate(frame_bgr: np.ndarray, results: list[FaceResult]) -> np.ndarray:
    """Draw each face's box, its landmarks, its label with probability, and a bar per emotion, onto ``frame_bgr``."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    H, W = frame_bgr.shape[:2]
    for r in results:
        x, y, w, h = r.box_xywh
        color = COLORS_BGR[r.emotion]
        cv2.rectangle(frame_bgr, (x, y), (x + w, y + h), color, 2)
        for p in r.landmarks or ():
            if p is not None:
                cv2.circle(frame_bgr, (int(round(p[0])), int(round(p[1]))), 2, color, -1, cv2.LINE_AA)
        label = f"#{r.track_id} {r.emotion} {r.scores[r.emotion]:.0%}"
        (tw, th), base = cv2.getTextSize(label, font, 0.5, 1)
        ty = max(th + base, y)
        cv2.rectangle(frame_bgr, (x, ty - th - base), (x + tw + 4, ty), color, -1)
        cv2.putText(frame_bgr, label, (x + 2, ty - base), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        # bars: one row per emotion below the box (kept inside the frame): name, then a bar of its score
        bx, by, bar_w = max(0, x), min(y + h + 4, H - 7 * 9), max(60, w) - 28
        for k, e in enumerate(EMOTIONS):
            yy = by + k * 9
            cv2.putText(frame_bgr, e[:3], (bx, yy + 7), font, 0.3, (255, 255, 255), 1, cv2.LINE_AA)
            cv2.rectangle(frame_bgr, (bx + 26, yy + 1), (bx + 26 + bar_w, yy + 7), (60, 60, 60), -1)
            cv2.rectangle(frame_bgr, (bx + 26, yy + 1), (bx + 26 + int(bar_w * r.scores[e]), yy + 7),
                          COLORS_BGR[e], -1)
    return frame_bgr

"""The seven FER2013 expressions, in FER2013 code order: the one place this order is written."""
from __future__ import annotations

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES: int = len(EMOTIONS)
EMOTION_TO_CODE: dict[str, int] = {name: code for code, name in enumerate(EMOTIONS)}


def emotion_name(code: int) -> str:
    """Label for a FER2013 code (0-6); raises ValueError naming the bad code."""
    if not 0 <= int(code) < NUM_CLASSES:
        raise ValueError(f"emotion code {code!r} is outside 0-{NUM_CLASSES - 1}")
    return EMOTIONS[int(code)]

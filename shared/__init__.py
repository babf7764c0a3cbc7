"""Code every part of ferlive uses: labels, preprocessing, the model loader, messages, bus, config."""
from shared.labels import EMOTIONS, NUM_CLASSES

__all__ = ["EMOTIONS", "NUM_CLASSES", "FacialExpressionModel"]


def __getattr__(name: str):
    # Lazy, so importing `shared` stays light (nothing heavy at import).
    if name == "FacialExpressionModel":
        from shared.model import FacialExpressionModel
        return FacialExpressionModel
    raise AttributeError(f"module 'shared' has no attribute {name!r}")

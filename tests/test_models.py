"""One harness over every registered model: builds, (N,7) softmax, one training step, .keras round trip,
and Keras JSON + weights round trip with identical predictions."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import keras

from shared.labels import NUM_CLASSES  # noqa: E402
from shared.preprocess import to_model_input  # noqa: E402
from training.augment import AugmentConfig, build_augmentation  # noqa: E402
from training.models import INPUT_SHAPE, MODELS, create_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"vgg_wide", "seed_cnn"}           # ~4.5M parameters: batch of 2 only
N_FACES = {"seed_cnn": 2}


@pytest.fixture(scope="module")
def faces(sample_data) -> tuple[np.ndarray, np.ndarray]:
    """Eight real faces, one of each class plus one, as model input and one-hot targets."""
    data = sample_data.split("Training")
    idx = [int(np.flatnonzero(data.labels == c)[0]) for c in range(NUM_CLASSES)]
    idx.append(int(np.flatnonzero(data.labels == 3)[1]))
    x = to_model_input(data.faces[idx])
    y = np.eye(NUM_CLASSES, dtype=np.float32)[data.labels[idx]]
    return x, y


def _params():
    return [pytest.param(name, marks=pytest.mark.slow) if name in HEAVY else name for name in MODELS]


def _infer(model, x: np.ndarray) -> np.ndarray:
    """Inference-mode forward pass, eagerly (no tf.function tracing per model: quicker on 2 cores)."""
    return np.asarray(model(x, training=False))


def _same(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", _params())
def test_model_harness(name, faces, tmp_path):
    n = N_FACES.get(name, 8)
    x, y = faces[0][:n], faces[1][:n]
    keras.utils.set_random_seed(0)
    model = create_model(name, augment=build_augmentation(AugmentConfig(), seed=0))

    # builds: one input (48,48,1) float faces, one (N,7) softmax
    assert tuple(model.input_shape) == (None, *INPUT_SHAPE)
    assert tuple(model.output_shape) == (None, NUM_CLASSES)
    probs = np.asarray(model.predict(x, verbose=0, batch_size=n))
    assert probs.shape == (n, NUM_CLASSES)
    assert np.all(probs >= 0) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # the augmentation block is the identity outside training
    _same(probs, _infer(model, x))

    # trains one step: finite loss, weights move
    spec = MODELS[name]
    model.compile(optimizer=keras.optimizers.Adam(spec.lr), loss="categorical_crossentropy", metrics=["accuracy"])
    before = [w.copy() for w in model.get_weights()]
    loss = model.train_on_batch(x, y, return_dict=True)["loss"]
    assert np.isfinite(loss)
    assert any(not np.array_equal(b, a) for b, a in zip(before, model.get_weights()))
    trained = _infer(model, x)
    assert not np.allclose(trained, probs)

    # .keras round trip
    model.save(tmp_path / f"{name}.keras")
    loaded = keras.models.load_model(tmp_path / f"{name}.keras")
    _same(_infer(loaded, x), trained)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]

    # Keras JSON + weights round trip (what the export ships)
    model.save_weights(tmp_path / f"{name}.weights.h5")
    rebuilt = keras.models.model_from_json(model.to_json())
    rebuilt.load_weights(tmp_path / f"{name}.weights.h5")
    _same(_infer(rebuilt, x), trained)


def test_registry_entries_are_complete():
    assert {"seed_cnn", "mini_xception", "tiny_cnn"} <= set(MODELS)
    for name, spec in MODELS.items():
        assert callable(spec.build) and spec.about, name
        assert spec.optimizer in ("adam", "adamw", "sgd") and 0 < spec.lr < 1, name


def test_create_model_names_the_registered_models():
    with pytest.raises(KeyError, match="tiny_cnn"):
        create_model("resnet9000")


def test_num_classes_and_no_augmentation():
    model = create_model("tiny_cnn", num_classes=3)
    assert tuple(model.output_shape) == (None, 3)
    assert not any(layer.name == "augment" for layer in model.layers)
    with_aug = create_model("tiny_cnn", augment=build_augmentation(AugmentConfig()))
    assert any(layer.name == "augment" for layer in with_aug.layers)


def test_augmentation_changes_faces_only_in_training(faces):
    x = faces[0]
    block = build_augmentation(AugmentConfig(), seed=3)
    _same(np.asarray(block(x, training=False)), x)
    out = np.asarray(block(x, training=True))
    assert out.shape == x.shape and not np.allclose(out, x)
    assert build_augmentation(None) is None


def test_vgg_lite_head_keeps_the_map_or_averages_it():
    flat = create_model("vgg_small_flat96")
    gap = create_model("vgg_small_deep96")
    # the same convolutions; the flattened head sees all 6x6x96 positions, the averaged one 96 channels
    assert flat.get_layer("probs").kernel.shape == (6 * 6 * 96, NUM_CLASSES)
    assert gap.get_layer("probs").kernel.shape == (96, NUM_CLASSES)
    from training.models import vgg_lite
    with pytest.raises(ValueError, match="head"):
        vgg_lite(head="max")


def test_space_to_depth_stem_keeps_every_pixel_of_each_2x2_block():
    model = create_model("vgg_small_s2d")
    stem = keras.Model(model.input, model.get_layer("s2d").output)
    x = np.arange(48 * 48, dtype=np.float32).reshape(1, 48, 48, 1)
    out = np.asarray(stem(x))[0]
    assert out.shape == (24, 24, 4)
    for r, c in [(0, 0), (5, 17), (23, 23)]:  # channel order: the block's pixels row by row
        np.testing.assert_array_equal(out[r, c], x[0, 2 * r:2 * r + 2, 2 * c:2 * c + 2, 0].ravel())
    with pytest.raises(ValueError, match="stem"):
        from training.models import vgg_lite
        vgg_lite(stem="strided")


# mini_xception's residual path: a 1x1 stride-2 convolution, trained. TensorFlow's oneDNN kernels for AVX-512
# corrupt the heap in its backward pass (CI died here, in test_model_harness, on an AMD EPYC with AVX-512).
_STRIDED_1X1 = """
import os, sys
import training
import numpy as np, keras
from keras import layers
print("isa", os.environ.get("ONEDNN_MAX_CPU_ISA"))
keras.utils.set_random_seed(0)
inp = keras.Input((48, 48, 1))
x = layers.Conv2D(8, 3, padding="same")(inp)
x = layers.Conv2D(16, 1, strides=2, padding="same", use_bias=False)(x)
out = layers.Dense(7, activation="softmax")(layers.GlobalAveragePooling2D()(x))
model = keras.Model(inp, out)
model.compile(optimizer="adam", loss="categorical_crossentropy")
rng = np.random.default_rng(0)
for _ in range(3):
    loss = model.train_on_batch(rng.random((8, 48, 48, 1), dtype=np.float32), np.eye(7)[np.arange(8) % 7])
print("trained", float(loss))
"""


def test_training_keeps_onednn_to_kernels_that_do_not_crash():
    """`import training` limits oneDNN to AVX2 unless the user chose: a strided 1x1 convolution then trains in
    a fresh process (which dies of a corrupted heap without the limit on a CPU with AVX-512)."""
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", _STRIDED_1X1], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, f"exit {out.returncode}: {out.stdout[-500:]} {out.stderr[-2000:]}"
    assert "isa AVX2" in out.stdout and "trained" in out.stdout, out.stdout

    # a user's own setting is kept
    mine = subprocess.run([sys.executable, "-c", "import os, training; print(os.environ['ONEDNN_MAX_CPU_ISA'])"],
                          cwd=ROOT, env=dict(env, ONEDNN_MAX_CPU_ISA="AVX512_CORE"), capture_output=True, text=True,
                          timeout=60)
    assert mine.returncode == 0 and mine.stdout.strip() == "AVX512_CORE", mine.stderr[-1000:]

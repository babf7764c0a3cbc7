"""FacialExpressionModel on a tiny exported model: shapes, order, preprocessing paths, backends, errors."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from shared.labels import EMOTIONS
from shared.model import CARD, MODEL_FILES, FacialExpressionModel


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return FacialExpressionModel(tiny_model_dir)


@pytest.fixture(scope="module")
def faces(sample_data):
    return sample_data.split("PrivateTest").faces[:24]


def test_predict_proba_shape_dtype_and_rows_sum_to_one(model, faces):
    probs = model.predict_proba(faces)
    assert probs.shape == (len(faces), len(EMOTIONS)) and probs.dtype == np.float32
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert model.labels == EMOTIONS


def test_empty_input_gives_empty_result(model):
    assert model.predict_proba([]).shape == (0, 7)
    assert model.predict_proba(np.zeros((0, 48, 48), np.uint8)).shape == (0, 7)


def test_gray_bgr_and_list_inputs_agree(model, faces):
    gray = model.predict_proba(faces)
    bgr = np.stack([cv2.cvtColor(f, cv2.COLOR_GRAY2BGR) for f in faces])
    np.testing.assert_allclose(model.predict_proba(bgr), gray, atol=1e-6)
    np.testing.assert_allclose(model.predict_proba(list(faces)), gray, atol=1e-6)
    np.testing.assert_allclose(model.predict_proba(faces[0]), gray[:1], atol=1e-6)


def test_any_size_is_resized_like_training(model, faces):
    big = [cv2.resize(f, (s, s), interpolation=cv2.INTER_LINEAR) for f, s in zip(faces[:3], (96, 130, 31))]
    probs = model.predict_proba(big)
    assert probs.shape == (3, 7)
    from shared.preprocess import prepare_faces
    np.testing.assert_allclose(probs, model.predict_proba(prepare_faces(big)), atol=1e-6)


def test_batch_equals_one_by_one(model, faces):
    batch = model.predict_proba(faces[:5])
    single = np.concatenate([model.predict_proba(faces[i:i + 1]) for i in range(5)])
    np.testing.assert_allclose(batch, single, atol=1e-6)


def test_predict_emotion_is_argmax_label(model, faces):
    label = model.predict_emotion(faces[0])
    assert label in EMOTIONS
    assert label == EMOTIONS[int(np.argmax(model.predict_proba(faces[:1])[0]))]
    assert model.predict_emotion(cv2.cvtColor(faces[0], cv2.COLOR_GRAY2BGR)) == label


def test_bad_shapes_are_refused(model):
    with pytest.raises(ValueError, match="shape"):
        model.predict_proba(np.zeros((2, 48, 48, 2), np.uint8))
    with pytest.raises(ValueError, match="one face"):
        model.predict_emotion(np.zeros((2, 48, 48, 3), np.uint8))


def test_keras_backend_matches_float32_tflite(tiny_model_dir, faces):
    keras_probs = FacialExpressionModel(tiny_model_dir, backend="keras").predict_proba(faces)
    f32 = FacialExpressionModel(tiny_model_dir, precision="float32").predict_proba(faces)
    np.testing.assert_allclose(keras_probs, f32, atol=1e-5)


def test_int8_agrees_with_float32_on_real_faces(tiny_model_dir, sample_data):
    faces = sample_data.split("PublicTest").faces
    f32 = FacialExpressionModel(tiny_model_dir, precision="float32").predict_proba(faces)
    i8 = FacialExpressionModel(tiny_model_dir).predict_proba(faces)
    diff = np.abs(i8 - f32)
    assert diff.max() < 0.03 and diff.mean() < 0.005
    top2 = np.sort(f32, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 0.01   # the tiny model is unsure of many faces
    assert clear.sum() >= 10
    assert np.mean(i8[clear].argmax(1) == f32[clear].argmax(1)) >= 0.9


def test_missing_directory_and_files_are_named(tiny_model_dir, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        FacialExpressionModel(tmp_path / "nowhere")
    monkeypatch.setattr("shared.model.DEFAULT_MODEL_DIR", tmp_path / "bundled_model")
    with pytest.raises(FileNotFoundError, match="bundled_model"):
        FacialExpressionModel()
    partial = tmp_path / "partial"
    shutil.copytree(tiny_model_dir, partial)
    (partial / "model_int8.tflite").unlink()
    with pytest.raises(FileNotFoundError, match="model_int8.tflite"):
        FacialExpressionModel(partial)
    (partial / CARD).unlink()
    with pytest.raises(FileNotFoundError, match="card.json"):
        FacialExpressionModel(partial, precision="float32")


def test_card_quantisation_and_labels_are_checked(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    card = json.loads((bad / CARD).read_text())
    card["quantization"]["int8"]["input"]["zero_point"] += 1
    (bad / CARD).write_text(json.dumps(card))
    with pytest.raises(ValueError, match="does not match card.json"):
        FacialExpressionModel(bad)
    card["labels"] = list(reversed(EMOTIONS))
    (bad / CARD).write_text(json.dumps(card))
    with pytest.raises(ValueError, match="labels"):
        FacialExpressionModel(bad, precision="float32")


def test_tflite_path_never_imports_tensorflow(tiny_model_dir, sample_data, tmp_path):
    png = tmp_path / "face.png"
    cv2.imwrite(str(png), sample_data.faces[0])
    code = ("import sys\n"
            "from shared.analyzer import FaceAnalyzer\n"
            "from training.predict import predict_images\n"
            f"a = FaceAnalyzer.load({str(tiny_model_dir)!r})\n"
            f"r = list(predict_images(a, [{str(png)!r}]))\n"
            "assert len(r) == 1 and r[0][2].emotions[0] in a.labels\n"
            "heavy = [k for k in ('tensorflow', 'keras') if k in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_model_dir_holds_exactly_the_named_files(tiny_model_dir):
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == sorted(MODEL_FILES)

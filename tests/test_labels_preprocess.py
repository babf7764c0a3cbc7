"""shared.labels and shared.preprocess: the one label order and the one face -> model-input path."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from shared.labels import EMOTION_TO_CODE, EMOTIONS, NUM_CLASSES, emotion_name
from shared.preprocess import FACE_SIZE, crop_face, prepare_faces, resize_face, to_gray, to_model_input


def test_emotions_in_fer2013_code_order():
    assert EMOTIONS == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert NUM_CLASSES == 7
    assert all(EMOTION_TO_CODE[name] == code for code, name in enumerate(EMOTIONS))
    assert [emotion_name(c) for c in range(7)] == list(EMOTIONS)


@pytest.mark.parametrize("bad", [-1, 7, 100])
def test_emotion_name_rejects_codes_outside_0_6(bad):
    with pytest.raises(ValueError, match=str(bad)):
        emotion_name(bad)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_prepare_faces_gray_48_passes_through(rng):
    faces = rng.integers(0, 256, (5, 48, 48), dtype=np.uint8)
    out = prepare_faces(faces)
    assert out.shape == (5, 48, 48) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, faces)


def test_prepare_faces_single_2d_face(rng):
    face = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    out = prepare_faces(face)
    assert out.shape == (1, 48, 48)
    np.testing.assert_array_equal(out[0], face)


@pytest.mark.parametrize("side", [20, 47, 64, 200])
def test_prepare_faces_gray_other_sizes(rng, side):
    faces = rng.integers(0, 256, (3, side, side), dtype=np.uint8)
    out = prepare_faces(faces)
    assert out.shape == (3, 48, 48) and out.dtype == np.uint8
    interp = cv2.INTER_AREA if side > 48 else cv2.INTER_LINEAR
    np.testing.assert_array_equal(out[1], cv2.resize(faces[1], (48, 48), interpolation=interp))


def test_prepare_faces_bgr_matches_cv2_gray(rng):
    faces_bgr = rng.integers(0, 256, (4, 96, 96, 3), dtype=np.uint8)
    out = prepare_faces(faces_bgr)
    assert out.shape == (4, 48, 48)
    expect = cv2.resize(cv2.cvtColor(faces_bgr[2], cv2.COLOR_BGR2GRAY), (48, 48), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(out[2], expect)


def test_prepare_faces_bgr_48_is_converted_not_passed_through(rng):
    faces_bgr = rng.integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
    out = prepare_faces(faces_bgr)
    np.testing.assert_array_equal(out[0], cv2.cvtColor(faces_bgr[0], cv2.COLOR_BGR2GRAY))


def test_prepare_faces_list_of_mixed_sizes_and_channels(rng):
    faces = [rng.integers(0, 256, (30, 40), dtype=np.uint8),
             rng.integers(0, 256, (100, 80, 3), dtype=np.uint8),
             rng.integers(0, 256, (48, 48, 1), dtype=np.uint8)]
    out = prepare_faces(faces)
    assert out.shape == (3, 48, 48) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[2], faces[2][:, :, 0])
    np.testing.assert_array_equal(out[0], resize_face(faces[0]))


def test_prepare_faces_empty_list():
    assert prepare_faces([]).shape == (0, 48, 48)


def test_prepare_faces_float_is_clipped_to_uint8():
    face = np.full((48, 48), 300.0)
    face[0, 0] = -5.0
    out = prepare_faces([face])
    assert out.dtype == np.uint8 and out[0, 1, 1] == 255 and out[0, 0, 0] == 0


@pytest.mark.parametrize("shape", [(48,), (2, 48, 48, 2), (1, 2, 48, 48, 3)])
def test_prepare_faces_rejects_other_shapes(shape):
    with pytest.raises(ValueError, match="expected"):
        prepare_faces(np.zeros(shape, np.uint8))


def test_to_gray_rejects_empty_crop():
    with pytest.raises(ValueError, match="empty"):
        to_gray(np.zeros((0, 10), np.uint8))


def test_to_model_input_scales_to_unit_range():
    faces = np.array([[[0, 255], [128, 64]]], dtype=np.uint8)
    x = to_model_input(faces)
    assert x.dtype == np.float32 and x.shape == (1, 2, 2, 1)
    assert x.min() == 0.0 and x.max() == 1.0
    assert x[0, 1, 0, 0] == pytest.approx(128 / 255)


def _frame(h: int = 100, w: int = 120) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 2 + y * 3) % 256).astype(np.uint8)


def _replicated(frame: np.ndarray, x0: int, y0: int, s: int) -> np.ndarray:
    """frame[y0:y0+s, x0:x0+s] with coordinates outside the frame clamped to its edge."""
    h, w = frame.shape
    ys = np.clip(np.arange(y0, y0 + s), 0, h - 1)
    xs = np.clip(np.arange(x0, x0 + s), 0, w - 1)
    return frame[np.ix_(ys, xs)]


def test_crop_face_inside_frame_is_a_plain_crop():
    frame = _frame()
    out = crop_face(frame, (30, 20, 48, 48))
    np.testing.assert_array_equal(out, frame[20:68, 30:78])


def test_crop_face_resizes_to_face_size():
    out = crop_face(_frame(), (10, 10, 60, 30), margin=0.1)
    assert out.shape == (FACE_SIZE, FACE_SIZE) and out.dtype == np.uint8


@pytest.mark.parametrize("box,margin,x0,y0,s", [
    ((0, 0, 20, 20), 0.5, -10, -10, 40),          # top-left corner, margin leaves the frame
    ((100, 80, 20, 20), 0.5, 90, 70, 40),         # bottom-right corner
    ((-15, 30, 30, 30), 0.0, -15, 30, 30),        # box partly left of the frame
    ((50, 90, 40, 40), 0.25, 40, 80, 60),         # off the bottom edge
])
def test_crop_face_pads_by_edge_replication(box, margin, x0, y0, s):
    frame = _frame()
    out = crop_face(frame, box, margin=margin, size=s)   # size = side: no resize, exact pixels
    assert out.shape == (s, s)
    np.testing.assert_array_equal(out, _replicated(frame, x0, y0, s))


def test_crop_face_non_square_box_is_squared_on_its_centre():
    frame = _frame()
    out = crop_face(frame, (40, 30, 20, 40), size=40)    # centre (50, 50), side 40
    np.testing.assert_array_equal(out, frame[30:70, 30:70])


def test_crop_face_accepts_bgr_frame():
    gray = _frame()
    bgr = np.dstack([gray, gray, gray])
    np.testing.assert_array_equal(crop_face(bgr, (0, 0, 30, 30), margin=0.2),
                                  crop_face(gray, (0, 0, 30, 30), margin=0.2))

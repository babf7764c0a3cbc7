"""shared.registration: the similarity fit on exact points, and real FER2013 faces rotated by known angles."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from shared.detector import DetectorConfig, FaceDetector
from shared.registration import (FER_TEMPLATE, RegistrationError, eye_angle, register_face, registration_matrix,
                                 similarity, warp_points)
from shared.synthetic import make_background, place_faces


def rotation(angle_deg: float, scale: float, shift) -> np.ndarray:
    return cv2.getRotationMatrix2D((0.0, 0.0), angle_deg, scale) + np.array([[0, 0, shift[0]], [0, 0, shift[1]]])


@pytest.mark.parametrize("angle", [-25.0, -10.0, 0.0, 12.5, 25.0])
@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_similarity_recovers_a_known_transform(angle, scale):
    m = rotation(angle, scale, (300.0, 120.0))
    landmarks = warp_points(FER_TEMPLATE, m)  # the template turned, scaled and moved into a frame
    back = registration_matrix(landmarks)
    np.testing.assert_allclose(warp_points(landmarks, back), FER_TEMPLATE, atol=1e-6)
    # getRotationMatrix2D turns counter-clockwise on screen, so the eye line tilts by -angle
    assert eye_angle(landmarks) == pytest.approx(-angle, abs=1e-6)
    # eyes and nose only (BlazeFace): still exact; the eyes land level
    partial = landmarks.copy()
    partial[3:] = np.nan
    np.testing.assert_allclose(warp_points(landmarks[:3], registration_matrix(partial)), FER_TEMPLATE[:3], atol=1e-6)


def test_similarity_is_a_least_squares_fit():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    dst = warp_points(src, rotation(20, 0.7, (5, 9))) + rng.normal(0, 0.5, (5, 2))
    m = similarity(src, dst)
    assert abs(np.degrees(np.arctan2(m[1, 0], m[0, 0])) + 20) < 1.5  # angle near the true one
    assert np.hypot(m[0, 0], m[1, 0]) == pytest.approx(0.7, rel=0.03)


@pytest.mark.parametrize("bad", [np.full((5, 2), np.nan), np.vstack([[np.nan, np.nan], np.ones((4, 2))]),
                                 np.ones((5, 2)), np.ones((4, 2))])
def test_bad_landmarks_raise(bad):
    with pytest.raises(RegistrationError):
        registration_matrix(bad)


def test_register_face_maps_the_template_to_itself(sample_data):
    """A 48x48 face registered with the template's own points comes back unchanged; scaled 4x and moved
    inside a frame, it comes back as the original (up to resampling)."""
    face = sample_data.faces[0]
    np.testing.assert_array_equal(register_face(face, FER_TEMPLATE), face)
    frame = np.full((400, 400), 90, np.uint8)
    frame[100:292, 50:242] = cv2.resize(face, (192, 192), interpolation=cv2.INTER_LINEAR)
    lm = FER_TEMPLATE * 4 + [50 + 1.5, 100 + 1.5]  # crop pixel i -> frame 4i + 1.5 (pixel centres)
    out = register_face(frame, lm)
    assert np.abs(out.astype(int) - face.astype(int)).mean() < 3


@pytest.fixture(scope="module")
def yunet():
    return FaceDetector(DetectorConfig(kind="yunet", register="similarity"))


@pytest.fixture(scope="module")
def upright(sample_data, yunet):
    """(frame, box, landmarks) of 6 sample faces YuNet finds placed upright at 180 px on a textured frame."""
    rng = np.random.default_rng(3)
    out = []
    for face in sample_data.faces:
        bg = make_background((640, 480), "noise", rng)
        frame, gt = place_faces([face], background=bg, boxes_xywh=np.array([[230, 150, 180, 180]]))
        det = yunet.detect(frame)
        if len(det) == 1:
            out.append((frame, gt[0], det.landmarks[0]))
            if len(out) == 6:
                return out
    pytest.fail("YuNet found fewer than 6 sample faces")


@pytest.mark.parametrize("angle", [-25, -15, 10, 20])
def test_rotated_faces_are_levelled(upright, yunet, angle):
    """Faces rotated by a known angle: the landmarks' eye angle follows it, and registration brings the
    face back to its upright registered crop far closer than the plain framed crop does."""
    reg_err, plain_err, angle_err = [], [], []
    for frame, (x, y, s, _), lm0 in upright:
        m = cv2.getRotationMatrix2D((x + s / 2, y + s / 2), angle, 1.0)
        rotated = cv2.warpAffine(frame, m, (640, 480), borderMode=cv2.BORDER_REFLECT)
        det = yunet.detect(rotated)
        if len(det) != 1:
            continue
        want = eye_angle(warp_points(lm0, m))  # the upright face's eye line, turned with the frame
        assert abs(want - (eye_angle(lm0) - angle)) < 1e-6
        angle_err.append(abs(eye_angle(det.landmarks[0]) - want))
        gray0 = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        ref = register_face(gray0, lm0).astype(int)
        reg_err.append(np.abs(det.crops[0].astype(int) - ref).mean())
        bx, by, bw, bh = det.boxes_xywh[0]
        from shared.preprocess import crop_face
        plain_err.append(np.abs(crop_face(cv2.cvtColor(rotated, cv2.COLOR_BGR2GRAY), (bx, by, bw, bh)).astype(int)
                                - ref).mean())
    assert len(reg_err) >= 4  # YuNet finds most faces turned by up to 25 degrees
    print(f"angle {angle}: eye-angle errors {np.round(angle_err, 1)}, crop errors registered "
          f"{np.round(reg_err, 1)} vs framed box {np.round(plain_err, 1)}")
    if abs(angle) >= 15:  # refined landmarks follow most of the turn (first-pass ones lag ~85% behind at 90 px)
        assert np.median(angle_err) < 0.6 * abs(angle)
    assert np.median(reg_err) < 0.75 * np.median(plain_err)


def test_level_face_keeps_the_box_and_levels_the_eyes(sample_data):
    from shared.preprocess import crop_face
    from shared.registration import level_face
    frame = np.full((300, 300), 90, np.uint8)
    frame[50:242, 60:252] = cv2.resize(sample_data.faces[0], (192, 192), interpolation=cv2.INTER_LINEAR)
    box = (60, 50, 192, 192)
    level = FER_TEMPLATE * 4 + [61.5, 51.5]
    assert np.abs(level_face(frame, box, level).astype(int) - crop_face(frame, box).astype(int)).mean() < 3
    m = cv2.getRotationMatrix2D((155.5, 145.5), 20, 1.0)  # turn the frame about the box centre
    turned = cv2.warpAffine(frame, m, (300, 300), borderMode=cv2.BORDER_REPLICATE)
    back = level_face(turned, box, warp_points(level, m))
    assert np.abs(back.astype(int)[8:40, 8:40] - crop_face(frame, box).astype(int)[8:40, 8:40]).mean() < 4
    with pytest.raises(RegistrationError):
        level_face(frame, box, np.full((5, 2), np.nan))

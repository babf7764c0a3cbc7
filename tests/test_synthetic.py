"""shared.synthetic: FER2013 faces placed at known boxes; mp4 and y4m writers read back."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from shared.synthetic import BACKGROUNDS, place_faces, read_y4m, write_video, write_y4m


@pytest.mark.parametrize("background", BACKGROUNDS)
def test_boxes_are_inside_the_frame_and_do_not_overlap(sample_data, background):
    rng = np.random.default_rng(0)
    for _ in range(10):
        frame, boxes = place_faces(sample_data.faces[:3], (640, 480), (100, 180), rng, background)
        assert frame.shape == (480, 640, 3) and frame.dtype == np.uint8
        assert boxes.shape == (3, 4) and boxes.dtype == np.int32
        x, y, w, h = boxes.T
        assert (x >= 0).all() and (y >= 0).all() and (x + w <= 640).all() and (y + h <= 480).all()
        assert (w == h).all() and (w >= 100).all() and (w <= 180).all()
        for i in range(3):
            for j in range(i + 1, 3):
                a, b = boxes[i], boxes[j]
                assert not (a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3])


def test_the_placed_face_is_the_fer_face_resized(sample_data):
    face = sample_data.faces[0]
    frame, boxes = place_faces([face], (320, 240), (96, 96), np.random.default_rng(1), "cluttered")
    x, y, s, _ = boxes[0]
    back = cv2.resize(frame[y:y + s, x:x + s, 0], (48, 48), interpolation=cv2.INTER_AREA)
    assert np.abs(back.astype(int) - face.astype(int)).mean() < 4
    assert (frame[y:y + s, x:x + s, 0] == frame[y:y + s, x:x + s, 2]).all()  # gray in all channels


def test_explicit_boxes_and_bad_input(sample_data):
    faces = sample_data.faces[:2]
    frame, boxes = place_faces(faces, boxes_xywh=np.array([[0, 0, 100, 100], [300, 200, 120, 120]]))
    assert boxes.tolist() == [[0, 0, 100, 100], [300, 200, 120, 120]]
    with pytest.raises(ValueError, match="square and inside"):
        place_faces(faces[:1], boxes_xywh=np.array([[600, 0, 100, 100]]))
    with pytest.raises(ValueError, match="could not fit"):
        place_faces(sample_data.faces[:12], face_px=(200, 240), rng=np.random.default_rng(0), max_tries=50)
    with pytest.raises(ValueError, match="uint8"):
        place_faces([np.zeros((48, 48), np.float32)])
    with pytest.raises(ValueError, match="unknown background"):
        place_faces(faces, background="stripes")


def _frames(sample_data, n=6):
    rng = np.random.default_rng(2)
    return [place_faces(sample_data.faces[i:i + 2], (320, 240), (60, 90), rng, "noise")[0] for i in range(n)]


def test_mp4_reads_back_with_opencv(sample_data, tmp_path):
    frames = _frames(sample_data)
    path = write_video(frames, tmp_path / "faces.mp4", fps=12)
    cap = cv2.VideoCapture(str(path))
    got = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        got.append(f)
    cap.release()
    assert len(got) == len(frames) and got[0].shape == (240, 320, 3)
    assert np.abs(got[0].astype(int) - frames[0].astype(int)).mean() < 12  # lossy, but the same picture


def test_y4m_header_frames_and_round_trip(sample_data, tmp_path):
    frames = _frames(sample_data, 5)
    path = write_y4m(frames, tmp_path / "faces.y4m", fps=15)
    data = path.read_bytes()
    header = data[:data.index(b"\n")].decode()
    assert header.split()[:4] == ["YUV4MPEG2", "W320", "H240", "F15:1"] and "C420jpeg" in header
    assert data.count(b"FRAME\n") == 5
    assert len(data) == len(header) + 1 + 5 * (6 + 320 * 240 * 3 // 2)
    back, fps = read_y4m(path)
    assert fps == 15 and len(back) == 5
    assert np.abs(back[0].astype(int) - frames[0].astype(int)).mean() < 4
    with pytest.raises(ValueError, match="even"):
        write_y4m([np.zeros((11, 10, 3), np.uint8)], tmp_path / "odd.y4m")
    with pytest.raises(ValueError, match="share one size"):
        write_video([frames[0], frames[0][:100]], tmp_path / "mixed.mp4")

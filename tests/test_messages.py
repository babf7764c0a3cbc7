"""The msgpack schema: every kind round-trips; every validation failure raises a MessageError naming it."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest

from shared.labels import EMOTIONS
from shared.messages import (MAX_HEARTBEAT_SOURCES, SCHEMA_VERSION, Annotated, FaceResult, Faces, Frame, Heartbeat,
                             MessageError, Predictions, SourceStatus, decode, encode, latencies, stamp)


def make_frame(n_stamps: int = 1) -> Frame:
    stamps = [("capture", 100.0, 100.002), ("detect", 100.003, 100.010)][:n_stamps]
    return Frame("cam0", 7, 100.0, b"\xff\xd8jpeg", 640, 480, list(stamps))


def make_faces(n: int = 2) -> Faces:
    rng = np.random.default_rng(0)
    return Faces(make_frame(2), rng.integers(0, 400, (n, 4)).astype(np.int32),
                 rng.integers(0, 256, (n, 48, 48)).astype(np.uint8), job=11, run=99)


def make_predictions(n: int = 2) -> Predictions:
    probs = np.random.default_rng(1).dirichlet(np.ones(7), n).astype(np.float32)
    return Predictions(make_faces(n), probs)


def make_result() -> FaceResult:
    scores = {e: 1 / 7 for e in EMOTIONS}
    return FaceResult((1, 2, 30, 40), "happy", scores, dict(scores), 3)


def rewrite(msg, **changes) -> bytes:
    d = msgpack.unpackb(encode(msg), raw=False)
    for key, value in changes.items():
        if value is KeyError:
            del d[key]
        else:
            d[key] = value
    return msgpack.packb(d, use_bin_type=True)


# --- round trips -----------------------------------------------------------------------------------------
def test_frame_round_trip():
    f = make_frame(2)
    assert decode(encode(f)) == f


@pytest.mark.parametrize("n", [0, 1, 3])
def test_faces_and_predictions_round_trip(n):
    p = make_predictions(n)
    back = decode(encode(p), expect="predictions")
    assert isinstance(back, Predictions) and len(back.faces) == n
    np.testing.assert_array_equal(back.faces.boxes_xywh, p.faces.boxes_xywh)
    np.testing.assert_array_equal(back.faces.crops, p.faces.crops)
    np.testing.assert_array_equal(back.probs, p.probs)
    assert back.probs.dtype == np.float32 and back.faces.boxes_xywh.dtype == np.int32
    assert (back.faces.job, back.faces.run, back.frame) == (11, 99, p.frame)
    faces = decode(encode(p.faces), expect="faces")
    np.testing.assert_array_equal(faces.crops, p.faces.crops)


def test_no_faces_is_an_ordinary_empty_value():
    f = Faces(make_frame(), [], [])
    assert f.boxes_xywh.shape == (0, 4) and f.crops.shape == (0, 48, 48) and len(f) == 0
    assert len(decode(encode(Predictions(f, np.zeros((0, 7))))).probs) == 0


def test_annotated_and_heartbeat_round_trip():
    a = Annotated(make_frame(2), [make_result()])
    assert decode(encode(a)) == a
    hb = Heartbeat("detect", "host:1", 5.0, 1.0, {"frames_in": 3}, "stalled", "no frames")
    assert decode(encode(hb)) == hb


def test_stamps_and_latencies():
    p = make_predictions()
    stamp(p, "classify", 100.012, 100.020)
    lat = latencies(decode(encode(p)))
    assert lat["capture"] == pytest.approx(2.0) and lat["detect"] == pytest.approx(7.0)
    assert lat["capture->detect"] == pytest.approx(1.0) and lat["detect->classify"] == pytest.approx(2.0)
    assert lat["classify"] == pytest.approx(8.0) and lat["total"] == pytest.approx(20.0)
    assert latencies(Frame("s", 0, 0.0, b"", 1, 1)) == {}


# --- validation failures -----------------------------------------------------------------------------------
@pytest.mark.parametrize("data, needle", [
    (b"\xc1", "not msgpack"),
    (msgpack.packb([1, 2]), "expected a msgpack map"),
    (msgpack.packb({"v": SCHEMA_VERSION + 1, "kind": "frame"}), "schema version"),
    (msgpack.packb({"kind": "frame"}), "schema version None"),
    (msgpack.packb({"v": SCHEMA_VERSION, "kind": "video"}), "unknown message kind 'video'"),
])
def test_envelope_errors(data, needle):
    with pytest.raises(MessageError, match=needle):
        decode(data)


def test_expect_other_kind():
    with pytest.raises(MessageError, match="expected a 'faces' message, got 'frame'"):
        decode(encode(make_frame()), expect="faces")


@pytest.mark.parametrize("changes, needle", [
    ({"seq": KeyError}, "missing field 'seq'"),
    ({"seq": "7"}, r"frame.seq: expected int, got str"),
    ({"seq": True}, r"frame.seq: expected int, got bool"),
    ({"t_capture": "now"}, r"frame.t_capture: expected number"),
    ({"jpeg": "text"}, r"frame.jpeg: expected bytes, got str"),
    ({"width": 0}, "must be positive"),
    ({"stamps": [["capture", 1.0]]}, r"frame.stamps\[0\]"),
    ({"stamps": "x"}, r"frame.stamps: expected list"),
])
def test_frame_field_errors(changes, needle):
    with pytest.raises(MessageError, match=needle):
        decode(rewrite(make_frame(), **changes))


@pytest.mark.parametrize("changes, needle", [
    ({"n": 3}, r"boxes_xywh: 32 bytes, expected 48"),
    ({"n": -1}, "negative face count"),
    ({"crops": b"\x00" * 10}, r"crops: 10 bytes"),
    ({"probs": b"\x00" * 12}, r"probs: 12 bytes, expected 56"),
    ({"job": 1.5}, r"job: expected int"),
    ({"frame": [1]}, r"predictions.frame: expected a map"),
])
def test_predictions_field_errors(changes, needle):
    with pytest.raises(MessageError, match=needle):
        decode(rewrite(make_predictions(2), **changes))


@pytest.mark.parametrize("result, needle", [
    ({"box_xywh": [1, 2, 3]}, "expected 4 ints"),
    ({"emotion": "bored"}, "'bored' is not one of"),
    ({"scores": {"happy": 1.0}}, "scores: expected a map of the 7 EMOTIONS"),
    ({"track_id": "a"}, r"track_id: expected int"),
])
def test_annotated_result_errors(result, needle):
    good = make_result().to_wire()
    with pytest.raises(MessageError, match=needle):
        decode(rewrite(Annotated(make_frame(), []), results=[{**good, **result}]))


def test_heartbeat_counter_errors():
    hb = Heartbeat("detect", "h:1", 1.0, 1.0, {})
    with pytest.raises(MessageError, match="heartbeat.counters"):
        decode(rewrite(hb, counters={"x": 1.5}))


def test_heartbeat_sources_round_trip_and_are_optional():
    hb = Heartbeat("capture", "h:1", 1.0, 1.0, {"frames_out": 5},
                   sources={"demo": SourceStatus("ok", "demo demo", {"frames_out": 5}),
                            "clip.mp4": SourceStatus("missing", "video file clip.mp4 not found", {})})
    assert decode(encode(hb)) == hb
    plain = Heartbeat("detect", "h:1", 1.0, 1.0, {})
    assert b"sources" not in encode(plain)  # a heartbeat without sources is the same bytes as before
    assert decode(encode(plain)).sources == {}


@pytest.mark.parametrize("sources, needle", [
    ([1, 2], "heartbeat.sources: expected a map"),
    ({f"s{i}": {"status": "ok", "detail": "", "counters": {}} for i in range(MAX_HEARTBEAT_SOURCES + 1)},
     "heartbeat.sources: expected a map of at most"),
    ({"x" * 129: {"status": "ok", "detail": "", "counters": {}}}, "source id 'xxx"),
    ({"": {"status": "ok", "detail": "", "counters": {}}}, "source id ''"),
    ({"cam": "ok"}, r"sources\['cam'\]: expected a map"),
    ({"cam": {"status": "ok" * 20, "detail": "", "counters": {}}}, r"sources\[\].status"),
    ({"cam": {"status": "ok", "detail": "d" * 201, "counters": {}}}, r"sources\[\].detail"),
    ({"cam": {"status": "ok", "detail": ""}}, "missing field 'counters'"),
    ({"cam": {"status": "ok", "detail": "", "counters": {f"c{i}": 1 for i in range(9)}}}, r"sources\[\].counters"),
    ({"cam": {"status": "ok", "detail": "", "counters": {"frames_out": -1}}}, r"sources\[\].counters"),
])
def test_heartbeat_sources_are_validated(sources, needle):
    with pytest.raises(MessageError, match=needle):
        decode(rewrite(Heartbeat("capture", "h:1", 1.0, 1.0, {}), sources=sources))


@pytest.mark.parametrize("kwargs, needle", [
    ({"boxes_xywh": np.zeros((2, 3))}, r"boxes_xywh: expected shape \(N,4\)"),
    ({"crops": np.zeros((2, 32, 32), np.uint8)}, r"crops: expected shape \(N,48,48\)"),
    ({"crops": np.zeros((2, 48, 48), np.float32)}, "expected uint8, got float32"),
    ({"crops": np.full((2, 48, 48), 300)}, "outside uint8 range"),
    ({"crops": np.zeros((1, 48, 48), np.uint8)}, "2 boxes but 1 crops"),
])
def test_dataclasses_validate_shapes(kwargs, needle):
    args = {"frame": make_frame(), "boxes_xywh": np.zeros((2, 4), np.int32),
            "crops": np.zeros((2, 48, 48), np.uint8), **kwargs}
    with pytest.raises(MessageError, match=needle):
        Faces(**args)


def test_predictions_validate_rows():
    with pytest.raises(MessageError, match="1 rows of probs for 2 faces"):
        Predictions(make_faces(2), np.zeros((1, 7), np.float32))
    with pytest.raises(MessageError, match=r"expected shape \(N,7\)"):
        Predictions(make_faces(2), np.zeros((2, 6), np.float32))


def test_landmarks_travel_with_faces_and_results():
    lm = np.random.default_rng(2).uniform(0, 400, (2, 5, 2)).astype(np.float32)
    lm[1] = np.nan  # a detector without landmarks for this face
    f = make_faces(2)
    f = Faces(f.frame, f.boxes_xywh, f.crops, job=1, run=2, landmarks=lm)
    back = decode(encode(Predictions(f, np.full((2, 7), 1 / 7, np.float32))), expect="predictions")
    np.testing.assert_array_equal(back.faces.landmarks, lm)  # NaN compares equal here
    assert back.faces.landmarks.dtype == np.float32
    assert np.isnan(make_faces(1).landmarks).all() and make_faces(1).landmarks.shape == (1, 5, 2)
    with pytest.raises(MessageError, match="landmarks"):
        Faces(f.frame, f.boxes_xywh, f.crops, landmarks=np.zeros((2, 4, 2)))
    with pytest.raises(MessageError, match="landmarks: .* bytes"):
        decode(rewrite(f, landmarks=b"\x00" * 8))
    r = make_result()
    r.landmarks = [[1.0, 2.0], None, [3.0, 4.5], [5, 6], [7, 8]]
    ann = decode(encode(Annotated(make_frame(), [r, make_result()])))
    assert ann.results[0].landmarks == r.landmarks and ann.results[1].landmarks is None
    with pytest.raises(MessageError, match="landmarks"):
        bad = msgpack.unpackb(encode(Annotated(make_frame(), [r])), raw=False)
        bad["results"][0]["landmarks"] = [[1, 2]]
        decode(msgpack.packb(bad, use_bin_type=True))

"""The annotate sink's logic: reorder window, late-frame pass-through, IoU tracks with EMA, drawing."""
from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pytest

from shared.config import Config
from shared.labels import EMOTIONS
from shared.messages import Annotated, FaceResult, Faces, Frame, Predictions, decode, encode
from shared.draw import annotate
from services.annotate.sink import Reorderer, face_results
from shared.tracking import Tracker, iou_matrix
from services.annotate.stage import AnnotateStage


def preds(job: int, run: int = 1, boxes=((100, 100, 80, 80),), probs=None, seq=None, jpeg=b"") -> Predictions:
    n = len(boxes)
    probs = np.full((n, 7), 1 / 7, np.float32) if probs is None else np.asarray(probs, np.float32)
    frame = Frame("cam", job if seq is None else seq, 1.0, jpeg, 640, 480, [("capture", 1.0, 1.0)])
    return Predictions(Faces(frame, np.array(boxes, np.int32).reshape(n, 4), np.zeros((n, 48, 48), np.uint8),
                             job=job, run=run), probs)


def jobs(released) -> list[int]:
    return [p.faces.job for _, p in released]


# --- reorder ---------------------------------------------------------------------------------------------
def test_in_order_results_go_straight_through():
    r = Reorderer(window=4, timeout_s=0.1)
    assert [jobs(r.push(preds(j), 0.0)) for j in range(3)] == [[0], [1], [2]]


def test_out_of_order_results_are_put_back_in_order():
    r = Reorderer(window=4, timeout_s=0.1)
    assert jobs(r.push(preds(1), 0.0)) == [] and jobs(r.push(preds(2), 0.0)) == []
    assert jobs(r.push(preds(0), 0.01)) == [0, 1, 2]
    assert r.counters == Counter()


def test_late_result_is_passed_over_after_timeout_then_dropped():
    c = Counter()
    r = Reorderer(window=8, timeout_s=0.1, counters=c)
    r.push(preds(0), 0.0)
    assert jobs(r.push(preds(2), 0.0)) == []      # 1 is late: 2 waits...
    assert jobs(r.poll(0.05)) == []
    assert jobs(r.poll(0.11)) == [2]             # ...but not longer than the timeout
    assert c["skipped"] == 1
    assert jobs(r.push(preds(1), 0.2)) == []     # arrives after its place: dropped, never shown backwards
    assert c["late"] == 1
    assert jobs(r.push(preds(3), 0.2)) == [3]


def test_full_window_skips_without_waiting():
    r = Reorderer(window=3, timeout_s=10.0)
    r.push(preds(0), 0.0)
    assert jobs(r.push(preds(2), 0.0)) == [] and jobs(r.push(preds(3), 0.0)) == []
    assert jobs(r.push(preds(4), 0.0)) == [2, 3, 4]


def test_duplicate_is_dropped():
    r = Reorderer(window=4, timeout_s=0.1)
    r.push(preds(0), 0.0)
    assert jobs(r.push(preds(0), 0.0)) == [] and r.counters["late"] == 1


def test_detect_restart_starts_a_new_order():
    r = Reorderer(window=4, timeout_s=0.1)
    for j in range(100, 103):
        r.push(preds(j, run=1), 0.0)               # joined mid-run: starts from what it sees
    r.push(preds(104, run=1), 0.0)                 # 103 missing, 104 held
    assert jobs(r.push(preds(0, run=2), 0.0)) == [104, 0]  # old leftovers flushed, new run from 0
    assert jobs(r.push(preds(105, run=1), 0.0)) == []      # a straggler of the old run
    assert jobs(r.push(preds(1, run=2), 0.0)) == [1]


def test_the_broker_numbers_what_a_worker_takes_and_keeps_sources_in_capture_order():
    """Annotate's faces broker: results of two detect workers in, one numbering out (only what a classify
    worker took is numbered), a result captured before one already handed on is dropped, a stale one too."""
    import time

    import zmq

    from services.annotate.broker import FacesBroker
    from services.web.testing import pipeline_config
    from shared import bus
    from shared.guard import Guard

    cfg, ctx, counters = pipeline_config(max_lag_ms=1000.0), zmq.Context(), Counter()
    broker = FacesBroker(cfg, ctx, counters, Guard(counters))
    worker = bus.faces_worker(cfg, ctx)
    try:
        def found(source: str, t: float, run: int) -> bytes:
            p = preds(0, run=run, jpeg=b"\xff\xd8 a jpeg")
            p.faces.frame.source_id, p.faces.frame.t_capture = source, t
            return encode(p.faces)
        now = time.time()
        broker.offer(found("a", now, run=1))
        broker.offer(found("a", now - 0.05, run=2))    # worker 2 finished an older frame of a later
        broker.offer(found("b", now - 5, run=2))       # over the budget once a worker asks
        broker.offer(b"\x93junk")
        got = [decode(worker.get(2.0), expect="faces")]
        assert worker.get(0.3) is None                 # b was too old: dropped, not numbered
        assert [(f.frame.source_id, f.job, f.run) for f in got] == [("a", 0, broker.run)]
        assert (counters["out_of_order"], counters["stale"], counters["bad_messages"]) == (1, 1, 1)
        broker.offer(found("b", time.time(), run=2))
        nxt = decode(worker.get(2.0), expect="faces")
        assert (nxt.frame.source_id, nxt.job) == ("b", 1)  # numbered on the way out: no gap for the stale one
    finally:
        broker.close()
        worker.close()
        ctx.destroy(linger=0)


# --- tracking + EMA ----------------------------------------------------------------------------------------
def onehot(k: int) -> np.ndarray:
    p = np.zeros((1, 7), np.float32)
    p[0, k] = 1
    return p


def test_iou_matrix():
    iou = iou_matrix(np.array([[0, 0, 10, 10], [100, 100, 10, 10]]), np.array([[5, 0, 10, 10]]))
    assert iou[0, 0] == pytest.approx(50 / 150) and iou[1, 0] == 0


def test_tracks_keep_ids_and_smooth_probabilities():
    t = Tracker(alpha=0.5, iou_threshold=0.3, max_age=2)
    ids, sm = t.update(np.array([[100, 100, 80, 80]]), onehot(3))
    assert ids.tolist() == [0] and sm[0, 3] == 1
    ids, sm = t.update(np.array([[104, 102, 80, 80]]), onehot(4))  # same face, moved a little
    assert ids.tolist() == [0]
    assert sm[0, 3] == pytest.approx(0.5) and sm[0, 4] == pytest.approx(0.5)
    ids, sm = t.update(np.array([[104, 102, 80, 80]]), onehot(4))
    assert sm[0, 4] == pytest.approx(0.75)


def test_new_face_gets_a_new_track_and_lost_tracks_expire():
    t = Tracker(alpha=0.5, max_age=1)
    t.update(np.array([[0, 0, 50, 50]]), onehot(0))
    ids, _ = t.update(np.array([[0, 0, 50, 50], [300, 300, 50, 50]]), np.vstack([onehot(0), onehot(1)]))
    assert ids.tolist() == [0, 1]
    t.update(np.zeros((0, 4)), np.zeros((0, 7)))
    t.update(np.zeros((0, 4)), np.zeros((0, 7)))
    ids, sm = t.update(np.array([[0, 0, 50, 50]]), onehot(2))
    assert ids.tolist() == [2] and sm[0, 2] == 1  # the old track expired: no smoothing with it


def test_alpha_one_means_no_smoothing():
    t = Tracker(alpha=1.0)
    t.update(np.array([[0, 0, 50, 50]]), onehot(0))
    _, sm = t.update(np.array([[0, 0, 50, 50]]), onehot(5))
    np.testing.assert_array_equal(sm, onehot(5))


def test_face_results_label_from_smoothed_scores_keep_raw():
    t = Tracker(alpha=0.3)
    face_results(preds(0, probs=onehot(3)), t)
    (res,) = face_results(preds(1, probs=onehot(0)), t)
    assert res.emotion == "happy"  # 0.7*happy + 0.3*angry: the label does not flicker
    assert res.raw_scores["angry"] == 1 and res.scores["happy"] == pytest.approx(0.7)
    assert res.track_id == 0 and res.box_xywh == (100, 100, 80, 80)


# --- stage + drawing -----------------------------------------------------------------------------------------
def test_draw_paints_boxes_and_leaves_an_empty_frame_alone():
    frame = np.zeros((480, 640, 3), np.uint8)
    scores = {e: (0.9 if e == "sad" else 0.1 / 6) for e in EMOTIONS}
    annotate(frame, [])
    assert frame.sum() == 0
    annotate(frame, [FaceResult((100, 100, 80, 80), "sad", scores, scores, 4)])
    assert frame[100, 100:180].any() and frame.sum() > 0


def test_stage_passes_zero_face_frames_and_counts_bad_messages():
    img = np.full((480, 640, 3), 128, np.uint8)
    jpeg = cv2.imencode(".jpg", img)[1].tobytes()
    stage = AnnotateStage(Config(ema_alpha=1.0))
    out = stage.push(encode(preds(0, boxes=(), jpeg=jpeg)), 0.0)
    out += stage.push(encode(preds(1, jpeg=jpeg, probs=onehot(6))), 0.0)
    assert [a.frame.seq for a in out] == [0, 1]
    assert out[0].results == [] and out[1].results[0].emotion == "neutral"
    assert out[0].frame.jpeg == jpeg and out[1].frame.jpeg != jpeg  # nothing to draw: passed on, not re-encoded
    back = decode(encode(out[1]), expect="annotated")
    assert isinstance(back, Annotated) and back.frame.stamps[-1][0] == "annotate"
    assert cv2.imdecode(np.frombuffer(back.frame.jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (480, 640, 3)
    assert stage.push(b"garbage", 0.0) == [] and stage.counters["bad_messages"] == 1
    assert stage.push(encode(out[0]), 0.0) == [] and stage.counters["bad_messages"] == 2  # wrong kind


def test_face_less_frames_are_passed_on_but_bad_ones_counted():
    """A frame with no face is not decoded, yet its header gets the checks a decode would make: a non-JPEG
    payload, a truncated JPEG, one whose size disagrees with the message, or a PNG is counted in bad_frames (and
    passed on as before); the stage keeps going and a good frame after them is untouched."""
    good = cv2.imencode(".jpg", np.full((480, 640, 3), 128, np.uint8))[1].tobytes()
    small = cv2.imencode(".jpg", np.full((240, 320, 3), 128, np.uint8))[1].tobytes()
    png = cv2.imencode(".png", np.full((480, 640, 3), 128, np.uint8))[1].tobytes()
    stage = AnnotateStage(Config(ema_alpha=1.0))
    bad = [b"\xff\xd8 not a jpeg", good[:len(good) // 2], small, png]
    out = []
    for i, jpeg in enumerate(bad + [good]):
        out += stage.push(encode(preds(i, boxes=(), jpeg=jpeg)), 0.0)
    assert [a.frame.seq for a in out] == [0, 1, 2, 3, 4]
    assert stage.counters["bad_frames"] == len(bad)
    assert out[-1].frame.jpeg == good


def test_idle_sources_are_forgotten():
    """Browser sources come and go: their trackers must not pile up."""
    from services.annotate import stage as annotate_stage
    from shared.config import Config

    st = annotate_stage.AnnotateStage(Config())
    st.trackers["browser-a"] = object()
    st._last_seen["browser-a"] = 100.0
    st.trackers["demo"] = object()
    st._last_seen["demo"] = 100.0 + annotate_stage.SOURCE_IDLE_S
    st.forget_idle_sources(100.0 + annotate_stage.SOURCE_IDLE_S + 1)
    assert "browser-a" not in st.trackers and "demo" in st.trackers


def test_stage_leaves_browser_frames_undrawn_but_tracks_them():
    """A browser camera's frame goes back to that page only, which draws the results itself: annotate
    passes its JPEG through untouched (no decode, draw, encode) yet still tracks and smooths its faces."""
    from shared.messages import BROWSER_PREFIX

    img = np.full((480, 640, 3), 128, np.uint8)
    jpeg = cv2.imencode(".jpg", img)[1].tobytes()
    stage = AnnotateStage(Config(ema_alpha=1.0))
    camera = stage.push(encode(preds(0, jpeg=jpeg, probs=onehot(3))), 0.0)[0]
    msg = preds(1, seq=0, jpeg=jpeg, probs=onehot(3))
    msg.frame.source_id = BROWSER_PREFIX + "abc"
    browser = stage.push(encode(msg), 0.0)[0]
    assert camera.frame.jpeg != jpeg                  # drawn on
    assert browser.frame.jpeg == jpeg                 # passed through
    assert browser.results[0].emotion == "happy" and browser.results[0].track_id == 0

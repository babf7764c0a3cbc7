"""Property-based tests (hypothesis, bounded in time) of every function that decodes outside input:
whatever the bytes, each either returns a valid value or raises its one narrow error, and never
allocates for what a header merely declares."""
from __future__ import annotations

import math

import cv2
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.classify.worker import stale_skip
from services.web.guards import origin_allowed, parse_origins
from services.web.testing import declared_size_jpeg, encode_jpeg
from shared.images import ImageError, ImageLimits, ImageTooLarge, declared_size, decode_image
from shared.labels import EMOTIONS
from shared.messages import (SCHEMA_VERSION, FaceResult, Faces, Frame, MessageError, Predictions, decode, encode)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMITS = ImageLimits(max_pixels=2_000_000, min_side=16, max_side=640)


def _jpeg(w: int = 64, h: int = 48) -> bytes:
    img = (np.indices((h, w)).sum(axis=0) % 255).astype(np.uint8)
    return encode_jpeg(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR), 80)


GOOD_JPEG = _jpeg()
GOOD_PNG = cv2.imencode(".png", np.zeros((20, 30, 3), np.uint8))[1].tobytes()


def _check_decoded(result, limits: ImageLimits) -> None:
    img = result.frame_bgr
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert max(img.shape[:2]) <= limits.max_side and min(img.shape[:2]) >= 1


@FUZZ
@given(st.binary(max_size=2048))
def test_decode_image_on_random_bytes(data):
    try:
        _check_decoded(decode_image(data, LIMITS), LIMITS)
    except ImageError:
        pass


@FUZZ
@given(st.sampled_from([GOOD_JPEG, GOOD_PNG]), st.data())
def test_decode_image_on_mutated_images(base, data):
    buf = bytearray(base)
    for _ in range(data.draw(st.integers(1, 8))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(buf)))
    try:
        _check_decoded(decode_image(bytes(buf[:cut]), LIMITS), LIMITS)
    except ImageError:
        pass


@FUZZ
@given(st.integers(1, 65535), st.integers(1, 65535))
def test_declared_size_is_checked_before_decoding(w, h):
    data = declared_size_jpeg(w, h)
    assert declared_size(data) == ("jpeg", w, h)
    if w * h > LIMITS.max_pixels:
        with pytest.raises(ImageTooLarge, match="declares"):
            decode_image(data, LIMITS)
    else:  # within the cap: decoded (the data is really 16x16, so libjpeg may object) or refused
        try:
            _check_decoded(decode_image(data, LIMITS), LIMITS)
        except ImageTooLarge:
            raise AssertionError("refused as too large while within the cap")
        except ImageError:
            pass


def test_declared_huge_images_cost_nothing():
    for w, h in ((8000, 8000), (30000, 30000), (65535, 65535)):
        data = declared_size_jpeg(w, h)
        assert len(data) < 1000
        with pytest.raises(ImageTooLarge) as err:
            decode_image(data)  # the default cap: 12 MP
        assert err.value.status == 413 and f"{w}x{h}" in str(err.value)


# ------------------------------------------------------------------------------- bus messages
def _frame(**kw) -> Frame:
    base = dict(source_id="cam", seq=1, t_capture=1.0, jpeg=GOOD_JPEG, width=64, height=48,
                stamps=[("capture", 1.0, 1.0)])
    return Frame(**{**base, **kw})


def _preds(probs) -> Predictions:
    faces = Faces(_frame(), np.array([[1, 2, 3, 4]], np.int32), np.zeros((1, 48, 48), np.uint8), job=3, run=9)
    return Predictions(faces, np.asarray(probs, np.float32).reshape(1, 7))


VALID = [encode(_frame()), encode(_preds(np.full(7, 1 / 7)))]


@FUZZ
@given(st.binary(max_size=4096))
def test_decode_message_on_random_bytes(data):
    for expect in (None, "frame", "faces", "predictions", "annotated", "heartbeat", "skip"):
        try:
            decode(data, expect=expect)
        except MessageError:
            pass
    stale_skip(data)   # classify's skip builder never raises


_json = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=20)
                     | st.binary(max_size=40),
                     lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=10), kids, max_size=5),
                     max_leaves=30)


@FUZZ
@given(st.sampled_from(VALID), st.dictionaries(st.sampled_from(
    ["source_id", "seq", "t_capture", "jpeg", "width", "height", "stamps", "n", "job", "run", "boxes_xywh",
     "crops", "probs", "frame", "kind", "v"]), _json, min_size=1, max_size=4))
def test_decode_message_with_fields_replaced(valid, changes):
    d = msgpack.unpackb(valid, raw=False)
    target = d["frame"] if "frame" in d and "width" in changes and "frame" not in changes else d
    target.update(changes)
    try:
        msg = decode(msgpack.packb(d, use_bin_type=True))
    except MessageError:
        return
    frame = msg.frame if hasattr(msg, "frame") else None
    if frame is not None:
        assert frame.jpeg and 0 < frame.width <= 16384 and 0 < frame.height <= 16384
        assert math.isfinite(frame.t_capture) and all(math.isfinite(t) for s in frame.stamps for t in s[1:])
    if isinstance(msg, Predictions):
        assert np.isfinite(msg.probs).all() and (msg.probs >= 0).all() and (msg.probs <= 1 + 1e-4).all()


@FUZZ
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=7, max_size=7))
def test_probabilities_off_the_wire_are_finite_and_in_range(values):
    good = _preds(np.full(7, 1 / 7))
    d = msgpack.unpackb(encode(good), raw=False)
    d["probs"] = np.asarray(values, "<f4").tobytes()
    ok = all(math.isfinite(v) and 0.0 <= v <= 1.0 + 1e-4 for v in np.asarray(values, np.float32).tolist())
    try:
        msg = decode(msgpack.packb(d, use_bin_type=True), expect="predictions")
        assert ok
        assert np.isfinite(msg.probs).all()
    except MessageError as exc:
        assert not ok and "finite" in str(exc)


@FUZZ
@given(st.dictionaries(st.sampled_from(EMOTIONS + ("x",)), st.floats(allow_nan=True), max_size=8))
def test_annotated_scores_off_the_wire(scores):
    from shared.messages import Annotated
    fr = FaceResult((1, 2, 3, 4), "happy", {e: 1 / 7 for e in EMOTIONS}, {e: 1 / 7 for e in EMOTIONS}, 0)
    d = msgpack.unpackb(encode(Annotated(_frame(), [fr])), raw=False)
    d["results"][0]["scores"] = scores
    try:
        msg = decode(msgpack.packb(d, use_bin_type=True), expect="annotated")
    except MessageError:
        return
    assert all(math.isfinite(v) and 0 <= v <= 1 + 1e-4 for v in msg.results[0].scores.values())


def test_schema_version_is_checked():
    d = msgpack.unpackb(VALID[0], raw=False)
    d["v"] = SCHEMA_VERSION - 1
    with pytest.raises(MessageError, match="schema version"):
        decode(msgpack.packb(d, use_bin_type=True))


# ------------------------------------------------------------------------------- web inputs
@FUZZ
@given(st.one_of(st.none(), st.text(max_size=60)), st.text(max_size=30), st.sampled_from(["http", "https"]),
       st.one_of(st.text(max_size=60), st.lists(st.text(max_size=30), max_size=3)))
def test_origin_check_never_raises(origin, host, scheme, allowed):
    result = origin_allowed(origin, host, scheme, parse_origins(allowed))
    assert isinstance(result, bool)
    if origin is None:
        assert result


def test_origin_rules():
    assert origin_allowed("http://127.0.0.1:8000", "127.0.0.1:8000", "http", ())
    assert not origin_allowed("https://evil.example", "127.0.0.1:8000", "http", ())
    assert not origin_allowed("null", "127.0.0.1:8000", "http", ())
    assert origin_allowed("https://evil.example", "h:1", "http", parse_origins("https://a.b, https://evil.example/"))
    assert origin_allowed("https://x.y", "h:1", "http", parse_origins(["*"]))

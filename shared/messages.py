"""The pipeline's message schema: one dataclass per kind, msgpack on the wire, validated on decode.

Kinds and who sends them (see shared/bus.py for the sockets):

    frame        capture  -> detect      Frame: one JPEG from a source, with its sequence number
    faces        detect   -> classify    Faces: the frame + face boxes (int32 (N,4) xywh) + 48x48 gray crops
                                         + five landmarks per face (float32 (N,5,2), NaN where unknown)
    predictions  classify -> annotate    Predictions: the faces + probabilities float32 (N,7), EMOTIONS order
    annotated    annotate -> web         Annotated: the annotated JPEG + one FaceResult per face
    heartbeat    every stage -> web      Heartbeat: a stage's counters and status, once per interval (capture:
                                         also each source's, in the optional ``sources`` map)
    skip         classify -> annotate    Skip: a job dropped unclassified (older than the latency budget),
                                         so the sink does not wait for it (schema version 2)

Every message carries the frame it is about; ``frame.stamps`` is a list of ``(stage, t_recv, t_send)``
(``time.time()`` seconds) that each stage appends to, so ``latencies(msg)`` gives the time spent in each
stage and on each hop from any message. Capture's stamp is ``("capture", t_grab, t_send)``.

Wire format: a msgpack map ``{"v": SCHEMA_VERSION, "kind": ..., ...fields}``. Arrays travel as raw
little-endian bytes next to a face count ``n``; decode checks the kind, the version, every field's type and
every array's size, and raises ``MessageError`` naming the field. A schema change bumps ``SCHEMA_VERSION``.

Every message comes from a socket someone else may write to, so decode also checks values: numbers are
finite, probabilities and scores lie in [0, 1], sizes, counts and strings are bounded (``LIMITS``), a
heartbeat names a known stage (``STAGES``), a frame carries a non-empty JPEG. Error texts quote at most
a few dozen characters of the offending value, never the payload.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

import math

import msgpack
import numpy as np

from shared.labels import EMOTIONS, NUM_CLASSES
from shared.preprocess import FACE_SIZE

NUM_LANDMARKS: int = 5
"""Landmarks per face (shared.registration.LANDMARKS; equal to shared.detector.NUM_LANDMARKS)."""

SCHEMA_VERSION: int = 2
KINDS: tuple[str, ...] = ("frame", "faces", "predictions", "annotated", "heartbeat", "skip")
STAGES: tuple[str, ...] = ("capture", "detect", "classify", "annotate")
"""The stages that send heartbeats; a heartbeat naming any other stage is refused."""

MAX_SIDE = 16384
"""Largest frame side a message may claim (the decoders' own pixel cap is applied on top)."""
MAX_FACES = 256
MAX_STAMPS = 32
MAX_ID_CHARS = 128
MAX_COUNTERS = 64
MAX_DETAIL_CHARS = 512
MAX_BOX_COORD = 1 << 20
MAX_HEARTBEAT_SOURCES = 32
"""At most this many per-source reports in one heartbeat (``Heartbeat.sources``)."""
MAX_SOURCE_COUNTERS = 8
MAX_SOURCE_DETAIL_CHARS = 200

BROWSER_PREFIX = "browser-"
"""Source ids of browsers' own cameras (the web stage names them). Their results go back to that browser
only, which draws them over its live video: their frames are never streamed, so nobody draws on them."""

Stamp = tuple[str, float, float]
"""(stage name, time the stage received the frame, time it sent its result), both ``time.time()``."""


class MessageError(ValueError):
    """A message that cannot be decoded or does not match the schema; the text names the problem."""


def brief(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: error texts never carry a whole payload."""
    text = repr(value) if not isinstance(value, (bytes, bytearray)) else f"<{len(value)} bytes>"
    return text if len(text) <= limit else text[:limit] + f"...({len(text)} chars)"


# ----------------------------------------------------------------------------------------- dataclasses
@dataclass
class Frame:
    """One captured frame: JPEG bytes of a ``width`` x ``height`` BGR image."""

    source_id: str
    seq: int
    t_capture: float
    jpeg: bytes
    width: int
    height: int
    stamps: list[Stamp] = field(default_factory=list)
    kind: ClassVar[str] = "frame"


@dataclass(eq=False)
class Faces:
    """A frame and the faces found in it. ``job`` counts detect's sends (contiguous within one detect
    run, identified by ``run``), so the sink can put results from several workers back in order."""

    frame: Frame
    boxes_xywh: np.ndarray
    crops: np.ndarray
    job: int = 0
    run: int = 0
    landmarks: np.ndarray | None = None  # float32 (N,5,2) in shared.registration.LANDMARKS order; None: NaN
    kind: ClassVar[str] = "faces"

    def __post_init__(self) -> None:
        self.boxes_xywh = _array(self.boxes_xywh, np.int32, (4,), "faces.boxes_xywh")
        self.crops = _array(self.crops, np.uint8, (FACE_SIZE, FACE_SIZE), "faces.crops")
        if len(self.boxes_xywh) != len(self.crops):
            raise MessageError(f"faces: {len(self.boxes_xywh)} boxes but {len(self.crops)} crops")
        if len(self.boxes_xywh) > MAX_FACES:
            raise MessageError(f"faces: {len(self.boxes_xywh)} faces, at most {MAX_FACES}")
        if self.landmarks is None:
            self.landmarks = np.full((len(self.boxes_xywh), NUM_LANDMARKS, 2), np.nan, np.float32)
        self.landmarks = _array(self.landmarks, np.float32, (NUM_LANDMARKS, 2), "faces.landmarks")
        if len(self.landmarks) != len(self.boxes_xywh):
            raise MessageError(f"faces: {len(self.boxes_xywh)} boxes but {len(self.landmarks)} landmark sets")

    def __len__(self) -> int:
        return len(self.boxes_xywh)


@dataclass(eq=False)
class Predictions:
    """Faces and their class probabilities, float32 (N,7) in ``shared.EMOTIONS`` order."""

    faces: Faces
    probs: np.ndarray
    kind: ClassVar[str] = "predictions"

    def __post_init__(self) -> None:
        self.probs = _array(self.probs, np.float32, (NUM_CLASSES,), "predictions.probs")
        if len(self.probs) != len(self.faces):
            raise MessageError(f"predictions: {len(self.probs)} rows of probs for {len(self.faces)} faces")
        if self.probs.size and not (np.isfinite(self.probs).all() and self.probs.min() >= 0.0
                                    and self.probs.max() <= 1.0 + 1e-4):
            raise MessageError("predictions.probs: every probability must be a finite number in [0, 1]")

    @property
    def frame(self) -> Frame:
        return self.faces.frame


@dataclass
class FaceResult:
    """One face on an annotated frame. ``scores`` are the track's smoothed probabilities (what the page
    shows, ``emotion`` is their argmax); ``raw_scores`` are the model's output for this frame alone."""

    box_xywh: tuple[int, int, int, int]
    emotion: str
    scores: dict[str, float]
    raw_scores: dict[str, float]
    track_id: int
    landmarks: list[list[float]] | None = None  # five [x, y] (None: the detector gives none)

    def to_wire(self) -> dict[str, Any]:
        return {"box_xywh": list(self.box_xywh), "emotion": self.emotion, "scores": self.scores,
                "raw_scores": self.raw_scores, "track_id": self.track_id, "landmarks": self.landmarks}


@dataclass
class Annotated:
    """The annotated frame (``frame.jpeg`` is the drawn image; ``frame.stamps`` the whole journey)."""

    frame: Frame
    results: list[FaceResult]
    kind: ClassVar[str] = "annotated"


@dataclass
class SourceStatus:
    """One source of a capture process that serves several: its status ("ok", "reconnecting", "eof",
    "missing"), what went wrong (``detail``) and its own counters (frames_out, dropped, ...)."""

    status: str = "ok"
    detail: str = ""
    counters: dict[str, int] = field(default_factory=dict)


@dataclass
class Heartbeat:
    """A stage's periodic report. ``instance`` tells apart several processes of one stage (classify
    workers); ``counters`` are monotonic totals since the process started; ``status`` is "ok", or a
    short word such as "stalled"/"reconnecting"/"eof" with ``detail`` saying more. ``sources`` (capture
    only; optional on the wire, so heartbeats without it decode as before and older readers ignore it):
    source id -> SourceStatus."""

    stage: str
    instance: str
    t: float
    interval: float
    counters: dict[str, int]
    status: str = "ok"
    detail: str = ""
    sources: dict[str, SourceStatus] = field(default_factory=dict)
    kind: ClassVar[str] = "heartbeat"


@dataclass
class Skip:
    """Detect's job ``job`` of run ``run`` was dropped by a worker without a result (``reason``: "stale",
    older than the latency budget): the sink moves past it instead of waiting for it."""

    run: int
    job: int
    reason: str = "stale"
    kind: ClassVar[str] = "skip"


Message = Union[Frame, Faces, Predictions, Annotated, Heartbeat, Skip]


# ----------------------------------------------------------------------------------------- helpers
def _array(value: Any, dtype: type, tail: tuple[int, ...], name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.size == 0:  # "no faces" is an ordinary empty value, whatever shape/dtype it came in
        arr = np.zeros((0,) + tail, dtype=dtype)
    if arr.ndim != 1 + len(tail) or arr.shape[1:] != tail:
        raise MessageError(f"{name}: expected shape (N,{','.join(map(str, tail))}), got {arr.shape}")
    if arr.dtype != dtype:
        if dtype is np.float32 and np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float32)
        elif dtype is not np.float32 and np.issubdtype(arr.dtype, np.integer):
            info = np.iinfo(dtype)
            if arr.size and (arr.min() < info.min or arr.max() > info.max):
                raise MessageError(f"{name}: values outside {np.dtype(dtype).name} range")
            arr = arr.astype(dtype)
        else:
            raise MessageError(f"{name}: expected {np.dtype(dtype).name}, got {arr.dtype}")
    return np.ascontiguousarray(arr)


def frame_of(msg: Message) -> Frame:
    """The frame a message is about."""
    if isinstance(msg, Frame):
        return msg
    if isinstance(msg, (Heartbeat, Skip)):
        raise MessageError(f"{msg.kind}: carries no frame")
    return msg.frame


def stamp(msg: Message, stage: str, t_recv: float, t_send: float) -> None:
    """Append this stage's (stage, t_recv, t_send) to the message's frame."""
    frame_of(msg).stamps.append((stage, float(t_recv), float(t_send)))


def latencies(msg: Message | list[Stamp]) -> dict[str, float]:
    """Milliseconds per stage and per hop from a message's stamps.

    Keys: ``<stage>`` (t_send - t_recv: time in that stage, including waiting for it to be free),
    ``<a>-><b>`` (hop: b's t_recv - a's t_send, i.e. the bus: serialisation, transport, socket queues), ``total`` (last t_send - first t_recv: capture to the last stage's send).
    """
    stamps = msg if isinstance(msg, list) else frame_of(msg).stamps
    out: dict[str, float] = {}
    prev: Stamp | None = None
    for st in stamps:
        stage, t_recv, t_send = st
        out[stage] = (t_send - t_recv) * 1e3
        if prev is not None:
            out[f"{prev[0]}->{stage}"] = (t_recv - prev[2]) * 1e3
        prev = st
    if stamps:
        out["total"] = (stamps[-1][2] - stamps[0][1]) * 1e3
    return out


# ----------------------------------------------------------------------------------------- encode
def _frame_wire(f: Frame) -> dict[str, Any]:
    return {"source_id": f.source_id, "seq": f.seq, "t_capture": f.t_capture, "jpeg": f.jpeg,
            "width": f.width, "height": f.height, "stamps": [list(s) for s in f.stamps]}


def _faces_wire(m: Faces) -> dict[str, Any]:
    return {"frame": _frame_wire(m.frame), "n": len(m), "job": m.job, "run": m.run,
            "boxes_xywh": m.boxes_xywh.astype("<i4").tobytes(), "crops": m.crops.tobytes(),
            "landmarks": m.landmarks.astype("<f4").tobytes()}


def encode(msg: Message) -> bytes:
    """Message -> msgpack bytes."""
    if isinstance(msg, Frame):
        body = _frame_wire(msg)
    elif isinstance(msg, Faces):
        body = _faces_wire(msg)
    elif isinstance(msg, Predictions):
        body = _faces_wire(msg.faces)
        body["probs"] = msg.probs.astype("<f4").tobytes()
    elif isinstance(msg, Annotated):
        body = {"frame": _frame_wire(msg.frame), "results": [r.to_wire() for r in msg.results]}
    elif isinstance(msg, Skip):
        body = {"run": msg.run, "job": msg.job, "reason": msg.reason}
    elif isinstance(msg, Heartbeat):
        body = {"stage": msg.stage, "instance": msg.instance, "t": msg.t, "interval": msg.interval,
                "counters": msg.counters, "status": msg.status, "detail": msg.detail}
        if msg.sources:  # optional: absent unless a capture process reports its sources
            body["sources"] = {k: {"status": v.status, "detail": v.detail, "counters": v.counters}
                               for k, v in msg.sources.items()}
    else:
        raise MessageError(f"cannot encode {type(msg).__name__}: not a message dataclass")
    body["v"] = SCHEMA_VERSION
    body["kind"] = msg.kind
    return msgpack.packb(body, use_bin_type=True)


# ----------------------------------------------------------------------------------------- decode
_TYPE_NAMES = {int: "int", float: "number", str: "str", bytes: "bytes", list: "list", dict: "map"}


def _get(d: dict, key: str, typ: type, where: str) -> Any:
    if key not in d:
        raise MessageError(f"{where}: missing field {key!r}")
    v = d[key]
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) if typ is float else (
        isinstance(v, typ) and not (typ is int and isinstance(v, bool)))
    if not ok:
        raise MessageError(f"{where}.{key}: expected {_TYPE_NAMES[typ]}, got {type(v).__name__}")
    if typ is float:
        v = float(v)
        if not math.isfinite(v):
            raise MessageError(f"{where}.{key}: {v} is not a finite number")
    return v


def _text(d: dict, key: str, where: str, limit: int = MAX_ID_CHARS, empty: bool = True) -> str:
    v = _get(d, key, str, where)
    if len(v) > limit or (not empty and not v):
        raise MessageError(f"{where}.{key}: {'empty' if not v else f'{len(v)} characters'}, expected "
                           f"{'1' if not empty else '0'}..{limit}")
    return v


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _decode_frame(d: Any, where: str) -> Frame:
    if not isinstance(d, dict):
        raise MessageError(f"{where}: expected a map, got {type(d).__name__}")
    stamps = []
    raw_stamps = _get(d, "stamps", list, where)
    if len(raw_stamps) > MAX_STAMPS:
        raise MessageError(f"{where}.stamps: {len(raw_stamps)} stamps, at most {MAX_STAMPS}")
    for i, s in enumerate(raw_stamps):
        if (not isinstance(s, list) or len(s) != 3 or not isinstance(s[0], str) or len(s[0]) > 32
                or not all(_finite(t) for t in s[1:])):
            raise MessageError(f"{where}.stamps[{i}]: expected [stage, t_recv, t_send], got {brief(s)}")
        stamps.append((s[0], float(s[1]), float(s[2])))
    frame = Frame(source_id=_text(d, "source_id", where, empty=False), seq=_get(d, "seq", int, where),
                  t_capture=_get(d, "t_capture", float, where), jpeg=_get(d, "jpeg", bytes, where),
                  width=_get(d, "width", int, where), height=_get(d, "height", int, where), stamps=stamps)
    if not (0 < frame.width <= MAX_SIDE and 0 < frame.height <= MAX_SIDE):
        raise MessageError(f"{where}: frame size {frame.width}x{frame.height}, each side must be positive and at most {MAX_SIDE}")
    if not 0 <= frame.seq < 1 << 63:
        raise MessageError(f"{where}.seq: {frame.seq} is not a sequence number (0..2**63-1)")
    if not frame.jpeg:
        raise MessageError(f"{where}.jpeg: empty; a frame carries its image as JPEG bytes")
    return frame


def _buffer(d: dict, key: str, n: int, per_item: int, dtype: str, tail: tuple[int, ...], where: str):
    raw = _get(d, key, bytes, where)
    if len(raw) != n * per_item:
        raise MessageError(f"{where}.{key}: {len(raw)} bytes, expected {n * per_item} for n={n} "
                           f"of shape {tail}")
    return np.frombuffer(raw, dtype=dtype).reshape((n,) + tail)


def _decode_faces(d: dict, where: str) -> Faces:
    n = _get(d, "n", int, where)
    if not 0 <= n <= MAX_FACES:
        raise MessageError(f"{where}.n: {'negative ' if n < 0 else ''}face count {n}, expected 0..{MAX_FACES}")
    boxes = _buffer(d, "boxes_xywh", n, 16, "<i4", (4,), where).astype(np.int32)
    crops = _buffer(d, "crops", n, FACE_SIZE * FACE_SIZE, "u1", (FACE_SIZE, FACE_SIZE), where)
    landmarks = _buffer(d, "landmarks", n, NUM_LANDMARKS * 2 * 4, "<f4", (NUM_LANDMARKS, 2), where)
    return Faces(frame=_decode_frame(d.get("frame"), f"{where}.frame"), boxes_xywh=boxes, crops=crops,
                 job=_get(d, "job", int, where), run=_get(d, "run", int, where),
                 landmarks=landmarks.astype(np.float32))


def _scores(v: Any, where: str) -> dict[str, float]:
    if not isinstance(v, dict) or set(v) != set(EMOTIONS) or not all(
            _finite(x) and 0.0 <= x <= 1.0 + 1e-4 for x in v.values()):
        raise MessageError(f"{where}: expected a map of the 7 EMOTIONS to finite numbers in [0, 1], "
                           f"got {brief(v)}")
    return {k: float(v[k]) for k in EMOTIONS}


def _decode_result(r: Any, where: str) -> FaceResult:
    if not isinstance(r, dict):
        raise MessageError(f"{where}: expected a map, got {type(r).__name__}")
    box = _get(r, "box_xywh", list, where)
    if len(box) != 4 or not all(isinstance(x, int) and not isinstance(x, bool) and abs(x) <= MAX_BOX_COORD
                                for x in box):
        raise MessageError(f"{where}.box_xywh: expected 4 ints, got {brief(box)}")
    emotion = _get(r, "emotion", str, where)
    if emotion not in EMOTIONS:
        raise MessageError(f"{where}.emotion: {brief(emotion)} is not one of {EMOTIONS}")
    landmarks = r.get("landmarks")
    if landmarks is not None and (not isinstance(landmarks, list) or len(landmarks) != NUM_LANDMARKS or not all(
            p is None or (isinstance(p, list) and len(p) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) <= MAX_BOX_COORD
                for v in p)) for p in landmarks)):
        raise MessageError(f"{where}.landmarks: expected null or {NUM_LANDMARKS} [x, y] pairs, got {brief(landmarks)}")
    return FaceResult(box_xywh=tuple(box), emotion=emotion,
                      scores=_scores(r.get("scores"), f"{where}.scores"),
                      raw_scores=_scores(r.get("raw_scores"), f"{where}.raw_scores"),
                      track_id=_get(r, "track_id", int, where), landmarks=landmarks)


def decode(data: bytes, expect: str | None = None) -> Message:
    """msgpack bytes -> message dataclass; ``expect`` names the kind the caller accepts.

    Raises ``MessageError`` for anything that is not a valid message of this schema version.
    """
    try:
        d = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise MessageError(f"not msgpack: {type(exc).__name__}: {str(exc)[:80]}") from None
    if not isinstance(d, dict):
        raise MessageError(f"expected a msgpack map, got {type(d).__name__}")
    version = d.get("v")
    if version != SCHEMA_VERSION:
        raise MessageError(f"schema version {brief(version)}, this build reads version {SCHEMA_VERSION} "
                           "(restart every stage from one checkout)")
    kind = d.get("kind")
    if kind not in KINDS:
        raise MessageError(f"unknown message kind {brief(kind)}; expected one of {KINDS}")
    if expect is not None and kind != expect:
        raise MessageError(f"expected a {expect!r} message, got {brief(kind)}")
    if kind == "frame":
        return _decode_frame(d, "frame")
    if kind == "faces":
        return _decode_faces(d, "faces")
    if kind == "predictions":
        faces = _decode_faces(d, "predictions")
        probs = _buffer(d, "probs", len(faces), NUM_CLASSES * 4, "<f4", (NUM_CLASSES,), "predictions")
        return Predictions(faces=faces, probs=probs.astype(np.float32))
    if kind == "annotated":
        results = _get(d, "results", list, "annotated")
        if len(results) > MAX_FACES:
            raise MessageError(f"annotated.results: {len(results)} faces, at most {MAX_FACES}")
        return Annotated(frame=_decode_frame(d.get("frame"), "annotated.frame"),
                         results=[_decode_result(r, f"annotated.results[{i}]") for i, r in enumerate(results)])
    if kind == "skip":
        return Skip(run=_get(d, "run", int, "skip"), job=_get(d, "job", int, "skip"),
                    reason=_text(d, "reason", "skip", limit=32))
    counters = _counters(d, "heartbeat", MAX_COUNTERS)
    stage = _get(d, "stage", str, "heartbeat")
    if stage not in STAGES:
        raise MessageError(f"heartbeat.stage: {brief(stage)} is not one of {STAGES}")
    interval = _get(d, "interval", float, "heartbeat")
    if not 0.0 < interval <= 3600.0:
        raise MessageError(f"heartbeat.interval: {interval} s, expected (0, 3600]")
    return Heartbeat(stage=stage, instance=_text(d, "instance", "heartbeat", empty=False),
                     t=_get(d, "t", float, "heartbeat"), interval=interval,
                     counters=counters, status=_text(d, "status", "heartbeat", limit=32),
                     detail=_text(d, "detail", "heartbeat", limit=MAX_DETAIL_CHARS),
                     sources=_decode_sources(d.get("sources", {})))


def _counters(d: dict, where: str, limit: int) -> dict[str, int]:
    counters = _get(d, "counters", dict, where)
    if len(counters) > limit or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, int) and not isinstance(v, bool)
            and 0 <= v < 1 << 63 for k, v in counters.items()):
        raise MessageError(f"{where}.counters: expected at most {limit} names (str) to counts "
                           f"(int >= 0), got {brief(counters)}")
    return counters


def _decode_sources(raw: Any) -> dict[str, SourceStatus]:
    """heartbeat.sources: at most MAX_HEARTBEAT_SOURCES ids (1..MAX_ID_CHARS characters) -> SourceStatus."""
    if not isinstance(raw, dict) or len(raw) > MAX_HEARTBEAT_SOURCES:
        raise MessageError(f"heartbeat.sources: expected a map of at most {MAX_HEARTBEAT_SOURCES} sources, "
                           f"got {brief(raw)}")
    out: dict[str, SourceStatus] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_ID_CHARS:
            raise MessageError(f"heartbeat.sources: source id {brief(key)}, expected 1..{MAX_ID_CHARS} characters")
        if not isinstance(value, dict):
            raise MessageError(f"heartbeat.sources[{brief(key, 40)}]: expected a map, got {type(value).__name__}")
        where = "heartbeat.sources[]"
        out[key] = SourceStatus(status=_text(value, "status", where, limit=32),
                                detail=_text(value, "detail", where, limit=MAX_SOURCE_DETAIL_CHARS),
                                counters=_counters(value, where, MAX_SOURCE_COUNTERS))
    return out

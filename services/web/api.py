"""JSON API: /api/latest, /api/sources, /api/health, /api/model, POST /api/predict."""
from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, abort, current_app, jsonify, request

from services.web.guards import Saturated
from services.web.hub import result_json, source_problem
from shared.images import ImageError, decode_image
from shared.labels import EMOTIONS
from shared.messages import brief

bp = Blueprint("api", __name__, url_prefix="/api")


def _bad_request(message: str, status: int = 400):
    hub = current_app.extensions["ferlive.hub"]
    if hub is not None:
        hub.count(f"predict_{status}")
    return jsonify(error=message, status=status), status


@bp.get("/latest")
def latest():
    """The newest annotated frame's faces for the main source (or ?source=ID; an unknown ID is a 404)."""
    source = request.args.get("source") or None
    hub = current_app.extensions["ferlive.hub"]
    if source is not None:
        problem = source_problem(source)
        if problem is not None:
            abort(problem[0], description=problem[1])
        if hub is None or not hub.known(source):
            abort(404, description=f"unknown source {brief(source, 40)}: GET /api/sources lists them")
    msg, t_recv = hub.latest(source) if hub is not None else (None, 0.0)
    if msg is None:
        return jsonify(source_id=source, seq=None, faces=[], age_ms=None, width=None, height=None)
    f = msg.frame
    return jsonify(source_id=f.source_id, seq=f.seq, t_capture=f.t_capture, width=f.width, height=f.height,
                   age_ms=round((time.time() - t_recv) * 1e3, 1), faces=result_json(msg))


@bp.get("/sources")
def sources():
    """Every source shown on the page: id, status (ok/stalled/waiting/reconnecting/missing/eof), detail,
    frames/s, age of its newest frame, faces in it; browsers' own cameras are never listed."""
    hub = current_app.extensions["ferlive.hub"]
    if hub is None:
        return jsonify(sources=[], main_source=None)
    return jsonify(sources=hub.sources(), main_source=hub.main_source())


@bp.get("/health")
def health():
    """Each stage alive or not (heartbeats), frames/s per source, latency p50/p95 per stage and hop."""
    hub = current_app.extensions["ferlive.hub"]
    if hub is None:
        return jsonify(ok=False, stages={}, sources={}, latency_ms={}, main_source=None,
                       web={"websocket_clients": 0}, error="this web process has no pipeline link")
    return jsonify(hub.health())


def model_summary(card: dict[str, Any]) -> dict[str, Any]:
    """The parts of an exported model's card.json the page and clients need."""
    metrics = card.get("metrics") or {}
    accuracies = {split: {form: row[form].get("accuracy") for form in row if isinstance(row[form], dict)}
                  for split, row in metrics.items() if split in ("PublicTest", "PrivateTest")}
    int8 = metrics.get("int8_PrivateTest") or {}
    exported = (card.get("exported") or {}).get("time")
    version = card.get("version") or (f"{card.get('name', 'model')}@{exported}" if card else None)
    return {"labels": list(card.get("labels") or EMOTIONS), "version": version, "name": card.get("name"),
            "architecture": card.get("architecture"), "parameters": card.get("parameters"),
            "exported": exported, "input": card.get("input"),
            "accuracy": int8.get("accuracy"), "accuracy_note": "int8 TFLite on FER2013 PrivateTest",
            "macro_f1": int8.get("macro_f1"), "recall": int8.get("recall"), "accuracies": accuracies}


@bp.get("/model")
def model():
    """Labels, accuracies and version of the model that answers /api/predict (from its card.json)."""
    return jsonify(model_summary(current_app.extensions["ferlive.model_card"]))


def _upload_bytes() -> bytes:
    """The image from a multipart form (field 'image', else the only file) or the raw request body."""
    if request.mimetype == "multipart/form-data":
        files = request.files
        f = files.get("image") or files.get("file") or (next(iter(files.values())) if files else None)
        if f is None:
            raise ImageError("multipart form has no file: send the image in the field 'image'")
        return f.read()
    return request.get_data(cache=False)


DETECT_VALUES = {"auto": None, "1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _detect_param() -> bool | None:
    """?detect= (or the form field): auto (default: images up to 96 px are one face crop), 1 or 0."""
    raw = (request.args.get("detect") or request.form.get("detect") or "auto").strip().lower()
    if raw not in DETECT_VALUES:
        raise ImageError(f"detect={raw!r}: use auto, 1 (search the image for faces) or 0 (the image is one face crop)")
    return DETECT_VALUES[raw]


@bp.post("/predict")
def predict():
    """An image (multipart 'image' or raw JPEG/PNG body) -> faces with box, emotion, scores, landmarks.
    ``?detect=0`` takes the image as one face crop (no detection); ``?detect=1`` always searches it."""
    t0 = time.perf_counter()
    try:
        detect = _detect_param()
        with current_app.extensions["ferlive.decode_slots"].slot():
            data = _upload_bytes()
            image = decode_image(data, current_app.extensions["ferlive.image_limits"])
            del data
    except ImageError as exc:
        return _bad_request(str(exc), exc.status)
    except Saturated as exc:
        resp = _bad_request(str(exc), 503)
        resp[0].headers["Retry-After"] = str(exc.retry_after_s)
        return resp
    t1 = time.perf_counter()
    try:
        analyzer = current_app.extensions["ferlive.analyzer"].get()
    except (FileNotFoundError, ValueError, RuntimeError) as exc:  # no bundled model / a bad --model-dir
        return jsonify(error=f"model not available: {exc}", status=503), 503
    result = analyzer.analyze(image.frame_bgr, detect=detect)
    total = (time.perf_counter() - t0) * 1e3
    return jsonify(faces=result.to_json(image.scale), width=image.original_wh[0],
                   height=image.original_wh[1], timing_ms=round(total, 2),
                   steps_ms={"decode": round((t1 - t0) * 1e3, 2), **result.timing_ms})

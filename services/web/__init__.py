"""The web stage: a Flask app showing the pipeline's annotated stream, a browser-webcam page and an API.

    app = create_app()                       # production: Config from FERLIVE_* env vars
    app = create_app({"FERLIVE": cfg, ...})  # tests: inject the config, hub, analyzer, model dir

Shared objects are built once here and kept in ``app.extensions``:
``ferlive.config`` (shared.config.Config), ``ferlive.hub`` (PipelineHub: the one subscription),
``ferlive.analyzer`` (shared.analyzer.LazyAnalyzer: the one detector + registration + model path, for
POST /api/predict), ``ferlive.model_card``.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "media-src 'self' blob: mediastream:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")


def create_app(test_config: Optional[Mapping[str, Any]] = None) -> Flask:
    """Build the app. Keys of `test_config` (all optional):

    FERLIVE (Config; default Config.from_env()), HUB (a PipelineHub, or False for none),
    ANALYZER (a shared.analyzer.FaceAnalyzer), MODEL_DIR (default Config.model_dir),
    MAX_CONTENT_LENGTH (bytes, default 10 MB), MAX_IMAGE_SIDE (px, default 1280),
    WS_MAX_FRAME_BYTES (default 2 MB), WS_RESULT_TIMEOUT (s, default 2.0),
    MAX_CONCURRENT_DECODES (uploads + WebSocket frames decoded at once, default 8; 503 beyond),
    ALLOWED_ORIGINS (origins besides this server's own allowed on POST routes and /ws/frames: a list or
    a comma-separated string, "*" for any; default none), MAX_VIDEO_BYTES (video jobs' uploads, default
    200 MB), JOBS_DIR (default a new temporary folder), JOBS_KEPT (finished jobs kept, default 20), JOBS_EVERY
    (analyse every Nth frame of uploaded videos, default 1). The image pixel cap and shortest side come
    from the Config (``max_image_pixels``, ``min_image_side``).
    In production every key is also read from ``FERLIVE_WEB_<KEY>`` (values parsed as JSON).
    """
    from services.web.guards import DecodeSlots, origin_allowed, parse_origins
    from services.web.hub import PipelineHub
    from shared.images import ImageLimits
    from shared.analyzer import FaceAnalyzer, LazyAnalyzer
    from shared.config import Config
    from shared.labels import EMOTIONS

    app = Flask(__name__)
    app.json.sort_keys = False
    app.config.from_mapping(
        FERLIVE=None,
        HUB=None,
        ANALYZER=None,
        MODEL_DIR=None,
        MAX_CONTENT_LENGTH=10 * 1024 * 1024,
        MAX_IMAGE_SIDE=1280,
        WS_MAX_FRAME_BYTES=2 * 1024 * 1024,
        WS_RESULT_TIMEOUT=2.0,
        MAX_VIDEO_BYTES=200 * 1024 * 1024,
        JOBS_DIR=None,
        JOBS_KEPT=20,
        JOBS_EVERY=1,
        MAX_CONCURRENT_DECODES=8,
        ALLOWED_ORIGINS="",
    )
    if test_config is None:
        # e.g. FERLIVE_WEB_MAX_CONTENT_LENGTH=20971520 (values are parsed as JSON)
        app.config.from_prefixed_env("FERLIVE_WEB")
    else:
        app.config.from_mapping(test_config)
    # simple-websocket: read big chunks (frames are tens of kB), ping idle clients, hard size cap.
    app.config.setdefault("SOCK_SERVER_OPTIONS", {
        "receive_bytes": 65536, "ping_interval": 25,
        "max_message_size": app.config["MAX_CONTENT_LENGTH"]})

    cfg = app.config["FERLIVE"] or Config.from_env()
    model_dir = app.config["MODEL_DIR"] or cfg.model_dir or None
    app.extensions["ferlive.config"] = cfg
    app.extensions["ferlive.image_limits"] = ImageLimits(max_pixels=cfg.max_image_pixels,
                                                         min_side=cfg.min_image_side,
                                                         max_side=int(app.config["MAX_IMAGE_SIDE"]))
    app.extensions["ferlive.decode_slots"] = DecodeSlots(int(app.config["MAX_CONCURRENT_DECODES"]))
    allowed_origins = parse_origins(app.config["ALLOWED_ORIGINS"])
    hub = app.config["HUB"]
    if hub is None:
        hub = PipelineHub(cfg)
    app.extensions["ferlive.hub"] = hub or None
    analyzer = app.config["ANALYZER"]
    app.extensions["ferlive.analyzer"] = (LazyAnalyzer(lambda: analyzer) if analyzer is not None else
                                          LazyAnalyzer(lambda: FaceAnalyzer.load(model_dir, detector=cfg)))
    app.extensions["ferlive.model_card"] = _model_card(model_dir)

    app.config["MODEL_DIR_RESOLVED"] = model_dir
    from services.web import api, jobs, pages, stream, ws
    jobs.init_app(app)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(stream.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(ws.bp)

    @app.context_processor
    def _emotions() -> dict[str, Any]:
        return {"emotions": EMOTIONS, "max_mb": app.config["MAX_CONTENT_LENGTH"] // (1024 * 1024)}

    @app.before_request
    def _same_origin():
        # Browsers send Origin on POSTs and WebSocket handshakes: a page elsewhere may not use them.
        if request.method == "POST" or request.path.startswith("/ws/"):
            origin = request.headers.get("Origin")
            if not origin_allowed(origin, request.host, request.scheme, allowed_origins,
                                  request.environ.get("SERVER_PORT")):
                hub_ = app.extensions.get("ferlive.hub")
                if hub_ is not None:
                    hub_.count("refused_origin")
                return jsonify(error=f"origin {origin[:100]!r} is not allowed: same-origin only "
                                     "(FERLIVE_WEB_ALLOWED_ORIGINS lists others)", status=403), 403
        return None

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        # JSON for the API and for uploads that are too large; the plain page for the rest.
        if request.path.startswith("/api/") or exc.code == 413:
            msg = exc.description
            if exc.code == 413 and request.path.startswith("/api/jobs"):
                msg = (f"request body too large: at most {app.config['MAX_VIDEO_BYTES']} bytes "
                       "(MAX_VIDEO_BYTES); send a shorter or smaller video")
            elif exc.code == 413:
                msg = (f"request body too large: at most {app.config['MAX_CONTENT_LENGTH']} bytes "
                       "(MAX_CONTENT_LENGTH); send a smaller image")
            return jsonify(error=msg, status=exc.code), exc.code
        return exc

    @app.after_request
    def _security_headers(resp):
        resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Permissions-Policy", "camera=(self), microphone=()")
        return resp

    return app


def _model_card(model_dir: Optional[str]) -> dict[str, Any]:
    """The model's card.json for /api/model ({} when it cannot be read: /api/predict then says why)."""
    from shared.model import DEFAULT_MODEL_DIR, read_card
    try:
        return read_card(model_dir or DEFAULT_MODEL_DIR)
    except (FileNotFoundError, ValueError) as exc:
        log.warning("no model card: %s", exc)
        return {}


def close_app(app: Flask) -> None:
    """Stop the app's pipeline subscription (tests and shutdown)."""
    hub = app.extensions.get("ferlive.hub")
    if hub is not None:
        hub.close()
    queue = app.extensions.get("ferlive.jobs")
    if queue is not None:
        queue.close()

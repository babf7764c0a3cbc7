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
    WS_MAX_FRAME_BYTES (default 2 MB), WS_RESULT_TIMEOUT (s, default 2.0).
    """
    from services.web.hub import PipelineHub
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
    hub = app.config["HUB"]
    if hub is None:
        hub = PipelineHub(cfg)
    app.extensions["ferlive.hub"] = hub or None
    analyzer = app.config["ANALYZER"]
    app.extensions["ferlive.analyzer"] = (LazyAnalyzer(lambda: analyzer) if analyzer is not None else
                                          LazyAnalyzer(lambda: FaceAnalyzer.load(model_dir, detector=cfg)))
    app.extensions["ferlive.model_card"] = _model_card(model_dir)

    from services.web import api, pages, stream, ws
    app.register_blueprint(pages.bp)
    app.register_blueprint(stream.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(ws.bp)

    @app.context_processor
    def _emotions() -> dict[str, Any]:
        return {"emotions": EMOTIONS, "max_mb": app.config["MAX_CONTENT_LENGTH"] // (1024 * 1024)}

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        # JSON for the API and for uploads that are too large; the plain page for the rest.
        if request.path.startswith("/api/") or exc.code == 413:
            msg = exc.description
            if exc.code == 413:
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

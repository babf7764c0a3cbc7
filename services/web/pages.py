"""The HTML pages: live stream, my camera, upload. Their behaviour is in static/*.js."""
from __future__ import annotations

from flask import Blueprint, abort, render_template, request

from shared.messages import BROWSER_PREFIX

bp = Blueprint("pages", __name__)


@bp.get("/")
def index():
    """The pipeline's annotated MJPEG stream beside live per-face probabilities."""
    source = request.args.get("source")
    if source and source.startswith(BROWSER_PREFIX):
        abort(404)
    return render_template("index.html", source=source)


@bp.get("/webcam")
def webcam():
    """The browser's own camera, sent over a WebSocket, answered on the same socket."""
    return render_template("webcam.html")


@bp.get("/upload")
def upload():
    """Drop one image, see it annotated (POST /api/predict)."""
    return render_template("upload.html")

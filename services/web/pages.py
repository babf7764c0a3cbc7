"""The HTML pages: live stream, my camera, upload. Their behaviour is in static/*.js."""
from __future__ import annotations

from flask import Blueprint, abort, current_app, render_template, request

from services.web.hub import source_problem

bp = Blueprint("pages", __name__)

MAX_STREAMS = 4
"""Tiles beyond this many show a still refreshed each second instead of an MJPEG stream: a browser opens
at most 6 connections to one server over HTTP/1.1, and the page's polling needs two of them."""


@bp.get("/")
def index():
    """Every source as a tile (its annotated MJPEG stream, its faces' probabilities, its health), or the
    one source ?source=ID; static/live.js keeps the tiles up to date."""
    source = request.args.get("source") or None
    problem = source_problem(source) if source else None
    if problem is not None:
        abort(problem[0])
    hub = current_app.extensions["ferlive.hub"]
    sources = hub.sources() if hub is not None else []
    if source is not None:
        sources = [s for s in sources if s["id"] == source] or [{"id": source, "status": "waiting"}]
    return render_template("index.html", source=source, sources=sources, max_streams=MAX_STREAMS)


@bp.get("/webcam")
def webcam():
    """The browser's own camera, sent over a WebSocket, answered on the same socket."""
    return render_template("webcam.html")


@bp.get("/upload")
def upload():
    """Drop one image, see it annotated (POST /api/predict)."""
    return render_template("upload.html")

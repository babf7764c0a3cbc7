"""``python -m services.web [--host 127.0.0.1] [--port 8000] [--cert CERT --key KEY] [pipeline flags]``
(host and port also from FERLIVE_HOST / FERLIVE_PORT, so ``FERLIVE_PORT=8080 honcho start`` moves the page)

Serves the app with Werkzeug's threaded server (never in debug mode). Binds 127.0.0.1 unless told
otherwise; with --cert/--key it serves HTTPS (browsers give the camera only to https:// or localhost).
For production use gunicorn with ONE worker and threads (the pipeline subscription is per process):

    gunicorn -w 1 -k gthread --threads 32 -b 127.0.0.1:8000 'services.web:create_app()'
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import Optional, Sequence

from werkzeug.serving import WSGIRequestHandler, make_server

log = logging.getLogger("services.web")

SERVER_NAME = "ferlive"
"""The Server header: no framework or Python version for a scanner to match."""


class RequestHandler(WSGIRequestHandler):
    """Werkzeug's handler with a plain Server header and a socket timeout (``timeout`` seconds per read or
    write): an idle or half-open connection frees its thread instead of holding it forever. WebSockets
    are unaffected (simple-websocket waits with select() and pings idle clients every 25 s)."""

    timeout = 30.0

    def version_string(self) -> str:
        return SERVER_NAME


def make_handler(timeout_s: float) -> type[RequestHandler]:
    return type("RequestHandler", (RequestHandler,), {"timeout": timeout_s})


def web_env() -> dict:
    """FERLIVE_WEB_* settings (ALLOWED_ORIGINS, MAX_CONCURRENT_DECODES, ...): values parsed as JSON, else text."""
    import json
    out = {}
    for k, v in os.environ.items():
        if k.startswith("FERLIVE_WEB_") and k != "FERLIVE_WEB_FRAMES_ENDPOINT" and k != "FERLIVE_WEB_TIMEOUT_S":
            try:
                out[k[len("FERLIVE_WEB_"):]] = json.loads(v)
            except ValueError:
                out[k[len("FERLIVE_WEB_"):]] = v
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    from services.web import close_app, create_app
    from shared.config import Config, ConfigError, _parse

    parser = argparse.ArgumentParser(prog="python -m services.web", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("FERLIVE_HOST", "127.0.0.1"),
                        help="interface to bind (env FERLIVE_HOST; default 127.0.0.1: this machine only; 0.0.0.0 "
                             "for every interface)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("FERLIVE_PORT", "8000")),
                        help="port (env FERLIVE_PORT; default 8000)")
    parser.add_argument("--cert", help="TLS certificate (PEM) to serve HTTPS; needs --key")
    parser.add_argument("--key", help="TLS private key (PEM) for --cert")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest request body in MB (413 beyond)")
    parser.add_argument("--timeout-s", type=float, default=float(os.environ.get("FERLIVE_WEB_TIMEOUT_S", "30")),
                        help="seconds a connection may stay silent in a read or write before it is closed "
                             "(env FERLIVE_WEB_TIMEOUT_S; default 30)")
    Config.add_arguments(parser)
    ns = vars(parser.parse_args(argv))
    host, port, cert, key = ns.pop("host"), ns.pop("port"), ns.pop("cert"), ns.pop("key")
    timeout_s = ns.pop("timeout_s")
    if timeout_s <= 0:
        parser.error("--timeout-s must be > 0")
    max_upload = int(ns.pop("max_upload_mb") * 1024 * 1024)
    if bool(cert) != bool(key):
        parser.error("--cert and --key go together")
    fields = {f.name: f for f in dataclasses.fields(Config)}
    try:
        cfg = Config.from_env(**{k: v if isinstance(v, bool) else _parse(fields[k], v, "--" + k)
                                 for k, v in ns.items()})
    except ConfigError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=getattr(logging, cfg.log_level.upper(), logging.INFO),
                        format="%(asctime)s web[%(process)d] %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app({"FERLIVE": cfg, "MAX_CONTENT_LENGTH": max_upload, **web_env()})
    except ConfigError as exc:  # e.g. a pipeline endpoint in use: final, the supervisor does not restart
        print(f"web: {exc}", file=sys.stderr)
        return 2
    try:
        server = make_server(host, port, app, threaded=True, ssl_context=(cert, key) if cert else None,
                             request_handler=make_handler(timeout_s))
    except OSError as exc:
        close_app(app)
        print(f"web: cannot serve on {host}:{port}: {exc.strerror or exc} (is another ferlive running? "
              f"FERLIVE_PORT moves this one)", file=sys.stderr)
        return 2
    if not cfg.access_log:  # one line per MJPEG/poll request buries everything else in the terminal
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server._server_version = SERVER_NAME  # WSGI SERVER_SOFTWARE too
    scheme = "https" if cert else "http"
    log.info("serving on %s://%s:%d (annotated from %s)", scheme, host, server.server_port,
             cfg.annotated_endpoint)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        close_app(app)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""ZeroMQ CURVE for stages on several hosts: generate the keys, and apply them to a socket.

    python -m shared.keys keys/                  # writes keys/server.key(_secret), keys/client.key(_secret)
    FERLIVE_CURVE_DIR=keys/ honcho start          # every socket encrypts and authenticates

The side that binds a socket is the CURVE server (``server.key_secret``); the side that connects is a
client (``client.key_secret``, and ``server.key`` to know the server). A binding process runs pyzmq's
ZAP authenticator, which admits only clients whose public key is one of the ``*.key`` files in the
folder: a peer without the client secret can neither subscribe nor inject. Copy the folder to every host
(the secret files are mode 0600). Keys are read at start; a missing or unreadable file is a
configuration error (``ConfigError``) that stops the stage with a message naming the file.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence

import zmq

from shared.config import ConfigError

log = logging.getLogger(__name__)

SERVER, CLIENT = "server", "client"
_auth_lock = threading.Lock()
_authenticators: dict[int, object] = {}


def generate(folder: str | Path) -> dict[str, Path]:
    """Create the server and client key pairs in ``folder`` (made if missing); returns the secret files."""
    import zmq.auth
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    out = {}
    for name in (SERVER, CLIENT):
        _public, secret = zmq.auth.create_certificates(str(folder), name)
        os.chmod(secret, 0o600)
        out[name] = Path(secret)
    return out


def _load(folder: Path, name: str, secret: bool) -> tuple[bytes, Optional[bytes]]:
    import zmq.auth
    path = folder / f"{name}.key{'_secret' if secret else ''}"
    try:
        public, secret_key = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"CURVE key {path} cannot be read ({exc}); create the keys with "
                          f"`python -m shared.keys {folder}` (FERLIVE_CURVE_DIR names the folder)") from None
    if secret and not secret_key:
        raise ConfigError(f"CURVE key {path} holds no secret key; regenerate with `python -m shared.keys`")
    return public, secret_key


def start_authenticator(ctx: zmq.Context, folder: Path) -> None:
    """One ZAP authenticator per context, admitting the public keys in ``folder`` (idempotent)."""
    from zmq.auth.thread import ThreadAuthenticator
    with _auth_lock:
        if id(ctx) in _authenticators:
            return
        auth = ThreadAuthenticator(ctx, log=logging.getLogger("shared.keys.zap"))
        auth.start()
        auth.configure_curve(domain="*", location=str(folder))
        _authenticators[id(ctx)] = auth


def stop_authenticator(ctx: zmq.Context) -> None:
    """Stop the context's authenticator, if any (before ``ctx.term()``)."""
    with _auth_lock:
        auth = _authenticators.pop(id(ctx), None)
    if auth is not None:
        auth.stop()


def apply_curve(sock: zmq.Socket, ctx: zmq.Context, folder: str | Path, *, server: bool) -> None:
    """Make ``sock`` a CURVE server (binding side) or client (connecting side) with the keys in ``folder``."""
    if not zmq.has("curve"):
        raise ConfigError("FERLIVE_CURVE_DIR is set but this libzmq was built without CURVE")
    folder = Path(folder)
    if server:
        public, secret = _load(folder, SERVER, secret=True)
        start_authenticator(ctx, folder)
        sock.curve_secretkey, sock.curve_publickey = secret, public
        sock.curve_server = True
    else:
        public, secret = _load(folder, CLIENT, secret=True)
        server_public, _ = _load(folder, SERVER, secret=False)
        sock.curve_secretkey, sock.curve_publickey = secret, public
        sock.curve_serverkey = server_public


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shared.keys",
                                description="Generate the CURVE keys of a ferlive deployment (FERLIVE_CURVE_DIR).")
    p.add_argument("folder", help="where to write server.key, server.key_secret, client.key, client.key_secret")
    a = p.parse_args(argv)
    for name, path in generate(a.folder).items():
        print(f"{name}: {path}")
    print(f"every host: FERLIVE_CURVE_DIR={Path(a.folder).resolve()} (copy the folder; keep it private)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The web stage's closed doors: same-origin checks and a bound on concurrent image decodes.

* ``origin_allowed(origin, host, scheme, allowed)``: a request without an ``Origin`` header (curl, scripts)
  passes; a browser's request passes when its origin is this server's own (scheme://Host) or listed in
  ``allowed`` (``FERLIVE_WEB_ALLOWED_ORIGINS``: a JSON list or a comma-separated string; ``*`` allows any).
* ``DecodeSlots``: at most N decodes at once (``FERLIVE_WEB_MAX_CONCURRENT_DECODES``); a request that finds
  every slot taken is refused at once (503 + ``Retry-After``) instead of queueing its memory.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterable, Iterator, Optional


class Saturated(RuntimeError):
    """Every decode slot is taken; retry after ``retry_after_s``."""

    def __init__(self, slots: int, retry_after_s: int = 1) -> None:
        super().__init__(f"server busy: {slots} images are being decoded already; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class DecodeSlots:
    """A non-blocking bound on concurrent decodes (uploads and WebSocket frames share it)."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"MAX_CONCURRENT_DECODES={slots}: must be >= 1")
        self.slots = slots
        self._sem = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self.refused = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot for the block; ``Saturated`` (counted) when none is free."""
        if not self._sem.acquire(blocking=False):
            with self._lock:
                self.refused += 1
            raise Saturated(self.slots)
        try:
            yield
        finally:
            self._sem.release()


def parse_origins(value: object) -> tuple[str, ...]:
    """The allow-list from config: a list/tuple of origins, or a comma-separated string."""
    if value is None or value == "":
        return ()
    items: Iterable[object] = value.split(",") if isinstance(value, str) else value  # type: ignore[assignment]
    if not isinstance(items, (list, tuple, str)) and not hasattr(items, "__iter__"):
        raise ValueError(f"ALLOWED_ORIGINS={value!r}: expected a list or a comma-separated string")
    return tuple(str(o).strip().rstrip("/").lower() for o in items if str(o).strip())


def origin_allowed(origin: Optional[str], host: str, scheme: str, allowed: tuple[str, ...],
                   server_port: Optional[str] = None) -> bool:
    """Same-origin by default; ``allowed`` adds origins (``*``: any). No Origin header: not a browser, allowed.

    ``host`` is the request's Host header; when it names no port, ``server_port`` (the port the request
    came in on) stands in, so ``Host: 127.0.0.1`` on port 8000 matches the origin ``http://127.0.0.1:8000``."""
    if origin is None:
        return True
    o = origin.strip().rstrip("/").lower()
    if "*" in allowed or o in allowed:
        return True
    own = host.strip().lower()
    if server_port and not own.endswith("]") and ":" not in own.rsplit("]", 1)[-1]:
        default = {"http": "80", "https": "443"}.get(scheme)
        own = own if str(server_port) == default else f"{own}:{server_port}"
    return o == f"{scheme}://{own}"

"""Counting and rate-limited logging of bad input and unexpected errors in a stage's loop.

Every stage treats every message as hostile: a message that fails validation is counted (a counter in
the stage's heartbeat, so ``/api/health`` shows it) and logged once, short, at most once per
``every_s`` seconds per kind; an unexpected exception while handling one message is counted
(``errors``) and logged with its traceback (rate-limited the same way), and the loop goes on.

    guard = Guard(hb.counters, log, every_s=cfg.log_every_s)
    guard.bad("bad_messages", exc)              # a MessageError, ImageError, ...
    with guard.handling("frame"):              # anything else raised inside is counted and logged
        ...
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from contextlib import contextmanager
from typing import Iterator, Optional

MAX_LOG_CHARS = 200
"""An error text is cut to this many characters in the log: never the payload."""


def short(text: object, limit: int = MAX_LOG_CHARS) -> str:
    """``str(text)`` on one line, cut to ``limit`` characters."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[:limit] + f"... ({len(s)} chars)"


class Guard:
    """Counters and rate-limited logs of one stage's dropped input and caught errors."""

    def __init__(self, counters: Optional[Counter] = None, logger: Optional[logging.Logger] = None,
                 every_s: float = 10.0) -> None:
        self.counters = counters if counters is not None else Counter()
        self.log = logger or logging.getLogger(__name__)
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._suppressed: Counter = Counter()

    def _due(self, key: str, now: float) -> Optional[int]:
        """The number of suppressed reports if one may be logged now, else None (and count it)."""
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._suppressed[key] += 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)

    def bad(self, counter: str, exc: BaseException | str) -> None:
        """Count one dropped input under ``counter``; log it unless one was logged recently."""
        self.counters[counter] += 1
        suppressed = self._due(counter, time.monotonic())
        if suppressed is not None:
            more = f" (+{suppressed} more since the last report)" if suppressed else ""
            self.log.warning("dropped input [%s]%s: %s", counter, more, short(exc))

    def error(self, what: str, exc: BaseException) -> None:
        """Count an unexpected exception (``errors``); log it with its traceback, rate-limited per type."""
        self.counters["errors"] += 1
        key = f"error:{type(exc).__name__}"
        suppressed = self._due(key, time.monotonic())
        if suppressed is not None:
            more = f" (+{suppressed} more since the last report)" if suppressed else ""
            self.log.error("unexpected error handling %s%s; the stage goes on: %s", what, more, short(exc),
                           exc_info=(type(exc), exc, exc.__traceback__))

    @contextmanager
    def handling(self, what: str) -> Iterator[None]:
        """Run one message's handling: any ``Exception`` is counted and logged, never raised."""
        try:
            yield
        except Exception as exc:  # the loop must survive whatever one message does
            self.error(what, exc)

"""Warnings at most once per kind per interval, so that a failure repeated on every
request costs a counter, not a log line (and a traceback) per request."""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["LogLimiter"]

logger = logging.getLogger("pynba")

#: The kinds a limiter remembers at most.
MAX_KINDS = 1000


class LogLimiter:
    """Logs a message of each kind at most once per ``interval`` seconds.

    The next one logged says how many were left out since the last.
    """

    __slots__ = ("interval", "_last", "_suppressed", "_lock")

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """How many kinds it remembers (at most ``MAX_KINDS``)."""
        return len(self._last)

    def log(
        self,
        level: int,
        kind: str,
        message: str,
        *args: object,
        exc_info: BaseException | None = None,
    ) -> None:
        """Log ``message % args`` unless a message of ``kind`` was logged within the interval."""
        now = time.monotonic()
        with self._lock:
            if len(self._last) >= MAX_KINDS and kind not in self._last:
                # Kinds are meant to be few: made of varying text, they must not pile up.
                self._last.clear()
                self._suppressed.clear()
            last = self._last.get(kind)
            if last is not None and now - last < self.interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return
            self._last[kind] = now
            suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            message += " (%d more since the last such message)"
            args += (suppressed,)
        logger.log(level, message, *args, exc_info=exc_info)

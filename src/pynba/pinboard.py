"""Pinboard compatibility: every timer also carries its packet's host and server.

The Pinboard UI (a report viewer for Pinba) shows a timer only when it
carries ``__hostname`` and ``__server_name`` tags. With ``pinboard=True`` a
request adds them to each timer it sends; a timer that already has one of
these tags keeps its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .timer import Timer, TimerRecord
from .wire.fallback import timer_tuple

__all__ = ["pinboard_timers"]


def pinboard_timers(
    timers: Iterable[Timer | TimerRecord], hostname: Any, server_name: Any
) -> list[TimerRecord]:
    """``timers`` (Timers or records, as the encoder takes them) as records with the tags added."""
    added = (("__hostname", hostname), ("__server_name", server_name))
    out = []
    for timer in timers:
        record = timer_tuple(timer)
        tags = record[0]
        names = {name for name, _ in tags}
        tags += tuple(pair for pair in added if pair[0] not in names)
        out.append((tags, *record[1:]))
    return out

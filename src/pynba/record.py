"""One request as it goes from the collector to the reporter and on to the encoder.

A ``RequestRecord`` holds the encoder's arguments, in the encoder's order:
``encode(*record)`` encodes it. It imports nothing of pynba's, so that any
module (the encoders among them) may use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

__all__ = ["RequestRecord"]


class RequestRecord(NamedTuple):
    """A finished request, every field filled: what one Pinba datagram reports.

    ``tags`` is a mapping or a sequence of ``(name, value)`` pairs;
    ``timers`` a sequence of timers as ``pynba.encoder.encode`` takes them
    (pynba Timers among them, read as they stand when encoded). The encoder
    makes every value one pinba2 accepts. ``Reporter.report()`` fills the
    fields it is not given.
    """

    hostname: str
    server_name: str
    script_name: str
    #: How many requests this record stands for.
    request_count: int
    #: Bytes of the response body; the peak resident set size, in bytes.
    document_size: int
    memory_peak: int
    #: Seconds of wall-clock time, of user CPU and of system CPU.
    request_time: float
    ru_utime: float
    ru_stime: float
    #: The HTTP status (0: none); the resident set size at the end, in bytes (0: not measured).
    status: int
    memory_footprint: int
    #: The URL scheme (``"https"``), or None: not sent.
    schema: str | None
    tags: Mapping[str, Any] | Iterable[tuple[str, Any]]
    timers: Iterable[Any]

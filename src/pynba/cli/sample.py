"""``pynba sample``: one sample request sent to a listener in the same process, and shown."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from .. import ENCODER
from ..reporter import Reporter
from .display import describe
from .listener import Listener

__all__ = ["SAMPLE", "run_sample"]

#: What a web request to a shop's user page reports: two db timers that merge, one cache timer.
SAMPLE: dict[str, Any] = {
    "hostname": "web-1",
    "server_name": "shop.example.com",
    "script_name": "/users/{id}",
    "document_size": 5120,
    "memory_peak": 24 << 20,
    "request_time": 0.0421,
    "ru_utime": 0.0183,
    "ru_stime": 0.0021,
    "status": 200,
    "schema": "https",
    "tags": {"app": "shop", "country": "fr"},
    "timers": [
        ({"group": "db", "op": "select"}, 0.0112, 1, 0.0031, 0.0004),
        ({"group": "cache", "op": "get"}, 0.0007, 1, 0.0001, 0.0),
        ({"op": "select", "group": "db"}, 0.0094, 1, 0.0022, 0.0003),
    ],
}


def run_sample(out: TextIO | None = None) -> int:
    """Send ``SAMPLE`` and print it as received; 0 when a Pinba server would accept it."""
    out = out or sys.stdout
    with Listener("127.0.0.1", 0) as listener:
        with Reporter(listener.address, raise_on_fail=True) as reporter:
            reporter.report(**SAMPLE)
        received = listener.receive(timeout=5)
    if received is None:
        print("pynba: the sample datagram did not arrive", file=sys.stderr)
        return 1
    print(f"pynba {ENCODER} encoder sent to 127.0.0.1:{listener.port}", file=out)
    print(describe(received), file=out)
    return 0 if received.accepted else 1

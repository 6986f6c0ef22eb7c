"""requests: each request a ``Session`` sends, one timer (``group=http``).

``Session.send`` is hooked: ``requests.get()`` and every other call go
through it, and so do the redirects it follows, which are part of the
first call's timer. A streamed response (``stream=True``) is timed to its
headers; any other to its whole body. With urllib3 instrumented too, a
requests call stays one timer. Tags: see ``_http_client``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._hooks import Patches, timed_calls
from ._http_client import (
    ERROR,
    IN_CALL,
    CallTimers,
    add_failed_timer,
    enabled,
    origin_host,
    origin_values,
    values,
)

__all__ = ["instrument", "uninstrument"]

_patches = Patches()
_timers = CallTimers(origin_values)


def _hook(send: Callable[..., Any]) -> Callable[..., Any]:
    return timed_calls(send, enabled, _done, _failed, ((1, "request"),), IN_CALL)


def _done(collector: Any, seconds: float, request: Any, response: Any) -> None:
    _timers.add_origin(collector, seconds, request.method, request.url, response.status_code)


def _failed(collector: Any, seconds: float, request: Any) -> None:
    add_failed_timer(
        collector, seconds, lambda: values(request.method, origin_host(request.url), ERROR)
    )


def instrument() -> None:
    """Time the requests of every requests session (idempotent)."""
    if _patches.applied:
        return
    import requests

    _patches.replace(requests.Session, "send", _hook)


def uninstrument() -> None:
    """Put requests back as it was (idempotent)."""
    _patches.undo()

"""requests: each request a ``Session`` sends, one timer (``group=http``).

``Session.send`` is hooked: ``requests.get()`` and every other call go
through it, and so do the redirects it follows, which are part of the
first call's timer. A streamed response (``stream=True``) is timed to its
headers; any other to its whole body. With urllib3 instrumented too, a
requests call stays one timer. Tags: see ``_http_client``.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any

from ..context import current_collector
from ._hooks import Patches
from ._http_client import (
    ERROR,
    IN_CALL,
    CallTimers,
    add_failed_timer,
    origin_host,
    origin_values,
    values,
)

__all__ = ["instrument", "uninstrument"]

_patches = Patches()
_timers = CallTimers(origin_values)


def _hook(send: Callable[..., Any]) -> Callable[..., Any]:
    # Session.send's own parameters: the request is at hand, and the
    # keywords go on as they came.
    def timed_send(self: Any, request: Any, **kwargs: Any) -> Any:
        collector = current_collector()
        if collector is None or not collector.enabled:
            return send(self, request, **kwargs)
        in_call = IN_CALL.__dict__  # this thread's
        if in_call.get("active"):
            return send(self, request, **kwargs)
        in_call["active"] = True
        start = perf_counter()
        try:
            response = send(self, request, **kwargs)
        except BaseException:
            seconds = perf_counter() - start
            in_call["active"] = False
            _add_failed(collector, seconds, request)
            raise
        seconds = perf_counter() - start
        in_call["active"] = False
        _timers.add_origin(collector, seconds, request.method, request.url, response.status_code)
        return response

    return timed_send


def _add_failed(collector: Any, seconds: float, request: Any) -> None:
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

"""httpx: each request a ``Client`` or ``AsyncClient`` sends, one timer (``group=http``).

``Client.send`` and ``AsyncClient.send`` are hooked: every request of a
client goes through them once (``get()``, ``request()``, ``stream()``...),
the redirects it follows and its authentication round trips included. A
streamed response (``stream()``, ``send(stream=True)``) is timed to its
headers; any other to its whole body. Tags: see ``_http_client``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from time import perf_counter
from typing import Any

from ..context import current_collector
from ..errors import internal_error
from ._hooks import Patches
from ._http_client import ERROR, CallTimers, add_failed_timer, host_tag, status_class, values

__all__ = ["instrument", "uninstrument"]

_patches = Patches()


def _values(key: tuple[Any, str, int | None, Any]) -> tuple[str, ...]:
    method, host, port, status = key
    return values(method, host_tag(host, port), status_class(status))


_timers = CallTimers(_values)


# The hooks take Client.send's own parameters: the request is at hand, and
# the keywords go on as they came. httpx calls no client from inside a
# client: they need not look for nested calls.


def _sync_hook(send: Callable[..., Any]) -> Callable[..., Any]:
    def timed_send(self: Any, request: Any, **kwargs: Any) -> Any:
        collector = current_collector()
        if collector is None or not collector.enabled:
            return send(self, request, **kwargs)
        start = perf_counter()
        try:
            response = send(self, request, **kwargs)
        except BaseException:
            _add_failed(collector, perf_counter() - start, request)
            raise
        _add(collector, perf_counter() - start, request, response)
        return response

    return timed_send


def _async_hook(send: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    async def timed_send(self: Any, request: Any, **kwargs: Any) -> Any:
        collector = current_collector()
        if collector is None or not collector.enabled:
            return await send(self, request, **kwargs)
        start = perf_counter()
        try:
            response = await send(self, request, **kwargs)
        except BaseException:
            _add_failed(collector, perf_counter() - start, request)
            raise
        _add(collector, perf_counter() - start, request, response)
        return response

    return timed_send


def _add(collector: Any, seconds: float, request: Any, response: Any) -> None:
    try:
        # httpx's URL: the host in lower case, the port None when the scheme's default.
        url = request.url
        key = (request.method, url.host, url.port, response.status_code)
    except Exception:
        internal_error("cannot tag an HTTP call's timer", False)
    else:
        _timers.add(collector, seconds, key)


def _add_failed(collector: Any, seconds: float, request: Any) -> None:
    def failed_values() -> tuple[str, ...]:
        url = request.url
        return values(request.method, host_tag(url.host, url.port), ERROR)

    add_failed_timer(collector, seconds, failed_values)


def instrument() -> None:
    """Time the requests of every httpx client (idempotent)."""
    if _patches.applied:
        return
    import httpx

    _patches.replace(httpx.Client, "send", _sync_hook)
    _patches.replace(httpx.AsyncClient, "send", _async_hook)


def uninstrument() -> None:
    """Put httpx back as it was (idempotent)."""
    _patches.undo()

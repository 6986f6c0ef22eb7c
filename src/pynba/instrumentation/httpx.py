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
from ._hooks import Patches, takes_exactly
from ._http_client import ERROR, CallTimers, add_failed_timer, host_tag, status_class, values

__all__ = ["instrument", "uninstrument"]

_patches = Patches()


def _values(key: tuple[Any, str, int | None, Any]) -> tuple[str, ...]:
    method, host, port, status = key
    return values(method, host_tag(host, port), status_class(status))


_timers = CallTimers(_values)


# Client.send's keyword parameters, as httpx (0.20 and later) has them.
# A hook that takes them by name passes them on in one plain call, not
# packed into a dict (``**kwargs``) and unpacked again. With the URL read
# from its parts (below), the hook went from 7,400 to 2,200 instructions
# over a hand-written timer. A send of other parameters gets the
# ``**kwargs`` hooks: another library's hook put there first (sentry-sdk's
# is ``send(self, request, **kwargs)``), or an httpx that changed them.
_KEYWORDS = ("stream", "auth", "follow_redirects")


def _known_defaults(send: Callable[..., Any]) -> dict[str, Any] | None:
    """The defaults of ``send``'s keywords when they are ``_KEYWORDS``, after (self, request)."""
    if not takes_exactly(send, ("self", "request"), _KEYWORDS):
        return None
    defaults = send.__kwdefaults__
    return defaults if isinstance(defaults, dict) and tuple(defaults) == _KEYWORDS else None


# httpx calls no client from inside a client: the hooks need not look for
# nested calls.


def _sync_hook(send: Callable[..., Any]) -> Callable[..., Any]:
    defaults = _known_defaults(send)  # httpx's own, as they are
    if defaults is None:
        return _sync_hook_any(send)

    def timed_send(
        self: Any,
        request: Any,
        *,
        stream: Any = defaults["stream"],
        auth: Any = defaults["auth"],
        follow_redirects: Any = defaults["follow_redirects"],
    ) -> Any:
        collector = current_collector()
        if collector is None or not collector.enabled:
            return send(self, request, stream=stream, auth=auth, follow_redirects=follow_redirects)
        start = perf_counter()
        try:
            response = send(
                self, request, stream=stream, auth=auth, follow_redirects=follow_redirects
            )
        except BaseException:
            _add_failed(collector, perf_counter() - start, request)
            raise
        _add(collector, perf_counter() - start, request, response)
        return response

    return timed_send


def _async_hook(send: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    defaults = _known_defaults(send)  # httpx's own, as they are
    if defaults is None:
        return _async_hook_any(send)

    async def timed_send(
        self: Any,
        request: Any,
        *,
        stream: Any = defaults["stream"],
        auth: Any = defaults["auth"],
        follow_redirects: Any = defaults["follow_redirects"],
    ) -> Any:
        collector = current_collector()
        if collector is None or not collector.enabled:
            return await send(
                self, request, stream=stream, auth=auth, follow_redirects=follow_redirects
            )
        start = perf_counter()
        try:
            response = await send(
                self, request, stream=stream, auth=auth, follow_redirects=follow_redirects
            )
        except BaseException:
            _add_failed(collector, perf_counter() - start, request)
            raise
        _add(collector, perf_counter() - start, request, response)
        return response

    return timed_send


def _sync_hook_any(send: Callable[..., Any]) -> Callable[..., Any]:
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


def _async_hook_any(send: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
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
        # As _host_and_port, inline: a call less on every request.
        url = request.url
        if _read_parts:
            url = url._uri_reference
            host = url.host
        else:
            host = url.raw_host
        key = (request.method, host, url.port, response.status_code)
    except Exception:
        internal_error("cannot tag an HTTP call's timer", False)
    else:
        _timers.add(collector, seconds, key)


def _add_failed(collector: Any, seconds: float, request: Any) -> None:
    def failed_values() -> tuple[str, ...]:
        return values(request.method, host_tag(*_host_and_port(request.url)), ERROR)

    add_failed_timer(collector, seconds, failed_values)


# The host is read IDNA-encoded, as httpx sends it: URL.host decodes it,
# and host_tag would only encode it again.
def _host_and_port(url: Any) -> tuple[Any, int | None]:
    """The host httpx connects to (IDNA-encoded) and the port (None: the scheme's default)."""
    if _read_parts:
        parts = url._uri_reference
        return parts.host, parts.port
    return url.raw_host, url.port


# httpx's URL keeps its parts in a named tuple, its host in lower case and
# IDNA-encoded and its port None when the scheme's default, as URL.raw_host
# and URL.port give them. Read there, they are two C reads; the properties
# are Python calls (0.15 us). Whether this httpx keeps them so is checked
# once, when instrumented.
_read_parts = False


def _parts_read_as_properties(httpx: Any) -> bool:
    try:
        for text in (
            "http://Example.com:8080/p?q",
            "https://[::1]/",
            "https://h:443/",
            "http://Bücher.example/",
        ):
            url = httpx.URL(text)
            parts = url._uri_reference
            if (parts.host.encode("ascii"), parts.port) != (url.raw_host, url.port):
                return False
    except Exception:
        return False
    return True


def instrument() -> None:
    """Time the requests of every httpx client (idempotent)."""
    if _patches.applied:
        return
    import httpx

    global _read_parts
    _read_parts = _parts_read_as_properties(httpx)
    _patches.replace(httpx.Client, "send", _sync_hook)
    _patches.replace(httpx.AsyncClient, "send", _async_hook)


def uninstrument() -> None:
    """Put httpx back as it was (idempotent)."""
    _patches.undo()

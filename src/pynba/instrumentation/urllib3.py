"""urllib3: each request of a connection pool, one timer (``group=http``).

``HTTPConnectionPool.urlopen`` is hooked: the pools of a ``PoolManager``
(``urllib3.request()``, ``ProxyManager``) and a pool used directly. A
pool's call is one timer, its retries and the redirects it follows itself
included. A ``PoolManager`` follows a redirect with a new pool call, to
the host it names: a timer for each, tagged with its host and status, as
OpenTelemetry's urllib3 instrumentation makes a span for each. A response
read later (``preload_content=False``) is timed to its headers. Tags: see
``_http_client``.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any

from ..context import current_collector
from ..errors import internal_error
from ._hooks import Patches, takes_exactly
from ._http_client import (
    ERROR,
    IN_CALL,
    CallTimers,
    add_failed_timer,
    host_tag,
    origin_host,
    origin_values,
    status_class,
    values,
)

__all__ = ["instrument", "uninstrument"]

_patches = Patches()
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _pool_values(key: tuple[Any, str, int | None, str, Any]) -> tuple[str, ...]:
    method, host, port, scheme, status = key
    return values(method, _pool_host(host, port, scheme), status_class(status))


def _pool_host(host: Any, port: Any, scheme: Any) -> str:
    return host_tag(host, None if port == _DEFAULT_PORTS.get(scheme) else port)


def _absolute(url: Any) -> bool:
    # A URL in absolute form, as a ProxyManager sends a plain-HTTP request
    # through its proxy's pool: the host is the URL's, not the pool's.
    # (Compiled, a C function: see urllib3.pxd.)
    if type(url) is not str:
        if not isinstance(url, str):
            return False
        url = str.__str__(url)  # its value: a subclass's methods are not called
    text = url  # compiled, a str: its "in" and startswith() are C calls
    return "://" in text and not text.startswith("/")


_pool_timers = CallTimers(_pool_values)
_url_timers = CallTimers(origin_values)


# HTTPConnectionPool.urlopen's parameters after (self, method, url), as
# urllib3 2 has them. A hook that takes them by name passes them on in one
# plain call: a PoolManager calls its pools with keywords (conn.urlopen(...,
# **kw)), and a hook of (*args, **kw) packs them into a dict and unpacks
# them again: 7,000 instructions of its own on a PoolManager call, where
# this one's are about 4,000, its timer included. A urlopen of other parameters
# (another urllib3, another library's hook put there first) gets the
# (*args, **kw) hook.
_PARAMETERS = (
    "body",
    "headers",
    "retries",
    "redirect",
    "assert_same_host",
    "timeout",
    "pool_timeout",
    "release_conn",
    "chunked",
    "body_pos",
    "preload_content",
    "decode_content",
)


def _known_defaults(urlopen: Callable[..., Any]) -> tuple[Any, ...] | None:
    """The defaults of ``_PARAMETERS`` when ``urlopen`` takes them after (self, method, url)."""
    if not takes_exactly(urlopen, ("self", "method", "url", *_PARAMETERS), var_keyword=True):
        return None
    defaults = urlopen.__defaults__
    return defaults if isinstance(defaults, tuple) and len(defaults) == len(_PARAMETERS) else None


def _pool_hook(urlopen: Callable[..., Any]) -> Callable[..., Any]:
    defaults = _known_defaults(urlopen)  # urllib3's own, as they are
    if defaults is None:
        return _pool_hook_any(urlopen)

    def timed_urlopen(
        self: Any,
        method: Any,
        url: Any,
        body: Any = defaults[0],
        headers: Any = defaults[1],
        retries: Any = defaults[2],
        redirect: Any = defaults[3],
        assert_same_host: Any = defaults[4],
        timeout: Any = defaults[5],
        pool_timeout: Any = defaults[6],
        release_conn: Any = defaults[7],
        chunked: Any = defaults[8],
        body_pos: Any = defaults[9],
        preload_content: Any = defaults[10],
        decode_content: Any = defaults[11],
        **response_kw: Any,
    ) -> Any:
        collector = current_collector()
        if collector is not None and collector.enabled:
            in_call = IN_CALL.__dict__  # this thread's
            # Active: a retry or redirect of the pool's own, or a call under
            # a requests call, timed there.
            if not in_call.get("active"):
                in_call["active"] = True
                start = perf_counter()
                try:
                    response = urlopen(
                        self, method, url, body, headers, retries, redirect, assert_same_host,
                        timeout, pool_timeout, release_conn, chunked, body_pos, preload_content,
                        decode_content, **response_kw,
                    )  # fmt: skip
                except BaseException:
                    seconds = perf_counter() - start
                    in_call["active"] = False
                    _add_failed(collector, seconds, self, method, url)
                    raise
                seconds = perf_counter() - start
                in_call["active"] = False
                _add(collector, seconds, self, method, url, response)
                return response
        return urlopen(
            self, method, url, body, headers, retries, redirect, assert_same_host, timeout,
            pool_timeout, release_conn, chunked, body_pos, preload_content, decode_content,
            **response_kw,
        )  # fmt: skip

    return timed_urlopen


def _pool_hook_any(urlopen: Callable[..., Any]) -> Callable[..., Any]:
    def timed_urlopen(*args: Any, **kw: Any) -> Any:
        collector = current_collector()
        if collector is None or not collector.enabled:
            return urlopen(*args, **kw)
        in_call = IN_CALL.__dict__  # this thread's
        if in_call.get("active"):  # a retry or redirect of the pool's own, or under requests
            return urlopen(*args, **kw)
        in_call["active"] = True
        start = perf_counter()
        try:
            response = urlopen(*args, **kw)
        except BaseException:
            seconds = perf_counter() - start
            in_call["active"] = False
            _add_failed_any(collector, seconds, args, kw)
            raise
        seconds = perf_counter() - start
        in_call["active"] = False
        try:
            pool, method, url = _call_of(args, kw)
        except Exception:
            internal_error("cannot tag an HTTP call's timer", False)
        else:
            _add(collector, seconds, pool, method, url, response)
        return response

    return timed_urlopen


def _call_of(args: tuple[Any, ...], kw: dict[str, Any]) -> tuple[Any, Any, Any]:
    """The pool, the method and the URL of a call of urlopen(*args, **kw)."""
    return (
        args[0],
        args[1] if len(args) > 1 else kw["method"],
        args[2] if len(args) > 2 else kw["url"],
    )


def _add(collector: Any, seconds: float, pool: Any, method: Any, url: Any, response: Any) -> None:
    try:
        status = response.status
        if _absolute(url):
            _url_timers.add_origin(collector, seconds, method, url, status)
        else:
            _pool_timers.add(
                collector, seconds, (method, pool.host, pool.port, pool.scheme, status)
            )
    except Exception:
        internal_error("cannot tag an HTTP call's timer", False)


# The hooks call these on failure, not lambdas of their own: compiled, a
# lambda in a hook makes its locals a closure, allocated on every call.
def _add_failed(collector: Any, seconds: float, pool: Any, method: Any, url: Any) -> None:
    add_failed_timer(collector, seconds, lambda: _failed_values(pool, method, url))


def _add_failed_any(
    collector: Any, seconds: float, args: tuple[Any, ...], kw: dict[str, Any]
) -> None:
    add_failed_timer(collector, seconds, lambda: _failed_values(*_call_of(args, kw)))


def _failed_values(pool: Any, method: Any, url: Any) -> tuple[str, ...]:
    if _absolute(url):
        return values(method, origin_host(url), ERROR)
    return values(method, _pool_host(pool.host, pool.port, pool.scheme), ERROR)


def instrument() -> None:
    """Time the requests of every urllib3 connection pool (idempotent)."""
    if _patches.applied:
        return
    import urllib3

    _patches.replace(urllib3.HTTPConnectionPool, "urlopen", _pool_hook)


def uninstrument() -> None:
    """Put urllib3 back as it was (idempotent)."""
    _patches.undo()

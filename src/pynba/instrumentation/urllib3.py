"""urllib3: each request of a ``PoolManager`` or a connection pool, one timer (``group=http``).

``PoolManager.urlopen`` (``urllib3.request()``, ``ProxyManager``) and
``HTTPConnectionPool.urlopen`` (a pool used directly, and the pools of a
pool manager) are hooked; the outermost call is timed, its redirects and
retries included. A response read later (``preload_content=False``) is
timed to its headers. Tags: see ``_http_client``.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any

from ..context import current_collector
from ..errors import internal_error
from ._hooks import Patches
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


_manager_timers = CallTimers(origin_values)
_pool_timers = CallTimers(_pool_values)


def _manager_hook(urlopen: Callable[..., Any]) -> Callable[..., Any]:
    # PoolManager.urlopen's parameters up to the URL (the rest go on as
    # they came): the method and the URL are at hand.
    def timed_urlopen(self: Any, method: Any, url: Any, *args: Any, **kw: Any) -> Any:
        collector = current_collector()
        if collector is None or not collector.enabled:
            return urlopen(self, method, url, *args, **kw)
        in_call = IN_CALL.__dict__  # this thread's
        if in_call.get("active"):
            return urlopen(self, method, url, *args, **kw)
        in_call["active"] = True
        start = perf_counter()
        try:
            response = urlopen(self, method, url, *args, **kw)
        except BaseException:
            seconds = perf_counter() - start
            in_call["active"] = False
            _add_failed_manager_call(collector, seconds, method, url)
            raise
        seconds = perf_counter() - start
        in_call["active"] = False
        _manager_timers.add_origin(collector, seconds, method, url, response.status)
        return response

    return timed_urlopen


def _add_failed_manager_call(collector: Any, seconds: float, method: Any, url: Any) -> None:
    add_failed_timer(collector, seconds, lambda: values(method, origin_host(url), ERROR))


def _pool_hook(urlopen: Callable[..., Any]) -> Callable[..., Any]:
    # (*args, **kw): under a pool manager's call, the common case, the call
    # goes on as it came, its arguments not packed again.
    def timed_urlopen(*args: Any, **kw: Any) -> Any:
        collector = current_collector()
        if collector is None or not collector.enabled:
            return urlopen(*args, **kw)
        in_call = IN_CALL.__dict__
        if in_call.get("active"):  # a call of a pool manager's, or a retry
            return urlopen(*args, **kw)
        in_call["active"] = True
        start = perf_counter()
        try:
            response = urlopen(*args, **kw)
        except BaseException:
            seconds = perf_counter() - start
            in_call["active"] = False
            _add_failed_pool_call(collector, seconds, args, kw)
            raise
        seconds = perf_counter() - start
        in_call["active"] = False
        try:
            pool = args[0]
            method = args[1] if len(args) > 1 else kw["method"]
            key = (method, pool.host, pool.port, pool.scheme, response.status)
        except Exception:
            internal_error("cannot tag an HTTP call's timer", False)
        else:
            _pool_timers.add(collector, seconds, key)
        return response

    return timed_urlopen


def _add_failed_pool_call(
    collector: Any, seconds: float, args: tuple[Any, ...], kw: dict[str, Any]
) -> None:
    def failed_values() -> tuple[str, ...]:
        pool = args[0]
        method = args[1] if len(args) > 1 else kw["method"]
        return values(method, _pool_host(pool.host, pool.port, pool.scheme), ERROR)

    add_failed_timer(collector, seconds, failed_values)


def instrument() -> None:
    """Time the requests of every urllib3 pool and pool manager (idempotent)."""
    if _patches.applied:
        return
    import urllib3

    _patches.replace(urllib3.PoolManager, "urlopen", _manager_hook)
    _patches.replace(urllib3.HTTPConnectionPool, "urlopen", _pool_hook)


def uninstrument() -> None:
    """Put urllib3 back as it was (idempotent)."""
    _patches.undo()

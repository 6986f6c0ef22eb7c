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
from typing import Any
from weakref import KeyedRef

from ..errors import internal_error
from ._hooks import Patches, timed_calls
from ._http_client import (
    ERROR,
    IN_CALL,
    CallTimers,
    add_failed_timer,
    enabled,
    host_tag,
    origin_host,
    origin_values,
    status_class,
    values,
)

__all__ = ["instrument", "uninstrument"]

_patches = Patches()
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _pool_values(key: tuple[Any, str, Any]) -> tuple[str, ...]:
    method, host, status = key
    return values(method, host, status_class(status))


def _pool_host(host: Any, port: Any, scheme: Any) -> str:
    return host_tag(host, None if port == _DEFAULT_PORTS.get(scheme) else port)


# The host tag of each pool timed, by its id: (a weak reference to the pool,
# keyed by that id, and the tag). Read from the pool's host, port and scheme
# the first time: three attribute reads on every call cost about 1,000
# instructions, when urllib3's own work had pushed them out of the
# interpreter's method cache. Urllib3 sets them when it makes a pool.
_pool_tags: dict[int, tuple[KeyedRef, str]] = {}
# At most this many pools' at once: those of a process that keeps more
# alive have their tags made on every call.
_POOLS_MAX = 4096


def _pools_kept() -> int:
    """How many pools' host tags are kept (``_pool_tags``), for the tests of its bound."""
    return len(_pool_tags)


def _forget_pool(ref: KeyedRef) -> None:
    # Called as a pool is freed: its id may be another pool's next.
    entry = _pool_tags.get(ref.key)
    if entry is not None and entry[0] is ref:
        _pool_tags.pop(ref.key, None)


def _pool_tag(pool: Any) -> str:
    """The ``host`` tag of a pool's calls (see ``_pool_tags``)."""
    key = id(pool)
    entry = _pool_tags.get(key)
    if entry is not None and entry[0]() is pool:
        return entry[1]
    tag = _pool_host(pool.host, pool.port, pool.scheme)
    if len(_pool_tags) < _POOLS_MAX:
        try:
            _pool_tags[key] = (KeyedRef(pool, _forget_pool, key), tag)
        except TypeError:  # an object that takes no weak reference
            pass
    return tag


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


def _pool_hook(urlopen: Callable[..., Any]) -> Callable[..., Any]:
    return timed_calls(urlopen, enabled, _done, _failed, _PICKS, IN_CALL)


# Where the hook finds, in the arguments of HTTPConnectionPool.urlopen, what
# a call's tags are made of: a PoolManager passes the method and the URL by
# position, requests' adapter by keyword.
_PICKS = ((0, "self"), (1, "method"), (2, "url"))


def _done(collector: Any, seconds: float, pool: Any, method: Any, url: Any, response: Any) -> None:
    _add(collector, seconds, pool, method, url, response)


def _failed(collector: Any, seconds: float, pool: Any, method: Any, url: Any) -> None:
    add_failed_timer(collector, seconds, lambda: _failed_values(pool, method, url))


def _add(collector: Any, seconds: float, pool: Any, method: Any, url: Any, response: Any) -> None:
    try:
        status = response.status
        if _absolute(url):
            _url_timers.add_origin(collector, seconds, method, url, status)
        else:
            _pool_timers.add(collector, seconds, (method, _pool_tag(pool), status))
    except Exception:
        internal_error("cannot tag an HTTP call's timer", False)


def _failed_values(pool: Any, method: Any, url: Any) -> tuple[str, ...]:
    if _absolute(url):
        return values(method, origin_host(url), ERROR)
    return values(method, _pool_tag(pool), ERROR)


def instrument() -> None:
    """Time the requests of every urllib3 connection pool (idempotent)."""
    if _patches.applied:
        return
    import urllib3

    _patches.replace(urllib3.HTTPConnectionPool, "urlopen", _pool_hook)


def uninstrument() -> None:
    """Put urllib3 back as it was (idempotent)."""
    _patches.undo()

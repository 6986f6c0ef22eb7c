"""urllib3: each request of a ``PoolManager`` or a connection pool, one timer (``group=http``).

``PoolManager.urlopen`` (``urllib3.request()``, ``ProxyManager``) and
``HTTPConnectionPool.urlopen`` (a pool used directly, and the pools of a
pool manager) are hooked; the outermost call is timed, its redirects and
retries included. A response read later (``preload_content=False``) is
timed to its headers. Tags: see ``_http_client``.
"""

from __future__ import annotations

from typing import Any

from ._hooks import Patches
from ._http_client import host_tag, origin, origin_values, sync_hook, values

__all__ = ["instrument", "uninstrument"]

_patches = Patches()
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _method(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[1] if len(args) > 1 else kwargs["method"]


def _manager_key(args: tuple[Any, ...], kwargs: dict[str, Any], status: str) -> tuple[Any, ...]:
    return _method(args, kwargs), origin(args[2] if len(args) > 2 else kwargs["url"]), status


def _pool_key(args: tuple[Any, ...], kwargs: dict[str, Any], status: str) -> tuple[Any, ...]:
    pool = args[0]
    return _method(args, kwargs), pool.host, pool.port, pool.scheme, status


def _pool_values(key: tuple[Any, str, int | None, str, str]) -> tuple[str, ...]:
    method, host, port, scheme, status = key
    return values(
        method, host_tag(host, None if port == _DEFAULT_PORTS.get(scheme) else port), status
    )


def instrument() -> None:
    """Time the requests of every urllib3 pool and pool manager (idempotent)."""
    if _patches.applied:
        return
    import urllib3

    manager_hook = sync_hook(_manager_key, origin_values, "status", True)
    _patches.replace(urllib3.PoolManager, "urlopen", manager_hook)
    _patches.replace(
        urllib3.HTTPConnectionPool, "urlopen", sync_hook(_pool_key, _pool_values, "status", True)
    )


def uninstrument() -> None:
    """Put urllib3 back as it was (idempotent)."""
    _patches.undo()

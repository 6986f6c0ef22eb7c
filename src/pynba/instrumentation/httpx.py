"""httpx: each request a ``Client`` or ``AsyncClient`` sends, one timer (``group=http``).

``Client.send`` and ``AsyncClient.send`` are hooked: every request of a
client goes through them once (``get()``, ``request()``, ``stream()``...),
the redirects it follows and its authentication round trips included. A
streamed response (``stream()``, ``send(stream=True)``) is timed to its
headers; any other to its whole body. Tags: see ``_http_client``.
"""

from __future__ import annotations

from typing import Any

from ._hooks import Patches
from ._http_client import async_hook, host_tag, sync_hook, values

__all__ = ["instrument", "uninstrument"]

_patches = Patches()


def _key(args: tuple[Any, ...], kwargs: dict[str, Any], status: str) -> tuple[Any, ...]:
    request = args[1] if len(args) > 1 else kwargs["request"]
    url = request.url
    # httpx's URL: the host in lower case, the port None when the scheme's default.
    return request.method, url.host, url.port, status


def _values(key: tuple[str, str, int | None, str]) -> tuple[str, ...]:
    method, host, port, status = key
    return values(method, host_tag(host, port), status)


def instrument() -> None:
    """Time the requests of every httpx client (idempotent)."""
    if _patches.applied:
        return
    import httpx

    # httpx calls no client from inside a client: its hooks need not look for nested calls.
    _patches.replace(httpx.Client, "send", sync_hook(_key, _values, "status_code", False))
    _patches.replace(httpx.AsyncClient, "send", async_hook(_key, _values, "status_code"))


def uninstrument() -> None:
    """Put httpx back as it was (idempotent)."""
    _patches.undo()

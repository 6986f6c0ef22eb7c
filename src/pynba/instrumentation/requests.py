"""requests: each request a ``Session`` sends, one timer (``group=http``).

``Session.send`` is hooked: ``requests.get()`` and every other call go
through it, and so do the redirects it follows, which are part of the
first call's timer. A streamed response (``stream=True``) is timed to its
headers; any other to its whole body. With urllib3 instrumented too, a
requests call stays one timer. Tags: see ``_http_client``.
"""

from __future__ import annotations

from typing import Any

from ._hooks import Patches
from ._http_client import origin, origin_values, sync_hook

__all__ = ["instrument", "uninstrument"]

_patches = Patches()


def _key(args: tuple[Any, ...], kwargs: dict[str, Any], status: str) -> tuple[Any, ...]:
    request = args[1] if len(args) > 1 else kwargs["request"]
    return request.method, origin(request.url), status


def instrument() -> None:
    """Time the requests of every requests session (idempotent)."""
    if _patches.applied:
        return
    import requests

    _patches.replace(requests.Session, "send", sync_hook(_key, origin_values, "status_code", True))


def uninstrument() -> None:
    """Put requests back as it was (idempotent)."""
    _patches.undo()

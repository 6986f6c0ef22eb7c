"""Pyramid (and WebOb applications): one Pinba packet per request, named after its route.

::

    from pynba.pyramid import monitor

    app = monitor(config.make_wsgi_app(), "127.0.0.1:30002")

The Pyramid application is wrapped in ``PynbaMiddleware`` (see
``pynba.wsgi``). ``script_name`` is the pattern of the route that matched
(``/users/{id}``) or, with ``script_name="name"``, the route's name; a
request no route matched (a 404 whatever its path, or a request served by
traversal alone) is reported under ``unmatched_name`` (``"<unmatched>"``),
never its path, which the visitor chose. Options left unset are
read from the application's settings (``pinba.server``, ``pinba.enabled``,
``pinba.prefix``, ...: the environment variable names of ``pynba.config``
in lower case, ``PINBA_`` spelt ``pinba.``), then from the environment.
Any other WSGI application (a plain WebOb one, say) is monitored as with
``PynbaMiddleware``, its script name being its path (within ``name_limit``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pyramid.interfaces import IBeforeTraversal  # type: ignore[import-untyped]

from ._http import ROUTE_KEY, recorded_route
from .config import resolve
from .wsgi import PynbaMiddleware

__all__ = ["monitor"]

_SCRIPT_NAMES = ("pattern", "name")


class _PyramidSettings:
    """Pyramid's ``pinba.*`` settings, looked up as ``pynba.config`` asks (``PINBA_SERVER``)."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self._settings = settings

    def get(self, key: str, default: Any = None) -> Any:
        return self._settings.get("pinba." + key[len("PINBA_") :].lower(), default)


def monitor(
    app: Callable,
    address: Any = None,
    *,
    script_name: str = "pattern",
    tags: Mapping[str, Any] | None = None,
    **options: Any,
) -> PynbaMiddleware:
    """Monitor a Pyramid application (the router ``make_wsgi_app()`` returns).

    Options as for ``PynbaMiddleware`` (``prefix``, ``server_name``,
    ``hostname``, ``enabled``, ``raise_on_fail``, ``timer_rusage``,
    ``memory_footprint``, ``pinboard``, ``unmatched_name``, ``name_limit``,
    ``server_names``, ``instrument``), plus ``script_name``: ``"pattern"``
    (the default) or ``"name"``.
    """
    if script_name not in _SCRIPT_NAMES:
        raise ValueError(f'script_name must be "pattern" or "name", not {script_name!r}')
    registry = getattr(app, "registry", None)
    settings = getattr(registry, "settings", None)
    config = resolve(
        address,
        settings=_PyramidSettings(settings) if settings is not None else None,
        **options,
    )
    namer = None
    if registry is not None:
        attribute = script_name
        namer = recorded_route

        def record_route(event: Any) -> None:
            # Routes are matched before traversal: record the route now, the
            # packet is made once the response has been sent.
            request = event.request
            route = request.__dict__.get("matched_route")
            if route is not None:
                request.environ[ROUTE_KEY] = getattr(route, attribute)

        registry.registerHandler(record_route, (IBeforeTraversal,))
    return PynbaMiddleware(app, config.address, tags=tags, script_name=namer, **config.options())

"""Flask: one Pinba packet per request, named after the URL rule that served it.

::

    from pynba.flask import Pynba

    app = Flask(__name__)
    Pynba(app, "127.0.0.1:30002")  # or Pynba() now and .init_app(app) later

The application's WSGI callable is wrapped in ``PynbaMiddleware`` (see
``pynba.wsgi``), so the request is timed until the server has sent the
whole response and ``pynba`` timers work in views and in streamed
responses. ``script_name`` is the rule (``/users/<int:user_id>``) or, with
``script_name="endpoint"``, the endpoint (``users.detail``); a request no
rule matched (a 404, whatever its path) is reported under ``unmatched_name``
(``"<unmatched>"``), never its path, which the visitor chose. Options left
unset are read from ``app.config`` (``PINBA_SERVER``, ``PINBA_ENABLED``,
...), then from the environment (see ``pynba.config``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, request, request_started

from ._http import ROUTE_KEY, recorded_route
from .config import resolve
from .wsgi import PynbaMiddleware

__all__ = ["Pynba", "init_app"]

_SCRIPT_NAMES = ("rule", "endpoint")


class Pynba:
    """Monitors a Flask application: ``Pynba(app, address, **options)``.

    Options as for ``PynbaMiddleware`` (``prefix``, ``tags``,
    ``server_name``, ``hostname``, ``enabled``, ``raise_on_fail``,
    ``timer_rusage``, ``memory_footprint``, ``pinboard``,
    ``unmatched_name``, ``name_limit``, ``server_names``, ``instrument``),
    plus ``script_name``: ``"rule"`` (the default) or ``"endpoint"``.
    """

    def __init__(
        self,
        app: Flask | None = None,
        address: Any = None,
        *,
        script_name: str = "rule",
        tags: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        if script_name not in _SCRIPT_NAMES:
            raise ValueError(f'script_name must be "rule" or "endpoint", not {script_name!r}')
        self.address = address
        self.script_name = script_name
        self.tags = tags
        self.options = options
        self.middleware: PynbaMiddleware | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> PynbaMiddleware:
        """Wrap ``app.wsgi_app``; returns the middleware (also in ``app.extensions["pynba"]``)."""
        if not isinstance(app, Flask):
            raise TypeError(f"app must be a Flask application, not {type(app).__name__}")
        config = resolve(self.address, settings=app.config, **self.options)
        middleware = PynbaMiddleware(
            app.wsgi_app,
            config.address,
            tags=self.tags,
            script_name=recorded_route,
            **config.options(),
        )
        app.wsgi_app = middleware  # type: ignore[method-assign]
        request_started.connect(self._record_route, app, weak=False)
        app.extensions["pynba"] = middleware
        self.middleware = middleware
        return middleware

    def _record_route(self, sender: Flask, **extra: Any) -> None:
        # Read now: by the time the response has been sent the request
        # context is gone.
        rule = request.url_rule
        if rule is not None:
            name = rule.rule if self.script_name == "rule" else rule.endpoint
            request.environ[ROUTE_KEY] = name


def init_app(app: Flask, address: Any = None, **options: Any) -> PynbaMiddleware:
    """Monitor ``app``: ``init_app(app, "127.0.0.1:30002")``; returns the middleware."""
    return Pynba(address=address, **options).init_app(app)

"""What the HTTP integrations share (``wsgi``, ``asgi``, ``django``, ``flask``, ``pyramid``).

- ``HTTPOptions``: the options every HTTP middleware takes, listed once;
- ``Monitoring``: a middleware's configuration, resolved, and the script
  and server names a request is reported under when the application sets
  none (a route, the unmatched name, a path, the ``Host`` header: see
  ``pynba.names``); ``MonitoredMiddleware``, the base of the middlewares
  that hold one (the compiled WSGI one holds typed copies instead);
- ``content_length()``: the ``Content-Length`` of a response;
- the status of a failed request, and of one whose client went away.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypedDict

from .config import resolve
from .names import ClientNames

if TYPE_CHECKING:
    from .config import Settings
    from .reporter import Reporter

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "FAILED_STATUS",
    "ROUTE_KEY",
    "HTTPOptions",
    "Monitoring",
    "MonitoredMiddleware",
    "content_length",
    "recorded_route",
]

#: The status of a request whose application failed.
FAILED_STATUS = 500
#: The status of a request whose client went away before the response ended
#: (nginx's "client closed request").
CLIENT_CLOSED_REQUEST = 499
#: Where framework integrations (Flask, Pyramid) leave the matched route in the WSGI environ.
ROUTE_KEY = "pynba.route"


class HTTPOptions(TypedDict, total=False):
    """The options of every HTTP middleware but ``address`` (see ``pynba.config``).

    Each left unset (None) is read from the framework's settings, then the
    environment. ``tags`` are sent with every request (callables are called
    per request); ``script_name`` names a request from the framework's
    request object (None: no route matched).
    """

    tags: Mapping[str, Any] | None
    script_name: Callable[[Any], str | None] | None
    prefix: str | None
    server_name: str | None
    hostname: str | None
    enabled: bool | None
    raise_on_fail: bool | None
    timer_rusage: bool | None
    memory_footprint: bool | None
    pinboard: bool | None
    unmatched_name: str | None
    name_limit: int | None
    server_names: Iterable[str] | str | None
    instrument: Iterable[str] | str | None


class Monitoring:
    """What an HTTP middleware was configured with, and the names it reports requests under.

    ``settings`` are every request's (its ``reporter`` among them);
    ``script_name`` is the callable that names a request (None: the
    middleware's own way). A request the application names nothing is
    reported under ``prefix`` + a route's name, ``unmatched_name`` or its
    path (``route()``, ``path()``), and under ``server()``: the configured
    ``server_name``, else the ``Host`` header's.
    """

    __slots__ = (
        "settings",
        "enabled",
        "script_name",
        "prefix",
        "server_name",
        "unmatched_name",
        "host_names",
        "path_names",
    )

    def __init__(
        self,
        address: Any,
        options: HTTPOptions,
        source: str = "the request",
        settings: Settings | None = None,
    ) -> None:
        """``source`` says what ``script_name`` takes (``"the WSGI environ"``...);
        ``settings`` are the framework's (see ``pynba.config.resolve``)."""
        options = options.copy()
        tags = options.pop("tags", None)
        script_name = options.pop("script_name", None)
        if script_name is not None and not callable(script_name):
            raise TypeError(f"script_name must be a callable taking {source}")
        config = resolve(address, settings=settings, **options)
        config.instrument_libraries()
        self.settings = config.collector_settings(tags)
        self.enabled = bool(config.enabled)
        self.script_name = script_name
        self.prefix: str = config.prefix
        self.server_name: str | None = config.server_name
        self.unmatched_name: str = config.unmatched_name
        reporter = self.settings.reporter
        self.host_names = ClientNames.hosts(reporter, config.name_limit, config.server_names)
        self.path_names = ClientNames.paths(reporter, config.name_limit)

    @property
    def reporter(self) -> Reporter:
        return self.settings.reporter

    def route(self, name: str | None) -> str:
        """The script name of a request a router named ``name`` (None: no route matched)."""
        return self.prefix + (self.unmatched_name if name is None else name)

    def path(self, path: str) -> str:
        """The script name of a request known by its path alone (see ``ClientNames``)."""
        return self.prefix + self.path_names.name(path)

    def server(self, host: str | None, fallback: str) -> str:
        """The configured server name, else the ``Host`` header's, else ``fallback``."""
        if self.server_name is not None:
            return self.server_name
        if host:
            return self.host_names.name(host)
        return fallback


class MonitoredMiddleware:
    """The base of the ASGI and Django middlewares: what they were configured with."""

    def __init__(self, monitoring: Monitoring) -> None:
        self.monitoring = monitoring
        #: The reporter of the middleware's requests.
        self.reporter = monitoring.reporter
        #: Whether requests are reported (else they run unmeasured).
        self.enabled = monitoring.enabled


def recorded_route(environ: Mapping[str, Any]) -> str | None:
    """The route an integration recorded under ``ROUTE_KEY``; None when no route matched."""
    return environ.get(ROUTE_KEY)


def content_length(headers: Iterable[tuple[Any, Any]], name: str | bytes = "content-length") -> int:
    """The ``Content-Length`` of ``headers`` (pairs; ``name`` in lower case and of their type).

    0 without one, or with one that is not a number.
    """
    try:
        for key, value in headers:
            if key.lower() == name:
                return max(int(value), 0)
    except Exception:  # headers the server will refuse itself
        return 0
    return 0

"""What the HTTP integrations share (``wsgi``, ``asgi``, ``django``, ``flask``, ``pyramid``).

- ``HTTPOptions``: the options every HTTP middleware takes, listed once;
- ``RequestNames``: the script and server names a request is reported
  under when the application sets none (a route, the unmatched name, a
  path, the ``Host`` header: see ``pynba.names``);
- ``content_length()``: the ``Content-Length`` of a response;
- the status of a failed request, and of one whose client went away.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypedDict

from .names import ClientNames

if TYPE_CHECKING:
    from .config import Config
    from .reporter import Reporter

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "FAILED_STATUS",
    "ROUTE_KEY",
    "HTTPOptions",
    "RequestNames",
    "check_middleware_arguments",
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
    """The options of every HTTP middleware but ``address``, ``tags`` and ``script_name``.

    Each left unset (None) is read from the framework's settings, then the
    environment (see ``pynba.config``).
    """

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


def check_middleware_arguments(app: Any, script_name: Any, app_kind: str, source: str) -> None:
    """TypeError unless ``app`` is callable and ``script_name`` None or callable.

    ``app_kind`` and ``source`` say what they should be in the message:
    ``"a WSGI application"``, ``"the WSGI environ"``.
    """
    if not callable(app):
        raise TypeError(f"app must be {app_kind}, not {type(app).__name__}")
    if script_name is not None and not callable(script_name):
        raise TypeError(f"script_name must be a callable taking {source}")


class RequestNames:
    """The names a middleware reports a request under when the application sets none.

    ``prefix`` goes before every script name; ``server_name`` is the
    configured server name (None: the ``Host`` header's, through
    ``host_names``); ``path_names`` bounds the paths reported.
    """

    __slots__ = ("prefix", "server_name", "unmatched_name", "host_names", "path_names")

    def __init__(self, config: Config, reporter: Reporter) -> None:
        self.prefix: str = config.prefix
        self.server_name: str | None = config.server_name
        self.unmatched_name: str = config.unmatched_name
        self.host_names = ClientNames.hosts(reporter, config.name_limit, config.server_names)
        self.path_names = ClientNames.paths(reporter, config.name_limit)

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

"""The ASGI middleware: one Pinba packet per HTTP request (ASGI 3).

Lifespan and websocket connections are passed through untouched. An HTTP
request starts when the server calls the application. Its response ends
when the application sends the last part of it (the body message without
``more_body``, or the last trailers when it announced trailers):
``request_time`` and the CPU times are measured there. The packet is sent
when the application call returns or raises, so that it also carries the
timers of work the request started that still runs in that call after the
response (Starlette's and FastAPI's ``BackgroundTasks``): that work adds
its timers, not its time, to the request. What the packet carries, unless
the application sets it through ``pynba`` during the request:

- ``script_name``: ``prefix`` + ``script_name(scope)`` when that callable is
  configured (``prefix`` + ``unmatched_name`` when it returns None), else
  ``prefix`` + the template of the route that served the request when the
  framework's router recorded it in the scope (Starlette and FastAPI:
  ``/users/{id}``, mounts included), else ``prefix`` + ``unmatched_name``
  (``"<unmatched>"``) when a router ran but no route matched (a 404, never
  reported under the path the visitor chose), else ``prefix`` + the path,
  as long as fewer than ``name_limit`` distinct paths were seen
  (``"<other>"`` past it: see ``pynba.names``);
- ``server_name``: the ``Host`` header normalised (``pynba.names``: lower
  case, no port, within ``name_limit`` or ``server_names``), else the
  server's address; ``schema``: the scope's ``scheme``;
- ``status``: from ``http.response.start``; 500 when the application
  raises or returns before completing the response, 499 when the client
  went away first (``http.disconnect``, a send that failed, or the
  application's task cancelled: the server dropped the connection or shuts
  down). An error in the work after a complete response leaves its status;
- ``document_size``: the bytes of the body messages (of the file's
  ``Content-Length`` for ``http.response.pathsend``).

A body that is not bytes reaches the server as it is: the server's own
error goes back to the application, as it would without pynba.

The request is the current one in the middleware's context, so
``pynba.timer(...)`` works in handlers, in the tasks they start or await
and in sync handlers the framework runs in a thread pool (which copy the
context).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from ._http import (
    CLIENT_CLOSED_REQUEST,
    FAILED_STATUS,
    MonitoredMiddleware,
    Monitoring,
    content_length,
)
from .collector import RequestCollector
from .context import DISABLED, activate, deactivate
from .errors import internal_error

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._http import HTTPOptions

__all__ = ["PynbaASGIMiddleware", "route_template"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: An application call that raises one of these before the response ended
#: lost its client (a failed send, the server cancelling the task).
_CLIENT_GONE = (OSError, asyncio.CancelledError)


def route_template(scope: Mapping[str, Any]) -> str | None:
    """The template of the route that served the request, as Starlette records it.

    ``scope["route"]`` is the innermost route matched; the path of the
    mounts it sits under is the part of ``root_path`` added since the
    application's own root (``app_root_path``). None when no route matched.
    """
    route = scope.get("route")
    if route is None:
        return None
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(template, str):
        return None
    root_path = scope.get("root_path", "")
    app_root_path = scope.get("app_root_path", "")
    mounted = root_path[len(app_root_path) :] if root_path.startswith(app_root_path) else ""
    if mounted and hasattr(route, "routes"):
        # The route is itself a mount (serving a sub-application): root_path
        # already ends with its path, which the template repeats.
        own_path = getattr(route, "path", "")
        if own_path and mounted.endswith(own_path):
            mounted = mounted[: -len(own_path)]
    return mounted + template


class PynbaASGIMiddleware(MonitoredMiddleware):
    """Monitors an ASGI application: ``PynbaASGIMiddleware(app, "127.0.0.1:30002")``.

    Options as for the WSGI ``PynbaMiddleware`` (``prefix``, ``tags``,
    ``server_name``, ``hostname``, ``enabled``, ``raise_on_fail``,
    ``timer_rusage``, ``memory_footprint``, ``pinboard``,
    ``unmatched_name``, ``name_limit``, ``server_names``, ``instrument``),
    except that a ``script_name`` callable takes the ASGI scope. With Starlette or
    FastAPI: ``app.add_middleware(PynbaASGIMiddleware, address=...)``.
    ``address`` and the options left unset are read from the environment
    (``PINBA_SERVER``, ...: see ``pynba.config``).
    """

    def __init__(self, app: ASGIApp, address: Any = None, **options: Unpack[HTTPOptions]) -> None:
        if not callable(app):
            raise TypeError(f"app must be an ASGI application, not {type(app).__name__}")
        super().__init__(Monitoring(address, options, "the ASGI scope"))
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.enabled:
            # Not reported (websocket, lifespan), or monitoring is off: code
            # shared with HTTP routes may still use pynba.timer(...).
            token = activate(DISABLED)
            try:
                await self.app(scope, receive, send)
            finally:
                deactivate(token)
            return
        try:
            request = _MonitoredRequest(self, scope, receive, send)
        except Exception:
            internal_error("cannot monitor the request", self.reporter.raise_on_fail)
            await self.app(scope, receive, send)
            return
        token = activate(request.collector)
        try:
            await self.app(scope, request.receive, request.send)
        except BaseException as error:
            request.end(error)
            raise
        else:
            request.end(None)
        finally:
            deactivate(token)

    def default_script_name(self, scope: Scope) -> str:
        """The script name reported when the application sets none."""
        monitoring = self.monitoring
        if monitoring.script_name is not None:
            return monitoring.route(monitoring.script_name(scope))
        template = route_template(scope)
        if template is not None or "router" in scope:  # Starlette's router ran
            return monitoring.route(template)
        return monitoring.path(scope.get("path", ""))

    def default_server_name(self, scope: Scope) -> str:
        """The server name reported when the application sets none."""
        server = scope.get("server")
        return self.monitoring.server(_host(scope), str(server[0]) if server else "")

    def __repr__(self) -> str:
        return f"<PynbaASGIMiddleware {self.app!r} -> {self.reporter!r}>"


class _MonitoredRequest:
    """One monitored HTTP request: watches the messages both ways."""

    __slots__ = (
        "collector",
        "_receive",
        "_send",
        "_status",
        "_headers",
        "_trailers",
        "_size",
        "_disconnected",
        "_complete",
    )

    def __init__(
        self, middleware: PynbaASGIMiddleware, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self._receive = receive
        self._send = send
        self._status = 0
        self._headers: Any = ()
        self._trailers = False
        self._size = 0
        self._disconnected = False
        self._complete = False
        self.collector = RequestCollector(
            middleware.monitoring.settings,
            None,
            middleware.default_server_name(scope),
            scope.get("scheme"),
            middleware.default_script_name,
            scope,
        )

    async def receive(self) -> Message:
        message = await self._receive()
        if not self._complete and message.get("type") == "http.disconnect":
            self._disconnected = True
        return message

    async def send(self, message: Message) -> None:
        if self._complete:
            await self._send(message)
            return
        kind = message.get("type")
        last = False
        body = None
        if kind == "http.response.start":
            self._status = message.get("status", 0)
            self._headers = message.get("headers") or ()
            self._trailers = bool(message.get("trailers"))
        elif kind == "http.response.body":
            body = message.get("body", b"")
            last = not message.get("more_body") and not self._trailers
        elif kind == "http.response.trailers":
            last = not message.get("more_trailers")
        elif kind == "http.response.pathsend":
            last = True
        try:
            await self._send(message)
        except OSError:
            self._disconnected = True
            raise
        # Counted once the server took it: a body it refuses (not bytes)
        # fails with the server's own error, not with len()'s.
        if body is not None:
            self._size += _body_size(body)
        elif kind == "http.response.pathsend":
            self._size += content_length(self._headers, b"content-length")
        if last:
            self._complete = True
            self.collector.end_response()

    def end(self, error: BaseException | None) -> None:
        """The application call returned (``error`` None) or raised: report the request."""
        if self._disconnected or (not self._complete and isinstance(error, _CLIENT_GONE)):
            status = CLIENT_CLOSED_REQUEST
        elif not self._complete:
            status = FAILED_STATUS  # the server sends a 500 (or drops the connection) in its place
        else:
            status = _status_code(self._status)
        self.collector.finish(status, self._size)


def _host(scope: Scope) -> str | None:
    """The ``Host`` header of the request (None without one)."""
    for name, value in scope.get("headers") or ():
        if name == b"host":
            return value.decode("latin-1")
    return None


def _status_code(status: Any) -> int:
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


def _body_size(body: Any) -> int:
    """The size of a body the server accepted (0 when it is not bytes)."""
    if type(body) is bytes:
        return len(body)
    if isinstance(body, bytes):
        return bytes.__len__(body)  # its own __len__ is not called: it may raise
    return 0

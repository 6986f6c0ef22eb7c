"""Django: a middleware reporting one Pinba packet per request.

Add it first in ``MIDDLEWARE`` (so that it sees the response the client
gets) and name the server in the settings::

    MIDDLEWARE = ["pynba.django.PynbaMiddleware", ...]
    PINBA_SERVER = "127.0.0.1:30002"

Settings, read when Django builds its middleware (each falls back to the
environment variable of the same name, see ``pynba.config``):
``PINBA_SERVER``, ``PINBA_ENABLED``, ``PINBA_PREFIX``, ``PINBA_HOSTNAME``,
``PINBA_SERVER_NAME``, ``PINBA_RAISE_ON_FAIL``, ``PINBA_TIMER_RUSAGE``,
``PINBA_MEMORY_FOOTPRINT``, ``PINBA_PINBOARD``, ``PINBA_UNMATCHED_NAME``,
``PINBA_NAME_LIMIT``, ``PINBA_SERVER_NAMES``, ``PINBA_INSTRUMENT`` (a
list, or a comma-separated string, of the libraries to time: see
``pynba.instrumentation``); and, settings only,
``PINBA_TAGS`` (request tags for every request) and ``PINBA_SCRIPT_NAME``:

- ``"route"`` (the default): the URL pattern that resolved the request,
  with a leading slash (``/users/<int:user_id>/``);
- ``"view"``: the view's name (``users:detail``, or its dotted path when
  the URL pattern has no name);
- a callable taking the request and returning the name (None: the
  request is reported as unmatched).

A request no URL pattern resolved (a 404 whatever its path, or a response a
middleware gave before resolution, such as a redirect) is reported under
``PINBA_UNMATCHED_NAME`` (``"<unmatched>"``), never its path, which the
visitor chose. ``server_name`` is the ``Host`` header normalised as
``pynba.names`` says (lower case, no port, within ``PINBA_NAME_LIMIT`` or
``PINBA_SERVER_NAMES``), else ``SERVER_NAME``.
``status`` and ``document_size`` come from the response; a streaming
response is reported when the server has sent it all (or closes it), and
``pynba`` timers work in the code that generates it. Works under WSGI and
ASGI (sync and async views).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings as django_settings  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]

from ._http import FAILED_STATUS, MonitoredMiddleware, Monitoring, content_length
from .collector import RequestCollector
from .context import DISABLED, DisabledCollector, activate, deactivate
from .errors import internal_error
from .reporter import Reporter

__all__ = ["PynbaMiddleware"]

_SCRIPT_NAMES = ("route", "view")


class _DjangoSettings:
    """``django.conf.settings`` seen through ``get()``, as ``pynba.config`` reads it."""

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(django_settings, key, default)


class PynbaMiddleware(MonitoredMiddleware):
    """Django middleware: ``"pynba.django.PynbaMiddleware"`` in ``MIDDLEWARE``."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        try:
            tags = getattr(django_settings, "PINBA_TAGS", None)
            super().__init__(Monitoring(None, {"tags": tags}, settings=_DjangoSettings()))
            script_name = getattr(django_settings, "PINBA_SCRIPT_NAME", "route")
            if not callable(script_name) and script_name not in _SCRIPT_NAMES:
                raise ValueError(
                    'PINBA_SCRIPT_NAME must be "route", "view" or a callable taking the request, '
                    f"not {script_name!r}"
                )
        except (TypeError, ValueError, ImportError) as error:
            raise ImproperlyConfigured(f"pynba: {error}") from error
        self.script_name = script_name

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self.__acall__(request)
        monitored = self._monitor(request)
        with monitored:
            response = self.get_response(request)
        return monitored.watch(response)

    async def __acall__(self, request: Any) -> Any:
        monitored = self._monitor(request)
        with monitored:
            response = await self.get_response(request)
        return monitored.watch(response)

    def default_script_name(self, request: Any) -> str:
        """The script name reported when the view sets none."""
        monitoring = self.monitoring
        if callable(self.script_name):
            return monitoring.route(self.script_name(request))
        match = getattr(request, "resolver_match", None)
        if match is None:
            return monitoring.route(None)
        if self.script_name == "view":
            return monitoring.route(match.view_name)
        return monitoring.route("/" + match.route)

    def default_server_name(self, request: Any) -> str:
        """The server name reported when the view sets none."""
        meta = request.META
        return self.monitoring.server(meta.get("HTTP_HOST"), meta.get("SERVER_NAME", ""))

    def _monitor(self, request: Any) -> _MonitoredRequest:
        if not self.enabled:
            return _MonitoredRequest(DISABLED, self.reporter)
        try:
            collector = RequestCollector(
                self.monitoring.settings,
                None,
                self.default_server_name(request),
                request.scheme,
                self.default_script_name,
                request,
            )
        except Exception:
            internal_error("cannot monitor the request", self.reporter.raise_on_fail)
            return _MonitoredRequest(DISABLED, self.reporter)
        return _MonitoredRequest(collector, self.reporter)


class _MonitoredRequest:
    """One request: current while the view runs (``with``), reported once its response is sent."""

    __slots__ = ("collector", "_reporter", "_token", "_status")

    def __init__(self, collector: RequestCollector | DisabledCollector, reporter: Reporter) -> None:
        self.collector = collector
        self._reporter = reporter
        self._token: Any = None
        self._status: int | None = None  # the response's, once the view returned it

    def __enter__(self) -> None:
        self._token = activate(self.collector)

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        deactivate(self._token)
        if error is not None:
            self.end(error)

    def end(self, error: BaseException | None, size: int | None = None) -> None:
        """The view or the streamed content raised ``error``, or the content ended: report."""
        self.collector.finish(FAILED_STATUS if error is not None else self._status, size)

    def watch(self, response: Any) -> Any:
        """Report ``response`` now, or once it has been streamed."""
        try:
            self._status = response.status_code
            if not response.streaming:
                self.end(None, len(response.content))
                return response
            if getattr(response, "file_to_stream", None) is None:
                content = response.streaming_content
                if response.is_async:
                    response.streaming_content = _AsyncContent(self, aiter(content))
                else:
                    response.streaming_content = _Content(self, iter(content))
            if self.collector is not DISABLED:
                self._end_on_close(response)
        except Exception:
            internal_error("cannot watch the response", self._reporter.raise_on_fail)
            self.end(None)
        return response

    def _end_on_close(self, response: Any) -> None:
        # The server closes the response when it is done with it, also when
        # it never iterated the content (a client gone, a HEAD request) or
        # handed the file to wsgi.file_wrapper.
        close = response.close

        def close_and_report() -> None:
            try:
                close()
            finally:
                # Nothing sent when the content ended the request already.
                self.end(None, content_length(response.headers.items()))

        response.close = close_and_report


class _Stream:
    """A streamed response's content; each step runs as its request, which ends with it.

    ``_Content`` is served synchronously, ``_AsyncContent`` asynchronously
    (Django tells them apart by ``iter()``).
    """

    __slots__ = ("_request", "_iterator", "_begun", "_size", "_token")

    def __init__(self, request: _MonitoredRequest, iterator: Any) -> None:
        self._request = request
        self._iterator = iterator
        self._begun = False
        self._size = 0
        self._token: Any = None

    def __enter__(self) -> None:
        # Timers in the code generating the response report into its request.
        self._begun = True
        self._token = activate(self._request.collector)

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        deactivate(self._token)
        if isinstance(error, (StopIteration, StopAsyncIteration)):
            self.close()
        elif error is not None:
            self._request.end(error, self._size)

    def _took(self, chunk: bytes) -> bytes:
        self._size += len(chunk)
        return chunk

    def close(self) -> None:
        """Django closes the response: once begun, the request ends with what was taken."""
        if self._begun:
            self._request.end(None, self._size)


class _Content(_Stream):
    __slots__ = ()

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        with self:
            chunk = next(self._iterator)
        return self._took(chunk)


class _AsyncContent(_Stream):
    __slots__ = ()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        with self:
            chunk = await anext(self._iterator)
        return self._took(chunk)

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
``PINBA_NAME_LIMIT``, ``PINBA_SERVER_NAMES``; and, settings only,
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
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured

from .collector import RequestCollector
from .config import resolve
from .context import DISABLED, activate, deactivate
from .errors import internal_error
from .names import ClientNames
from .reporter import Reporter

__all__ = ["PynbaMiddleware"]

_SCRIPT_NAMES = ("route", "view")


class _DjangoSettings:
    """``django.conf.settings`` seen through ``get()``, as ``pynba.config`` reads it."""

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(django_settings, key, default)


class PynbaMiddleware:
    """Django middleware: ``"pynba.django.PynbaMiddleware"`` in ``MIDDLEWARE``."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        try:
            config = resolve(settings=_DjangoSettings())
            script_name = getattr(django_settings, "PINBA_SCRIPT_NAME", "route")
            if not callable(script_name) and script_name not in _SCRIPT_NAMES:
                raise ValueError(
                    'PINBA_SCRIPT_NAME must be "route", "view" or a callable taking the request, '
                    f"not {script_name!r}"
                )
            self.settings = config.collector_settings(getattr(django_settings, "PINBA_TAGS", None))
        except (TypeError, ValueError) as error:
            raise ImproperlyConfigured(f"pynba: {error}") from error
        self.reporter: Reporter = self.settings.reporter
        self.enabled = config.enabled
        self.prefix = config.prefix
        self.server_name = config.server_name
        self.script_name = script_name
        self.unmatched_name = config.unmatched_name
        self.host_names = ClientNames.hosts(self.reporter, config.name_limit, config.server_names)

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self.__acall__(request)
        collector = self._begin(request)
        token = activate(collector)
        try:
            response = self.get_response(request)
        except BaseException:
            self._fail(collector)
            raise
        finally:
            deactivate(token)
        return self._watch(collector, response)

    async def __acall__(self, request: Any) -> Any:
        collector = self._begin(request)
        token = activate(collector)
        try:
            response = await self.get_response(request)
        except BaseException:
            self._fail(collector)
            raise
        finally:
            deactivate(token)
        return self._watch(collector, response)

    def default_script_name(self, request: Any) -> str:
        """The script name reported when the view sets none."""
        if callable(self.script_name):
            name = self.script_name(request)
            return self.prefix + (self.unmatched_name if name is None else name)
        match = getattr(request, "resolver_match", None)
        if match is None:
            return self.prefix + self.unmatched_name
        if self.script_name == "view":
            return self.prefix + match.view_name
        return self.prefix + "/" + match.route

    def default_server_name(self, request: Any) -> str:
        """The server name reported when the view sets none."""
        if self.server_name is not None:
            return self.server_name
        meta = request.META
        host = meta.get("HTTP_HOST")
        if host:
            return self.host_names.name(host)
        return meta.get("SERVER_NAME", "")

    # -- one request ---------------------------------------------------------

    def _begin(self, request: Any) -> Any:
        if not self.enabled:
            return DISABLED
        try:
            return RequestCollector(
                self.settings,
                None,
                self.default_server_name(request),
                request.scheme,
                self.default_script_name,
                request,
            )
        except Exception:
            internal_error("cannot monitor the request", self.reporter.raise_on_fail)
            return DISABLED

    def _fail(self, collector: Any) -> None:
        if collector is DISABLED:
            return
        if collector._status is None:
            collector._status = 500
        collector.finish()

    def _watch(self, collector: Any, response: Any) -> Any:
        """Report ``response`` now, or when it has been streamed."""
        try:
            if collector is not DISABLED and collector._status is None:
                collector._status = response.status_code
            if not response.streaming:
                if collector is not DISABLED:
                    if collector._document_size is None:
                        collector._document_size = len(response.content)
                    collector.finish()
                return response
            if getattr(response, "file_to_stream", None) is None:
                content = response.streaming_content
                if response.is_async:
                    response.streaming_content = self._async_content(collector, content)
                else:
                    response.streaming_content = self._content(collector, content)
            if collector is not DISABLED:
                self._finish_on_close(collector, response)
        except Exception:
            internal_error("cannot watch the response", self.reporter.raise_on_fail)
            if collector is not DISABLED:
                collector.finish()
        return response

    def _content(self, collector: Any, content: Any) -> Iterator[bytes]:
        # The context is set around each step so that timers in the code
        # generating the response report into this request.
        iterator = iter(content)
        size = 0
        try:
            while True:
                token = activate(collector)
                try:
                    chunk = next(iterator)
                except StopIteration:
                    return
                except BaseException:
                    self._mark_failed(collector)
                    raise
                finally:
                    deactivate(token)
                size += len(chunk)
                yield chunk
        finally:
            self._end_stream(collector, size)

    async def _async_content(self, collector: Any, content: Any) -> AsyncIterator[bytes]:
        iterator = aiter(content)
        size = 0
        try:
            while True:
                token = activate(collector)
                try:
                    chunk = await anext(iterator)
                except StopAsyncIteration:
                    return
                except BaseException:
                    self._mark_failed(collector)
                    raise
                finally:
                    deactivate(token)
                size += len(chunk)
                yield chunk
        finally:
            self._end_stream(collector, size)

    def _mark_failed(self, collector: Any) -> None:
        if collector is not DISABLED and not collector.finished:
            collector._status = 500

    def _end_stream(self, collector: Any, size: int) -> None:
        if collector is DISABLED or collector.finished:
            return
        if collector._document_size is None:
            collector._document_size = size
        collector.finish()

    def _finish_on_close(self, collector: RequestCollector, response: Any) -> None:
        # The server closes the response when it is done with it, also when
        # it never iterated the content (a client gone, a HEAD request) or
        # handed the file to wsgi.file_wrapper.
        close = response.close

        def close_and_report() -> None:
            try:
                close()
            finally:
                if not collector.finished:
                    if collector._document_size is None:
                        collector._document_size = _content_length(response)
                    collector.finish()

        response.close = close_and_report


def _content_length(response: Any) -> int:
    try:
        return max(int(response.headers.get("Content-Length", 0)), 0)
    except (TypeError, ValueError):
        return 0

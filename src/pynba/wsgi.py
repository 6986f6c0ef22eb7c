"""The WSGI middleware: one Pinba packet per request.

The request starts when the server calls the application and ends when it
calls ``close()`` on the response (PEP 3333), so ``request_time`` covers
streaming. What the packet carries, unless the application sets it through
``pynba`` during the request:

- ``script_name``: ``prefix`` + ``script_name(environ)`` when that callable
  is configured (called at the end of the request, so it can read what the
  framework's router left in ``environ``; ``prefix`` + ``unmatched_name``
  when it returns None: no route matched), else ``prefix`` + ``SCRIPT_NAME``
  + ``PATH_INFO`` decoded as UTF-8 (PEP 3333 hands them over as latin-1),
  without the query string, as long as fewer than ``name_limit`` distinct
  paths were seen (``"<other>"`` past it: see ``pynba.names``). A name the
  application assigns is sent as is;
- ``server_name``: the ``Host`` header normalised (``pynba.names``: lower
  case, no port, within ``name_limit`` or ``server_names``), else
  ``SERVER_NAME``; ``schema``: ``wsgi.url_scheme``;
- ``status``: from ``start_response`` (its last call, so a call with
  ``exc_info`` counts); 500 when the application raises, while it is called
  or while its response is iterated or closed (the exception propagates
  unchanged), or when its body holds something other than bytes (the server
  fails the response with its own error); 499 (nginx's "client closed
  request") when the server closes a streamed body before its end: the
  client went away. A list or tuple body is complete by construction;
- ``document_size``: the bytes of the response body the server took (plus
  any given to ``write()``). A ``wsgi.file_wrapper`` response is handed to
  the server untouched, so that it can use ``sendfile``: its size is then
  taken from the ``Content-Length`` header (0 without one).

A server or test client that never calls ``close()`` (Werkzeug's and
Flask's test clients, unless the response is closed) does not lose the
request: its packet is sent when the response is freed, and counted in the
reporter's ``stats["unclosed"]``. Nothing is sent for a response still
open at interpreter shutdown.

An error inside pynba never reaches the application: it is logged to the
``pynba`` logger, unless ``raise_on_fail`` is set.
"""

from __future__ import annotations

import functools
import sys
import types
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ._http import CLIENT_CLOSED_REQUEST, FAILED_STATUS, Monitoring, content_length
from ._implementation import check_self_types, wrong_self
from .collector import Namer, RequestCollector, logger
from .context import DISABLED, activate, current_collector, deactivate
from .errors import internal_error
from .reporter import Reporter

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._http import HTTPOptions

__all__ = ["PynbaMiddleware", "monitor"]

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]


class PynbaMiddleware:
    """Monitors a WSGI application: ``PynbaMiddleware(app, ("127.0.0.1", 30002))``.

    ``address`` is whatever ``Reporter`` takes, or a ``Reporter`` to share.
    Options: ``prefix`` (prepended to default script names), ``tags`` (request
    tags for every request; callables are called per request), ``script_name``
    (a callable ``environ -> str``, e.g. to report route templates),
    ``server_name`` (a fixed server name), ``unmatched_name`` (the script
    name when ``script_name`` returns None), ``name_limit`` (distinct Host
    names and paths reported, each), ``server_names`` (the Host names
    reported, any other being ``"<other>"``), ``hostname``, ``enabled`` (False:
    the application is called directly and ``pynba`` timers do nothing),
    ``raise_on_fail``, ``timer_rusage`` (CPU time per timer: two
    ``getrusage`` calls per timer run), ``memory_footprint`` (resident
    memory at the end of each request: a file read per request),
    ``pinboard`` (tag every timer with ``__hostname`` and ``__server_name``)
    and ``instrument`` (the libraries to time automatically, turned on now:
    see ``pynba.instrumentation``).
    ``address`` and the options left unset are read from the environment
    (``PINBA_SERVER``, ``PINBA_ENABLED``, ...: see ``pynba.config``).
    """

    def __init__(self, app: WSGIApp, address: Any = None, **options: Unpack[HTTPOptions]) -> None:
        if not callable(app):
            raise TypeError(f"app must be a WSGI application, not {type(app).__name__}")
        self.app = app
        monitoring = Monitoring(address, options, "the WSGI environ")
        self.monitoring = monitoring
        self.reporter: Reporter = monitoring.reporter
        self.enabled = monitoring.enabled
        # What each request reads, typed here: compiled, C reads where the
        # lookups through monitoring cost ~150 instructions (1% of a request).
        self.settings = monitoring.settings
        # Looked up first; the monitoring's Python calls on a miss.
        self._known_hosts = monitoring.host_names.known
        #: The namer of its requests' collectors (see ``default_script_name``).
        self.script_namer = _ScriptNamer(monitoring)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if not self.enabled:
            if current_collector() is None:
                # Left in place on purpose: the response may be iterated after
                # this returns, and its timers must still find "disabled".
                activate(DISABLED)
            return self.app(environ, start_response)
        try:
            request = _MonitoredRequest.begin(self, environ, start_response)
        except Exception:
            internal_error("cannot monitor the request", self.reporter.raise_on_fail)
            return self.app(environ, start_response)
        # The request is current only while its own code runs (here, and in
        # the body's iteration and close below): a server may interleave
        # requests in one thread, calling the next application before the
        # previous body is done.
        token = activate(request.collector)
        try:
            # request.start_response, bound without the lookup (see _BOUND_START_RESPONSE).
            result = self.app(environ, types.MethodType(_BOUND_START_RESPONSE, request))
        except BaseException as error:
            request.end(error)
            raise
        finally:
            deactivate(token)
        return request.wrap(result)

    def default_script_name(self, environ: dict) -> str:
        """The script name reported when the application sets none."""
        if not isinstance(self, PynbaMiddleware):  # see _implementation.check_self_types
            raise wrong_self(PynbaMiddleware, "default_script_name", self)
        return self.script_namer.name(environ)

    def default_server_name(self, environ: dict) -> str:
        """The server name reported when the application sets none."""
        if not isinstance(self, PynbaMiddleware):  # see _implementation.check_self_types
            raise wrong_self(PynbaMiddleware, "default_server_name", self)
        host = _lookup(environ, "HTTP_HOST")
        if host:
            name = self._known_hosts.get(host)  # none with a server name configured
            if name is not None:
                return name
        return self.monitoring.server(host, _lookup(environ, "SERVER_NAME", ""))

    def __repr__(self) -> str:
        return f"<PynbaMiddleware {self.app!r} -> {self.reporter!r}>"


class _ScriptNamer(Namer):
    """``PynbaMiddleware.default_script_name``, the namer of the middleware's collectors.

    Made once (a bound method would be made anew for each request, about
    200 instructions), and holding no reference to the middleware.
    """

    __slots__ = ("_monitoring", "_script_name", "_prefix", "_known_paths")

    def __init__(self, monitoring: Monitoring) -> None:
        self._monitoring = monitoring
        self._script_name = monitoring.script_name
        self._prefix = monitoring.prefix
        # Looked up first; the monitoring's Python call on a miss.
        self._known_paths = monitoring.path_names.known

    def name(self, environ: dict) -> str:
        """The script name of the request ``environ`` stands for."""
        if self._script_name is not None:
            return self._monitoring.route(self._script_name(environ))
        path = request_path(environ)
        name = self._known_paths.get(path)
        if name is None:
            return self._monitoring.path(path)
        # No call to add "" (about 40 instructions a request).
        return self._prefix + name if self._prefix else name


def monitor(address: Any, **config: Any) -> Callable[[WSGIApp], PynbaMiddleware]:
    """Decorate a WSGI application with ``PynbaMiddleware(app, address, **config)``.

    The result exposes ``.reporter`` like the middleware.
    """
    if callable(address) and not isinstance(address, Reporter):
        raise TypeError("monitor takes the server address: use @monitor(address)")

    def decorate(app: WSGIApp) -> PynbaMiddleware:
        middleware = PynbaMiddleware(app, address, **config)
        functools.update_wrapper(middleware, app, updated=())
        return middleware

    return decorate


def _lookup(environ: Any, key: str, default: Any = None) -> Any:
    """``environ.get(key, default)``."""
    if type(environ) is dict:
        # The plain dict PEP 3333 prescribes: compiled, ``plain`` is typed
        # (see wsgi.pxd) and .get() is a C call (about 1% of a request).
        plain = environ
        return plain.get(key, default)
    return environ.get(key, default)


def request_path(environ: dict) -> str:
    """``SCRIPT_NAME`` + ``PATH_INFO`` decoded as UTF-8 (PEP 3333 hands them over as latin-1)."""
    path = _lookup(environ, "PATH_INFO", "")
    script_name = _lookup(environ, "SCRIPT_NAME", "")
    if script_name:
        path = script_name + path
    if type(path) is str and _is_ascii(path):
        return path
    if not path.isascii():
        try:
            path = path.encode("latin-1").decode("utf-8", "replace")
        except UnicodeEncodeError:
            pass  # not latin-1 as PEP 3333 says: keep what the server gave
    return path


def _is_ascii(text: str) -> bool:
    # Compiled, ``text`` is typed: isascii() is a C call, not a method lookup
    # (about 180 instructions a request).
    return text.isascii()


# Applications send few distinct status lines: each is parsed once.
_STATUS_CODES: dict[str, int] = {}
_STATUS_CODES_MAX = 256


def _parse_status(status: Any) -> int:
    if type(status) is str:
        code = _STATUS_CODES.get(status)
        if code is not None:
            return code
    try:
        code = int(status[:3])
    except (TypeError, ValueError):
        return 0
    if type(status) is str and len(_STATUS_CODES) < _STATUS_CODES_MAX:
        _STATUS_CODES[status] = code
    return code


def _byte_count(chunk: Any) -> int:
    """``len(chunk)`` for the bytes PEP 3333 prescribes; -1 for anything else.

    Servers refuse anything else, with their own error: ``len()`` must not
    raise pynba's in its place.
    """
    if type(chunk) is bytes:
        return len(chunk)
    if isinstance(chunk, bytes):
        return bytes.__len__(chunk)  # its own __len__ is not called: it may raise
    return -1


class _MonitoredRequest:
    """One monitored request: wraps start_response and the response body.

    A list or tuple body is counted at once and stood in for by this object
    (which the server iterates and closes); other bodies by a ``_StreamBody``,
    which tells this object what the server took. Nothing it holds refers
    back to it (but a file wrapper, whose close() becomes this object's): a
    response the server drops without closing it is freed, and reported, at
    once.
    """

    __slots__ = (
        "collector",
        "_middleware",
        "_environ",
        "_start_response",
        "_write",
        "_status",
        "_headers",
        "_result",
        "_size",
        "_failed",
        "_complete",
        "_closed",
        "_file_close",
    )

    @staticmethod
    def begin(
        middleware: PynbaMiddleware, environ: dict, start_response: Callable
    ) -> _MonitoredRequest:
        """A request of ``middleware``, measured from now on."""
        # Compiled, a C call (see wsgi.pxd) that spares the Python-level
        # construction and its argument parsing: about 90 instructions a request.
        request: _MonitoredRequest = _MonitoredRequest.__new__(_MonitoredRequest)
        request._start(middleware, environ, start_response)
        return request

    def _start(self, middleware: PynbaMiddleware, environ: dict, start_response: Callable) -> None:
        self._middleware = middleware
        self._environ = environ
        self._start_response = start_response
        self._write: Callable[[bytes], Any] | None = None
        self._status: str | None = None
        self._headers: list | None = None
        self._result: Any = None
        self._size = 0
        self._failed = False
        self._complete = False
        self._closed = True  # nothing to end (see __del__) until the collector is made
        self._file_close: Callable[[], Any] | None = None
        # self._middleware, not the argument: compiled, its attributes are typed.
        namer: Callable[[dict], str] = self._middleware.script_namer
        if type(middleware) is not PynbaMiddleware:
            # A subclass may override default_script_name: it names its requests.
            namer = middleware.default_script_name
        self.collector = RequestCollector.of_request(
            self._middleware.settings,
            self._middleware.default_server_name(environ),
            _lookup(environ, "wsgi.url_scheme"),
            namer,
            environ,
        )
        self._closed = False

    def start_response(self, status: str, headers: list, exc_info: Any = None) -> Callable:
        """The application's ``start_response``: the server's, noting the status."""
        # exc_info is passed on only when given: a start_response that takes
        # two arguments (old test harnesses, some middlewares) refuses a third.
        if exc_info is None:
            write = self._start_response(status, headers)
        else:
            write = self._start_response(status, headers, exc_info)
        self._status = status
        self._headers = headers
        self._write = write
        return types.MethodType(_BOUND_COUNTED_WRITE, self)  # self.counted_write

    def counted_write(self, data: bytes) -> Any:
        """The application's ``write``: the server's, counting the bytes it took."""
        written = self._write(data)  # type: ignore[misc]  # set by start_response
        size = _byte_count(data)  # counted once the server took it
        if size > 0:
            self._size += size
        return written

    def wrap(self, result: Iterable[bytes]) -> Iterable[bytes]:
        """What the server gets instead of ``result``."""
        cls = type(result)
        if cls is list or cls is tuple:  # compiled, no tuple to search (about 35 instructions)
            # Counted at once; the server iterates the list itself, and this
            # object stands in for it only to add close().
            self._result = result
            for chunk in result:
                self.count(chunk)
            self._complete = True
            return self
        file_wrapper = _lookup(self._environ, "wsgi.file_wrapper")
        if file_wrapper is not None and isinstance(file_wrapper, type):
            if isinstance(result, file_wrapper):
                return self._wrap_file(result)
        # Not kept here: a generator suspended in the application's code holds
        # start_response, hence this object, and would make a reference cycle.
        return _StreamBody(self, result)

    def __iter__(self) -> Any:
        return iter(self._result)

    def __len__(self) -> int:
        # Servers set Content-Length for a single-chunk body from len().
        return len(self._result)

    def _wrap_file(self, result: Any) -> Any:
        # Handed back as is so that the server recognises it and may use
        # sendfile; only its close() is replaced, to end the request there.
        self._complete = True  # what the server sent of it is not known
        self._file_close = getattr(result, "close", None)
        try:
            result.close = self.close
        except AttributeError:
            self._closed = True
            self._report(from_file=True)
        return result

    # -- what the body tells of the server's progress ---------------------------

    def count(self, chunk: Any) -> None:
        """The server took ``chunk`` of the body; one that is not bytes fails the response."""
        size = _byte_count(chunk)
        if size < 0:
            self._failed = True  # the server will fail the response
        else:
            self._size += size

    def mark_complete(self) -> None:
        """The server took the whole body."""
        self._complete = True

    def mark_failed(self) -> None:
        """The application raised while the server iterated or closed the body."""
        self._failed = True

    # -- the request's end ------------------------------------------------------

    def end(self, error: BaseException) -> None:
        """The application call raised ``error`` before returning: report a 500."""
        self._failed = True
        self._closed = True
        try:
            self._report()
        except Exception:
            logger.exception("pynba: cannot report the failed request")

    def close(self) -> None:
        """The server is done with a list body or a file wrapper: end the request."""
        if self._closed:
            return
        self._closed = True
        if self._file_close is None:
            self._report()  # nothing of the application's to run: no context switch
            return
        self._close_body(self._file_close, True)

    def close_stream(self, body: Any) -> None:
        """The server closed the streamed ``body``: close it, and end the request."""
        if self._closed:
            return
        self._closed = True
        self._close_body(getattr(body, "close", None), False)

    def _close_body(self, close: Any, from_file: bool) -> None:
        """Call the body's own ``close`` (None: it has none) as the request, then end it."""
        token = activate(self.collector)
        try:
            if close is not None:
                close()
        except BaseException:
            self._failed = True
            raise
        finally:
            deactivate(token)
            self._report(from_file=from_file)

    def __del__(self) -> None:
        # Freed without close(): the server or test client never closed it.
        if self._closed or self.collector is None:
            return
        self._closed = True
        try:
            if sys.is_finalizing():
                return  # the reporter may be gone already: nothing is sent
        except BaseException:
            return  # this module's globals are being cleared at shutdown
        try:
            self._middleware.reporter.count("unclosed")
        except Exception:
            internal_error("cannot count an unclosed response", False)
        self._report(from_file=self._file_close is not None, closed=False)

    def _report(self, from_file: bool = False, closed: bool = True) -> None:
        """Send the request's packet, with the status and size measured here."""
        status = None
        size = None
        try:
            if self._failed:
                status = FAILED_STATUS
            elif closed and not self._complete:
                status = CLIENT_CLOSED_REQUEST  # closed before its end
            else:
                status = _parse_status(self._status)
            size = content_length(self._headers or ()) if from_file else self._size
        except Exception:
            internal_error("cannot finish the request", self._middleware.reporter.raise_on_fail)
        self.collector.finish(status, size)


# The functions of the methods bound on every request, kept here: compiled,
# types.MethodType is then a C call that spares looking each one up through
# the type (about 130 instructions a method: see _pytypes.pxd).
_BOUND_START_RESPONSE = _MonitoredRequest.start_response
_BOUND_COUNTED_WRITE = _MonitoredRequest.counted_write


class _StreamBody:
    """A response body the server iterates, run as its request; tells the request what it took."""

    __slots__ = ("_request", "_result", "_iterator")

    def __init__(self, request: _MonitoredRequest, result: Iterable[bytes]) -> None:
        self._request = request
        self._result = result
        self._iterator: Any = None

    def __iter__(self) -> _StreamBody:
        token = activate(self._request.collector)
        try:
            self._iterator = iter(self._result)
        except BaseException:
            self._request.mark_failed()
            raise
        finally:
            deactivate(token)
        return self

    def __next__(self) -> bytes:
        token = activate(self._request.collector)
        try:
            chunk = next(self._iterator)
        except StopIteration:
            self._request.mark_complete()
            raise
        except BaseException:
            self._request.mark_failed()
            raise
        finally:
            deactivate(token)
        self._request.count(chunk)
        return chunk

    def close(self) -> None:
        self._request.close_stream(self._result)


check_self_types(_ScriptNamer, _MonitoredRequest, _StreamBody)
check_self_types(PynbaMiddleware, self_checking=("default_script_name", "default_server_name"))

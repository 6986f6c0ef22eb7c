"""OpenTelemetry: the spans of any OpenTelemetry instrumentation, reported as Pinba timers.

Add the span processor to the application's ``TracerProvider``::

    provider.add_span_processor(PinbaSpanProcessor())

or let ``instrument()`` (``pynba.instrument("opentelemetry")``) add one to
the global provider, when that is an SDK ``TracerProvider``. Each span that
ends inside a monitored request becomes a timer of that request, its value
the span's duration, tagged from the span's semantic attributes (see
``span_tags``). A span is timed by the request current where it ends:
where a ``pynba.timer`` written at that place would go. A span ended
outside any request (in a thread of its library's own, say) is not timed.
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import SpanKind

from ..context import current_collector
from ..errors import internal_error
from ..tags import check_split_tags
from ._hooks import bounded

__all__ = ["VALUE_LENGTH", "VALUE_LIMIT", "PinbaSpanProcessor", "instrument", "uninstrument"]

logger = logging.getLogger("pynba")

#: Distinct values a processor sends per tag; any other is ``other``.
VALUE_LIMIT = 200
#: Tag values read from spans are cut to this many characters.
VALUE_LENGTH = 100

#: Database systems whose spans are cache timers, as pynba's own integrations make them.
CACHE_SYSTEMS = frozenset(["redis", "memcached", "valkey"])
_CACHE_NAME_MAX = max(map(len, CACHE_SYSTEMS))

Tags = tuple[tuple[str, ...], tuple[str, ...]]

_CAPPED_TAGS_MAX = 4096


class PinbaSpanProcessor(SpanProcessor):
    """Makes each span ended inside a monitored request a timer of that request.

    Set ``enabled`` to False to make it inert: an SDK ``TracerProvider``
    cannot remove a span processor once added.
    """

    def __init__(self) -> None:
        self.enabled = True
        # The values seen per tag name, each set capped at VALUE_LIMIT.
        self._seen: dict[str, set[str]] = {}
        # Tags as read from spans, capped: spans repeat, and a value once
        # admitted (or refused) stays so.
        self._capped_tags: dict[Tags, Tags] = {}

    # The SDK calls these of every processor for every span. The base class's
    # are Python functions; these, compiled, cost a C call each (about 1,000
    # instructions a span less).
    def on_start(self, span: Any, parent_context: Any = None) -> None:
        """Nothing: a span is timed when it ends."""

    def _on_ending(self, span: Any) -> None:
        """Nothing: a span is timed when it has ended (``on_end``)."""

    def on_end(self, span: ReadableSpan) -> None:
        """Add the span's duration to the current request, as a timer of its tags."""
        collector = current_collector()
        if collector is None or not self.enabled or not collector.enabled or collector.finished:
            return
        try:
            # What the SDK passes, a ReadableSpan, is read where it keeps its
            # fields, read only, not through properties that are Python
            # functions (about 2,000 instructions a span less). Any other span,
            # subclasses included, and an SDK whose fields are named otherwise,
            # through the properties.
            sdk_span = type(span) is ReadableSpan
            start = getattr(span, "_start_time", _ABSENT) if sdk_span else _ABSENT
            if start is _ABSENT:
                start = span.start_time
            end = getattr(span, "_end_time", _ABSENT) if sdk_span else _ABSENT
            if end is _ABSENT:
                end = span.end_time
            if type(start) is not int or type(end) is not int:
                return
            found = _span_tags(span)
            if found is None:
                return
            seconds = (end - start) / 1e9 if end > start else 0.0
            tags = self._capped_tags.get(found)
            if tags is None:
                tags = self._remember(found)
            # A timer a span: none kept between spans (a timer holds its
            # request, and a request dropped unfinished must be freed).
            _add_checked_timer(collector, tags, seconds)
        except Exception:
            internal_error("cannot time an OpenTelemetry span", False)

    def span_tags(self, span: ReadableSpan) -> Tags | None:
        """The timer tags of ``span`` (names, values); None for a span not timed.

        - a ``SERVER`` span: not timed (it is the request pynba reports);
        - ``db.system``: ``group=db``, ``op`` (``db.operation.name``, else
          the span name's first word, lower case), ``db`` (``db.namespace``,
          else the system); Redis and Memcached: ``group=cache``, ``op``,
          ``server`` (``server.address:server.port``, else the system);
        - ``http.request.method`` on a ``CLIENT`` span: ``group=http``,
          ``op`` (the method, lower case), ``host`` (``server.address``) and
          ``status`` (``2xx``... from ``http.response.status_code``);
        - ``messaging.system``: ``group=queue``, ``op``
          (``messaging.operation.type``), ``system``;
        - ``rpc.system``: ``group=rpc``, ``op`` (``rpc.method``, after
          ``rpc.service/`` when given apart), ``system``;
        - any other: ``group=otel``, ``op`` (the span's name).

        The older names of these attributes (``db.operation``, ``db.name``,
        ``http.method``, ``net.peer.name``, ``http.status_code``,
        ``messaging.operation``) are read too. Every value is cut to
        ``VALUE_LENGTH`` characters and capped at ``VALUE_LIMIT`` distinct
        values per tag; attributes of another type than expected are left out.
        """
        found = _span_tags(span)
        if found is None:
            return None
        tags = self._capped_tags.get(found)
        return self._remember(found) if tags is None else tags

    def _remember(self, found: Tags) -> Tags:
        """The capped tags of ``found``, kept for the spans that will find the same."""
        if len(self._capped_tags) >= _CAPPED_TAGS_MAX:
            self._capped_tags.clear()
        tags = self._capped(*found)
        check_split_tags(*tags)  # once: see _add_checked_timer
        self._capped_tags[found] = tags
        return tags

    def _capped(self, names: tuple[str, ...], values: tuple[str, ...]) -> Tags:
        # group is ours; every other value came from the span.
        capped = [values[0]]
        for index in range(1, len(names)):
            seen = self._seen.setdefault(names[index], set())
            value = values[index][:VALUE_LENGTH] or "other"
            capped.append(bounded(value, seen, VALUE_LIMIT))
        return names, tuple(capped)


def _add_checked_timer(collector: Any, tags: Tags, seconds: float) -> None:
    """Add a timer of ``seconds`` to ``collector``, with ``tags`` (checked when remembered).

    Not checked again on every span, as ``new_checked_timer`` would (about
    0.15 us a span). Compiled, a C function of a typed collector (see
    opentelemetry.pxd).
    """
    collector._add_call_timer(tags[0], tags[1], seconds)


# Read once: an Enum member looked up on its class costs as much as a dict lookup or two.
_SERVER = SpanKind.SERVER
_CLIENT = SpanKind.CLIENT
_STATUS_CLASSES = {code: f"{code // 100}xx" for code in range(100, 600)}
# The tag names of an HTTP client span, by the optional tags it has (host, status).
_HTTP_NAMES = {
    (False, False): ("group", "op"),
    (True, False): ("group", "op", "host"),
    (False, True): ("group", "op", "status"),
    (True, True): ("group", "op", "host", "status"),
}


def _span_tags(span: ReadableSpan) -> Tags | None:
    """``PinbaSpanProcessor.span_tags`` before the values are capped.

    Every span ended in a request comes here: the attributes are read with
    a plain dict's ``get`` (compiled, a C call: see opentelemetry.pxd), the
    common cases with no function call.
    """
    sdk_span = type(span) is ReadableSpan  # read as on_end reads it
    kind = getattr(span, "_kind", _ABSENT) if sdk_span else _ABSENT
    if kind is _ABSENT:
        kind = span.kind
    if kind is _SERVER:
        return None
    # The SDK span's attributes are a BoundedAttributes holding a dict, and
    # ``span.attributes`` a read-only proxy to it, whose copy() runs Python
    # code: the dict itself is read here, read only, when it is one (about
    # 4,000 instructions a span less); anything else through the public proxy.
    held = getattr(getattr(span, "_attributes", None), "_dict", None) if sdk_span else None
    plain = held if type(held) is dict else _plain(span.attributes)
    database = plain.get("db.system.name")
    if type(database) is not str or not database:
        database = plain.get("db.system")
        if type(database) is not str or not database:
            database = None
    if database is not None:
        command = plain.get("db.operation.name")
        if type(command) is not str or not command:
            command = _text(plain, "db.operation") or _first_word(_name(span))
        # A name longer than any cache system's is not one: not lowered, nor hashed.
        if len(database) <= _CACHE_NAME_MAX and database.lower() in CACHE_SYSTEMS:
            server = _server(plain) or database
            return ("group", "op", "server"), ("cache", command.lower(), server)
        namespace = plain.get("db.namespace")
        if type(namespace) is not str or not namespace:
            namespace = _text(plain, "db.name") or database
        db_key = (command, namespace)
        found = _db_tags.get(db_key)
        if found is None:
            found = _remember(_db_tags, db_key, (_DB_NAMES, ("db", command.lower(), namespace)))
        return found
    method = plain.get("http.request.method")
    if type(method) is not str or not method:
        method = _text(plain, "http.method")
    if method is not None and kind is _CLIENT:
        host = plain.get("server.address")
        if type(host) is not str or not host:
            host = _text(plain, "net.peer.name")
        code = plain.get("http.response.status_code", _ABSENT)
        if code is _ABSENT:
            code = plain.get("http.status_code")
        status = _STATUS_CLASSES.get(code) if type(code) is int else _status_class(code)
        http_key = (method, host, status)
        found = _http_tags.get(http_key)
        if found is None:
            found = _remember(_http_tags, http_key, _http_found(method, host, status))
        return found
    name = _name(span)
    queue = _text(plain, "messaging.system")
    if queue is not None:
        operation = _text(plain, "messaging.operation.type", "messaging.operation") or _text(
            plain, "messaging.operation.name"
        )
        return ("group", "op", "system"), ("queue", (operation or name).lower(), queue)
    rpc = _text(plain, "rpc.system.name", "rpc.system")
    if rpc is not None:
        procedure = _text(plain, "rpc.method") or name
        service = _text(plain, "rpc.service")
        if service is not None and "/" not in procedure:
            procedure = f"{service}/{procedure}"
        return ("group", "op", "system"), ("rpc", procedure, rpc)
    return ("group", "op"), ("otel", name)


# The tags of the spans of a database (by operation and namespace) and of
# the HTTP client spans (by method, host and status class), the keys exact
# strs or None: the spans of the same call cost a lookup.
_db_tags: dict[tuple[str, str], Tags] = {}
_http_tags: dict[tuple[str, str | None, str | None], Tags] = {}
_DB_NAMES = ("group", "op", "db")


def _http_found(method: str, host: str | None, status: str | None) -> Tags:
    values: tuple[str, ...] = ("http", "other" if method == "_OTHER" else method.lower())
    if host is not None:
        values += (host,)
    if status is not None:
        values += (status,)
    return _HTTP_NAMES[host is not None, status is not None], values


def _remember(known: dict[Any, Any], key: Any, value: Any) -> Any:
    """``value``, kept as ``known[key]`` (``known`` emptied when full)."""
    if len(known) >= _CAPPED_TAGS_MAX:
        known.clear()
    known[key] = value
    return value


def _name(span: ReadableSpan) -> str:
    name = span.name
    return name if type(name) is str else ""


def _plain(attributes: Any) -> dict[str, Any]:
    """A span's attributes as a dict.

    The SDK's ``BoundedAttributes`` (behind a read-only proxy) look keys up
    in Python, a missing one raising KeyError inside: ten lookups cost more
    than the span. Its ``copy()`` is a plain dict.
    """
    if attributes is None:
        return {}
    try:
        plain = attributes.copy()
    except (AttributeError, TypeError):  # a mapping of another kind (a span made by hand)
        plain = None
    return plain if type(plain) is dict else dict(attributes)


def _text(attributes: dict[str, Any], key: str, old: str | None = None) -> str | None:
    """Attribute ``key`` (else ``old``, its former name) if it is a non-empty string."""
    value = attributes.get(key)
    if type(value) is not str or not value:
        if old is None:
            return None
        value = attributes.get(old)
        if type(value) is not str or not value:
            return None
    return value


def _first_word(name: str) -> str:
    words = name.split(None, 1)
    return words[0] if words else "other"


def _server(attributes: dict[str, Any]) -> str | None:
    host = _text(attributes, "server.address", "net.peer.name")
    if host is None:
        return None
    port = attributes.get("server.port", attributes.get("net.peer.port"))
    if type(port) is int:
        return f"{host}:{port}"
    return host


def _status_class(code: Any) -> str | None:
    """``2xx``, ``4xx``... from an HTTP status code (an int or 3 digits), if valid."""
    if type(code) is int:
        return _STATUS_CLASSES.get(code)
    if isinstance(code, str) and len(code) == 3 and code.isascii() and code.isdigit():
        return _STATUS_CLASSES.get(int(code))
    return None


_ABSENT = object()


# The processor instrument() added to the global provider, and that provider.
_processor: PinbaSpanProcessor | None = None
_provider: TracerProvider | None = None
_warned = False


def instrument() -> None:
    """Add a ``PinbaSpanProcessor`` to the global SDK ``TracerProvider`` (once).

    Without one (no provider set yet, or one of another SDK) only a warning
    is logged, once: pynba never sets the application's tracing up. Add
    ``PinbaSpanProcessor()`` to the provider yourself then.
    """
    global _processor, _provider, _warned
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        if not _warned:
            _warned = True
            logger.warning(
                "pynba: no OpenTelemetry SDK TracerProvider is set (%s): spans are not timed; "
                "add pynba.instrumentation.opentelemetry.PinbaSpanProcessor() to yours",
                type(provider).__name__,
            )
        return
    if _processor is None:
        _processor = PinbaSpanProcessor()
    _processor.enabled = True
    if provider is not _provider:
        provider.add_span_processor(_processor)
        _provider = provider


def uninstrument() -> None:
    """Make the processor ``instrument()`` added inert (it stays in the provider)."""
    if _processor is not None:
        _processor.enabled = False

"""What the HTTP client integrations share (httpx, requests, urllib3): their tags and timers.

A call is one timer, however many requests it makes: the redirects it
follows, its retries, and the urllib3 calls under a requests call are part
of the outermost timed call (``IN_CALL``); urllib3 is timed at its pools,
and a ``PoolManager`` follows a redirect with a call of another pool. Its
tags (``NAMES``):

- ``group=http``;
- ``op``: the method in lower case (``get``, ``head``, ``post``, ``put``,
  ``patch``, ``delete``, ``options``), else ``other``;
- ``host``: the remote host as ``normalize_host`` spells a server name
  (lower case, IDNA labels in Unicode, IPv6 compressed) with its port
  unless it is the scheme's default; at most ``HOST_LIMIT`` distinct ones
  per process, then ``<other>``; ``<invalid-host>`` for a URL without one;
- ``status``: the response's status class (``2xx``...; ``other`` outside
  100-599), or ``error`` when the call raised (no response: a refused
  connection, a timeout, a cancelled call).

Never the path, the query, the user or the password of a URL.

The timer is made once the call has returned, with all its tags: cheaper
than starting one and changing its tags. The hooks of requests and
urllib3 hand each call on as it came (``_hooks.timed_calls``); httpx's take
the parameters of the function they replace (a ``(*args, **kwargs)`` hook
packs and unpacks a call's arguments again). Each reads what it needs of
the call as a key, and hands it to its ``CallTimers``, which makes the tags
of each distinct key once.
"""

from __future__ import annotations

import _thread
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from .._implementation import check_self_types
from ..errors import internal_error
from ..names import DEFAULT_NAME_LIMIT, INVALID_HOST, OTHER_NAME, a_labels, normalize_host
from ..tags import check_split_tags
from ._hooks import bounded

__all__ = [
    "ERROR",
    "HOST_LIMIT",
    "IN_CALL",
    "NAMES",
    "CallTimers",
    "add_failed_timer",
    "enabled",
    "host_tag",
    "method_op",
    "origin",
    "origin_host",
    "origin_values",
    "status_class",
    "values",
]

NAMES = ("group", "op", "host", "status")
GROUP = "http"
#: The ``status`` of a call that raised.
ERROR = "error"
#: Distinct ``host`` tags per process (as many as a middleware's server names).
HOST_LIMIT = DEFAULT_NAME_LIMIT


#: The idents of the threads in a timed call (``timed_calls``' ``outermost``):
#: the calls a timed call makes are not timed again.
IN_CALL: set[int] = set()


def _after_fork_in_child() -> None:
    # Only the thread that forked goes on in the child: its other threads are
    # gone, and a new one may get the ident of one that was in a call.
    IN_CALL.intersection_update((_thread.get_ident(),))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def enabled(collector: Any) -> bool:
    """``timed_calls``' ``enter``: whether the request ``collector`` is monitored."""
    return bool(collector.enabled)


#: The values of ``NAMES`` for a key (see ``values``).
ValuesOf = Callable[[Any], tuple[str, ...]]

_OPS = {method: method.lower() for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")}
_OPS["OPTIONS"] = "options"
# Keyed by status code (an int, or an IntEnum: equal and of the same hash).
_STATUS_TAGS = {code: f"{code // 100}xx" for code in range(100, 600)}
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# The tags of each key a hook has met, at most this many: as anything keyed
# by what the application sends, bounded.
_KEYS_MAX = 4096
_seen_hosts: set[str] = set()


def values(method: Any, host: str, status: str) -> tuple[str, ...]:
    """The values of ``NAMES``: a call's method, its ``host`` tag and its ``status`` tag."""
    return (GROUP, method_op(method), host, status)


def method_op(method: Any) -> str:
    """The ``op`` tag of an HTTP method."""
    if type(method) is not str:
        return "other"
    op = _OPS.get(method)
    return _OPS.get(method.upper(), "other") if op is None else op


def status_class(status: Any) -> str:
    """The ``status`` tag of a status code: ``2xx``..., else ``other``."""
    try:
        return _STATUS_TAGS.get(status, "other")
    except TypeError:
        return "other"


def host_tag(host: Any, port: Any) -> str:
    """The ``host`` tag of a host name or IP address and a port (None: the scheme's default)."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str) or not host:
        return INVALID_HOST
    if not host.isascii():
        # Each label lowered and made its own punycode, as the clients send it
        # (IDNA 2008): Python's "idna" codec (IDNA 2003) would make faß.de
        # fass.de, and a name lowered whole makes a label's last Σ a σ, not ς.
        host = a_labels(".".join([label.lower() for label in host.split(".")]))
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address, as normalize_host reads one
    name = normalize_host(host)
    if name == INVALID_HOST:
        return name
    if port is not None:
        if type(port) is not int or not 0 < port < 65536:
            return INVALID_HOST
        name = f"{name}:{port}"
    return bounded(name, _seen_hosts, HOST_LIMIT, OTHER_NAME)


def origin(url: str) -> str:
    """The start of an absolute URL up to its path: scheme and authority (a quick cut, as a key)."""
    end = url.find("/", url.find("://") + 3)
    return url if end < 0 else url[:end]


def origin_host(url: Any) -> str:
    """The ``host`` tag of an absolute URL (a str), its path and query aside."""
    if type(url) is not str:
        if not isinstance(url, str):
            return INVALID_HOST
        url = str.__str__(url)  # its value: a subclass's methods are not called
    try:
        parts = urlsplit(url)
        if not parts.scheme or not parts.netloc:
            return INVALID_HOST
        port = parts.port
    except ValueError:
        return INVALID_HOST
    if port == _DEFAULT_PORTS.get(parts.scheme.lower()):
        port = None
    host = parts.hostname
    if host is not None and not host.isascii():
        host = parts.netloc.rpartition("@")[2].partition(":")[0]  # as written: see host_tag
    return host_tag(host, port)


def origin_values(key: tuple[Any, str, Any]) -> tuple[str, ...]:
    """``ValuesOf`` for the keys (method, ``origin(url)``, status code)."""
    method, url_start, status = key
    return values(method, origin_host(url_start), status_class(status))


class CallTimers:
    """The timers of one hook's calls, tagged ``values_of(key)``: a timer a call.

    The tags of at most ``_KEYS_MAX`` keys are kept, each made and checked
    once. No timer is kept between calls: a timer holds its request, and a
    request dropped unfinished must be freed (it shares its thread's CPU
    until then).
    """

    __slots__ = ("_values", "_values_of")

    def __init__(self, values_of: ValuesOf) -> None:
        self._values_of = values_of
        self._values: dict[Any, tuple[str, ...]] = {}  # key -> its tag values

    def add(self, collector: Any, seconds: float, key: Any) -> None:
        """Add a call of ``seconds`` to the request ``collector``, as a timer of ``key``'s tags."""
        try:
            self._add(collector, seconds, key)
        except Exception:
            internal_error("cannot record an HTTP call's timer", False)

    def add_origin(
        self, collector: Any, seconds: float, method: Any, url: Any, status: Any
    ) -> None:
        """``add()`` for the key (method, ``origin(url)``, status), made here: a call less."""
        try:
            if type(url) is not str and isinstance(url, str):
                url = str.__str__(url)  # its value: a subclass's methods are not called
            if type(url) is str:
                text = url  # compiled, a str: its find() is a C call
                end = text.find("/", text.find("://") + 3)
                url = text if end < 0 else text[:end]
            else:
                url = None  # its host is <invalid-host>, as of anything but a str
            self._add(collector, seconds, (method, url, status))
        except Exception:
            internal_error("cannot record an HTTP call's timer", False)

    def _add(self, collector: Any, seconds: float, key: Any) -> None:
        values = self._values.get(key)
        if values is None:
            values = self._values_of(key)
            check_split_tags(NAMES, values)
            if len(self._values) < _KEYS_MAX:
                self._values[key] = values
        # Checked when made (above): not again on every call, as
        # new_checked_timer would (about 0.15 us a call).
        collector._add_call_timer(NAMES, values, seconds)


def add_failed_timer(
    collector: Any, seconds: float, values_of: Callable[[], tuple[str, ...]]
) -> None:
    """Add a call that raised, tagged ``values_of()`` (``status=error``); never raises itself."""
    try:
        found = values_of()
    except Exception:  # perhaps as the call's arguments are not a request
        found = (GROUP, "other", INVALID_HOST, ERROR)
    try:
        if not collector.finished:
            collector.new_checked_timer(NAMES, found).add(seconds)
    except Exception:
        internal_error("cannot record an HTTP call's timer", False)


check_self_types(CallTimers)

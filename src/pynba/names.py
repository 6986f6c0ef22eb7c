"""Names a visitor controls: the ``Host`` header and the paths no route matched.

A Pinba server keeps a row per distinct ``server_name`` and ``script_name``:
left to the client, a scanner creates as many rows as it sends Host values or
paths. The integrations share what bounds them:

- ``normalize_host(host)``: the server name for a ``Host`` header value, in
  one spelling (lower case, no port, no trailing dot, IDNA labels in
  Unicode), or ``INVALID_HOST``;
- ``ClientNames``: the names reported for such values, at most ``limit``
  distinct ones per process (per middleware): past it, or off the allow-list,
  ``OTHER_NAME`` is reported and counted in ``reporter.stats``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "DEFAULT_NAME_LIMIT",
    "INVALID_HOST",
    "OTHER_NAME",
    "UNMATCHED_NAME",
    "ClientNames",
    "a_labels",
    "normalize_host",
]

#: The default script name of a request no route matched.
UNMATCHED_NAME = "<unmatched>"
#: Reported for a name past the limit, or off the allow-list.
OTHER_NAME = "<other>"
#: Reported for a ``Host`` header that is not a host name, an IP address or either with a port.
INVALID_HOST = "<invalid-host>"
#: Distinct client-chosen names per middleware (OpenTelemetry's metrics SDK default).
DEFAULT_NAME_LIMIT = 2000
#: The longest host name DNS allows, without its trailing dot.
MAX_HOST_LENGTH = 253

# A host name with a trailing dot and the longest port: anything longer is
# invalid, and is refused before any other work.
_MAX_HOST_HEADER = MAX_HOST_LENGTH + len(".:65535")
_MAX_LABEL_LENGTH = 63
# Labels of letters, digits, "-" and "_" (service names in private networks),
# lower case (normalize_host lowers first); at most 63 characters each (DNS).
_HOST_NAME = re.compile(r"(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}")
_IDNA_PREFIX = "xn--"
# What a U-label may hold besides ASCII letters, digits and "-" (IDNA 2008,
# roughly): lower-case and caseless letters, combining marks, digits.
_U_LABEL_CATEGORIES = frozenset(("Ll", "Lo", "Lm", "Mn", "Mc", "Nd"))
_U_LABEL_ASCII = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def normalize_host(host: Any) -> str:
    """The server name for a ``Host`` header value; ``INVALID_HOST`` when it is not one.

    Lower case, without its port and trailing dot; ``xn--`` labels decoded
    to Unicode (a label that does not decode to a valid one is kept as
    sent); an IPv6 address in brackets, compressed (``[::1]:8000`` ->
    ``[::1]``). Invalid: not ASCII, characters other than letters, digits,
    ``-``, ``_`` and dots, an empty label or one over 63 characters, a name
    over 253, a port that is not a number. A value other than a str is a
    server's bug (PEP 3333 and ASGI give text): TypeError.
    """
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, not {type(host).__name__}")
    if not host or len(host) > _MAX_HOST_HEADER:
        return INVALID_HOST
    if not host.isascii():
        return INVALID_HOST
    host = host.lower()
    if host[0] == "[":
        return _ipv6_host(host)
    name, colon, port = host.rpartition(":")
    if colon:
        if not _is_port(port):
            return INVALID_HOST
        host = name
    if host.endswith("."):
        host = host[:-1]
    if len(host) > MAX_HOST_LENGTH or not _HOST_NAME.fullmatch(host):
        return INVALID_HOST
    if _IDNA_PREFIX in host:
        host = ".".join(map(_u_label, host.split(".")))
    return host


def _is_port(port: str) -> bool:
    # "host:" (an empty port) is allowed by RFC 3986.
    return len(port) <= 5 and (not port or port.isdigit())


def _ipv6_host(host: str) -> str:
    end = host.find("]")
    if end < 0:
        return INVALID_HOST
    rest = host[end + 1 :]
    if rest and (rest[0] != ":" or not _is_port(rest[1:])):
        return INVALID_HOST
    literal = host[1:end]
    if "%" in literal:  # a zone: meaningless to any other host
        return INVALID_HOST
    try:
        address = ipaddress.IPv6Address(literal)
    except ValueError:
        return INVALID_HOST
    return f"[{address.compressed}]"


def _u_label(label: str) -> str:
    """An ``xn--`` label in Unicode when it decodes to a valid one, else as it is."""
    if not label.startswith(_IDNA_PREFIX):
        return label
    encoded = label[len(_IDNA_PREFIX) :]
    try:
        decoded = encoded.encode("ascii").decode("punycode")
    except UnicodeError:
        return label
    # One spelling per name: the decoding must encode back to the same label
    # (Python's decoder accepts some that do not), be NFC and hold something
    # beyond ASCII.
    if (
        decoded.isascii()
        or decoded.encode("punycode") != encoded.encode("ascii")
        or not unicodedata.is_normalized("NFC", decoded)
        or unicodedata.category(decoded[0]).startswith("M")
    ):
        return label
    for character in decoded:
        if character.isascii():
            if character not in _U_LABEL_ASCII:
                return label
        elif unicodedata.category(character) not in _U_LABEL_CATEGORIES:
            return label
    return decoded


def parse_names(value: Any, name: str) -> tuple[str, ...]:
    """Server names from a comma-separated string or an iterable of strings, normalised."""
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
        items = [item for item in items if item]
    elif isinstance(value, Iterable) and not isinstance(value, (bytes, bytearray)):
        items = list(value)
    else:
        raise TypeError(f"{name} must be a list of str, not {type(value).__name__}")
    names = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{name} must be a list of str, not of {type(item).__name__}")
        normal = normalize_host(a_labels(item))
        if normal == INVALID_HOST:
            raise ValueError(f"{name}: {item!r} is not a host name")
        names.append(normal)
    return tuple(names)


def a_labels(host: str) -> str:
    """``host`` with its Unicode labels as ``xn--`` labels, as a client sends them.

    So that a configured name may be written either way, and a normalised
    name (Unicode labels) normalises to itself. A name or a label too long
    to be one is left as it is (``normalize_host`` finds it invalid).
    """
    # Python's punycode encoder takes time quadratic in a label's length.
    if host.isascii() or len(host) > _MAX_HOST_HEADER:
        return host
    labels = []
    for label in host.lower().split("."):
        if not label.isascii() and len(label) <= _MAX_LABEL_LENGTH:
            try:
                label = _IDNA_PREFIX + label.encode("punycode").decode("ascii")
            except UnicodeError:
                pass  # left non-ASCII: normalize_host finds it invalid
        labels.append(label)
    return ".".join(labels)


class ClientNames:
    """The name to report for each value a client chose: ``names.name(value)``.

    At most ``limit`` distinct names are admitted, first come first served,
    and kept for the life of the process; with ``allowed`` (normalised
    names), only those. Any other value is reported as ``OTHER_NAME`` and
    counted in ``reporter.stats[kind + "_overflow"]``. ``normalize`` maps a
    value to its name (none: the value is its own name); an
    ``INVALID_HOST`` it returns is reported as such, and counted in
    ``stats[kind + "_invalid"]``.
    """

    __slots__ = (
        "known",
        "_reporter",
        "_overflow",
        "_invalid",
        "_limit",
        "_normalize",
        "_allowed",
        "_admitted",
        "_lock",
    )

    def __init__(
        self,
        reporter: Any,
        kind: str,
        limit: int = DEFAULT_NAME_LIMIT,
        normalize: Callable[[Any], str] | None = None,
        allowed: Iterable[str] | None = None,
    ) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"name_limit must be an int, not {type(limit).__name__}")
        if limit < 0:
            raise ValueError(f"name_limit must be >= 0, got {limit}")
        #: The values seen whose names were admitted, and those names (at
        #: most ``limit`` of them): ``known.get(value)`` is the fast path, a
        #: plain dict a caller may read (compiled code at C speed) before
        #: calling ``name()``. Only this object writes it.
        self.known: dict[Any, str] = {}
        self._reporter = reporter
        self._overflow = kind + "_overflow"
        self._invalid = kind + "_invalid"
        self._limit = limit
        self._normalize = normalize
        self._allowed = None if allowed is None else frozenset(allowed)
        self._admitted: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def hosts(cls, reporter: Any, limit: int, allowed: Iterable[str] | None = None) -> ClientNames:
        """Server names for ``Host`` header values: ``normalize_host``, bounded."""
        return cls(reporter, "server_name", limit, normalize_host, allowed)

    @classmethod
    def paths(cls, reporter: Any, limit: int) -> ClientNames:
        """Script names for request paths no route names: the paths, bounded."""
        return cls(reporter, "script_name", limit)

    @property
    def limit(self) -> int:
        """How many distinct names are admitted."""
        return self._limit

    @property
    def admitted(self) -> frozenset[str]:
        """The names admitted so far (the allow-list's, when there is one)."""
        with self._lock:
            return frozenset(self._admitted) if self._allowed is None else self._allowed

    def name(self, value: Any) -> str:
        """The name to report for ``value``."""
        name = self.known.get(value)
        return self._resolve(value) if name is None else name

    def _resolve(self, value: Any) -> str:
        if self._normalize is None:
            name = value
        else:
            name = self._normalize(value)
            if name == INVALID_HOST:
                self._reporter.count(self._invalid)
                return name
        with self._lock:
            admitted = self._admit(name)
            # Values mapping to an admitted name are remembered, as many as
            # names may be admitted; past that they are normalised each time.
            if admitted and len(self.known) < self._limit:
                self.known[value] = name
        if admitted:
            return name
        self._reporter.count(self._overflow)
        return OTHER_NAME

    def _admit(self, name: str) -> bool:
        if self._allowed is not None:
            return name in self._allowed
        if name in self._admitted:
            return True
        if len(self._admitted) < self._limit:
            self._admitted.add(name)
            return True
        return False

    def __repr__(self) -> str:
        return f"<ClientNames {len(self._admitted)}/{self._limit}>"


_hostname: str | None = None


def default_hostname() -> str:
    """This machine's host name (looked up once)."""
    global _hostname
    if _hostname is None:
        _hostname = socket.gethostname()
    return _hostname

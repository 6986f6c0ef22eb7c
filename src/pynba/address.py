"""Pinba server addresses: the forms users write, parsed into (host, port) pairs.

Accepted forms, alone or several in a list or tuple:

- ``("host", 30002)``: a host and an ``int`` port (a 2-tuple of a string and an
  int is always *one* address);
- ``"host:30002"``, ``"host"`` (port 30002), ``"192.0.2.1:30002"``;
- ``"[2001:db8::1]:30002"``, ``"[2001:db8::1]"`` and the bare ``"2001:db8::1"``
  (port 30002: a port after an IPv6 address needs the brackets);
- ``"a:30002, b:30002"``: addresses separated by commas or spaces, as in the
  PHP extension's ``pinba.server`` setting.

Each server also has a *wire* option, what it understands, written as a
scheme before the address (in any of the forms above, including a host in a
tuple and each item of a comma-separated string such as ``PINBA_SERVER``):

- ``classic`` (the default, ``"classic://host:port"`` or no scheme): the
  unpacked datagrams of the PHP extension, read by every Pinba server;
- ``pinba2`` (``"pinba2://host:port"``, ``"pinba2://[::1]:30002"``): packed
  repeated fields, and LZ4 compression for large requests when the ``lz4``
  package is installed. Only for pinba2 servers (built with LZ4 for the
  compression); pinba_engine drops LZ4 datagrams.

Parsing never looks names up: resolution is the reporter's job.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_PORT",
    "WIRE_CLASSIC",
    "WIRE_PINBA2",
    "WIRES",
    "AddressSpec",
    "ServerAddress",
    "parse_addresses",
]

#: The port Pinba clients and servers use unless told otherwise.
DEFAULT_PORT = 30002

#: Unpacked datagrams, like the PHP extension: every Pinba server reads them.
WIRE_CLASSIC = "classic"
#: Packed repeated fields, LZ4-compressed when large: pinba2 servers only.
WIRE_PINBA2 = "pinba2"
WIRES = (WIRE_CLASSIC, WIRE_PINBA2)
_SCHEME_SEPARATOR = "://"

_SEPARATORS = re.compile(r"[\s,]+")
_HOST_CHARACTERS = re.compile(r"[A-Za-z0-9_.-]+")
_DIGITS_AND_DOTS = re.compile(r"[0-9.]+")


@dataclass(frozen=True)
class ServerAddress:
    """One Pinba server: a host name or IP literal (no brackets), a port, and
    the wire form it understands (``"classic"`` or ``"pinba2"``)."""

    host: str
    port: int
    wire: str = WIRE_CLASSIC

    def __post_init__(self) -> None:
        if self.wire not in WIRES:
            raise ValueError(f"wire must be one of {', '.join(WIRES)}, got {self.wire!r}")

    @property
    def is_ip_literal(self) -> bool:
        """Whether ``host`` is an IPv4 or IPv6 address rather than a name to look up."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        scheme = "" if self.wire == WIRE_CLASSIC else self.wire + _SCHEME_SEPARATOR
        if ":" in self.host:
            return f"{scheme}[{self.host}]:{self.port}"
        return f"{scheme}{self.host}:{self.port}"


_OneAddress = str | tuple[str, int] | ServerAddress
#: What ``parse_addresses`` (and so ``Reporter``) accepts.
AddressSpec = _OneAddress | Sequence[_OneAddress]


def parse_addresses(address: AddressSpec, argument: str = "address") -> tuple[ServerAddress, ...]:
    """Every server named by ``address``, in order, duplicates removed.

    Raises TypeError or ValueError naming ``argument`` when the form is not
    one of those described in this module's docstring.
    """
    if isinstance(address, (str, ServerAddress)) or _is_host_port_pair(address):
        items: Sequence[object] = (address,)
    elif isinstance(address, (list, tuple)):
        items = address
    else:
        raise TypeError(
            f"{argument} must be a str, a (host, port) tuple or a list of them, "
            f"not {type(address).__name__}"
        )
    servers: list[ServerAddress] = []
    for item in items:
        if isinstance(item, ServerAddress):
            servers.append(item)
        elif isinstance(item, str):
            tokens = [token for token in _SEPARATORS.split(item) if token]
            if not tokens:
                raise ValueError(f"{argument} must name at least one server, got {item!r}")
            servers.extend(_parse_text(token, argument) for token in tokens)
        elif isinstance(item, tuple) and len(item) == 2:
            servers.append(_parse_pair(item, argument))
        else:
            raise TypeError(
                f"{argument}: each server must be a str or a (host, port) tuple, "
                f"not {type(item).__name__} ({item!r})"
            )
    if not servers:
        raise ValueError(f"{argument} must name at least one server, got {address!r}")
    wires: dict[tuple[str, int], ServerAddress] = {}
    for server in servers:
        seen = wires.setdefault((server.host, server.port), server)
        if seen.wire != server.wire:
            raise ValueError(
                f"{argument}: {server.host!r} port {server.port} is listed both as "
                f"{seen.wire} and as {server.wire}"
            )
    return tuple(dict.fromkeys(servers))


def _split_wire(text: str, argument: str) -> tuple[str, str]:
    """``(wire, rest)`` for a text that may start with ``"classic://"`` or ``"pinba2://"``."""
    scheme, separator, rest = text.partition(_SCHEME_SEPARATOR)
    if not separator:
        return WIRE_CLASSIC, text
    wire = scheme.lower()
    if wire not in WIRES:
        raise ValueError(
            f"{argument}: unknown wire {scheme!r} in {text!r} "
            f"(use {' or '.join(wire + _SCHEME_SEPARATOR for wire in WIRES)})"
        )
    return wire, rest


def _is_host_port_pair(value: object) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _parse_pair(pair: tuple, argument: str) -> ServerAddress:
    host, port = pair
    if not isinstance(host, str):
        raise TypeError(
            f"{argument}: the host in {pair!r} must be a str, not {type(host).__name__}"
        )
    wire, host = _split_wire(host, argument)
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(
            f"{argument}: the port in {pair!r} must be an int, not {type(port).__name__}"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        _check_ipv6(host, argument, pair)
    else:
        _check_host(host, argument, pair)
    return ServerAddress(host, _check_port(port, argument, pair), wire)


def _parse_text(whole: str, argument: str) -> ServerAddress:
    wire, text = _split_wire(whole, argument)
    host, port = _parse_host_port(text, whole, argument)
    return ServerAddress(host, port, wire)


def _parse_host_port(text: str, whole: str, argument: str) -> tuple[str, int]:
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError(f"{argument}: missing ']' in {whole!r}")
        _check_ipv6(host, argument, whole)
        if not rest:
            return host, DEFAULT_PORT
        if not rest.startswith(":"):
            raise ValueError(f"{argument}: expected ':port' after ']' in {whole!r}")
        return host, _parse_port(rest[1:], argument, whole)
    if text.count(":") > 1:
        # Without brackets, every colon belongs to the IPv6 address.
        _check_ipv6(text, argument, whole)
        return text, DEFAULT_PORT
    host, colon, port_text = text.partition(":")
    _check_host(host, argument, whole)
    port = _parse_port(port_text, argument, whole) if colon else DEFAULT_PORT
    return host, port


def _parse_port(text: str, argument: str, whole: object) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{argument}: the port must be a number in 1..65535, got {whole!r}")
    return _check_port(int(text), argument, whole)


def _check_port(port: int, argument: str, whole: object) -> int:
    if not 1 <= port <= 65535:
        raise ValueError(f"{argument}: the port must be in 1..65535, got {port} in {whole!r}")
    return port


def _check_ipv6(host: str, argument: str, whole: object) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ValueError(f"{argument}: {host!r} is not an IPv6 address (in {whole!r})") from None


def _check_host(host: str, argument: str, whole: object) -> None:
    if not host:
        raise ValueError(f"{argument}: empty host in {whole!r}")
    if _DIGITS_AND_DOTS.fullmatch(host):
        # A bare number is not a name: it is most likely a misplaced port.
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(
                f"{argument}: {host!r} is neither an IPv4 address nor a host name "
                f"(in {whole!r}; a port is written host:port or (host, port))"
            ) from None
        return
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        ascii_host = ""
    if not _HOST_CHARACTERS.fullmatch(ascii_host):
        raise ValueError(f"{argument}: {host!r} is not a valid host name (in {whole!r})")

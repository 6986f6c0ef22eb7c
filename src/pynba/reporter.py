"""Sending Pinba datagrams over UDP to one or more servers.

Reporting must never hurt the application: every failure (a name that does
not resolve, a send the kernel refuses, a request that cannot be encoded) is
counted in ``Reporter.stats``, logged to the ``pynba`` logger at most once per
kind of failure per ``log_interval`` seconds, and dropped, unless
``raise_on_fail`` is set.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Sized

from . import framing
from ._pure_encoder import to_bytes
from .address import WIRE_CLASSIC, AddressSpec, ServerAddress, parse_addresses
from .encoder import MAX_DATAGRAM, encode

__all__ = ["DEFAULT_COMPRESS_ABOVE", "Reporter"]

logger = logging.getLogger("pynba")

#: Datagrams for pinba2 servers are LZ4-compressed above this many bytes: an
#: Ethernet MTU (1,500) less the IPv4 and UDP headers. Larger ones are
#: fragmented by IP, and one lost fragment loses the request.
DEFAULT_COMPRESS_ABOVE = 1472

_NEVER = math.inf


class _Server:
    """A server, what its last lookup found, and the socket to reach it by."""

    __slots__ = (
        "address",
        "resolved",
        "next_lookup",
        "lookup_error",
        "lookup_lock",
        "route",
    )

    def __init__(self, address: ServerAddress) -> None:
        self.address = address
        self.resolved: tuple[int, tuple] | None = None  # (family, sockaddr)
        self.next_lookup = -_NEVER  # looked up on first send
        self.lookup_error: OSError | None = None
        self.lookup_lock = threading.Lock()
        # (socket connected to sockaddr, sockaddr, the socket's send), replaced
        # as a whole.
        self.route: tuple[socket.socket, tuple, Callable] | None = None


class Reporter:
    """Sends Pinba datagrams to the servers named by ``address``.

    ``address`` is a ``(host, port)`` tuple, ``"host:port"``, ``"[v6]:port"``,
    a bare host or IPv6 address (port 30002), a comma- or space-separated
    string of these, or a list of any of them: every request goes to each.

    Each server gets the wire form it understands (see ``pynba.address``):
    ``"host:port"`` the classic unpacked datagram of the PHP extension;
    ``"pinba2://host:port"`` packed repeated fields, LZ4-compressed when the
    packed datagram is longer than ``compress_above`` bytes, compression
    makes it shorter and the ``lz4`` package is installed. A request is
    encoded once per wire form, whatever the number of servers.

    Names are looked up on first use, then again every ``resolve_interval``
    seconds; when a lookup fails the last address found is kept. Failures are
    logged at most once per kind per ``log_interval`` seconds and counted in
    ``stats``; set ``raise_on_fail`` to have them raised instead.
    """

    def __init__(
        self,
        address: AddressSpec,
        raise_on_fail: bool = False,
        resolve_interval: float = 60.0,
        *,
        log_interval: float = 60.0,
        compress_above: int = DEFAULT_COMPRESS_ABOVE,
    ) -> None:
        self._servers = tuple(_Server(server) for server in parse_addresses(address))
        by_wire: dict[str, list[_Server]] = {}
        for server in self._servers:
            by_wire.setdefault(server.address.wire, []).append(server)
        # (wire, servers) in the order the wires first appear
        self._wires = tuple((wire, tuple(servers)) for wire, servers in by_wire.items())
        self.compress_above = _check_size(compress_above, "compress_above")
        self.raise_on_fail = raise_on_fail
        self.resolve_interval = _check_interval(resolve_interval, "resolve_interval")
        self.log_interval = _check_interval(log_interval, "log_interval")
        #: Counters: "sent" (datagrams handed to the kernel, one per server);
        #: "failed" (datagrams or reports dropped), split by cause into
        #: "resolve" (the server has no address yet), "encode" (the request
        #: could not be encoded) and one per errno name of send errors
        #: ("EMSGSIZE", "EAGAIN", ...); "oversize" (reports too large for a
        #: datagram, sent degraded: without their timers, once per wire form),
        #: of which "oversize_tags" (the last step: without their request tags
        #: too, names cut to fit);
        #: "compressed" (reports sent LZ4-compressed to pinba2 servers);
        #: "lookup_failed" (failed name lookups, including those after which
        #: the last address found is kept). Other modules add theirs with count().
        self.stats: dict[str, int] = {"sent": 0, "failed": 0, "oversize": 0}
        # One socket per server, connected to its address.
        self._sockets: dict[_Server, socket.socket] = {}
        # Reporters are commonly dropped without close(): their sockets go
        # quietly with them rather than warn.
        weakref.finalize(self, _close_sockets, self._sockets)
        self._socket_lock = threading.Lock()
        self._closed = False
        self._last_logged: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        _live_reporters.add(self)

    def count(self, kind: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``stats[kind]``, which starts at 0."""
        if not isinstance(kind, str):
            raise TypeError(f"kind must be a str, not {type(kind).__name__}")
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, not {type(n).__name__}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        stats = self.stats
        stats[kind] = stats.get(kind, 0) + n

    @property
    def servers(self) -> tuple[ServerAddress, ...]:
        """The servers every datagram goes to, in order."""
        return tuple(server.address for server in self._servers)

    def report(
        self,
        *,
        hostname,
        server_name,
        script_name,
        request_count=1,
        document_size=0,
        memory_peak=0,
        request_time=0.0,
        ru_utime=0.0,
        ru_stime=0.0,
        status=0,
        memory_footprint=0,
        schema=None,
        tags=(),
        timers=(),
    ) -> None:
        """Encode one request and send it to every server, in its wire form.

        A request whose datagram would exceed ``pynba.encoder.MAX_DATAGRAM``
        (after packing and compression, for pinba2 servers) is sent without
        its timers, else also without its request tags, with a warning: never
        lost for its size. Never raises unless ``raise_on_fail`` is
        set; then the first failure is raised once every server has been tried.
        """
        request = (
            hostname,
            server_name,
            script_name,
            request_count,
            document_size,
            memory_peak,
            request_time,
            ru_utime,
            ru_stime,
            status,
            memory_footprint,
            schema,
            tags,
            timers,
        )
        self.report_request(request)

    def report_request(self, request: tuple) -> None:
        """``report()`` with the request as the encoder's positional arguments.

        The collectors' path: it saves building and binding keyword arguments.
        Its timers may be the request's Timers themselves, read as they stand
        when encoded: an override must encode them before it returns.
        """
        first_failure = None
        for wire, servers in self._wires:
            datagram = self._encode(request, wire)
            if isinstance(datagram, Exception):  # cannot be encoded: counted and logged
                failure = datagram
            else:
                failure = self._send_to(servers, datagram)
            if first_failure is None:
                first_failure = failure
        if first_failure is not None and self.raise_on_fail:
            raise first_failure

    def send(self, datagram: bytes) -> None:
        """Send the same datagram, as it is, to every server, whatever its wire form.

        Never raises unless ``raise_on_fail`` is set; then the first failure
        is raised once every server has been tried.
        """
        first_failure = self._send_to(self._servers, datagram)
        if first_failure is not None and self.raise_on_fail:
            raise first_failure

    def _send_to(self, servers: tuple[_Server, ...], datagram: bytes) -> OSError | None:
        """Send ``datagram`` to each of ``servers``; the first failure, or None."""
        now = time.monotonic()
        sent = 0
        first_failure = None
        for server in servers:
            route = server.route
            if route is None or now >= server.next_lookup:
                route, failure = self._prepare(server, now)
                if route is None:
                    if first_failure is None:
                        first_failure = failure
                    continue
            try:
                route[2](datagram)
            except OSError as error:
                failure = self._send_again(server, route[0], datagram, error)
                if failure is None:
                    sent += 1
                elif first_failure is None:
                    first_failure = failure
            else:
                sent += 1
        if sent:
            self.stats["sent"] += sent
        return first_failure

    def _send_again(
        self, server: _Server, sock: socket.socket, datagram: bytes, error: OSError
    ) -> OSError | None:
        """Handle a failed send: None once the datagram went after all, else the error."""
        if error.errno in _ICMP_REPORTED:
            # An ICMP error answering an earlier datagram (the server down, a
            # firewall rejecting it) is reported by the next send on a
            # connected socket, which sends nothing: that consumed the error,
            # and this datagram can go now.
            try:
                sock.send(datagram)
            except OSError as again:
                error = again
            else:
                return None
        if error.errno in _REPLACE_SOCKET:
            # The socket was closed (under the reporter, or replaced after the
            # server moved) or the address it sends from is gone (the host's
            # own address changed): the next send starts afresh with a new one.
            self._retire_socket(sock, gone=error.errno in _SOCKET_GONE)
            route = server.route
            if route is not None and route[0] is not sock:
                try:
                    route[2](datagram)  # on the socket that replaced it
                except OSError as again:
                    error = again
                else:
                    return None
        self._drop(_error_kind(error), server, error)
        return error

    def _retire_socket(self, sock: socket.socket, gone: bool) -> None:
        """Stop using ``sock``: the next send to its server makes a new one.

        A socket whose descriptor is ``gone`` (closed under the reporter) is
        detached, not closed: its number may belong to another file by now.
        """
        with self._socket_lock:
            if self._closed:
                return  # closed on purpose: sends keep failing
            for key, known in list(self._sockets.items()):
                if known is sock:
                    del self._sockets[key]
            for server in self._servers:
                if server.route is not None and server.route[0] is sock:
                    server.route = None
        if gone:
            sock.detach()
        else:
            _close_quietly(sock)

    def close(self) -> None:
        """Close the sockets; later sends fail (and are counted as such)."""
        with self._socket_lock:
            self._closed = True
            for server in self._servers:
                server.route = None
            _close_sockets(self._sockets)

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        servers = [str(server.address) for server in self._servers]
        return f"{type(self).__name__}({servers!r})"

    def _encode(self, request: tuple, wire: str) -> bytes | Exception:
        """The datagram for ``request`` in the ``wire`` form, or why it cannot be encoded."""
        try:
            if wire == WIRE_CLASSIC:
                datagram, compressed = encode(*request), False
            else:
                datagram, compressed = self._datagram(request, wire)
            if len(datagram) > MAX_DATAGRAM:
                datagram, compressed = self._degraded(request, wire, len(datagram))
        except Exception as error:
            self.count("failed")
            self.count("encode")
            if not self.raise_on_fail:  # else raised once every server has been tried
                self._log("encode", "cannot encode the request: %r", error, exc_info=error)
            return error
        if compressed:
            self.count("compressed")
        return datagram

    def _datagram(self, request: tuple, wire: str) -> tuple[bytes, bool]:
        """``(datagram, whether it is LZ4-compressed)`` for ``request`` in the ``wire`` form."""
        if wire == WIRE_CLASSIC:
            return encode(*request), False
        datagram = encode(*request, True)  # packed; positional is the cheaper call
        size = len(datagram)
        if (
            size > self.compress_above
            and size <= framing.MAX_UNCOMPRESSED
            and framing.LZ4_AVAILABLE
        ):
            compressed = framing.compress(datagram)
            if len(compressed) < size:
                return compressed, True
        return datagram, False

    def _degraded(self, request: tuple, wire: str, full_size: int) -> tuple[bytes, bool]:
        """``request``, too large for a datagram, made to fit: ``(datagram, compressed)``.

        Sent without its timers; if still too large, without its request tags
        too, and its names (host, server, script, schema) cut to
        ``_NAME_LIMIT`` bytes each: the fields pinba2 requires always fit.
        """
        timers, tags = request[13], request[12]
        timer_count = _length(timers)
        lost = []
        kind = "oversize"
        datagram = b""
        compressed = False
        names_cut = False
        if timer_count != 0:  # without timers, a request of none would be the same size
            lost.append(_several(timer_count, "timer"))
            datagram, compressed = self._datagram((*request[:13], ()), wire)
        if timer_count == 0 or len(datagram) > MAX_DATAGRAM:
            kind = "oversize_tags"
            tag_count = _length(tags)
            if tag_count != 0:
                lost.append(_several(tag_count, "request tag"))
            bare, names_cut = _bare(request)
            datagram, compressed = self._datagram(bare, wire)
            self.count(kind)
        self.count("oversize")
        done = ["without its " + " and ".join(lost)] if lost else []
        if names_cut:
            done.append(f"with its names cut to {_NAME_LIMIT} bytes")
        self._log(
            # one warning per wire form and step: fan-out servers of each form get the same
            kind if wire == WIRE_CLASSIC else f"{kind} {wire}",
            "request datagram of %d bytes (%s) exceeds %d bytes; sent %s (%d bytes)",
            full_size,
            wire,
            MAX_DATAGRAM,
            ", ".join(done),
            len(datagram),
        )
        return datagram, compressed

    def _prepare(
        self, server: _Server, now: float
    ) -> tuple[tuple[socket.socket, tuple, Callable] | None, OSError | None]:
        """Look ``server`` up when due and give it a socket: (route, None) or (None, error)."""
        if now >= server.next_lookup or server.resolved is None:
            # Also taken when the server has no address yet, to wait for a
            # first lookup that another thread is doing rather than drop.
            with server.lookup_lock:
                if now >= server.next_lookup:
                    self._look_up(server, now)
        resolved = server.resolved
        if resolved is None:
            self._drop("resolve", server, server.lookup_error)
            return None, _fresh(server.lookup_error)
        try:
            return self._connect(server), None
        except OSError as error:
            self._drop(_error_kind(error), server, error)
            return None, error

    def _look_up(self, server: _Server, now: float) -> None:
        # Claim the next slot first so that concurrent senders keep using the
        # current address instead of waiting for this lookup.
        server.next_lookup = now + self.resolve_interval
        address = server.address
        literal = address.is_ip_literal
        if literal:
            server.next_lookup = _NEVER
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(
                address.host,
                address.port,
                socket.AF_UNSPEC,
                socket.SOCK_DGRAM,
                0,
                socket.AI_NUMERICHOST if literal else 0,
            )[0]
        except (OSError, UnicodeError, IndexError) as error:
            if not isinstance(error, OSError):
                error = socket.gaierror(socket.EAI_NONAME, f"{type(error).__name__}: {error}")
            self.count("lookup_failed")
            server.lookup_error = error
            if server.resolved is not None:
                self._log(
                    "resolve",
                    "cannot resolve %s (%s); still sending to %s",
                    address,
                    error,
                    server.resolved[1][0],
                )
            return
        server.resolved = (family, sockaddr)
        server.lookup_error = None

    def _connect(self, server: _Server) -> tuple:
        """``server``'s route to the address last found for it: a new connected socket if it moved.

        Connected, a send neither parses an address nor looks up a route: it
        is the cheapest way to the kernel. The socket the server had before
        (a lookup found another address) is closed once the new one is
        connected: connecting it again would keep the source address chosen
        for the old address.
        """
        with self._socket_lock:
            if self._closed:
                raise OSError(errno.EBADF, "the reporter is closed")
            family, sockaddr = server.resolved  # read here: a lookup may have just moved it
            route = server.route
            if route is not None and route[1] == sockaddr:
                # Looked up again and found the same address, or another
                # thread has just connected it.
                return route
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.connect(sockaddr)
            except OSError:
                sock.close()
                raise
            old = self._sockets.pop(server, None)
            self._sockets[server] = sock
            route = server.route = (sock, sockaddr, sock.send)
        if old is not None:
            _close_quietly(old)  # a sender still holding it gets EBADF and retries
        return route

    def _drop(self, kind: str, server: _Server, error: OSError | None) -> None:
        """Count (and unless raising, log) a datagram not sent to ``server``."""
        self.count("failed")
        self.count(kind)
        if not self.raise_on_fail:
            self._log(kind, "cannot send to %s: %s; datagram dropped", server.address, error)

    def _log(self, kind: str, message: str, *args: object, exc_info: object = None) -> None:
        """Log a warning unless one of the same kind was logged within log_interval."""
        now = time.monotonic()
        last = self._last_logged.get(kind)
        if last is not None and now - last < self.log_interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last_logged[kind] = now
        suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            message += " (%d more since the last such message)"
            args += (suppressed,)
        logger.warning(message, *args, exc_info=exc_info)

    def _forget_inherited_state(self) -> None:
        """In a forked child: use sockets and locks of the child's own."""
        self._socket_lock = threading.Lock()
        for server in self._servers:
            server.route = None
            server.lookup_lock = threading.Lock()
        _close_sockets(self._sockets)  # the child's copies only: the parent's stay open


def _check_interval(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0 seconds, got {value!r}")
    return float(value)


def _check_size(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a number of bytes (int), not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0 bytes, got {value!r}")
    return value


#: The last step of the oversize rule cuts each name (host, server, script,
#: schema) to this many bytes: all four and the numbers fit in one datagram.
_NAME_LIMIT = 8192


def _bare(request: tuple) -> tuple[tuple, bool]:
    """``request`` without its timers and request tags, its names cut to ``_NAME_LIMIT`` bytes.

    Also says whether a name was cut.
    """
    fields = list(request[:12])
    cut = False
    for index in (0, 1, 2, 11):  # hostname, server_name, script_name, schema
        name = fields[index]
        if name is None:
            continue
        data = to_bytes(name)
        if len(data) > _NAME_LIMIT:
            end = _NAME_LIMIT
            while end and data[end] & 0xC0 == 0x80:  # not inside a UTF-8 character
                end -= 1
            fields[index] = data[:end]
            cut = True
    return (*fields, (), ()), cut


def _length(items: object) -> int | str:
    """How many ``items`` there are, or "?" for an iterator."""
    return len(items) if isinstance(items, Sized) else "?"


def _several(count: int | str, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _close_sockets(sockets: dict[_Server, socket.socket]) -> None:
    while sockets:
        _close_quietly(sockets.popitem()[1])


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


# A descriptor closed (or reused) under the reporter, e.g. by code that closes
# every file descriptor when it daemonizes: not to be closed again.
_SOCKET_GONE = (errno.EBADF, errno.ENOTSOCK)

# What a connected UDP socket reports on the send after an ICMP error that
# answered an earlier datagram: port or host unreachable, administratively
# prohibited (EACCES over IPv6), protocol unavailable.
_ICMP_REPORTED = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNREFUSED",
        "EHOSTUNREACH",
        "ENETUNREACH",
        "EHOSTDOWN",
        "EACCES",
        "ENOPROTOOPT",
    )
    if hasattr(errno, name)
)

# Errors a new socket cures: the descriptor is gone, or the source address
# the socket was given when connected no longer belongs to this host. (Not
# errors that would come back on every new socket, which would make one per
# request.)
_REPLACE_SOCKET = frozenset((*_SOCKET_GONE, errno.EADDRNOTAVAIL))


def _error_kind(error: OSError) -> str:
    return errno.errorcode.get(error.errno, type(error).__name__)


def _fresh(error: OSError | None) -> OSError:
    # A new exception each time: re-raising the stored one would grow its traceback.
    if error is None:
        return OSError("cannot resolve the server address")
    return type(error)(*error.args)


_live_reporters: weakref.WeakSet[Reporter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for reporter in list(_live_reporters):
        reporter._forget_inherited_state()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

"""Sending Pinba datagrams over UDP to one or more servers.

Reporting must never hurt the application: every failure (a name that does
not resolve, a send the kernel refuses, a request that cannot be encoded) is
counted in ``Reporter.stats``, logged to the ``pynba`` logger at most once per
kind of failure per ``log_interval`` seconds, and dropped, unless
``raise_on_fail`` is set.

Nothing on a request's path waits for the network: host names are looked up
by a daemon thread of the reporter's own, and a send only reads the last
address found. Nor does a send trust a descriptor number blindly: the
application may have closed the reporter's socket and opened a file or a
connection of its own under the same number.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sized
from typing import Any

from ._implementation import check_self_types, runs_compiled, wrong_self
from .address import WIRE_CLASSIC, AddressSpec, ServerAddress, parse_addresses
from .ratelimit import LogLimiter
from .record import RequestRecord
from .wire import framing
from .wire.encoder import MAX_DATAGRAM, encode

__all__ = ["DEFAULT_COMPRESS_ABOVE", "Reporter"]

logger = logging.getLogger("pynba")

#: Datagrams for pinba2 servers are LZ4-compressed above this many bytes: an
#: Ethernet MTU (1,500) less the IPv4 and UDP headers. Larger ones are
#: fragmented by IP, and one lost fragment loses the request.
DEFAULT_COMPRESS_ABOVE = 1472

#: What looking a server up finds: ``(family, sockaddr)``, or why it failed.
_Found = tuple[int, tuple] | OSError

#: A name whose first lookups fail is looked up again after this many
#: seconds, then twice as long each time, up to ``resolve_interval``.
_FIRST_RETRY = 0.5
#: Lookups of one name are at least this many seconds apart, whatever
#: ``resolve_interval`` says (0 would keep the lookup thread busy).
_MIN_LOOKUP_PAUSE = 0.1

# Compiled, ``stats[kind] = stats.get(kind, 0) + n`` runs no Python code (str
# keys, int values), so no other thread between the read and the write;
# interpreted, another thread can run there.
_COUNTS_NEED_A_LOCK = not runs_compiled(__file__)


class _Route:
    """A socket connected to one address, and the file its descriptor was made as.

    The application may close the descriptor behind the socket object's back
    (as daemonizing code closing every descriptor does) and the number be
    reused by a file or a connection of its own: ``intact()`` says whether
    the number still refers to this socket. Only then is it written to
    (``send()``) or closed.
    """

    __slots__ = ("sock", "sockaddr", "fd", "device", "inode")

    def __init__(self, sock: socket.socket, sockaddr: tuple) -> None:
        self.sock = sock
        self.sockaddr = sockaddr
        self.fd = sock.fileno()
        status = os.fstat(self.fd)
        self.device = status.st_dev
        self.inode = status.st_ino

    def intact(self) -> bool:
        """Whether the descriptor still refers to this route's socket."""
        try:
            status = os.fstat(self.fd)
        except OSError:
            return False
        return status.st_ino == self.inode and status.st_dev == self.device

    def send(self, datagram: bytes) -> None:
        """Send ``datagram`` (the caller has just checked ``intact()``)."""
        # Connected, the socket needs no address; compiled, os.write is a C
        # call (see _posix.pxd), cheaper than socket.send.
        os.write(self.fd, datagram)

    def lost(self) -> str | None:
        """How the descriptor was lost: ``"fd_closed"``, ``"fd_reused"``, or None if it wasn't."""
        if self.intact():
            return None
        try:
            os.fstat(self.fd)
        except OSError:
            return "fd_closed"
        return "fd_reused"

    def release(self) -> None:
        """Close the socket, or only let go of its descriptor if that is no longer the socket."""
        if self.intact():
            _close_quietly(self.sock)
        else:
            self.sock.detach()


class _Server:
    """A server, what its lookups found, and the route to reach it by.

    ``resolved`` and ``route`` are written by the lookup thread (or, for an
    IP literal, the first send) and read by senders without a lock: each is
    replaced as a whole.
    """

    __slots__ = (
        "address",
        "is_literal",
        "resolved",
        "lookup_error",
        "failures",
        "next_lookup",
        "route",
    )

    def __init__(self, address: ServerAddress) -> None:
        self.address = address
        self.is_literal = address.is_ip_literal
        self.resolved: tuple[int, tuple] | None = None  # (family, sockaddr)
        self.lookup_error: OSError | None = None
        self.failures = 0  # lookups failed in a row while no address is known
        self.next_lookup = 0.0  # time.monotonic() when the next lookup is due
        self.route: _Route | None = None


class _Refresher:
    """Looks a reporter's server names up in a daemon thread, off the request path.

    One thread per reporter that has names to look up (a reporter of IP
    literals has none): a resolver that hangs on one reporter's name delays
    no other reporter. The thread starts with the reporter, again in a
    forked child, hands each lookup's outcome to ``on_lookup`` (the
    reporter's method, held only weakly between lookups), and ends once the
    reporter is closed or collected.
    """

    __slots__ = ("_on_lookup", "_servers", "_lock", "_wake", "_thread", "_stopped")

    def __init__(
        self, on_lookup: Callable[[_Server, _Found], None], servers: tuple[_Server, ...]
    ) -> None:
        self._on_lookup = weakref.WeakMethod(on_lookup)
        self._servers = servers
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self) -> None:
        """Start the thread unless it runs already (in this process) or was stopped."""
        if self._thread is not None or self._stopped:
            return
        with self._lock:
            if self._thread is None and not self._stopped:
                thread = threading.Thread(target=self._run, name="pynba-resolver", daemon=True)
                try:
                    thread.start()
                except RuntimeError:
                    # No new thread now (the interpreter is exiting, or out
                    # of threads): the send goes on without an address, and
                    # the next one tries again.
                    return
                self._thread = thread

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def forget_thread(self) -> None:
        """In a forked child: the parent's thread is not here; the next send starts one."""
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
        if self._stopped:
            self._wake.set()

    def _run(self) -> None:
        wake = self._wake
        while not self._stopped:
            server = self._servers[0]
            for other in self._servers:
                if other.next_lookup < server.next_lookup:
                    server = other
            pause = server.next_lookup - time.monotonic()
            if pause > 0:
                wake.wait(pause)
                continue
            on_lookup = None
            try:
                found = _look_up(server.address, numeric=False)
                on_lookup = self._on_lookup()
                if on_lookup is None or self._stopped:
                    return  # the reporter was collected, or closed
                on_lookup(server, found)
            except Exception:
                server.next_lookup = time.monotonic() + _FIRST_RETRY
                logger.exception("pynba: looking up %s failed", server.address)
            finally:
                on_lookup = None  # the reporter is not kept alive by this thread while it waits


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

    Host names are looked up by a daemon thread of the reporter's own,
    started with the reporter: never on a request's path. Datagrams for a
    server whose address is not known yet are dropped (counted as
    ``"resolve"``); a first lookup that fails is tried again after 0.5 s,
    1 s, 2 s, ... up to ``resolve_interval``. Once found, a name is looked up
    again every ``resolve_interval`` seconds (at least 0.1 s apart), and
    when a lookup fails the last address found is kept. IP literals need no
    lookup. Failures are logged at most once per kind per ``log_interval``
    seconds and counted in ``stats``; set ``raise_on_fail`` to have them
    raised instead.
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
        #: "resolve" (the server has no address yet: its first lookup has not
        #: ended, or none has succeeded), "encode" (the request
        #: could not be encoded) and one per errno name of send errors
        #: ("EMSGSIZE", "EAGAIN", ...); "oversize" (reports too large for a
        #: datagram, sent degraded: without their timers, once per wire form),
        #: of which "oversize_tags" (the last step: without their request tags
        #: too, names cut to fit);
        #: "compressed" (reports sent LZ4-compressed to pinba2 servers);
        #: "lookup_failed" (failed name lookups, including those after which
        #: the last address found is kept); "fd_closed" (the application
        #: closed a socket's descriptor under the reporter) and "fd_reused"
        #: (and gave its number to a file or connection of its own): either
        #: way a new socket took over, and nothing was written to nor closed
        #: under that number. Other modules add theirs with count(). Exact
        #: under threads; safe to read, and to clear, from any thread.
        self.stats: dict[str, int] = {"sent": 0, "failed": 0, "oversize": 0}
        self._count_lock = threading.RLock()  # used only when interpreted
        # One route (a socket connected to its address) per server.
        self._sockets: dict[_Server, _Route] = {}
        self._socket_lock = threading.Lock()
        self._closed = False
        names = tuple(server for server in self._servers if not server.is_literal)
        self._refresher = _Refresher(self._found, names) if names else None
        # Reporters are commonly dropped without close(): their sockets go
        # quietly with them rather than warn, and their lookup thread ends.
        weakref.finalize(self, _shut_down, self._sockets, self._refresher)
        self._limiter = LogLimiter(self.log_interval)
        _fork_handlers.add(weakref.WeakMethod(self._forget_inherited_state, _fork_handlers.discard))
        if self._refresher is not None:
            # Looked up from now on: the first requests need not find no address yet.
            self._refresher.start()

    def wait_for_addresses(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for each server name's address; whether all have one.

        Never on a request's path: for a script's last report (``ScriptMonitor``),
        which a lookup still under way would otherwise lose.
        """
        deadline = time.monotonic() + timeout
        # An IP literal needs no lookup: the first send takes it as it is.
        while any(s.resolved is None and not s.is_literal for s in self._servers):
            if self._closed or time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def count(self, kind: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``stats[kind]``, which starts at 0."""
        if not isinstance(self, Reporter):  # see _implementation.check_self_types
            raise wrong_self(Reporter, "count", self)
        if type(kind) is not str:
            if not isinstance(kind, str):
                raise TypeError(f"kind must be a str, not {type(kind).__name__}")
            # The plain values: a subclass's __hash__, __eq__ or __radd__ would
            # run between the read and the write of the counter (see _add).
            kind = str.__str__(kind)
        if type(n) is not int:
            if isinstance(n, bool) or not isinstance(n, int):
                raise TypeError(f"n must be an int, not {type(n).__name__}")
            n = int.__index__(n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self._add(kind, n)

    def _add(self, kind: str, n: int) -> None:
        """Add ``n`` to ``stats[kind]``: every counter goes up here, exactly, from any thread."""
        stats = self.stats
        if _COUNTS_NEED_A_LOCK:
            with self._count_lock:
                stats[kind] = stats.get(kind, 0) + n
        else:
            stats[kind] = stats.get(kind, 0) + n

    @property
    def servers(self) -> tuple[ServerAddress, ...]:
        """The servers every datagram goes to, in order."""
        return tuple(server.address for server in self._servers)

    def report(
        self,
        *,
        hostname: str,
        server_name: str,
        script_name: str,
        request_count: int = 1,
        document_size: int = 0,
        memory_peak: int = 0,
        request_time: float = 0.0,
        ru_utime: float = 0.0,
        ru_stime: float = 0.0,
        status: int = 0,
        memory_footprint: int = 0,
        schema: str | None = None,
        tags: Mapping[str, Any] | Iterable[tuple[str, Any]] = (),
        timers: Iterable[Any] = (),
    ) -> None:
        """Encode one request (see ``RequestRecord``) and send it to every server, in its wire form.

        A request whose datagram would exceed ``pynba.wire.encoder.MAX_DATAGRAM``
        (after packing and compression, for pinba2 servers) is sent without
        its timers, else also without its request tags, with a warning: never
        lost for its size. Never raises unless ``raise_on_fail`` is
        set; then the first failure is raised once every server has been tried.
        """
        record = RequestRecord(
            hostname=hostname,
            server_name=server_name,
            script_name=script_name,
            request_count=request_count,
            document_size=document_size,
            memory_peak=memory_peak,
            request_time=request_time,
            ru_utime=ru_utime,
            ru_stime=ru_stime,
            status=status,
            memory_footprint=memory_footprint,
            schema=schema,
            tags=tags,
            timers=timers,
        )
        self.report_request(record)

    def report_request(self, request: RequestRecord) -> None:
        """``report()`` for a ``RequestRecord``, or a plain tuple of its fields in order.

        The collectors' path: it saves building and binding keyword arguments
        (and a plain tuple is the cheapest request to build and to encode).
        Its timers may be the request's Timers themselves, read as they stand
        when encoded: an override must encode them before it returns.
        """
        if not isinstance(self, Reporter):  # see _implementation.check_self_types
            raise wrong_self(Reporter, "report_request", self)
        first_failure = None
        for wire, servers in self._wires:
            datagram = self._encode(request, wire)
            # an Exception when it cannot be encoded (counted and logged)
            failure = (
                datagram if isinstance(datagram, Exception) else self._send_to(servers, datagram)
            )
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
        sent = 0
        first_failure = None
        for server in servers:
            route = server.route
            if route is None or not route.intact():
                route, failure = self._prepare(server, route)
                if route is None:
                    if first_failure is None:
                        first_failure = failure
                    continue
            try:
                route.send(datagram)
            except OSError as error:
                failure = self._send_again(server, route, datagram, error)
                if failure is None:
                    sent += 1
                elif first_failure is None:
                    first_failure = failure
            else:
                sent += 1
        if sent:
            self._add("sent", sent)
        return first_failure

    def _send_again(
        self, server: _Server, route: _Route, datagram: bytes, error: OSError
    ) -> OSError | None:
        """Handle a failed send: None once the datagram went after all, else the error."""
        if error.errno in _ICMP_REPORTED:
            # An ICMP error answering an earlier datagram (the server down, a
            # firewall rejecting it) is reported by the next send on a
            # connected socket, which sends nothing: that consumed the error,
            # and this datagram can go now.
            try:
                route.send(datagram)
            except OSError as again:
                error = again
            else:
                return None
        if error.errno in _REPLACE_SOCKET:
            # The descriptor was closed since it was checked (by the
            # application, or by the reporter after the server moved), or the
            # address the socket sends from is gone (the host's own address
            # changed): a new socket cures both.
            self._retire(server, route)
            try:
                self._connect(server).send(datagram)
            except OSError as again:
                error = again
            else:
                return None
        self._drop(_error_kind(error), server, error)
        return error

    def _retire(self, server: _Server, route: _Route) -> None:
        """Stop using ``server``'s ``route``: the next send makes a new one.

        Its descriptor is closed only if it still is the route's socket;
        one the application closed or reused is counted and logged.
        """
        with self._socket_lock:
            if server.route is not route:
                return  # already replaced, or the reporter was closed
            server.route = None
            if self._sockets.get(server) is route:
                del self._sockets[server]
        lost = route.lost()
        route.release()
        if lost is not None:
            self._add(lost, 1)
            self._log(
                lost,
                "the socket to %s (descriptor %d) was %s by the application; "
                "sending from a new socket",
                server.address,
                route.fd,
                "closed and its number reused" if lost == "fd_reused" else "closed",
            )

    def close(self) -> None:
        """Close the sockets; later sends fail (and are counted as such)."""
        with self._socket_lock:
            self._closed = True
            for server in self._servers:
                server.route = None
        if self._refresher is not None:
            self._refresher.stop()
        _release_routes(self._sockets)

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        servers = [str(server.address) for server in self._servers]
        return f"{type(self).__name__}({servers!r})"

    def _encode(self, request: RequestRecord, wire: str) -> bytes | Exception:
        """The datagram for ``request`` in the ``wire`` form, or why it cannot be encoded."""
        try:
            if wire == WIRE_CLASSIC:
                # _datagram()'s first case, without a tuple made and unpacked
                # (about 230 instructions a request).
                datagram = encode(*request)
                compressed = False
            else:
                datagram, compressed = self._datagram(request, wire)
            if len(datagram) > MAX_DATAGRAM:
                datagram, compressed = self._degraded(request, wire, len(datagram))
        except Exception as error:
            self._add("failed", 1)
            self._add("encode", 1)
            if not self.raise_on_fail:  # else raised once every server has been tried
                self._log("encode", "cannot encode the request: %r", error, exc_info=error)
            return error
        if compressed:
            self._add("compressed", 1)
        return datagram

    def _datagram(self, request: RequestRecord, wire: str) -> tuple[bytes, bool]:
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

    def _degraded(self, request: RequestRecord, wire: str, full_size: int) -> tuple[bytes, bool]:
        """``request``, too large for a datagram, made to fit: ``(datagram, compressed)``.

        Sent without its timers; if still too large, without its request tags
        too: what is left, the fields pinba2 requires, always fits (the
        encoder caps every string, see ``pynba.wire.encoder.MAX_TEXT_BYTES``).
        """
        record = RequestRecord._make(request)
        timer_count = _length(record.timers)
        lost = []
        kind = "oversize"
        datagram = b""
        compressed = False
        if timer_count != 0:  # without timers, a request of none would be the same size
            lost.append(_several(timer_count, "timer"))
            datagram, compressed = self._datagram(record._replace(timers=()), wire)
        if timer_count == 0 or len(datagram) > MAX_DATAGRAM:
            kind = "oversize_tags"
            tag_count = _length(record.tags)
            if tag_count != 0:
                lost.append(_several(tag_count, "request tag"))
            datagram, compressed = self._datagram(record._replace(tags=(), timers=()), wire)
            self._add(kind, 1)
        self._add("oversize", 1)
        done = ["without its " + " and ".join(lost)] if lost else ["as it is"]
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
        self, server: _Server, stale: _Route | None
    ) -> tuple[_Route | None, OSError | None]:
        """A route to ``server`` for this send: (route, None), or (None, the error) when none.

        ``stale`` is the route the server had, whose descriptor is no longer
        its socket. Never looks a name up: that is the lookup thread's job.
        """
        if stale is not None:
            self._retire(server, stale)
        if server.is_literal:
            if server.resolved is None and server.lookup_error is None:
                self._take_literal(server)
        elif self._refresher is not None:
            self._refresher.start()  # on first use, and again in a forked child
        if server.resolved is None:
            error = _unknown_address(server)
            self._drop("resolve", server, error)
            return None, error
        try:
            return self._connect(server), None
        except OSError as error:
            self._drop(_error_kind(error), server, error)
            return None, error

    def _take_literal(self, server: _Server) -> None:
        """Parse an IP literal into its socket address: no lookup, so done on the spot."""
        found = _look_up(server.address, numeric=True)
        if isinstance(found, OSError):
            self._add("lookup_failed", 1)
            server.lookup_error = found
        else:
            server.resolved = found

    def _found(self, server: _Server, found: _Found) -> None:
        """Take the outcome of a lookup of ``server``'s name (in the lookup thread)."""
        now = time.monotonic()
        interval = max(self.resolve_interval, _MIN_LOOKUP_PAUSE)
        if isinstance(found, OSError):
            self._add("lookup_failed", 1)
            server.lookup_error = found
            resolved = server.resolved
            if resolved is None:
                server.failures += 1
                backoff = _FIRST_RETRY * 2 ** min(server.failures - 1, 32)
                server.next_lookup = now + min(backoff, interval)
            else:
                server.next_lookup = now + interval
                self._log(
                    "resolve",
                    "cannot resolve %s (%s); still sending to %s",
                    server.address,
                    found,
                    resolved[1][0],
                )
            return
        server.next_lookup = now + interval
        server.failures = 0
        server.lookup_error = None
        server.resolved = found
        try:
            self._connect(server)  # a send finds the route ready
        except OSError:
            pass  # the next send tries again, and counts why it cannot

    def _connect(self, server: _Server) -> _Route:
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
            resolved = server.resolved  # read here: a lookup may have just moved it
            assert resolved is not None, "connected before an address was found"
            family, sockaddr = resolved
            route = server.route
            if route is not None and route.sockaddr == sockaddr:
                # Looked up again and found the same address, or another
                # thread has just connected it.
                return route
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.connect(sockaddr)
                route = _Route(sock, sockaddr)
            except OSError:
                sock.close()
                raise
            old = self._sockets.pop(server, None)
            self._sockets[server] = route
            server.route = route
        if old is not None:
            old.release()  # a sender still holding it finds it closed and retries
        return route

    def _drop(self, kind: str, server: _Server, error: OSError | None) -> None:
        """Count (and unless raising, log) a datagram not sent to ``server``."""
        self._add("failed", 1)
        self._add(kind, 1)
        if not self.raise_on_fail:
            self._log(kind, "cannot send to %s: %s; datagram dropped", server.address, error)

    def _log(
        self, kind: str, message: str, *args: object, exc_info: BaseException | None = None
    ) -> None:
        """Log a warning unless one of the same kind was logged within log_interval."""
        self._limiter.interval = self.log_interval
        self._limiter.log(logging.WARNING, kind, message, *args, exc_info=exc_info)

    def _forget_inherited_state(self) -> None:
        """In a forked child: use sockets, locks and a lookup thread of the child's own."""
        self._socket_lock = threading.Lock()
        self._count_lock = threading.RLock()
        for server in self._servers:
            server.route = None
        _release_routes(self._sockets)  # the child's copies only: the parent's stay open
        if self._refresher is not None:
            self._refresher.forget_thread()


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


def _length(items: object) -> int | str:
    """How many ``items`` there are, or "?" for an iterator."""
    return len(items) if isinstance(items, Sized) else "?"


def _several(count: int | str, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _release_routes(routes: dict[_Server, _Route]) -> None:
    while routes:
        routes.popitem()[1].release()


def _shut_down(routes: dict[_Server, _Route], refresher: _Refresher | None) -> None:
    """A collected reporter's end: its lookup thread stops, its sockets close."""
    if refresher is not None:
        refresher.stop()
    _release_routes(routes)


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


# A descriptor closed (or reused) under the reporter between its check and
# the send.
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
    """The errno name of ``error`` (``"EAGAIN"``, ...), else its type's name."""
    if error.errno is None:
        return type(error).__name__
    return errno.errorcode.get(error.errno, type(error).__name__)


def _look_up(address: ServerAddress, numeric: bool) -> _Found:
    """``(family, sockaddr)`` for ``address``, else the error; ``numeric`` for an IP literal."""
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(
            address.host,
            address.port,
            socket.AF_UNSPEC,
            socket.SOCK_DGRAM,
            0,
            socket.AI_NUMERICHOST if numeric else 0,
        )[0]
    except (OSError, UnicodeError, IndexError) as error:
        if isinstance(error, OSError):
            return error
        return socket.gaierror(socket.EAI_NONAME, f"{type(error).__name__}: {error}")
    return family, sockaddr


def _unknown_address(server: _Server) -> OSError:
    """Why ``server`` has no address: its last lookup's error, or that none has ended yet."""
    error = server.lookup_error
    if error is None:
        return socket.gaierror(
            socket.EAI_AGAIN, f"the address of {server.address} is not known yet"
        )
    # A new exception each time: re-raising the stored one would grow its traceback.
    return type(error)(*error.args)


# Each live reporter's own after-fork method, held weakly: it goes with its reporter.
_fork_handlers: set[weakref.WeakMethod] = set()


def _after_fork_in_child() -> None:
    for handler in list(_fork_handlers):
        forget_inherited_state = handler()
        if forget_inherited_state is not None:
            forget_inherited_state()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


check_self_types(_Route, _Server)
check_self_types(Reporter, self_checking=("count", "report_request"))

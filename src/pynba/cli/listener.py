"""A UDP listener that receives Pinba datagrams and reads them as a server would.

``Listener(host, port)`` binds a socket; ``receive()`` returns each datagram
``examine()``-d: decoded (``request``), or why it could not be (``error``),
and every problem a Pinba server would drop it for (``drop_reasons``); or,
when pynba cannot read it at all (LZ4 without the ``lz4`` package), why
(``unreadable``), with no verdict.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass, field
from typing import Any

from ..address import DEFAULT_PORT, ServerAddress
from ..wire.decode import DecodeError, PinbaRequest, UnreadableError, decode_request, unframe
from ..wire.validate import Problem, check

__all__ = ["Listener", "PortInUseError", "Received", "examine"]

_RECEIVE_BUFFER = 4 << 20


@dataclass
class Received:
    """One datagram as a Pinba server would read it."""

    datagram: bytes
    sender: tuple[Any, ...] | None = None
    framing: str | None = None
    request: PinbaRequest | None = None
    error: str | None = None
    problems: list[Problem] = field(default_factory=list)
    #: Why pynba cannot read the datagram (a server might): then there is no verdict.
    unreadable: str | None = None

    @property
    def origin(self) -> str | None:
        """The sender as ``"host:port"`` (``"[::1]:port"`` for IPv6); None when unknown."""
        if not self.sender:
            return None
        return str(ServerAddress(self.sender[0], self.sender[1]))  # a client prints as a server

    @property
    def drop_reasons(self) -> list[str]:
        """Why a Pinba server would drop the packet; empty when it would accept it."""
        return [problem.reason for problem in self.problems if problem.drops]

    @property
    def warnings(self) -> list[str]:
        """Problems the server survives but a client should not send."""
        return [problem.reason for problem in self.problems if not problem.drops]

    @property
    def accepted(self) -> bool:
        """Decoded, and a Pinba server would accept it."""
        return self.request is not None and not self.drop_reasons

    def as_dict(self) -> dict[str, object]:
        """Plain JSON-ready values."""
        return {
            "sender": self.origin,
            "size": len(self.datagram),
            "framing": self.framing,
            "accepted": self.accepted,
            "unreadable": self.unreadable,
            "drop_reasons": self.drop_reasons,
            "warnings": self.warnings,
            "error": self.error,
            "request": None if self.request is None else self.request.as_dict(),
        }


def examine(datagram: bytes, sender: tuple[Any, ...] | None = None) -> Received:
    """Decode ``datagram`` and check it against pinba2's rules; never raises."""
    received = Received(bytes(datagram), sender)
    try:
        payload, received.framing = unframe(received.datagram)
        received.request = decode_request(payload)
    except UnreadableError as error:
        received.unreadable, received.framing = str(error), error.framing
        return received  # what a server would make of it cannot be told
    except DecodeError as error:
        received.error = str(error)
    except Exception as error:
        received.error = f"cannot decode the datagram: {error!r}"
    try:
        received.problems = check(received.datagram)
    except Exception as error:  # a checker bug must not stop a listener
        received.problems = [Problem(f"cannot check the datagram: {error!r}")]
    if received.error and not received.drop_reasons:
        received.problems.append(Problem(received.error))
    return received


class PortInUseError(OSError):
    """The UDP port is taken; the message says how to choose another."""


class Listener:
    """A UDP socket receiving Pinba datagrams: ``Listener("127.0.0.1", 30002)``.

    Port 0 picks a free port; ``address`` tells which.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
            self.sock.bind((host, port))
        except OSError as error:
            self.sock.close()
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                taken = "already in use" if error.errno == errno.EADDRINUSE else "not allowed"
                raise PortInUseError(
                    error.errno,
                    f"UDP port {port} on {host} is {taken} (a Pinba server or another "
                    f"listener may have it). Choose another with --port, e.g. --port "
                    f"{port + 1 if port else 30003}, and send to {host}:PORT.",
                ) from None
            raise
        self.host = host
        self.port = self.sock.getsockname()[1]

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``, as ``Reporter`` and the middleware take it."""
        return (self.host, self.port)

    @property
    def server(self) -> str:
        """``"host:port"`` (``"[::1]:port"`` for IPv6), as ``PINBA_SERVER`` takes it."""
        return str(ServerAddress(self.host, self.port))

    def receive(self, timeout: float | None = None) -> Received | None:
        """The next datagram, examined; None when ``timeout`` seconds pass without one."""
        self.sock.settimeout(timeout)
        try:
            datagram, sender = self.sock.recvfrom(65535)
        except TimeoutError:
            return None
        return examine(datagram, sender)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Listener {self.server}>"

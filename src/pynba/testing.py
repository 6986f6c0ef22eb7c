"""Asserting on what an application sends to Pinba, in its own tests.

    from pynba.testing import PinbaListener

    with PinbaListener() as pinba:
        app = PynbaMiddleware(wsgi_app, pinba.address)
        ...  # make a request
        packets = pinba.wait_for(1)
    assert packets[0].script_name == "/users/{id}"

The listener binds a free loopback UDP port and collects every datagram in a
background thread, decoded (``pynba.wire.decode.PinbaRequest``) and checked
against pinba2's rules. Under pytest the ``pinba_listener`` fixture gives one
per test (registered by the ``pytest11`` entry point when pynba is installed).
"""

from __future__ import annotations

import threading
import time

from .cli.listener import Listener, Received
from .wire.decode import PinbaRequest

__all__ = ["PinbaListener"]


class PinbaListener:
    """A UDP listener on a free loopback port that collects decoded Pinba packets.

    ``address`` is its ``(host, port)``; ``server`` the same as ``"host:port"``
    (what ``PINBA_SERVER`` settings take).
    ``packets`` holds the decoded requests in arrival order, ``received``
    every datagram with its verdict (``drop_reasons``).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._listener = Listener(host, port)
        self.address = self._listener.address
        self.server = self._listener.server
        self.received: list[Received] = []
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._collect, name="pynba-listener", daemon=True)
        self._thread.start()

    @property
    def packets(self) -> list[PinbaRequest]:
        """The requests decoded so far, in arrival order."""
        with self._changed:
            return [r.request for r in self.received if r.request is not None]

    @property
    def rejected(self) -> list[Received]:
        """The datagrams a Pinba server would drop."""
        with self._changed:
            return [r for r in self.received if not r.accepted]

    def __repr__(self) -> str:
        return f"<PinbaListener {self.server}, {len(self.received)} received>"

    def _collect(self) -> None:
        while not self._stopping.is_set():
            try:
                received = self._listener.receive(timeout=0.05)
            except OSError:
                return  # closed
            if received is not None:
                with self._changed:
                    self.received.append(received)
                    self._changed.notify_all()

    def wait_for(
        self, count: int = 1, timeout: float = 5.0, valid: bool = True
    ) -> list[PinbaRequest]:
        """The first ``count`` packets, once they have arrived.

        Raises AssertionError when they do not arrive within ``timeout``
        seconds, or (with ``valid``) when a datagram received so far would be
        dropped by a Pinba server, saying why.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{len(self.received)} of {count} Pinba packets arrived at "
                        f"{self.server} within {timeout} s"
                    )
                self._changed.wait(left)
            received = list(self.received)
        if valid:
            self.assert_valid()
        return [r.request for r in received[:count] if r.request is not None]

    def assert_valid(self) -> None:
        """AssertionError listing every datagram a Pinba server would drop, and why."""
        rejected = self.rejected
        if rejected:
            lines = [f"{len(rejected)} datagram(s) a Pinba server would drop:"]
            for received in rejected:
                reasons = "; ".join(received.drop_reasons or [received.error or "?"])
                lines.append(f"  {len(received.datagram)} bytes: {reasons}")
            raise AssertionError("\n".join(lines))

    def clear(self) -> None:
        """Forget what was received so far."""
        with self._changed:
            self.received.clear()

    def close(self) -> None:
        self._stopping.set()
        self._thread.join()
        self._listener.close()

    def __enter__(self) -> PinbaListener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

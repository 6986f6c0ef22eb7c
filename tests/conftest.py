"""Shared fixtures: both encoders, and real UDP listeners on 127.0.0.1."""

import importlib
import os
import socket
import sys

import pytest

from pynba.context import _current as _current_request
from pynba.wire import fallback

# Errors inside pynba are raised, not logged, in the project's own tests.
os.environ.setdefault("PYNBA_STRICT", "1")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def compiled_encoder():
    """The compiled encoder module, or None when it is not built."""
    try:
        return importlib.import_module("pynba.wire._encoder")
    except ImportError:
        if IN_CI or os.environ.get("PYNBA_REQUIRE_COMPILED") == "1":
            raise
        return None


@pytest.fixture(params=["pure", "compiled"])
def encode(request):
    """Each encoder's ``encode`` in turn (the compiled one skips when not built)."""
    if request.param == "pure":
        return fallback.encode
    module = compiled_encoder()
    if module is None:
        pytest.skip("the compiled encoder is not built")
    return module.encode


class UDPListener:
    """A real UDP socket bound to a free loopback port."""

    def __init__(self, host="127.0.0.1", family=socket.AF_INET):
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((host, 0))
        self.host = host
        self.port = self.sock.getsockname()[1]

    @property
    def address(self):
        return (self.host, self.port)

    def receive(self, timeout=5.0):
        """The next datagram's bytes; raises socket.timeout when none comes."""
        self.sock.settimeout(timeout)
        data, _ = self.sock.recvfrom(70000)
        return data

    def receive_request(self, timeout=5.0):
        """The next datagram decoded by Google protobuf."""
        return decode(self.receive(timeout))

    def pending(self, timeout=0.2):
        """Every datagram that arrives within ``timeout`` of the last one."""
        out = []
        while True:
            try:
                out.append(self.receive(timeout))
            except TimeoutError:
                return out

    def close(self):
        self.sock.close()


def decode(data):
    from pinba_pb2 import Request

    message = Request()
    message.ParseFromString(data)
    return message


@pytest.fixture
def reporter_factory():
    """Makes Reporters, each closed when the test ends."""
    from pynba.reporter import Reporter

    made = []

    def make(*args, **kwargs):
        reporter = Reporter(*args, **kwargs)
        made.append(reporter)
        return reporter

    yield make
    for reporter in made:
        reporter.close()


@pytest.fixture
def udp_listener():
    listener = UDPListener()
    yield listener
    listener.close()


@pytest.fixture
def udp_listener_factory():
    made = []

    def make(host="127.0.0.1", family=socket.AF_INET):
        listener = UDPListener(host, family)
        made.append(listener)
        return listener

    yield make
    for listener in made:
        listener.close()


@pytest.fixture
def frequent_thread_switches():
    """Switch threads as often as the interpreter can: a lost update shows at once."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


@pytest.fixture(autouse=True)
def _internal_errors_logged_afresh(monkeypatch):
    """Each test sees pynba's internal errors logged, whatever earlier tests logged."""
    from pynba import errors
    from pynba.ratelimit import LogLimiter

    monkeypatch.setattr(errors, "_internal_errors", LogLimiter())


@pytest.fixture(autouse=True)
def _no_request_leaks_between_tests():
    """Each test starts outside any pynba request, whatever the last one left."""
    token = _current_request.set(None)
    yield
    _current_request.reset(token)


def pytest_configure(config):
    # Installed, pynba registers its pytest plugin (the pinba_listener fixture)
    # through an entry point; a source tree run without installing registers it here.
    if not config.pluginmanager.has_plugin("pynba"):
        config.pluginmanager.register(importlib.import_module("pynba.pytest_plugin"), "pynba")

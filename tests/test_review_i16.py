"""Hostile uses of the per-request fast paths: what an application may do, and pynba survive."""

import pytest

from packets import receive
from pynba import PynbaMiddleware
from pynba.reporter import Reporter


def call(middleware, path="/p"):
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "SERVER_NAME": "example",
        "wsgi.url_scheme": "http",
    }
    body = middleware(environ, lambda status, headers, exc_info=None: None)
    chunks = list(body)
    body.close()
    return chunks


def hello(environ, start_response):
    start_response("200 OK", [])
    return [b"hello"]


class HostileStr(str):
    """A str whose own methods must never be called by pynba."""

    def __hash__(self):
        raise AssertionError("__hash__ called")

    def __eq__(self, other):
        raise AssertionError("__eq__ called")

    def __str__(self):
        raise AssertionError("__str__ called")


# -- the WSGI namer --------------------------------------------------------------


def test_a_middleware_subclass_that_overrides_default_script_name_names_its_requests(
    udp_listener,
):
    class Named(PynbaMiddleware):
        def default_script_name(self, environ):
            return "/named" + environ["PATH_INFO"]

    class Plain(PynbaMiddleware):
        pass

    call(Named(hello, udp_listener.address), "/p")
    assert receive(udp_listener).script_name == "/named/p"
    call(Plain(hello, udp_listener.address), "/q")  # one that does not: the path, as ever
    assert receive(udp_listener).script_name == "/q"


# -- the reporter's counters ------------------------------------------------------


def test_a_counter_kind_of_a_str_subclass_loses_no_update():
    reporter = Reporter("127.0.0.1:9")

    class Kind(str):
        hashes = 0
        nested = 0

        def __hash__(self):
            Kind.hashes += 1
            if Kind.hashes == 2:  # between the read and the write of stats[kind]:
                Kind.nested += 1
                reporter.count("k")  # as another thread would
            return str.__hash__(self)

    reporter.count("k")
    reporter.count(Kind("k"))
    assert reporter.stats["k"] == 2 + Kind.nested  # every increment counted
    assert all(type(kind) is str for kind in reporter.stats)


def test_a_counter_amount_of_an_int_subclass_loses_no_update():
    reporter = Reporter("127.0.0.1:9")

    class Amount(int):
        nested = 0

        def __radd__(self, other):
            Amount.nested += 1
            reporter.count("m")  # between the read and the write of stats["m"]
            return int(other) + int(self)

    reporter.count("m")
    reporter.count("m", Amount(5))
    assert reporter.stats["m"] == 6 + Amount.nested
    assert type(reporter.stats["m"]) is int
    with pytest.raises(TypeError, match="n must be an int"):
        reporter.count("m", True)
    with pytest.raises(ValueError, match="n must be >= 0"):
        reporter.count("m", Amount(-1))

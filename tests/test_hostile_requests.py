"""Hostile uses of the per-request fast paths: what an application may do, and pynba survive."""

import pytest

from packets import make_collector, receive
from pynba import PynbaMiddleware, pynba
from pynba.collector import CollectorSettings, RequestCollector
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


# -- request tags -----------------------------------------------------------------


def test_delete_tag_takes_a_tag_name_as_set_tag_does(udp_listener):
    collector = make_collector(udp_listener, tags={"a": "1", "b": "2"})
    with pytest.raises(TypeError, match="tag names must be str"):
        collector.delete_tag(1)
    with pytest.raises(ValueError, match="must not be empty"):
        collector.delete_tag("")
    collector.delete_tag(HostileStr("a"))  # its plain text, no method of its own called
    collector.finish()
    assert receive(udp_listener).tags == [("b", "2")]


def test_hostile_names_and_values_set_through_pynba_in_a_request(udp_listener):
    def app(environ, start_response):
        pynba.set_tag(HostileStr("name"), HostileStr("value"))
        pynba.set_tag("nul\x00name", "nul\x00value")
        pynba.set_tag("huge", "x" * 100_000)
        pynba.set_tag("gone", "x")
        pynba.delete_tag(HostileStr("gone"))
        with pytest.raises(TypeError):
            pynba.set_tag(b"bytes", "x")
        with pytest.raises(TypeError):
            pynba.delete_tag(None)
        start_response("200 OK", [])
        return [b"x"]

    call(PynbaMiddleware(app, udp_listener.address))
    tags = dict(receive(udp_listener).tags)
    assert tags.keys() == {"name", "nul\ufffdname", "huge"}
    assert tags["name"] == "value" and tags["nul\ufffdname"] == "nul\ufffdvalue"
    assert tags["huge"] == "x" * 1024  # cut to what pinba2 keeps


def test_requests_never_change_the_configured_tags(udp_listener):
    def late():
        collector.set_tag("late", "1")  # while the packet is made
        collector.delete_tag("plain")
        return "called"

    configured = {"plain": "p", "list": ["x", "y"], "late": late}
    settings = CollectorSettings(Reporter(udp_listener.address), tags=configured)
    collector = RequestCollector(settings)
    entries = dict(settings.tag_entries)
    collector.set_tag("plain", "changed")
    collector.set_tag("mine", ["a", "b"])
    collector.delete_tag("list")
    collector.finish()
    assert sorted(receive(udp_listener).tags) == [
        ("late", "called"),
        ("mine", "a"),
        ("mine", "b"),
        ("plain", "changed"),
    ]
    collector = RequestCollector(settings)  # changes nothing: the configured tags
    collector.finish()
    assert sorted(receive(udp_listener).tags) == [
        ("late", "called"),
        ("list", "x"),
        ("list", "y"),
        ("plain", "p"),
    ]
    assert settings.tag_entries == entries
    assert settings.tags == {"plain": "p", "list": ["x", "y"], "late": late}


def test_tags_set_by_another_thread_while_the_request_ends_lose_no_packet(udp_listener):
    """The request's tags are read from a copy where another thread can change them meanwhile."""
    import sys
    import threading

    settings = CollectorSettings(Reporter(udp_listener.address))
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # a switch between any two steps of the loop
    try:
        for _ in range(300):
            collector = RequestCollector(settings, "/x")
            for number in range(200):
                collector.set_tag(f"t{number}", "v")
            done = threading.Event()

            def churn(collector=collector, done=done):
                number = 0
                while not done.is_set():
                    collector.set_tag(f"x{number}", "v")
                    collector.delete_tag(f"x{number}")
                    number += 1

            thread = threading.Thread(target=churn)
            thread.start()
            try:
                collector.finish()
            finally:
                done.set()
                thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert settings.reporter.stats["sent"] == 300
    assert settings.reporter.stats.get("failed", 0) == 0

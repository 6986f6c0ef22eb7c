"""pynba's own failures: counted, logged at most once a minute, never raised into the app."""

import logging

import pytest

from packets import make_collector, receive, receive_all
from pynba import PynbaMiddleware, pynba
from pynba.context import activate, deactivate


@pytest.fixture
def lenient(monkeypatch):
    monkeypatch.delenv("PYNBA_STRICT", raising=False)


def broken():
    raise LookupError("no such shard")


def test_a_failing_timer_tag_callable_is_dropped_and_counted(lenient, udp_listener):
    @pynba.timer(group="db", shard=broken)
    def query(x):
        return x * 2

    collector = make_collector(udp_listener)
    token = activate(collector)
    try:
        assert [query(i) for i in range(3)] == [0, 2, 4]
    finally:
        deactivate(token)
    collector.finish()
    packet = receive(udp_listener)
    assert packet.timer(group="db").hit_count == 3
    assert collector.reporter.stats["tag_failed"] == 3


def test_a_timer_whose_only_tag_fails_times_nothing(lenient, udp_listener):
    @pynba.timer(shard=broken)
    def query():
        return "rows"

    collector = make_collector(udp_listener)
    token = activate(collector)
    try:
        assert query() == "rows"
    finally:
        deactivate(token)
    collector.finish()
    assert receive(udp_listener).timers == []


def test_strict_mode_raises_a_failing_timer_tag(udp_listener):
    @pynba.timer(group="db", shard=broken)
    def query():
        return "rows"

    collector = make_collector(udp_listener)
    token = activate(collector)
    try:
        with pytest.raises(LookupError):
            query()
    finally:
        deactivate(token)


def test_a_failing_script_name_callable_logs_once_not_per_request(lenient, udp_listener, caplog):
    def app(environ, start_response):
        start_response("200 OK", [])
        return [b"ok"]

    def script_name(environ):
        raise KeyError("route")

    middleware = PynbaMiddleware(app, udp_listener.address, script_name=script_name)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}
    with caplog.at_level(logging.WARNING, logger="pynba"):
        for _ in range(50):
            result = middleware(dict(environ), lambda status, headers, exc_info=None: None)
            b"".join(result)
            result.close()
    packets = receive_all(udp_listener, 50)
    assert {packet.script_name for packet in packets} == {""}
    logged = [r for r in caplog.records if "script_name failed" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None


def test_a_failing_request_tag_is_counted(lenient, udp_listener):
    collector = make_collector(udp_listener, tags={"shard": broken, "app": "shop"})
    collector.finish()
    assert receive(udp_listener).tags == [("app", "shop")]
    assert collector.reporter.stats["tag_failed"] == 1

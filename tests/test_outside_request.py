"""pynba never raises into the application: outside a request, after it, or to skip one."""

import asyncio
import gc
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from packets import make_collector, receive
from pynba import PynbaMiddleware, Timer, pynba
from pynba.context import OUTSIDE, activate, deactivate
from pynba.timer import NOOP_TIMER


@pytest.fixture
def lenient(monkeypatch):
    """The production default: no strict mode (the suite runs with PYNBA_STRICT=1)."""
    monkeypatch.delenv("PYNBA_STRICT", raising=False)


def test_outside_a_request_every_use_of_the_proxy_does_nothing(lenient, caplog):
    caplog.set_level(logging.DEBUG, logger="pynba")
    assert not pynba.active and pynba.collector is None
    with pynba.timer(group="db", op="select") as timer:
        pass
    assert timer.elapsed == 0.0 and timer.hit_count == 0 and not timer.started
    timer.start().stop()
    timer.add(1.5, hit_count=2)
    assert timer.clone() is timer
    timer.delete()
    pynba.set_tag("route", "users")
    pynba.delete_tag("route")
    pynba.script_name = "/cron/cleanup"
    pynba.document_size = 10
    pynba.enabled = False
    assert pynba.script_name is None and pynba.document_size is None
    assert dict(pynba.tags) == {} and pynba.timers == ()
    pynba.flush()
    pynba.stop_timers()
    assert pynba.collector is None  # nothing was made current along the way
    ignored = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("set_tag outside a monitored request" in m for m in ignored)
    assert any("start() outside a monitored request" in m for m in ignored)


def test_outside_a_request_a_typo_is_still_an_error(lenient):
    with pytest.raises(AttributeError, match="no_such_field"):
        pynba.no_such_field = 1


def test_strict_mode_turns_the_no_ops_into_errors(monkeypatch):
    monkeypatch.setenv("PYNBA_STRICT", "1")
    with pytest.raises(RuntimeError, match="no monitored request"):
        pynba.set_tag("route", "users")
    with pytest.raises(RuntimeError, match="no monitored request"):
        with pynba.timer(group="db"):
            pass


def test_a_decorator_still_times_calls_inside_requests_and_nothing_outside(lenient, udp_listener):
    @pynba.timer(group="decorated")
    def work(x):
        return x + 1

    assert work(1) == 2  # outside: not timed, no error
    collector = make_collector(udp_listener)
    token = activate(collector)
    try:
        assert work(2) == 3
    finally:
        deactivate(token)
    collector.finish()
    assert receive(udp_listener).timer(group="decorated").hit_count == 1


def test_a_thread_the_request_did_not_hand_its_context_to_is_outside(lenient, udp_listener):
    collector = make_collector(udp_listener)
    token = activate(collector)
    errors = []

    def job():
        try:
            with pynba.timer(group="thread"):
                pynba.set_tag("in", "thread")
        except BaseException as error:  # pragma: no cover - the failure being tested
            errors.append(error)

    try:
        thread = threading.Thread(target=job)
        thread.start()
        thread.join()
        with ThreadPoolExecutor(1) as pool:
            pool.submit(job).result()
    finally:
        deactivate(token)
    collector.finish()
    packet = receive(udp_listener)
    assert errors == [] and packet.timers == [] and packet.tags == []


def test_timers_made_after_the_request_ended_do_nothing_and_pile_nothing_up(lenient, udp_listener):
    collector = make_collector(udp_listener)
    token = activate(collector)
    kept = collector.timer(group="kept")
    try:
        with kept:
            pass
        collector.finish()
        assert receive(udp_listener).timer(group="kept").hit_count == 1

        gc.collect()
        before = sum(type(o) is Timer for o in gc.get_objects())
        for _ in range(100_000):
            with pynba.timer(group="late", op="x"):
                pass
        assert pynba.timer(group="late") is NOOP_TIMER
        assert kept.clone() is NOOP_TIMER
        with kept:  # a timer of the ended request, used again: measured, not sent
            pass
        assert Timer({"group": "late"}, collector).hit_count == 0
        gc.collect()
        after = sum(type(o) is Timer for o in gc.get_objects())
    finally:
        deactivate(token)
    assert collector.timers == ()
    assert after - before <= 1  # the Timer made just above, at most
    assert udp_listener.pending() == []


def test_a_task_that_outlives_its_request_does_not_fail(lenient, udp_listener):
    collector = make_collector(udp_listener)

    async def background():
        await asyncio.sleep(0.01)  # the request has ended by now
        assert pynba.timer(group="late") is NOOP_TIMER
        with pynba.timer(group="late"):
            pynba.set_tag("late", "yes")

    async def request():
        token = activate(collector)
        try:
            task = asyncio.ensure_future(background())
        finally:
            deactivate(token)
        collector.finish()
        await task

    asyncio.run(request())
    packet = receive(udp_listener)
    assert packet.timers == [] and packet.tags == []


def test_strict_mode_reports_a_timer_made_after_the_request(monkeypatch, udp_listener):
    monkeypatch.setenv("PYNBA_STRICT", "1")
    collector = make_collector(udp_listener)
    collector.finish()
    with pytest.raises(RuntimeError, match="after its request ended"):
        collector.timer(group="late")


def hello(environ, start_response):
    if environ["PATH_INFO"] == "/favicon.ico":
        pynba.enabled = False  # the original README's way to skip a request
    with pynba.timer(group="render"):
        pass
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def call(app, path):
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
    }
    statuses = []
    result = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
    body = b"".join(result)
    result.close()
    return statuses[0], body


def test_enabled_false_during_a_request_skips_its_packet(udp_listener):
    app = PynbaMiddleware(hello, udp_listener.address)
    assert call(app, "/favicon.ico") == ("200 OK", b"hello")
    assert call(app, "/page") == ("200 OK", b"hello")
    packet = receive(udp_listener)
    assert packet.script_name == "/page"
    assert udp_listener.pending() == []


def test_enabled_can_be_read_and_turned_back_on(udp_listener):
    collector = make_collector(udp_listener)
    assert collector.enabled
    collector.enabled = False
    assert not collector.enabled
    collector.enabled = True
    collector.finish()
    assert receive(udp_listener).script_name == "test"


def test_outside_and_disabled_are_told_apart_by_active_and_collector(lenient):
    assert pynba.collector is None and not pynba.active
    assert OUTSIDE.script_name is None

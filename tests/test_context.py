"""The current request and the ``pynba`` proxy: threads, asyncio tasks, greenlets."""

import asyncio
import contextvars
import copy
import pickle
import threading

import pytest

from packets import make_collector, receive_all
from pynba import pynba
from pynba.context import DISABLED, UnboundTimer, activate, current_collector, deactivate
from pynba.timer import NOOP_TIMER


@pytest.fixture
def collector(udp_listener):
    return make_collector(udp_listener)


def test_outside_a_request_strict_mode_raises_a_clear_error(monkeypatch):
    monkeypatch.setenv("PYNBA_STRICT", "1")
    assert current_collector() is None
    assert pynba.collector is None and not pynba.active
    with pytest.raises(RuntimeError, match="no monitored request"):
        _ = pynba.script_name
    with pytest.raises(RuntimeError, match="PynbaMiddleware"):
        pynba.document_size = 10
    with pytest.raises(RuntimeError):
        pynba.flush()


def test_inside_a_request_the_proxy_reaches_its_collector(collector, udp_listener):
    token = activate(collector)
    try:
        assert pynba.collector is collector and pynba.active
        pynba.script_name = "/proxy"
        pynba.document_size = 42
        pynba.memory_peak = 1 << 20
        pynba.set_tag("route", "r")
        with pynba.timer(group="db"):
            pass
        assert pynba.script_name == "/proxy"
        assert [t.tags for t in pynba.timers] == [(("group", "db"),)]
        with pytest.raises(AttributeError):
            _ = pynba.no_such_thing
        assert "timer" in dir(pynba) and "script_name" in dir(pynba)
    finally:
        deactivate(token)
    collector.finish()
    (packet,) = receive_all(udp_listener, 1)
    assert (packet.script_name, packet.document_size, packet.memory_peak) == ("/proxy", 42, 1 << 20)
    assert packet.tags == [("route", "r")]
    assert packet.timer_tags() == [(("group", "db"),)]


@pytest.mark.parametrize(
    "duplicate", [copy.copy, copy.deepcopy, lambda p: pickle.loads(pickle.dumps(p))]
)
def test_a_copy_or_unpickled_proxy_reaches_the_current_collector(duplicate, collector):
    proxy = duplicate(pynba)
    token = activate(collector)
    try:
        proxy.set_tag("copied", "yes")
        assert (proxy.collector, proxy.tags["copied"]) == (collector, "yes")
    finally:
        deactivate(token)


def test_nested_requests_restore_the_outer_one(udp_listener):
    outer = make_collector(udp_listener, script_name="outer")
    inner = make_collector(udp_listener, script_name="inner")
    outer_token = activate(outer)
    inner_token = activate(inner)
    assert pynba.collector is inner
    deactivate(inner_token)
    assert pynba.collector is outer
    deactivate(outer_token)
    assert pynba.collector is None
    deactivate(outer_token)  # twice: harmless


# Applied at import time, outside any request.
@pynba.timer(group="decorated", kind="sync")
def decorated(x):
    return x * 2


@pynba.timer(group="decorated", kind="async")
async def decorated_async(x):
    await asyncio.sleep(0)
    return x * 3


def test_a_timer_decorator_applied_at_import_time_times_calls_in_requests(collector, udp_listener):
    assert decorated(1) == 2  # outside a request: not timed, still works
    assert asyncio.run(decorated_async(1)) == 3
    token = activate(collector)
    try:
        assert decorated(2) == 4
        assert decorated(3) == 6
        assert asyncio.run(decorated_async(2)) == 6
    finally:
        deactivate(token)
    collector.finish()
    (packet,) = receive_all(udp_listener, 1)
    assert packet.timer(group="decorated", kind="sync").hit_count == 2
    assert packet.timer(group="decorated", kind="async").hit_count == 1


def test_a_timer_made_outside_a_request_can_only_decorate_in_strict_mode(monkeypatch):
    monkeypatch.setenv("PYNBA_STRICT", "1")
    timer = pynba.timer(group="x")
    assert isinstance(timer, UnboundTimer)
    for use in (timer.start, timer.stop, timer.clone, timer.__enter__, lambda: timer.add(1.0)):
        with pytest.raises(RuntimeError, match="only decorate"):
            use()
    with pytest.raises(RuntimeError):
        with timer:
            pass


def test_a_timer_made_outside_a_request_still_checks_its_tags():
    with pytest.raises(ValueError, match="at least one tag"):
        pynba.timer()
    with pytest.raises(TypeError, match="tag 'bad'"):
        pynba.timer(bad={1.5: "x"})
    with pytest.raises(ValueError):
        pynba.timer(**{"": "x"})


def test_disabled_requests_hand_out_the_noop_timer_and_accept_fields():
    token = activate(DISABLED)
    try:
        assert pynba.collector is DISABLED and not pynba.active
        timer = pynba.timer(group="x")
        assert timer is NOOP_TIMER
        with timer:
            pass
        pynba.document_size = 5
        pynba.script_name = "/x"
        pynba.set_tag("a", "b")
        pynba.flush()
        assert pynba.document_size is None and dict(pynba.tags) == {}
        with pytest.raises(AttributeError):
            pynba.typo_field = 1
    finally:
        deactivate(token)


def _run_request(collector, ident, barrier):
    token = activate(collector)
    try:
        barrier.wait()
        for step in range(5):
            with pynba.timer(owner=ident, step=str(step)):
                pynba.set_tag("owner", ident)
            barrier_free_yield()
        pynba.script_name = f"/req/{ident}"
    finally:
        deactivate(token)
    collector.finish()


def barrier_free_yield():
    threading.Event().wait(0.0005)  # let the other threads run in between


def check_isolated(packets, count):
    assert len(packets) == count
    seen = set()
    for packet in packets:
        ident = packet.script_name.rsplit("/", 1)[1]
        seen.add(ident)
        assert packet.tags == [("owner", ident)]
        assert {dict(t.tags)["owner"] for t in packet.timers} == {ident}
        assert len(packet.timers) == 5
    assert len(seen) == count


def test_32_threads_each_see_only_their_own_request(udp_listener):
    barrier = threading.Barrier(32)
    threads = [
        threading.Thread(target=_run_request, args=(make_collector(udp_listener), f"t{i}", barrier))
        for i in range(32)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    check_isolated(receive_all(udp_listener, 32), 32)


def test_200_asyncio_tasks_each_see_only_their_own_request(udp_listener):
    async def request(ident, started):
        collector = make_collector(udp_listener)
        activate(collector)  # a task runs in a copy of the context: no reset needed
        started.append(ident)
        for step in range(5):
            with pynba.timer(owner=ident, step=str(step)):
                pynba.set_tag("owner", ident)
                await asyncio.sleep(0)
        pynba.script_name = f"/req/{ident}"
        collector.finish()

    async def main():
        started = []
        await asyncio.gather(*(request(f"a{i}", started) for i in range(200)))
        return started

    assert len(asyncio.run(main())) == 200
    assert current_collector() is None  # the tasks' contexts did not leak here
    check_isolated(receive_all(udp_listener, 200), 200)


def test_gevent_greenlets_each_see_only_their_own_request(udp_listener):
    gevent = pytest.importorskip("gevent")

    def request(ident):
        collector = make_collector(udp_listener)
        token = activate(collector)
        try:
            for step in range(5):
                with pynba.timer(owner=ident, step=str(step)):
                    pynba.set_tag("owner", ident)
                    gevent.sleep(0)
            pynba.script_name = f"/req/{ident}"
        finally:
            deactivate(token)
        collector.finish()

    # Run in a fresh context so the greenlets do not share the test's own.
    contextvars.copy_context().run(
        lambda: gevent.joinall([gevent.spawn(request, f"g{i}") for i in range(50)])
    )
    check_isolated(receive_all(udp_listener, 50), 50)

"""Timers: start/stop, context manager, decorator, re-entry, clone, delete, add, CPU."""

import asyncio
import time

import pytest

from packets import make_collector, receive
from pynba.timer import NOOP_TIMER, Timer


@pytest.fixture
def collector(udp_listener):
    return make_collector(udp_listener)


def busy(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_start_stop_measures_one_hit(collector):
    timer = collector.timer(group="db")
    assert not timer.started and timer.hit_count == 0 and timer.elapsed == 0.0
    assert timer.start() is timer
    assert timer.started
    time.sleep(0.002)
    assert timer.elapsed >= 0.002  # readable while running
    assert timer.stop() is timer
    assert not timer.started
    assert timer.hit_count == 1
    assert timer.elapsed >= 0.002
    assert timer.elapsed == timer.elapsed  # frozen once stopped


def test_misuse_of_start_and_stop_is_a_runtime_error(collector):
    timer = collector.timer(group="db")
    with pytest.raises(RuntimeError, match="not started"):
        timer.stop()
    timer.start()
    with pytest.raises(RuntimeError, match="already started"):
        timer.start()


def test_starting_a_stopped_timer_again_adds_to_it(collector, udp_listener):
    timer = collector.timer(group="db")
    for _ in range(3):
        with timer:
            time.sleep(0.001)
    assert timer.hit_count == 3
    assert timer.elapsed >= 0.003
    collector.finish()
    sent = receive(udp_listener).timer(group="db")
    assert sent.hit_count == 3
    assert sent.value == pytest.approx(timer.elapsed, rel=1e-6)


def test_the_context_manager_stops_on_exceptions_and_lets_them_through(collector):
    timer = collector.timer(group="db")
    with pytest.raises(ZeroDivisionError):
        with timer as entered:
            assert entered is timer and timer.started
            _ = 1 / 0
    assert not timer.started and timer.hit_count == 1


def test_the_decorator_times_each_call_with_a_fresh_clone(collector, udp_listener):
    template = collector.timer(group="calc")
    depth = []

    @template
    def factorial(n):
        depth.append(sum(t.started for t in collector.timers))
        return 1 if n <= 1 else n * factorial(n - 1)

    assert factorial.__name__ == "factorial"
    assert factorial(4) == 24
    assert depth == [1, 2, 3, 4]  # recursion: each level has its own running timer
    assert template.hit_count == 0
    collector.finish()
    sent = receive(udp_listener)
    assert sent.timer(group="calc").hit_count == 4  # merged by tags on the wire


def test_the_decorator_on_async_def_times_the_awaited_call(collector):
    timer = collector.timer(group="io")

    @timer
    async def fetch():
        running = [t for t in collector.timers if t.started]
        assert len(running) == 1  # running while the coroutine runs, not at its creation
        await asyncio.sleep(0.01)
        return "done"

    coroutine = fetch()
    assert [t.hit_count for t in collector.timers] == [0]  # nothing timed by creating it
    assert asyncio.run(coroutine) == "done"
    clones = [t for t in collector.timers if t is not timer]
    assert len(clones) == 1
    assert clones[0].hit_count == 1 and clones[0].elapsed >= 0.01


def _clones(collector, timer):
    return [t for t in collector.timers if t is not timer]


def test_the_decorator_on_a_generator_function_times_the_whole_iteration(collector):
    timer = collector.timer(group="rows")

    @timer
    def rows():
        for i in range(3):
            time.sleep(0.005)
            yield i
        return "end"

    iterator = rows()
    assert _clones(collector, timer) == []  # nothing timed by creating it
    assert list(iterator) == [0, 1, 2]
    (clone,) = _clones(collector, timer)
    assert clone.hit_count == 1 and clone.elapsed >= 0.015 and not clone.started

    def delegate():
        return (yield from rows())

    generator = delegate()
    assert next(generator) == 0
    with pytest.raises(StopIteration) as stop:
        while True:
            next(generator)
    assert stop.value.value == "end"  # the generator's return value goes through


def test_the_decorator_on_an_async_generator_function_times_the_whole_iteration(collector):
    timer = collector.timer(group="stream")

    @timer
    async def chunks():
        for i in range(3):
            await asyncio.sleep(0.005)
            yield i

    async def consume():
        return [chunk async for chunk in chunks()]

    assert asyncio.run(consume()) == [0, 1, 2]
    (clone,) = _clones(collector, timer)
    assert clone.hit_count == 1 and clone.elapsed >= 0.015 and not clone.started


def test_the_decorator_on_an_object_with_async_call_times_the_await(collector):
    timer = collector.timer(group="handler")

    class Handler:
        async def __call__(self, delay):
            await asyncio.sleep(delay)
            return delay

    handler = timer(Handler())
    assert asyncio.run(handler(0.01)) == 0.01
    (clone,) = _clones(collector, timer)
    assert clone.hit_count == 1 and clone.elapsed >= 0.01 and not clone.started


def test_the_decorator_refuses_non_callables(collector):
    with pytest.raises(TypeError, match="decorates a function"):
        collector.timer(group="x")(42)


def test_clone_copies_tags_and_data_not_measurements(collector):
    timer = collector.timer(group="db", op="select")
    timer.data = {"sql": "select 1"}
    with timer:
        pass
    twin = timer.clone()
    assert twin is not timer
    assert twin.tags == timer.tags and twin.data is timer.data
    assert twin.hit_count == 0 and not twin.started
    assert twin in collector.timers


def test_deleted_timers_and_data_are_not_sent(collector, udp_listener):
    kept = collector.timer(group="kept")
    kept.data = "secret-data"
    gone = collector.timer(group="gone")
    for timer in (kept, gone):
        with timer:
            pass
    gone.delete()
    gone.delete()  # twice is harmless
    assert gone not in collector.timers
    collector.finish()
    packet = receive(udp_listener)
    assert packet.timer_tags() == [(("group", "kept"),)]
    assert b"secret-data" not in packet.datagram


def test_add_records_a_value_measured_elsewhere(collector, udp_listener):
    timer = collector.timer(group="external")
    timer.add(0.25)
    timer.add(0.5, hit_count=3)
    assert timer.hit_count == 4 and timer.elapsed == 0.75
    collector.finish()
    sent = receive(udp_listener).timer(group="external")
    assert (sent.value, sent.hit_count) == (0.75, 4)


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((0.1, 0), ValueError, "hit_count"),
        ((0.1, -2), ValueError, "hit_count"),
        ((0.1, 1.0), TypeError, "hit_count"),
        ((0.1, True), TypeError, "hit_count"),
        ((-0.1,), ValueError, "value"),
        ((float("nan"),), ValueError, "value"),
        ((float("inf"),), ValueError, "value"),
        (("1",), TypeError, "value"),
    ],
)
def test_add_refuses_bad_values_naming_the_argument(collector, args, error, match):
    with pytest.raises(error, match=match):
        collector.timer(group="x").add(*args)


def test_a_timer_needs_a_tag_and_checks_its_tags_where_written(collector):
    with pytest.raises(ValueError, match="at least one tag"):
        collector.timer()
    with pytest.raises(ValueError, match="at least one tag"):
        collector.timer(empty=[])
    with pytest.raises(TypeError, match="tag 'bad'"):
        collector.timer(ok="x", bad={1.5: "x"})


def test_tags_read_as_pairs_and_can_be_replaced(collector):
    timer = collector.timer(group="db", hosts=["a", "b"])
    assert sorted(timer.tags) == [("group", "db"), ("hosts", "a"), ("hosts", "b")]
    timer.tags = {"group": "cache"}
    assert timer.tags == (("group", "cache"),)
    with pytest.raises(ValueError):
        timer.tags = {}


def test_any_tag_name_is_a_keyword_even_self(collector, udp_listener):
    from pynba import pynba
    from pynba.context import activate, deactivate

    token = activate(collector)
    try:
        with pynba.timer(self="proxy"), collector.timer(self="collector"):
            pass
    finally:
        deactivate(token)
    collector.finish()
    assert receive(udp_listener).timer_tags() == [
        (("self", "collector"),),
        (("self", "proxy"),),
    ]


def test_callable_tags_are_called_when_the_timer_is_created(collector):
    calls = []
    collector.timer(group=lambda: calls.append(1) or "g")
    assert calls == [1]


def test_a_standalone_timer_measures_without_a_request():
    timer = Timer({"group": "x"})
    with timer:
        pass
    assert timer.hit_count == 1
    timer.delete()  # nothing to leave


def test_per_timer_cpu_is_measured_when_switched_on(udp_listener):
    collector = make_collector(udp_listener, timer_rusage=True)
    with collector.timer(group="cpu") as timer:
        busy(0.05)
    assert timer.ru_utime + timer.ru_stime > 0
    collector.finish()
    sent = receive(udp_listener).timer(group="cpu")
    assert sent.ru_utime == pytest.approx(timer.ru_utime, rel=1e-6)


def test_per_timer_cpu_is_off_by_default(collector, udp_listener):
    with collector.timer(group="cpu") as timer:
        busy(0.02)
    assert timer.ru_utime == timer.ru_stime == 0.0
    collector.finish()
    sent = receive(udp_listener).timer(group="cpu")
    assert sent.ru_utime == sent.ru_stime == 0.0


def test_the_noop_timer_accepts_everything_and_does_nothing():
    timer = NOOP_TIMER
    with timer.start() as entered:
        entered.stop()
    timer.add(1.0, 5)
    timer.data = "dropped"
    assert timer.data is None and timer.hit_count == 0 and timer.tags == ()
    assert timer.clone() is timer
    timer.delete()

    def func():
        return 1

    assert timer(func) is func

"""A request's memory stays bounded: many timers are merged by tag set as they come."""

import contextvars
import faulthandler
import gc
import signal
import threading
import time

import pytest

from packets import make_collector, receive, receive_all
from pynba import Timer, pynba
from pynba import collector as collector_module
from pynba._implementation import runs_compiled
from pynba.context import activate, deactivate

# Interpreted, a merge or a flush reads a request's timers, then replaces
# them with those it kept: a timer another thread of the request adds in
# between is lost, and two threads can merge at once. Compiled, both are C
# code that runs no Python code. See docs/guarantees.md.
pure_python_may_lose_timers = pytest.mark.xfail(
    not runs_compiled(collector_module.__file__),
    reason="the pure-Python build may lose timers added while a request merges or flushes",
    strict=False,
)


def live_timers():
    gc.collect()
    return sum(type(o) is Timer for o in gc.get_objects())


def test_a_hundred_thousand_timers_of_one_tag_set_hold_a_bounded_number_of_objects(
    udp_listener,
):
    collector = make_collector(udp_listener)
    before = live_timers()
    token = activate(collector)
    try:
        for _ in range(100_000):
            with pynba.timer(group="db", op="select"):
                pass
        # The dict and pair forms of tags merge too.
        for _ in range(3000):
            collector.timer(**{"group": "db", "op": "insert", "table": 7}).start().stop()
        held = live_timers() - before
    finally:
        deactivate(token)
    assert held <= collector_module.MERGE_TIMERS_AT
    collector.finish()
    packet = receive(udp_listener)
    assert packet.timer(group="db", op="select").hit_count == 100_000
    assert packet.timer(group="db", op="insert", table=7).hit_count == 3000
    assert len(packet.timers) == 2


def test_a_merged_timer_started_again_rejoins_its_request(udp_listener):
    collector = make_collector(udp_listener)
    first = collector.timer(group="kept")
    with first:
        pass
    for _ in range(collector_module.MERGE_TIMERS_AT):
        collector.timer(group="filler").start().stop()
    assert first not in collector.timers  # merged: its measurements moved to the totals
    assert first.hit_count == 0
    with first:
        pass
    assert first in collector.timers
    collector.finish()
    packet = receive(udp_listener)
    assert packet.timer(group="kept").hit_count == 2
    assert packet.timer(group="filler").hit_count == collector_module.MERGE_TIMERS_AT


def test_a_timer_rejoining_a_full_request_keeps_its_run(udp_listener):
    collector = make_collector(udp_listener)
    reused = collector.timer(group="reused")
    with reused:
        pass
    collector.flush()  # sent: it leaves the request, to rejoin when started again
    for _ in range(collector_module.MERGE_TIMERS_AT - 1):
        collector.timer(group="filler").start().stop()
    with reused:  # rejoins as the request's MERGE_TIMERS_AT-th timer
        pass
    collector.finish()
    assert receive(udp_listener).timer(group="reused").hit_count == 1
    packet = receive(udp_listener)
    assert packet.timer(group="reused").hit_count == 1
    assert packet.timer(group="filler").hit_count == collector_module.MERGE_TIMERS_AT - 1


def test_timers_a_finalizer_makes_in_the_middle_of_a_merge_are_kept(udp_listener):
    collector = make_collector(udp_listener)
    listed_then = []

    class Resource:
        def __init__(self):
            self.me = self  # freed by the garbage collector only

        def __del__(self):
            listed_then.append(len(collector.timers))
            with collector.timer(group="close"):
                pass

    for n in range(collector_module.MERGE_TIMERS_AT):
        # Tag sets of their own: the merge makes objects, and the collector runs.
        collector.timer(group="work", n=n).start().stop()
    gc.collect()
    threshold = gc.get_threshold()
    gc.set_threshold(50)
    try:
        for _ in range(3):
            Resource()
        collector.timer(group="work", n="last").start().stop()  # its joining merges
        gc.collect()
    finally:
        gc.set_threshold(*threshold)
    collector.finish()
    packet = receive(udp_listener)
    assert len(listed_then) == 3
    assert max(listed_then) >= collector_module.MERGE_TIMERS_AT  # in the middle of the merge
    assert packet.timer(group="close").hit_count == 3
    assert sum(t.hit_count for t in packet.timers if t.tags[0] == ("group", "work")) == (
        collector_module.MERGE_TIMERS_AT + 1
    )


def test_a_scripts_next_job_merges_at_the_limit_of_the_time(udp_listener, monkeypatch):
    from pynba import ScriptMonitor

    monitor = ScriptMonitor(udp_listener.address, script_name="worker")
    monkeypatch.setattr(collector_module, "MERGE_TIMERS_AT", 10)  # once the first job began
    monitor.send()
    for _ in range(25):
        with monitor.timer(group="call"):
            pass
    assert len(monitor.collector.timers) < 10
    monitor.close()
    receive(udp_listener)
    assert receive(udp_listener).timer(group="call").hit_count == 25


def test_running_timers_are_never_merged(udp_listener):
    collector = make_collector(udp_listener)
    running = [collector.timer(group="open", n=str(i)).start() for i in range(1500)]
    for timer in running:
        assert timer in collector.timers and timer.started
    for timer in running:
        timer.stop()
    collector.finish()
    packet = receive(udp_listener)
    assert len(packet.timers) == 1500
    assert all(t.hit_count == 1 for t in packet.timers)


def test_tag_sets_beyond_the_limit_are_dropped_and_counted(udp_listener, monkeypatch):
    monkeypatch.setattr(collector_module, "MAX_TAG_SETS", 50)
    monkeypatch.setattr(collector_module, "MERGE_TIMERS_AT", 100)
    collector = make_collector(udp_listener)
    for i in range(1000):
        collector.timer(group="distinct", n=str(i)).start().stop()
    collector.finish()
    packet = receive(udp_listener)
    stats = collector.reporter.stats
    assert stats["timers_dropped"] > 0
    assert len(packet.timers) + stats["timers_dropped"] == 1000
    assert len(packet.timers) < 1000


def test_merging_keeps_equal_values_of_other_types_apart(udp_listener):
    """1, 1.0 and True are equal in Python; 1.0 is sent as other text than 1 (and True)."""
    collector = make_collector(udp_listener)
    for _ in range(collector_module.MERGE_TIMERS_AT):
        for value in (1, 1.0, True):
            collector.timer(group="typed", n=value).start().stop()
    collector.finish()
    packet = receive(udp_listener)
    hits = collector_module.MERGE_TIMERS_AT
    assert packet.timer(group="typed", n="1").hit_count == 2 * hits
    assert packet.timer(group="typed", n="1.0").hit_count == hits
    assert len(packet.timers) == 2


def test_a_flush_sends_the_merged_totals_and_starts_afresh(udp_listener):
    collector = make_collector(udp_listener)
    for _ in range(2 * collector_module.MERGE_TIMERS_AT):
        collector.timer(group="batch").start().stop()
    collector.flush()
    assert receive(udp_listener).timer(group="batch").hit_count == (
        2 * collector_module.MERGE_TIMERS_AT
    )
    collector.timer(group="batch").start().stop()
    collector.finish()
    assert receive(udp_listener).timer(group="batch").hit_count == 1


@pytest.mark.parametrize("per_timer_cpu", [False, True])
def test_merged_totals_keep_values_and_cpu(udp_listener, per_timer_cpu):
    collector = make_collector(udp_listener, timer_rusage=per_timer_cpu)
    for _ in range(collector_module.MERGE_TIMERS_AT + 10):
        collector.timer(group="sum").add(0.001)
    collector.finish()
    timer = receive(udp_listener).timer(group="sum")
    assert timer.hit_count == collector_module.MERGE_TIMERS_AT + 10
    assert timer.value == pytest.approx(0.001 * (collector_module.MERGE_TIMERS_AT + 10))


@pure_python_may_lose_timers
@pytest.mark.parametrize(
    "flushes",
    [
        0,
        pytest.param(
            30,
            marks=pytest.mark.xfail(
                reason="a flush from another thread can lose timers: compiled too, once "
                "(docs/guarantees.md)",
                strict=False,
            ),
        ),
    ],
)
def test_threads_of_one_request_lose_no_hit_while_it_merges_and_flushes(
    udp_listener, frequent_thread_switches, flushes
):
    threads_count, each = 4, 3 * collector_module.MERGE_TIMERS_AT
    collector = make_collector(udp_listener)
    token = activate(collector)
    try:
        errors = []

        def add_timers(kind):
            try:
                for _ in range(each):
                    with pynba.timer(group="work", kind=kind):
                        pass
                    pynba.timer(group="never run").delete()
            except BaseException as error:  # noqa: BLE001  (reported below)
                errors.append(error)

        threads = [
            threading.Thread(target=contextvars.copy_context().run, args=(add_timers, str(i % 2)))
            for i in range(threads_count)
        ]
        for thread in threads:
            thread.start()
        for _ in range(flushes):
            time.sleep(0.002)
            # Running timers left for later: a run cut by a flush is a hit in each packet.
            collector.flush(only_stopped=True)
        for thread in threads:
            thread.join()
    finally:
        deactivate(token)
    assert errors == []
    collector.finish()
    packets = receive_all(udp_listener, flushes + 1)
    hits = sum(timer.hit_count for packet in packets for timer in packet.timers)
    assert hits == threads_count * each


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")
def test_a_signal_handler_adding_timers_in_the_middle_of_merges_loses_none(udp_listener):
    # The handler runs on the thread that is merging, in the middle of it
    # (interpreted), as a finalizer could: its timers join the list the merge
    # reads, and start no merge of their own (each one did, over and over,
    # until a RecursionError).
    collector = make_collector(udp_listener)
    handled = 0

    def on_alarm(signum, frame):
        nonlocal handled
        with collector.timer(group="signal"):
            handled += 1

    previous = signal.signal(signal.SIGALRM, on_alarm)
    faulthandler.dump_traceback_later(120, exit=True)  # a handler waiting for good ends the run
    signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
    try:
        loops = 30 * collector_module.MERGE_TIMERS_AT
        for _ in range(loops):
            with collector.timer(group="loop"):
                pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()
    collector.finish()
    packet = receive(udp_listener)
    assert handled > 0
    assert packet.timer(group="loop").hit_count == loops
    assert packet.timer(group="signal").hit_count == handled

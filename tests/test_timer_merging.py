"""A request's memory stays bounded: many timers are merged by tag set as they come."""

import contextvars
import gc
import os
import signal
import threading
import time

import pytest

from packets import make_collector, receive
from pynba import Timer, pynba
from pynba import collector as collector_module
from pynba.context import activate, deactivate


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


def test_timers_added_from_threads_while_their_request_merges_are_all_counted(udp_listener):
    # Threads sharing one request (a pool whose tasks run in copies of its
    # context) add timers while one of them merges: none may be lost.
    threads, each = 4, 3000
    for _ in range(5):
        collector = make_collector(udp_listener)
        token = activate(collector)
        try:
            tasks = [contextvars.copy_context() for _ in range(threads)]
        finally:
            deactivate(token)

        def add_timers(count=each):
            for _ in range(count):
                pynba.timer(group="pool").add(0.001)

        workers = [threading.Thread(target=task.run, args=(add_timers,)) for task in tasks]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        collector.finish()
        assert receive(udp_listener).timer(group="pool").hit_count == threads * each


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork here")
def test_a_child_forked_while_its_parent_merges_can_merge_its_own_timers(udp_listener):
    with collector_module._MERGING:  # as another thread of the parent merging
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                collector = make_collector(udp_listener)
                for _ in range(collector_module.MERGE_TIMERS_AT + 1):
                    collector.timer(group="child").add(0.001)
                code = 0
            finally:
                os._exit(code)
    deadline = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    if done == (0, 0):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the child blocked on the lock its parent held when it forked")
    assert os.waitstatus_to_exitcode(done[1]) == 0

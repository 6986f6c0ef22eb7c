"""pynba.timer(...) through the proxy: the same timers as collector.timer(...).

Compiled, the proxy's timer is a C function that keeps keyword tags as they
come (names and values, no dict); every other call goes on to the Python
function. These tests hold both to what the collector's own timer() does.
"""

import ctypes
import sys
import time

import pytest

from packets import make_collector, receive
from pynba import pynba
from pynba.context import DISABLED, UnboundTimer, activate, deactivate
from pynba.timer import NOOP_TIMER


class Name(str):
    pass


@pytest.fixture
def collector(udp_listener):
    collector = make_collector(udp_listener)
    token = activate(collector)
    yield collector
    deactivate(token)


def outcome(make):
    try:
        timer = make()
    except Exception as error:  # noqa: BLE001 - the error is the outcome compared
        return type(error), str(error)
    return timer.tags, timer.hit_count, timer.started, timer.data


TAGS = [
    {"group": "db"},
    {"group": "db", "op": "select"},
    {"group": "db", "op": ""},
    {"self": "proxy", "group": "db"},
    {"group": "db", "rows": 3},
    {"group": "db", "rows": 2.5, "ok": True},
    {"hosts": ["a", "b"], "group": "db"},
    {"group": Name("db")},
    {"group": lambda: "called"},
    {"group": {"nested": "mapping"}},
    {"": "empty name"},
    {"group": "db", "": "empty name"},
    {"group": object()},
    {"group": "db", "empty": []},
    {},
]


@pytest.mark.parametrize("tags", TAGS, ids=range(len(TAGS)))
def test_the_proxy_makes_the_collector_s_timer(collector, tags):
    expected = outcome(lambda: collector.timer(**tags))
    assert outcome(lambda: pynba.timer(**tags)) == expected


def test_a_name_given_as_a_str_subclass_is_kept_as_plain_str(collector, udp_listener):
    # ``**mapping`` passes its keys as they are: the timer holds plain str, as
    # collector.timer(...) does, and runs no method of the subclass later.
    timer = pynba.timer(**{Name("group"): "db"})
    assert [type(name) for name, _ in timer.tags] == [str]
    assert timer.tags == collector.timer(**{Name("group"): "db"}).tags


def test_positional_arguments_are_refused_as_by_python(collector):
    with pytest.raises(TypeError, match="positional"):
        pynba.timer("db")
    with pytest.raises(TypeError, match="positional"):
        pynba.timer("db", group="db")


def test_an_empty_tuple_of_keyword_names_is_no_tags(collector):
    # CPython passes no names tuple when there are no keywords; C callers may
    # pass an empty one.
    vectorcall = getattr(ctypes.pythonapi, "PyObject_Vectorcall", None)
    if vectorcall is None:
        pytest.skip("PyObject_Vectorcall is not exported by this Python")
    vectorcall.restype = ctypes.py_object
    vectorcall.argtypes = [ctypes.py_object, ctypes.c_void_p, ctypes.c_size_t, ctypes.py_object]
    with pytest.raises(ValueError, match="at least one tag"):
        vectorcall(pynba.timer, None, 0, ())
    assert collector.timers == ()


def test_proxy_timers_are_the_request_s_and_sent_with_it(collector, udp_listener):
    with pynba.timer(group="db", op="select"):
        pass
    first, second = pynba.timer(group="cache"), pynba.timer(group="cache")
    second.start().stop()
    timers = collector.timers
    assert len(timers) == 3 and timers[1:] == (first, second)
    collector.finish()
    packet = receive(udp_listener)
    assert sorted(packet.timer_tags()) == [
        (("group", "cache"),),
        (("group", "db"), ("op", "select")),
    ]
    assert packet.timer(group="cache").hit_count == 1  # `first` never ran: not sent


def test_keyword_tags_read_as_pairs_clone_and_can_be_replaced(collector, udp_listener):
    timer = pynba.timer(op="select", group="db")
    assert timer.tags == (("op", "select"), ("group", "db"))
    assert "{'op': 'select', 'group': 'db'}" in repr(timer)
    twin = timer.clone()
    assert twin.tags == timer.tags and twin is not timer
    timer.tags = {"group": "cache"}
    assert timer.tags == (("group", "cache"),)
    assert twin.tags == (("op", "select"), ("group", "db"))
    timer.start().stop()
    twin.start().stop()
    collector.finish()
    assert sorted(receive(udp_listener).timer_tags()) == [
        (("group", "cache"),),
        (("group", "db"), ("op", "select")),
    ]


def test_the_same_tags_written_either_way_make_one_timer(collector, udp_listener):
    pynba.timer(group="db", op="select").add(0.25)
    collector.timer(op="select", group="db").add(0.5, hit_count=2)
    pynba.timer(**{"op": "select", "group": "db"}).add(0.25)
    collector.finish()
    packet = receive(udp_listener)
    assert packet.timer_tags() == [(("group", "db"), ("op", "select"))]
    sent = packet.timer(group="db", op="select")
    assert (sent.value, sent.hit_count) == (1.0, 4)


def test_per_timer_cpu_follows_the_request_s_setting(udp_listener):
    collector = make_collector(udp_listener, timer_rusage=True)
    token = activate(collector)
    try:
        with pynba.timer(group="cpu") as timer:
            end = time.perf_counter() + 0.05
            while time.perf_counter() < end:
                pass
    finally:
        deactivate(token)
    assert timer.ru_utime + timer.ru_stime > 0
    collector.finish()
    sent = receive(udp_listener).timer(group="cpu")
    assert sent.ru_utime == pytest.approx(timer.ru_utime, rel=1e-6)


def test_outside_a_request_and_when_disabled_as_before():
    timer = pynba.timer(group="db")
    assert isinstance(timer, UnboundTimer)
    token = activate(DISABLED)
    try:
        assert pynba.timer(group="db") is NOOP_TIMER
    finally:
        deactivate(token)


def test_a_timer_holds_its_tags_and_request_and_lets_them_go(collector):
    value = "".join(["sel", "ect"])  # an object of its own, to count its references
    names_of = {"op": value}
    before = sys.getrefcount(value), sys.getrefcount(collector)
    for _ in range(500):  # fewer than MERGE_TIMERS_AT: all kept
        with pynba.timer(**names_of):
            pass
    assert sys.getrefcount(value) == before[0] + 500
    collector.finish()
    assert (sys.getrefcount(value), sys.getrefcount(collector)) == before

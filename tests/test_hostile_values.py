"""Values written to hurt: subclasses with evil methods, huge numbers, changing dicts."""

import pytest

from packets import make_collector, receive
from pynba import PynbaMiddleware, ScriptMonitor, Timer, pynba
from pynba import collector as collector_module
from pynba.ratelimit import MAX_KINDS, LogLimiter


class EvilStr(str):
    def __str__(self):
        raise RuntimeError("evil __str__")

    def encode(self, *args, **kwargs):
        raise RuntimeError("evil encode")

    def __eq__(self, other):
        raise RuntimeError("evil __eq__")

    __hash__ = str.__hash__


class EvilInt(int):
    def __str__(self):
        raise RuntimeError("evil __str__")

    __repr__ = __str__

    def __index__(self):
        raise RuntimeError("evil __index__")


class EvilFloat(float):
    def __str__(self):
        raise RuntimeError("evil __str__")

    __repr__ = __str__


class EvilBytes(bytes):
    def __len__(self):
        raise RuntimeError("evil __len__")


def test_scalar_subclasses_are_taken_as_their_plain_values(udp_listener):
    collector = make_collector(udp_listener)
    collector.set_tag("s", EvilStr("text"))
    collector.set_tag("i", EvilInt(42))
    collector.set_tag("f", EvilFloat(2.5))
    collector.set_tag(EvilStr("name"), "value")
    collector.script_name = EvilStr("/evil")
    collector.server_name = EvilStr("evil.example")
    timer = collector.timer(group=EvilStr("db"), n=EvilInt(7))
    with timer:
        pass
    collector.finish()
    packet = receive(udp_listener)
    assert packet.tags == [("s", "text"), ("i", "42"), ("f", "2.5"), ("name", "value")]
    assert (packet.script_name, packet.server_name) == ("/evil", "evil.example")
    assert packet.timer(group="db", n="7").hit_count == 1


def test_a_timer_keeps_its_own_copy_of_a_dict_of_tags(udp_listener):
    collector = make_collector(udp_listener)
    tags = {"group": "db"}
    timer = Timer(tags, collector)
    tags["later"] = ["a", "list"]  # unchecked, unhashable: must not reach the timer
    with timer:
        pass
    for _ in range(collector_module.MERGE_TIMERS_AT):
        Timer({"group": "db"}, collector).start().stop()
    collector.finish()
    assert receive(udp_listener).timer(group="db").hit_count == collector_module.MERGE_TIMERS_AT + 1


def test_huge_numbers_of_seconds_are_value_errors_naming_the_argument(udp_listener):
    collector = make_collector(udp_listener)
    with pytest.raises(ValueError, match="request_time"):
        collector.request_time = 10**400
    with pytest.raises(ValueError, match="value"):
        collector.timer(group="g").add(10**400)


def test_a_skipped_job_does_not_skip_the_script_monitors_next_ones(udp_listener):
    monitor = ScriptMonitor(udp_listener.address, scriptname="worker")
    for job in range(4):
        if job == 1:
            pynba.enabled = False  # a health check
        with pynba.timer(group="job", n=str(job)):
            pass
        monitor.send()
    monitor.close()
    sent = [receive(udp_listener) for _ in range(3)]
    assert [packet.timer_tags() for packet in sent] == [
        [(("group", "job"), ("n", str(job)))] for job in (0, 2, 3)
    ]
    assert udp_listener.pending() == []


def evil_chunks(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [EvilBytes(b"hello")]


def test_a_chunk_whose_len_raises_is_counted_without_calling_it(udp_listener):
    app = PynbaMiddleware(evil_chunks, udp_listener.address)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}
    result = app(environ, lambda status, headers, exc_info=None: None)
    assert [bytes(chunk) for chunk in result] == [b"hello"]
    result.close()
    packet = receive(udp_listener)
    assert (packet.status, packet.document_size) == (200, 5)


def test_the_log_limiter_forgets_kinds_rather_than_pile_them_up():
    limiter = LogLimiter()
    for i in range(3 * MAX_KINDS):
        limiter.log(10, f"kind {i}", "message %d", i)
    assert len(limiter._last) <= MAX_KINDS

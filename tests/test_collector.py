"""The request collector: fields, timers, tags, flush and finish, over real UDP."""

import logging
import resource
import socket
import time

import pytest

from packets import make_collector, receive
from pynba.collector import Namer, RequestCollector
from pynba.names import default_hostname


def busy(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.fixture
def collector(udp_listener):
    return make_collector(udp_listener, script_name="/home")


def test_finish_sends_one_packet_with_measured_fields(collector, udp_listener):
    busy(0.03)
    collector.finish()
    collector.finish()  # once only
    packet = receive(udp_listener)
    assert udp_listener.pending() == []
    assert packet.hostname == socket.gethostname() == default_hostname()
    assert packet.script_name == "/home"
    assert packet.request_count == 1
    assert packet.request_time >= 0.03
    assert packet.ru_utime + packet.ru_stime > 0
    # Peak RSS of the process, in bytes (ru_maxrss is KiB on Linux).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert 0 < packet.memory_peak <= peak
    assert packet.memory_footprint == 0 and packet.status == 0 and packet.document_size == 0
    assert not packet.HasField("schema")
    assert collector.finished


def test_fields_set_by_the_application_are_sent_as_set(collector, udp_listener):
    collector.hostname = "web-1"
    collector.server_name = "example.com"
    collector.script_name = "/users/{id}"
    collector.schema = "https"
    collector.status = 404
    collector.document_size = 1234
    collector.memory_peak = 5 << 20
    collector.memory_footprint = 3 << 20
    collector.request_time = 0.5
    collector.ru_utime = 0.25
    collector.ru_stime = 0.125
    collector.finish()
    packet = receive(udp_listener)
    assert (packet.hostname, packet.server_name, packet.script_name, packet.schema) == (
        "web-1",
        "example.com",
        "/users/{id}",
        "https",
    )
    assert (packet.status, packet.document_size) == (404, 1234)
    assert (packet.memory_peak, packet.memory_footprint) == (5 << 20, 3 << 20)
    assert (packet.request_time, packet.ru_utime, packet.ru_stime) == (0.5, 0.25, 0.125)


def test_the_old_pynba_field_names_still_work(collector, udp_listener):
    collector.scriptname = "/old"
    collector.servername = "old.example.com"
    assert collector.script_name == "/old" and collector.server_name == "old.example.com"
    collector.finish()
    packet = receive(udp_listener)
    assert (packet.script_name, packet.server_name) == ("/old", "old.example.com")


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("status", "200", TypeError),
        ("status", -1, ValueError),
        ("status", 2**32 - 1, ValueError),
        ("document_size", 1.5, TypeError),
        ("document_size", True, TypeError),
        ("memory_peak", -5, ValueError),
        ("request_time", float("nan"), ValueError),
        ("request_time", -0.1, ValueError),
        ("ru_utime", "1", TypeError),
        ("script_name", 42, TypeError),
        ("server_name", ["x"], TypeError),
    ],
)
def test_bad_assignments_are_refused_naming_the_field(collector, field, value, error):
    with pytest.raises(error, match=field):
        setattr(collector, field, value)


def test_running_timers_are_stopped_and_sent_at_the_end(collector, udp_listener):
    running = collector.timer(group="slow")
    running.start()
    never_started = collector.timer(group="never")
    collector.finish()
    assert not running.started and running.hit_count == 1
    packet = receive(udp_listener)
    assert packet.timer_tags() == [(("group", "slow"),)]
    assert never_started.hit_count == 0


def test_timers_with_the_same_tags_are_merged_on_the_wire(collector, udp_listener):
    for _ in range(3):
        collector.timer(group="db", op="select").add(0.5)
    collector.timer(op="select", group="db").add(0.5, 2)
    collector.finish()
    sent = receive(udp_listener).timer(group="db", op="select")
    assert (sent.value, sent.hit_count) == (2.0, 5)


def test_request_tags_from_settings_and_from_the_application(udp_listener):
    collector = make_collector(udp_listener, tags={"env": "prod", "dc": ["a", "b"]})
    assert dict(collector.tags) == {"env": "prod", "dc": ["a", "b"]}
    collector.set_tag("route", "users")
    collector.delete_tag("env")
    collector.delete_tag("missing")
    with pytest.raises(TypeError, match="tag 'bad'"):
        collector.set_tag("bad", {1.5: "x"})
    with pytest.raises(TypeError):
        collector.tags["x"] = "y"  # a read-only view
    collector.finish()
    assert sorted(receive(udp_listener).tags) == [("dc", "a"), ("dc", "b"), ("route", "users")]


def test_assigning_tags_replaces_them_all(collector, udp_listener):
    collector.tags = {"a": "1", "b": {"c": 2}}
    with pytest.raises(TypeError):
        collector.tags = [("a", "1")]
    with pytest.raises(ValueError):
        collector.tags = {"": "x"}
    collector.finish()
    assert sorted(receive(udp_listener).tags) == [("a", "1"), ("b.c", "2")]


def test_callable_tags_in_settings_are_called_for_each_request(udp_listener):
    counter = iter(range(100))
    first = make_collector(udp_listener, tags={"n": lambda: next(counter)})
    second = RequestCollector(first._settings)
    first.finish()
    second.finish()
    assert receive(udp_listener).tags == [("n", "0")]
    assert receive(udp_listener).tags == [("n", "1")]


def test_a_callable_given_to_set_tag_or_to_tags_is_called_once_where_it_is_given(udp_listener):
    calls = []

    def country():
        calls.append("country")
        return "fr"

    def release():
        calls.append("release")
        return "2.14"

    collector = make_collector(udp_listener)
    collector.tags = {"release": release}
    collector.set_tag("country", country)
    assert calls == ["release", "country"]
    collector.finish()
    assert receive(udp_listener).tags == [("release", "2.14"), ("country", "fr")]
    assert calls == ["release", "country"]


def test_request_tags_that_flatten_into_the_same_pair_send_it_once(udp_listener):
    collector = make_collector(udp_listener, tags={"a.b": "1", "a": {"b": "1"}})
    collector.finish()
    collector = make_collector(udp_listener)
    collector.set_tag("a.b", "1")
    collector.set_tag("a", {"b": "1", "c": "2"})
    collector.set_tag("d", ["3", "3"])
    collector.finish()
    assert receive(udp_listener).tags == [("a.b", "1")]
    assert receive(udp_listener).tags == [("a.b", "1"), ("a.c", "2"), ("d", "3")]


def test_a_configured_callable_may_set_a_tag_while_the_packet_is_made(udp_listener):
    collector = make_collector(udp_listener, tags={"n": lambda: collector.set_tag("late", "x")})
    collector.set_tag("early", "y")
    collector.finish()  # the tags as they were when the packet was begun
    assert receive(udp_listener).tags == [("n", ""), ("early", "y")]


def test_a_namer_setting_tags_while_the_packet_is_made_changes_not_that_packet(udp_listener):
    def namer(source):
        collector.set_tag("late", 5)
        collector.set_tag("early", "changed")
        return "/named"

    from pynba.collector import CollectorSettings
    from pynba.reporter import Reporter

    settings = CollectorSettings(Reporter(udp_listener.address))
    collector = RequestCollector(settings, None, "example.com", "https", namer, None)
    collector.set_tag("early", "y")
    collector.finish()  # the tags as they were when the packet was begun
    packet = receive(udp_listener)
    assert (packet.script_name, packet.tags) == ("/named", [("early", "y")])


def test_a_reporter_keeping_a_record_keeps_the_tags_it_was_given(udp_listener):
    from pynba.collector import CollectorSettings
    from pynba.reporter import Reporter

    class Keeping(Reporter):
        def report_request(self, request):
            self.kept.append(request)
            super().report_request(request)

    reporter = Keeping(udp_listener.address)
    reporter.kept = []
    collector = RequestCollector(CollectorSettings(reporter), "/kept")
    collector.set_tag("a", "1")
    collector.flush()
    collector.set_tag("a", "2")
    collector.delete_tag("a")
    collector.set_tag("b", "x")
    collector.flush()
    collector.set_tag("c", ["y", "z"])
    collector.finish()
    collector.delete_tag("b")
    collector.set_tag("d", "late")
    assert receive(udp_listener).tags == [("a", "1")]
    assert receive(udp_listener).tags == [("b", "x")]
    assert receive(udp_listener).tags == [("b", "x"), ("c", "y"), ("c", "z")]
    kept = [dict(record[12]) for record in reporter.kept]
    assert kept == [{"a": "1"}, {"b": "x"}, {"b": "x", "c": "z"}]


def test_memory_footprint_is_measured_only_when_asked(udp_listener):
    make_collector(udp_listener, memory_footprint=True).finish()
    assert receive(udp_listener).memory_footprint > 1 << 20  # a Python process is bigger


def test_flush_sends_what_was_measured_and_starts_afresh(collector, udp_listener):
    done = collector.timer(group="done")
    with done:
        time.sleep(0.001)
    running = collector.timer(group="running").start()
    collector.status = 206
    collector.flush()
    first = receive(udp_listener)
    assert first.timer_tags() == [(("group", "done"),), (("group", "running"),)]
    assert first.status == 206
    assert running.started  # it goes on, from zero
    assert done not in collector.timers and running in collector.timers
    with done:  # a sent timer used again rejoins the request
        pass
    running.stop()
    collector.finish()
    second = receive(udp_listener)
    assert second.timer_tags() == [(("group", "running"),), (("group", "done"),)][::-1] or (
        second.timer_tags() == [(("group", "done"),), (("group", "running"),)]
    )
    assert second.timer(group="done").hit_count == 1
    assert second.timer(group="running").hit_count == 1
    assert second.status == 0  # reset by the flush


def test_flush_only_stopped_keeps_running_timers_for_the_next_packet(collector, udp_listener):
    collector.timer(group="done").add(0.1)
    running = collector.timer(group="running").start()
    time.sleep(0.002)
    collector.flush(only_stopped=True)
    assert receive(udp_listener).timer_tags() == [(("group", "done"),)]
    running.stop()
    collector.finish()
    sent = receive(udp_listener).timer(group="running")
    assert sent.hit_count == 1 and sent.value >= 0.002  # all of it, in one packet


def test_flush_and_stop_after_the_end_do_nothing(collector, udp_listener):
    # Code running on after the response (an ASGI app after its last body
    # message, a background task) must not fail.
    timer = collector.timer(group="late").start()
    collector.finish()
    receive(udp_listener)
    collector.flush()
    timer.stop()
    assert timer.hit_count == 1  # stopped once, by the end of the request
    assert udp_listener.pending(0.05) == []
    with pytest.raises(RuntimeError, match="not started"):
        pynba_free_timer().stop()  # outside any request, misuse is still an error


def pynba_free_timer():
    from pynba.timer import Timer

    return Timer({"group": "alone"})


def test_request_time_of_a_flushed_packet_counts_from_the_previous_flush(collector, udp_listener):
    time.sleep(0.05)
    collector.flush()
    collector.finish()
    assert receive(udp_listener).request_time >= 0.05
    assert receive(udp_listener).request_time < 0.05


def test_internal_errors_are_logged_not_raised(collector, udp_listener, monkeypatch, caplog):
    monkeypatch.delenv("PYNBA_STRICT")
    collector._tags = 5  # state corrupted: the packet cannot be made
    with caplog.at_level(logging.ERROR, logger="pynba"):
        collector.finish()
    assert "cannot report the request" in caplog.text
    assert udp_listener.pending() == []


def test_internal_errors_are_raised_with_raise_on_fail(udp_listener, monkeypatch):
    monkeypatch.delenv("PYNBA_STRICT")

    def mapping_with_a_float_key():
        return {1.5: "y"}

    collector = make_collector(udp_listener, tags={"x": mapping_with_a_float_key})
    collector.reporter.raise_on_fail = True
    with pytest.raises(TypeError):
        collector.finish()


def test_a_packet_too_big_for_udp_still_reports_the_request(collector, udp_listener):
    for i in range(3000):
        collector.timer(group="g", n=str(i) * 5).add(0.001)
    collector.finish()
    packet = receive(udp_listener)
    assert packet.script_name == "/home" and packet.timers == []
    assert collector.reporter.stats["oversize"] == 1


def test_a_failing_tag_callable_leaves_out_only_that_tag(udp_listener, monkeypatch, caplog):
    from pynba.collector import CollectorSettings, RequestCollector
    from pynba.reporter import Reporter

    monkeypatch.delenv("PYNBA_STRICT", raising=False)

    def release():
        raise LookupError("no release file")

    with Reporter(udp_listener.address) as reporter:
        settings = CollectorSettings(reporter, tags={"app": "shop", "release": release})
        RequestCollector(settings, "/r").finish()
    packet = receive(udp_listener)
    assert (packet.script_name, dict(packet.tags)) == ("/r", {"app": "shop"})
    assert "release" in caplog.text


def test_next_job_begins_as_a_new_collector_would_keeping_the_timers_not_run(udp_listener):
    collector = make_collector(udp_listener, script_name="first", tags={"app": "jobs"})
    idle = collector.timer(group="idle")  # made, never run: it may still run
    with collector.timer(group="db"):
        pass
    collector.server_name = "one.example.com"
    collector.hostname = "elsewhere"
    collector.schema = "https"
    collector.set_tag("phase", "one")
    collector.status = 201
    collector.document_size = 5
    collector.enabled = False  # this job skips itself: the next one does not
    collector.flush()
    busy(0.03)
    before = time.perf_counter()
    collector.next_job("second", "two.example.com")
    assert (collector.script_name, collector.server_name) == ("second", "two.example.com")
    assert (collector.hostname, collector.schema) == (default_hostname(), None)
    assert (dict(collector.tags), collector.enabled) == ({"app": "jobs"}, True)
    assert (collector.status, collector.document_size, collector.request_time) == (None, None, None)
    assert collector.timers == (idle,)
    with idle:
        pass
    collector.finish()
    after = time.perf_counter()
    packet = receive(udp_listener)  # the first job skipped itself: nothing was sent for it
    assert (packet.script_name, packet.server_name) == ("second", "two.example.com")
    assert (packet.hostname, packet.HasField("schema")) == (default_hostname(), False)
    assert (packet.tags, packet.status, packet.document_size) == ([("app", "jobs")], 0, 0)
    assert packet.timer_tags() == [(("group", "idle"),)]
    # The clock restarted: the time before next_job() is not the job's.
    assert packet.request_time <= after - before
    assert udp_listener.pending(0.05) == []


class PathNamer(Namer):
    """Names a request by the path its source carries."""

    def __init__(self):
        self.sources = []

    def name(self, source):
        self.sources.append(source)
        return "/named" + source["path"]


def namer_collector(listener, namer, source):
    from pynba.collector import CollectorSettings
    from pynba.reporter import Reporter

    settings = CollectorSettings(Reporter(listener.address))
    return RequestCollector(settings, None, "example.com", "https", namer, source)


def test_a_namer_object_names_the_request_it_is_given_the_source_of(udp_listener):
    namer = PathNamer()
    source = {"path": "/x"}
    collector = namer_collector(udp_listener, namer, source)
    assert collector.script_name == "/named/x"  # readable during the request
    collector.finish()
    assert receive(udp_listener).script_name == "/named/x"
    assert namer.sources == [source, source]
    assert namer(source) == "/named/x"  # a Namer is a callable namer too


def test_a_namer_object_that_fails_names_the_request_empty(udp_listener, monkeypatch, caplog):
    monkeypatch.delenv("PYNBA_STRICT")

    class Failing(Namer):
        def name(self, source):
            raise KeyError("route")

    collector = namer_collector(udp_listener, Failing(), {})
    with caplog.at_level(logging.ERROR, logger="pynba"):
        collector.finish()
    assert receive(udp_listener).script_name == ""
    assert "script_name failed" in caplog.text

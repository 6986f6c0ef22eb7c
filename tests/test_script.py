"""ScriptMonitor: one packet per job, for scripts and workers."""

import socket
import threading
import time

import pytest

from packets import receive, receive_all
from pynba import ScriptMonitor, pynba
from pynba.script import program_name


def library_code():
    """Code that knows nothing of the monitor but uses pynba timers."""
    with pynba.timer(group="library"):
        time.sleep(0.001)


def test_the_old_usage_one_packet_per_send(udp_listener, monkeypatch):
    monkeypatch.setattr("sys.argv", ["/opt/jobs/worker.py", "--queue", "q1", "--id=42"])
    monitor = ScriptMonitor(udp_listener.address, tags={"foo": "bar"})
    timer = monitor.timer(foo="bar")
    timer.start()
    library_code()
    timer.stop()
    monitor.send()
    packet = receive(udp_listener)
    assert packet.script_name == "worker.py"  # the program, never its arguments
    assert packet.hostname == packet.server_name == socket.gethostname()
    assert packet.tags == [("foo", "bar")]
    assert packet.timer_tags() == [(("foo", "bar"),), (("group", "library"),)]
    assert packet.request_time >= 0.001

    # Ready for the next job at once; the timer made earlier still works.
    with timer:
        pass
    monitor.send()
    packet = receive(udp_listener)
    assert packet.timer_tags() == [(("foo", "bar"),)]
    assert packet.timer(foo="bar").hit_count == 1


def test_names_given_to_the_monitor(udp_listener):
    monitor = ScriptMonitor(
        udp_listener.address, hostname="h1", scriptname="nightly", servername="batch"
    )
    assert (monitor.hostname, monitor.scriptname, monitor.servername) == ("h1", "nightly", "batch")
    monitor.send()
    packet = receive(udp_listener)
    assert (packet.hostname, packet.script_name, packet.server_name) == ("h1", "nightly", "batch")
    assert packet.status == 0


def test_script_name_and_server_name_and_their_old_spellings(udp_listener):
    monitor = ScriptMonitor(udp_listener.address, "h1", "nightly", "batch")  # positional, as in 0.5
    assert (monitor.script_name, monitor.server_name) == ("nightly", "batch")
    assert (monitor.scriptname, monitor.servername) == ("nightly", "batch")
    monitor.send()
    packet = receive(udp_listener)
    assert (packet.script_name, packet.server_name) == ("nightly", "batch")
    monitor.scriptname = "renamed"  # the old name writes the new one, which job() reads
    assert monitor.script_name == "renamed"
    with monitor.job():
        pass
    assert receive(udp_listener).script_name == "renamed"
    monitor.close()
    named = ScriptMonitor(udp_listener.address, script_name="a", server_name="b", autostart=False)
    assert (named.scriptname, named.servername) == ("a", "b")
    named.close()
    with pytest.raises(TypeError, match="script_name or scriptname"):
        ScriptMonitor(udp_listener.address, script_name="a", scriptname="b")
    with pytest.raises(TypeError, match="server_name must be a str"):
        ScriptMonitor(udp_listener.address, server_name=1)
    assert udp_listener.pending(0.05) == []


def test_without_autostart_each_job_begins_with_start(udp_listener):
    monitor = ScriptMonitor(udp_listener.address, scriptname="s", autostart=False)
    with pytest.raises(RuntimeError, match="start"):
        monitor.timer(group="x")
    with pytest.raises(RuntimeError):
        pynba.timer(group="x").start()
    monitor.start()
    with pytest.raises(RuntimeError, match="already running"):
        monitor.start()
    library_code()
    monitor.send()
    assert receive(udp_listener).timer_tags() == [(("group", "library"),)]
    with pytest.raises(RuntimeError):
        _ = pynba.script_name  # no job running any more
    with pytest.raises(RuntimeError, match="start"):
        monitor.send()
    monitor.start()
    monitor.send()
    assert receive(udp_listener).timers == []


def test_running_timers_are_stopped_by_send(udp_listener):
    monitor = ScriptMonitor(udp_listener.address)
    timer = monitor.timer(group="long").start()
    monitor.send()
    assert not timer.started
    assert receive(udp_listener).timer(group="long").hit_count == 1


def test_flush_sends_what_was_measured_and_the_job_goes_on(udp_listener):
    monitor = ScriptMonitor(udp_listener.address)
    monitor.timer(group="done").add(0.5)
    running = monitor.timer(group="running").start()
    monitor.flush(only_stopped=True)
    assert receive(udp_listener).timer_tags() == [(("group", "done"),)]
    running.stop()
    monitor.send()
    assert receive(udp_listener).timer_tags() == [(("group", "running"),)]


def test_a_job_block_sends_one_packet_named_after_the_job(udp_listener):
    monitor = ScriptMonitor(udp_listener.address, scriptname="worker", tags={"w": "1"})
    with monitor.job("resize", tags={"queue": "images"}) as job:
        library_code()
        with monitor.timer(group="own"):
            pass
        assert pynba.script_name == "resize"
        job.document_size = 10
    packet = receive(udp_listener)
    assert packet.script_name == "resize"
    assert sorted(packet.tags) == [("queue", "images"), ("w", "1")]
    assert packet.timer_tags() == [(("group", "library"),), (("group", "own"),)]
    assert packet.document_size == 10
    assert pynba.script_name == "worker"  # the monitor's own job is current again


def test_a_failing_job_is_sent_and_its_exception_propagates(udp_listener):
    monitor = ScriptMonitor(udp_listener.address, autostart=False)
    with pytest.raises(ZeroDivisionError):
        with monitor.job("fails"):
            library_code()
            _ = 1 / 0
    packet = receive(udp_listener)
    assert packet.script_name == "fails"
    assert packet.timer_tags() == [(("group", "library"),)]


def test_jobs_in_threads_do_not_mix(udp_listener):
    monitor = ScriptMonitor(udp_listener.address, autostart=False)
    barrier = threading.Barrier(16)

    def work(i):
        with monitor.job(f"job{i}"):
            barrier.wait()
            for _ in range(3):
                with pynba.timer(owner=f"job{i}"):
                    time.sleep(0.001)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    packets = receive_all(udp_listener, 16)
    for packet in packets:
        assert packet.timer_tags() == [(("owner", packet.script_name),)]
        assert packet.timer(owner=packet.script_name).hit_count == 3
    assert len({p.script_name for p in packets}) == 16


def test_raise_on_fail_as_in_the_old_api(udp_listener):
    monitor = ScriptMonitor(udp_listener.address)
    assert monitor.reporter.raise_on_fail is False
    monitor.reporter.raise_on_fail = True
    assert ScriptMonitor(udp_listener.address, raise_on_fail=True).reporter.raise_on_fail


def test_a_disabled_monitor_sends_nothing(udp_listener):
    monitor = ScriptMonitor(udp_listener.address, enabled=False)
    with monitor.timer(group="x"):
        library_code()
    monitor.send()
    with monitor.job("j"):
        library_code()
    assert udp_listener.pending(0.1) == []


def test_close_stops_monitoring_here(udp_listener):
    monitor = ScriptMonitor(udp_listener.address)
    monitor.close()
    with pytest.raises(RuntimeError):
        pynba.timer(group="x").start()


def test_the_old_import_path_and_bad_arguments(udp_listener):
    from pynba.util import ScriptMonitor as OldPath

    assert OldPath is ScriptMonitor
    with pytest.raises(TypeError, match="scriptname"):
        ScriptMonitor(udp_listener.address, scriptname=1)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["/usr/local/bin/worker", "--id", "1"], "worker"),
        (["manage.py", "runjob"], "manage.py"),
        (["-c"], None),
        ([], None),
    ],
)
def test_program_name_never_includes_arguments(monkeypatch, argv, expected):
    monkeypatch.setattr("sys.argv", argv)
    name = program_name()
    assert name == expected if expected else name.startswith("python")


def test_what_one_job_sets_does_not_carry_over_to_the_next(udp_listener):
    monitor = ScriptMonitor(udp_listener.address, scriptname="worker", tags={"app": "jobs"})
    monitor.collector.script_name = "resize"
    monitor.collector.set_tag("priority", "high")
    monitor.send()
    monitor.send()
    first, second = receive(udp_listener), receive(udp_listener)
    assert (first.script_name, dict(first.tags)) == ("resize", {"app": "jobs", "priority": "high"})
    assert (second.script_name, dict(second.tags)) == ("worker", {"app": "jobs"})
    monitor.close()


def test_close_leaves_a_shared_reporter_open(udp_listener):
    from pynba.reporter import Reporter

    with Reporter(udp_listener.address) as shared:
        ScriptMonitor(shared, autostart=False).close()
        shared.send(b"\x0a\x00")
        assert udp_listener.receive() == b"\x0a\x00"


def test_a_monitor_reaches_its_own_jobs_only(udp_listener):
    from pynba.reporter import Reporter

    with Reporter(udp_listener.address) as shared:
        first = ScriptMonitor(shared, script_name="first", autostart=False)
        second = ScriptMonitor(shared, script_name="second")
        own = second.collector  # its own job, begun at once
        with first.job() as outer:
            assert (first.collector, second.collector) == (outer, own)
            with second.job("inner") as inner:
                assert (first.collector, second.collector) == (None, inner)
            assert first.collector is outer
        assert first.collector is None
        first.close()
        second.close()
    packets = receive_all(udp_listener, 3)
    assert sorted(p.script_name for p in packets) == ["first", "inner", "second"]

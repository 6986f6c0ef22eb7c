"""A ScriptMonitor's end: close(), ``with``, collection and exit report the running job."""

import gc
import os
import socket
import subprocess
import sys
import textwrap
import threading
import weakref
from pathlib import Path

import pytest

from conftest import decode
from packets import receive
from pinba2_rules import assert_valid
from pynba import ScriptMonitor, pynba
from pynba import collector as collector_module
from pynba.reporter import Reporter
from pynba.timer import NoopTimer

ROOT = Path(__file__).resolve().parent.parent


def run_script(code, listener, returncode=0):
    """Run ``code`` in a new interpreter (ADDRESS is the listener's); its datagrams, decoded."""
    script = textwrap.dedent(code).replace("ADDRESS", repr(listener.address))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == returncode, done.stderr
    if returncode == 0:
        assert done.stderr == ""  # nothing logged by pynba
    datagrams = listener.pending(timeout=0.2)
    for datagram in datagrams:
        assert_valid(datagram)
    return [decode(datagram) for datagram in datagrams], done


def quiet(listener):
    return listener.pending(timeout=0.05) == []


# -- interpreter exit ----------------------------------------------------------


def test_a_script_that_just_exits_sends_its_run(udp_listener):
    [packet], _ = run_script(
        """
        from pynba import ScriptMonitor
        monitor = ScriptMonitor(ADDRESS, scriptname="nightly", servername="batch")
        """,
        udp_listener,
    )
    assert (packet.script_name, packet.server_name, packet.status) == ("nightly", "batch", 0)
    assert list(packet.timer_value) == []


def test_a_script_sends_its_timers_at_exit(udp_listener):
    [packet], _ = run_script(
        """
        from pynba import ScriptMonitor, pynba
        monitor = ScriptMonitor(ADDRESS, scriptname="nightly", tags={"app": "jobs"})
        with pynba.timer(group="db"):
            pass
        pynba.document_size = 42
        """,
        udp_listener,
    )
    assert packet.script_name == "nightly"
    assert list(packet.timer_hit_count) == [1]
    assert packet.document_size == 42
    assert [packet.dictionary[i] for i in (packet.tag_name[0], packet.tag_value[0])] == [
        "app",
        "jobs",
    ]


def test_a_script_that_ends_with_send_sends_one_packet(udp_listener):
    packets, _ = run_script(
        """
        from pynba import ScriptMonitor, pynba
        monitor = ScriptMonitor(ADDRESS, scriptname="nightly")
        with pynba.timer(group="db"):
            pass
        monitor.send()
        """,
        udp_listener,
    )
    assert [(p.script_name, list(p.timer_hit_count)) for p in packets] == [("nightly", [1])]


def test_a_job_begun_by_send_is_sent_at_exit_once_something_ran_in_it(udp_listener):
    packets, _ = run_script(
        """
        from pynba import ScriptMonitor, pynba
        monitor = ScriptMonitor(ADDRESS, scriptname="worker")
        monitor.send()
        with pynba.timer(group="tail"):
            pass
        """,
        udp_listener,
    )
    assert [len(p.timer_value) for p in packets] == [0, 1]


def test_an_uncaught_exception_still_sends_the_run(udp_listener):
    [packet], done = run_script(
        """
        from pynba import ScriptMonitor
        monitor = ScriptMonitor(ADDRESS, scriptname="crashes")
        raise RuntimeError("boom")
        """,
        udp_listener,
        returncode=1,
    )
    assert packet.script_name == "crashes"
    assert packet.status == 0  # no exception to see at exit: the status as it stands


@pytest.mark.parametrize(
    "ending, returncode, status",
    [("pass", 0, 0), ("sys.exit(0)", 0, 0), ("sys.exit(3)", 3, 500), ("1 / 0", 1, 500)],
)
def test_the_with_form_in_a_script(udp_listener, ending, returncode, status):
    [packet], _ = run_script(
        f"""
        import sys
        from pynba import ScriptMonitor, pynba
        with ScriptMonitor(ADDRESS, scriptname="cron") as monitor:
            with pynba.timer(group="step"):
                pass
            {ending}
        """,
        udp_listener,
        returncode=returncode,
    )
    assert (packet.script_name, packet.status, len(packet.timer_value)) == ("cron", status, 1)


def test_a_disabled_script_sends_nothing(udp_listener):
    packets, _ = run_script(
        """
        from pynba import ScriptMonitor, pynba
        monitor = ScriptMonitor(ADDRESS, enabled=False)
        with pynba.timer(group="db"):
            pass
        with ScriptMonitor(ADDRESS, enabled=False):
            pass
        """,
        udp_listener,
    )
    assert packets == []


def test_a_closed_monitor_sends_nothing_more_at_exit(udp_listener):
    packets, _ = run_script(
        """
        from pynba import ScriptMonitor
        monitor = ScriptMonitor(ADDRESS, scriptname="closed")
        monitor.close()
        monitor.close()
        """,
        udp_listener,
    )
    assert [p.script_name for p in packets] == ["closed"]


def test_a_forked_child_leaves_the_parents_job_to_the_parent(udp_listener):
    if not hasattr(os, "fork"):
        pytest.skip("no fork()")
    packets, _ = run_script(
        """
        import os, sys
        from pynba import ScriptMonitor
        monitor = ScriptMonitor(ADDRESS, scriptname="parent")
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # runs the child's exit handlers
        os.waitpid(pid, 0)
        """,
        udp_listener,
    )
    assert [p.script_name for p in packets] == ["parent"]


def test_a_monitor_without_autostart_sends_only_what_was_started(udp_listener):
    packets, _ = run_script(
        """
        from pynba import ScriptMonitor
        idle = ScriptMonitor(ADDRESS, scriptname="idle", autostart=False)
        started = ScriptMonitor(ADDRESS, scriptname="started", autostart=False)
        started.start()
        """,
        udp_listener,
    )
    assert [p.script_name for p in packets] == ["started"]


# -- collection ----------------------------------------------------------------


def test_a_monitor_collected_without_close_sends_its_job(udp_listener):
    monitor = ScriptMonitor(udp_listener.address, scriptname="dropped")
    with monitor.timer(group="db"):
        pass
    collected = weakref.ref(monitor)
    del monitor
    gc.collect()
    assert collected() is None  # the exit hook does not keep it alive
    packet = receive(udp_listener)
    assert (packet.script_name, packet.timer_tags()) == ("dropped", [(("group", "db"),)])
    assert quiet(udp_listener)


def test_a_monitor_collected_after_send_sends_nothing_more(udp_listener):
    monitor = ScriptMonitor(udp_listener.address, scriptname="worker")
    monitor.send()
    del monitor
    gc.collect()
    assert receive(udp_listener).script_name == "worker"
    assert quiet(udp_listener)


# -- close() ---------------------------------------------------------------------


def test_close_reports_the_running_job(udp_listener):
    monitor = ScriptMonitor(udp_listener.address, scriptname="job")
    monitor.close()
    packet = receive(udp_listener)
    assert (packet.script_name, packet.status, packet.timers) == ("job", 0, [])
    assert monitor.closed
    monitor.close()  # harmless
    assert quiet(udp_listener)
    assert monitor.reporter.stats["sent"] == 1


def test_close_after_send_reports_the_next_job_only_when_touched(udp_listener):
    untouched = ScriptMonitor(udp_listener.address, scriptname="a")
    untouched.send()
    untouched.close()
    assert receive(udp_listener).script_name == "a"
    assert quiet(udp_listener)

    named = ScriptMonitor(udp_listener.address, scriptname="b")
    named.send()
    named.collector.script_name = "b-tail"
    named.close()
    assert [receive(udp_listener).script_name for _ in range(2)] == ["b", "b-tail"]

    tagged = ScriptMonitor(udp_listener.address, scriptname="c")
    tagged.send()
    tagged.collector.set_tag("phase", "shutdown")
    tagged.close()
    first, second = receive(udp_listener), receive(udp_listener)
    assert (first.tags, second.tags) == ([], [("phase", "shutdown")])


def test_close_after_send_reports_a_next_job_whose_timers_were_all_merged(udp_listener):
    monitor = ScriptMonitor(udp_listener.address, scriptname="worker")
    monitor.send()
    for _ in range(collector_module.MERGE_TIMERS_AT):
        with monitor.timer(group="call"):
            pass
    monitor.timer(group="unused")  # made, never run: joining, it merges the others
    assert [timer.tags for timer in monitor.collector.timers] == [(("group", "unused"),)]
    monitor.close()
    assert receive(udp_listener).timers == []
    assert receive(udp_listener).timer(group="call").hit_count == collector_module.MERGE_TIMERS_AT


def test_close_without_autostart_reports_a_started_job_only(udp_listener):
    monitor = ScriptMonitor(udp_listener.address, scriptname="s", autostart=False)
    monitor.start()
    monitor.send()
    monitor.close()
    assert receive(udp_listener).script_name == "s"
    assert quiet(udp_listener)

    monitor = ScriptMonitor(udp_listener.address, scriptname="t", autostart=False)
    monitor.start()
    monitor.close()
    assert receive(udp_listener).script_name == "t"


def test_after_close_every_method_is_a_silent_no_op(udp_listener):
    monitor = ScriptMonitor(udp_listener.address)
    monitor.close()
    receive(udp_listener)
    monitor.start()
    timer = monitor.timer(group="x")
    assert isinstance(timer, NoopTimer)
    with timer:
        pass
    monitor.flush()
    monitor.send()
    with monitor.job("late") as job:
        assert not job.enabled
        with pynba.timer(group="y"):
            pass
    assert monitor.collector is None
    with monitor as same:
        assert same is monitor
    monitor.close()
    assert quiet(udp_listener)


def test_close_from_another_thread(udp_listener):
    monitor = ScriptMonitor(udp_listener.address, scriptname="threaded")
    closer = threading.Thread(target=monitor.close)
    closer.start()
    closer.join()
    assert receive(udp_listener).script_name == "threaded"


def test_close_reports_the_job_and_leaves_a_shared_reporter_open(udp_listener):
    with Reporter(udp_listener.address) as shared:
        ScriptMonitor(shared, scriptname="shared").close()
        assert receive(udp_listener).script_name == "shared"
        shared.send(b"\x0a\x00")
        assert udp_listener.receive() == b"\x0a\x00"


# -- the with form ---------------------------------------------------------------


def test_with_gives_the_monitor_and_reports_the_job_at_the_end(udp_listener):
    with ScriptMonitor(udp_listener.address, scriptname="block") as monitor:
        assert isinstance(monitor, ScriptMonitor)
        with pynba.timer(group="step"):
            pass
        monitor.collector.status = 204
    packet = receive(udp_listener)
    assert (packet.script_name, packet.status) == ("block", 204)
    assert packet.timer_tags() == [(("group", "step"),)]
    assert monitor.closed
    with pytest.raises(RuntimeError):
        pynba.timer(group="after").start()  # no job runs here any more
    assert quiet(udp_listener)


def test_with_reports_a_failed_block_as_500_and_lets_the_exception_through(udp_listener):
    with pytest.raises(ZeroDivisionError):
        with ScriptMonitor(udp_listener.address, scriptname="fails") as monitor:
            monitor.send()  # the first job went well
            _ = 1 / 0
    first, second = receive(udp_listener), receive(udp_listener)
    assert (first.status, second.status) == (0, 500)


def test_with_and_a_clean_exit_is_no_failure(udp_listener):
    with pytest.raises(SystemExit):
        with ScriptMonitor(udp_listener.address):
            sys.exit(0)
    assert receive(udp_listener).status == 0


def test_with_a_disabled_monitor_sends_nothing(udp_listener):
    with ScriptMonitor(udp_listener.address, enabled=False) as monitor:
        with monitor.timer(group="x"):
            pass
    assert quiet(udp_listener)


def test_a_failed_job_block_is_reported_as_500(udp_listener):
    monitor = ScriptMonitor(udp_listener.address, autostart=False)
    with pytest.raises(KeyError):
        with monitor.job("fails"):
            raise KeyError("x")
    with pytest.raises(SystemExit):
        with monitor.job("exits"):
            sys.exit(0)
    failed, exited = receive(udp_listener), receive(udp_listener)
    assert (failed.script_name, failed.status) == ("fails", 500)
    assert (exited.script_name, exited.status) == ("exits", 0)
    monitor.close()
    assert quiet(udp_listener)


def test_a_script_naming_its_server_by_host_name_that_exits_at_once_is_reported(
    udp_listener_factory,
):
    # The name is looked up in the background: the last report waits for it.
    family, *_, sockaddr = socket.getaddrinfo("localhost", None, type=socket.SOCK_DGRAM)[0]
    listener = udp_listener_factory(sockaddr[0], family)
    [packet], _ = run_script(
        """
        from pynba import ScriptMonitor

        ScriptMonitor(f"localhost:{ADDRESS[1]}", scriptname="quick")
        """,
        listener,
    )
    assert packet.script_name == "quick"

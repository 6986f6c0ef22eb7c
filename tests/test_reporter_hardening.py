"""The reporter never blocks a request, keeps exact counters, and writes only to its own sockets.

Against real sockets on the loopback interface. The one stand-in is a slow
name server: ``socket.getaddrinfo``, which the reporter calls to look names
up, is replaced for one made-up name by a resolver that does not answer
until the test lets it (every other name goes to the real resolver).
"""

import gc
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from pynba.reporter import Reporter
from pynba.wire import encoder
from resolving import route_of, wait_for_addresses

ROOT = Path(__file__).resolve().parent.parent
SLOW_NAME = "pinba.slow.test"
# Longer than any test waits for the parked resolver: a report that waited
# for it would show (and the test still end).
PARK_LIMIT = 5.0

REQUEST = {
    "hostname": "web-1",
    "server_name": "example.com",
    "script_name": "/checkout",
    "request_time": 0.25,
    "status": 200,
    "tags": {"region": "eu"},
    "timers": [({"group": "db"}, 0.125, 3, 0.0, 0.0)],
}


def encoded(**request):
    return encoder.encode(
        request["hostname"],
        request["server_name"],
        request["script_name"],
        1,
        0,
        0,
        request.get("request_time", 0.0),
        0.0,
        0.0,
        request.get("status", 0),
        0,
        None,
        request.get("tags", ()),
        request.get("timers", ()),
    )


def pynba_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "pynba" and r.levelno >= 30]


def resolver_threads():
    return {thread for thread in threading.enumerate() if thread.name == "pynba-resolver"}


class SlowNameServer:
    """Answers ``SLOW_NAME`` with 127.0.0.1 only once released; other names as usual."""

    def __init__(self, monkeypatch, failures=0):
        self.real_getaddrinfo = socket.getaddrinfo
        self.asked = threading.Event()
        self.released = threading.Event()
        self.answered = threading.Event()
        self.failures = failures  # the first lookups of SLOW_NAME that fail
        self.calls = []  # (time.monotonic(), thread name) of each lookup of SLOW_NAME
        monkeypatch.setattr(socket, "getaddrinfo", self.getaddrinfo)

    def getaddrinfo(self, host, port, *args, **kwargs):
        if host != SLOW_NAME:
            return self.real_getaddrinfo(host, port, *args, **kwargs)
        self.calls.append((time.monotonic(), threading.current_thread().name))
        self.asked.set()
        self.released.wait(PARK_LIMIT)
        if len(self.calls) <= self.failures:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        self.answered.set()
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("127.0.0.1", port))]


# -- 1. never block a request on the network ---------------------------------------------


def test_report_never_waits_for_a_slow_name_lookup(udp_listener, reporter_factory, monkeypatch):
    name_server = SlowNameServer(monkeypatch)
    reporter = reporter_factory(f"{SLOW_NAME}:{udp_listener.port}")

    started = time.monotonic()
    reporter.report(**REQUEST)  # starts the lookup, in the background
    took = time.monotonic() - started
    assert name_server.asked.wait(PARK_LIMIT)

    # Requests in several threads while the name server still has not answered.
    errors = []

    def report_some():
        try:
            for _ in range(5):
                reporter.report(**REQUEST)
        except Exception as error:  # pragma: no cover - shown by the assertion
            errors.append(error)

    threads = [threading.Thread(target=report_some) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PARK_LIMIT / 2)
    assert not any(thread.is_alive() for thread in threads), "a request waited for the lookup"
    assert errors == []
    assert not name_server.answered.is_set()  # every report above ended while it was pending
    assert took < PARK_LIMIT / 10, took
    # Sent before the address is known: dropped, and counted.
    assert reporter.stats == {"sent": 0, "failed": 21, "oversize": 0, "resolve": 21}
    assert udp_listener.pending(timeout=0.05) == []

    name_server.released.set()
    wait_for_addresses(reporter)
    reporter.report(**REQUEST)
    assert udp_listener.receive() == encoded(**REQUEST)
    assert reporter.stats["sent"] == 1
    assert [thread for _, thread in name_server.calls] == ["pynba-resolver"]


def test_a_real_name_is_looked_up_in_the_background_and_used(
    udp_listener_factory, reporter_factory, monkeypatch
):
    real_getaddrinfo = socket.getaddrinfo
    family, *_, sockaddr = real_getaddrinfo("localhost", None, type=socket.SOCK_DGRAM)[0]
    listener = udp_listener_factory(sockaddr[0], family)
    looked_up_by = []

    def watched_getaddrinfo(host, *args, **kwargs):
        if host == "localhost":
            looked_up_by.append(threading.current_thread().name)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", watched_getaddrinfo)
    reporter = reporter_factory(f"localhost:{listener.port}")
    reporter.report(**REQUEST)  # sent if the lookup was quicker than this request, else dropped
    wait_for_addresses(reporter)
    reporter.report(**{**REQUEST, "script_name": "/after"})
    sent = reporter.stats["sent"]
    assert sent in (1, 2) and sent + reporter.stats.get("resolve", 0) == 2, reporter.stats
    received = [listener.receive() for _ in range(sent)]
    assert received[-1] == encoded(**{**REQUEST, "script_name": "/after"})
    assert looked_up_by == ["pynba-resolver"]


def test_a_failed_first_lookup_is_tried_again_soon_and_sooner_than_the_interval(
    udp_listener, reporter_factory, monkeypatch
):
    name_server = SlowNameServer(monkeypatch, failures=2)
    name_server.released.set()
    reporter = reporter_factory(f"{SLOW_NAME}:{udp_listener.port}", resolve_interval=3600)
    reporter.report(**REQUEST)
    wait_for_addresses(reporter)  # an hour's interval, yet found within seconds
    reporter.report(**REQUEST)
    assert udp_listener.receive() == encoded(**REQUEST)
    times = [when for when, _ in name_server.calls]
    assert len(times) == 3
    first_pause, second_pause = times[1] - times[0], times[2] - times[1]
    assert first_pause >= 0.45 and second_pause >= 0.9, (first_pause, second_pause)  # 0.5 s, 1 s
    assert reporter.stats["lookup_failed"] == 2
    assert reporter.stats["resolve"] == 1


def test_ip_literals_need_no_lookup_thread(udp_listener, reporter_factory):
    before = resolver_threads()
    reporter = reporter_factory(udp_listener.address)
    reporter.report(**REQUEST)
    assert udp_listener.receive() == encoded(**REQUEST)
    assert reporter.stats["sent"] == 1
    assert resolver_threads() <= before


@pytest.mark.parametrize("end", ["closed", "collected"])
def test_the_lookup_thread_ends_with_its_reporter(udp_listener, end):
    before = resolver_threads()
    reporter = Reporter(f"localhost:{udp_listener.port}")
    reporter.report(**REQUEST)
    (thread,) = resolver_threads() - before
    assert thread.daemon  # never keeps the interpreter alive
    if end == "closed":
        reporter.close()
    else:
        del reporter
        gc.collect()
    thread.join(PARK_LIMIT)
    assert not thread.is_alive()


def test_a_collected_reporter_leaves_no_after_fork_handler_behind(udp_listener):
    from pynba import reporter as reporter_module

    gc.collect()
    before = len(reporter_module._fork_handlers)
    reporters = [Reporter(f"localhost:{udp_listener.port}") for _ in range(10)]
    assert len(reporter_module._fork_handlers) == before + 10
    del reporters
    # A lookup thread holds its reporter while it hands over an address it
    # found: that one goes when the thread lets go of it.
    deadline = time.monotonic() + PARK_LIMIT
    gc.collect()
    while len(reporter_module._fork_handlers) > before and time.monotonic() < deadline:
        time.sleep(0.01)
        gc.collect()
    assert len(reporter_module._fork_handlers) <= before


def test_a_hanging_lookup_does_not_keep_the_interpreter_alive():
    script = textwrap.dedent(
        """
        import socket, time
        from pynba.reporter import Reporter

        def hanging_getaddrinfo(*args, **kwargs):
            time.sleep(3600)

        socket.getaddrinfo = hanging_getaddrinfo
        reporter = Reporter("pinba.hanging.test:30002")
        reporter.report(hostname="h", server_name="s", script_name="/")
        print(reporter.stats["resolve"])
        """
    )
    environment = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=20
    )
    assert (done.returncode, done.stdout) == (0, "1\n"), done.stderr


def test_a_report_at_exit_neither_raises_nor_hangs():
    # At interpreter shutdown no thread can start (RuntimeError from 3.12 on):
    # the datagram is dropped as any sent before the address is known.
    script = textwrap.dedent(
        """
        import atexit
        from pynba.reporter import Reporter

        reporter = Reporter("localhost:30002", raise_on_fail=False)

        @atexit.register
        def report_at_exit():
            reporter.report(hostname="h", server_name="s", script_name="/at-exit")
            print(reporter.stats["sent"] + reporter.stats["failed"])
        """
    )
    environment = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=20
    )
    assert (done.returncode, done.stdout) == (0, "1\n"), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_looks_names_up_in_a_thread_of_its_own(udp_listener, reporter_factory):
    used = reporter_factory(f"localhost:{udp_listener.port}")
    wait_for_addresses(used)
    unused = reporter_factory(f"localhost:{udp_listener.port}")  # first used in the child

    def child():
        used.report(**{**REQUEST, "hostname": "child"})  # the parent's address, a new socket
        if used.stats["sent"] != 1 or not any(t.is_alive() for t in resolver_threads()):
            return False
        unused.report(**{**REQUEST, "hostname": "dropped"})
        deadline = time.monotonic() + PARK_LIMIT
        while route_of(unused) is None and time.monotonic() < deadline:
            time.sleep(0.005)
        unused.report(**{**REQUEST, "hostname": "child-2"})
        return unused.stats["sent"] >= 1

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if child() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    names = [encoder_hostname(data) for data in udp_listener.pending(timeout=0.5)]
    assert names[0] == "child" and names[-1] == "child-2", names


def encoder_hostname(data):
    from pinba_pb2 import Request

    message = Request()
    message.ParseFromString(data)
    return message.hostname


# -- 2. stats: clearable, and exact under threads ------------------------------------------


def test_clearing_stats_never_breaks_a_report(udp_listener, reporter_factory):
    reporter = reporter_factory(udp_listener.address)
    reporter.stats.clear()
    reporter.report(**REQUEST)
    assert udp_listener.receive() == encoded(**REQUEST)
    assert reporter.stats == {"sent": 1}
    reporter.close()
    reporter.stats.clear()
    reporter.report(**REQUEST)  # fails: the reporter is closed
    assert reporter.stats == {"failed": 1, "EBADF": 1}
    assert type(reporter.stats) is dict


def test_stats_cleared_while_threads_report(udp_listener, reporter_factory):
    reporter = reporter_factory(udp_listener.address)
    errors = []
    done = threading.Event()

    def report_some():
        try:
            for _ in range(300):
                reporter.report(**REQUEST)
                reporter.count("custom")
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=report_some) for _ in range(4)]
    for thread in threads:
        thread.start()

    def clear_meanwhile():
        while not done.is_set():
            reporter.stats.clear()

    clearer = threading.Thread(target=clear_meanwhile)
    clearer.start()
    for thread in threads:
        thread.join()
    done.set()
    clearer.join()
    assert errors == []


def test_counters_are_exact_under_threads(udp_listener, reporter_factory, frequent_thread_switches):
    sending = reporter_factory(udp_listener.address)
    failing = reporter_factory(udp_listener.address)
    failing.close()
    thread_count, per_thread = 8, 400
    start = threading.Barrier(thread_count)

    def work():
        start.wait()
        for _ in range(per_thread):
            sending.report(**REQUEST)
            sending.count("custom")
            sending.count("custom", 2)
            failing.report(**REQUEST)

    threads = [threading.Thread(target=work) for _ in range(thread_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = thread_count * per_thread
    assert sending.stats == {"sent": total, "failed": 0, "oversize": 0, "custom": 3 * total}
    assert failing.stats == {"sent": 0, "failed": total, "oversize": 0, "EBADF": total}
    assert len(udp_listener.pending(timeout=0.2)) == total


# -- 3. descriptors the reporter does not own ---------------------------------------------


def reporter_fd(reporter):
    """The descriptor number of the reporter's one socket."""
    (route,) = reporter._sockets.values()
    return route.fd


def fd_is_open(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def tcp_server():
    server = socket.create_server(("127.0.0.1", 0))
    yield server
    server.close()


@pytest.fixture
def sent_once(udp_listener, reporter_factory):
    """A reporter that has sent one datagram, so that it has its socket."""
    reporter = reporter_factory(udp_listener.address)
    reporter.report(**REQUEST)
    assert udp_listener.receive() == encoded(**REQUEST)
    return reporter


def assert_nothing_arrives(connection):
    connection.settimeout(0.3)
    with pytest.raises(TimeoutError):
        data = connection.recv(70000)
        pytest.fail(f"the reporter wrote {data!r} into a connection not its own")


def test_a_number_reused_by_a_tcp_connection_is_never_written_to_nor_closed(
    sent_once, udp_listener, tcp_server, caplog
):
    reporter = sent_once
    number = reporter_fd(reporter)
    os.close(number)  # e.g. daemonizing code closing every descriptor
    client = socket.create_connection(tcp_server.getsockname())  # gets the lowest free number
    connection, _ = tcp_server.accept()
    try:
        if client.fileno() != number:
            pytest.skip("the connection did not get the socket's descriptor number")
        with caplog.at_level(logging.WARNING, logger="pynba"):
            reporter.report(**{**REQUEST, "script_name": "/second"})
        assert_nothing_arrives(connection)
        assert udp_listener.receive() == encoded(**{**REQUEST, "script_name": "/second"})
        assert reporter.stats == {"sent": 2, "failed": 0, "oversize": 0, "fd_reused": 1}
        [warning] = pynba_warnings(caplog)
        assert f"descriptor {number}" in warning and "reused" in warning
        assert reporter_fd(reporter) != number  # a socket of its own again

        reporter.close()
        client.sendall(b"still mine")  # the connection is open and works
        connection.settimeout(5)
        assert connection.recv(100) == b"still mine"
    finally:
        connection.close()
        client.close()


def test_a_number_taken_over_by_a_pipe_is_never_written_to_nor_closed(sent_once, udp_listener):
    reporter = sent_once
    number = reporter_fd(reporter)
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    try:
        os.dup2(write_end, number)  # the number is the pipe's now
        reporter.report(**{**REQUEST, "script_name": "/second"})
        with pytest.raises(BlockingIOError):
            os.read(read_end, 70000)  # nothing was written into the pipe
        assert udp_listener.receive() == encoded(**{**REQUEST, "script_name": "/second"})
        assert reporter.stats["fd_reused"] == 1 and reporter.stats["failed"] == 0

        reporter.close()
        os.write(number, b"still mine")
        assert os.read(read_end, 100) == b"still mine"
    finally:
        for fd in (read_end, write_end, number):
            if fd_is_open(fd):
                os.close(fd)


def test_a_number_taken_over_by_another_udp_socket_is_never_sent_through(
    sent_once, udp_listener, udp_listener_factory
):
    reporter = sent_once
    number = reporter_fd(reporter)
    elsewhere = udp_listener_factory()
    foreign = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    foreign.connect(elsewhere.address)
    try:
        os.dup2(foreign.fileno(), number)  # a connected UDP socket: send() would succeed
        reporter.report(**{**REQUEST, "script_name": "/second"})
        assert elsewhere.pending(timeout=0.2) == []
        assert udp_listener.receive() == encoded(**{**REQUEST, "script_name": "/second"})
        assert reporter.stats["fd_reused"] == 1
        reporter.close()
        os.write(number, b"still mine")
        assert elsewhere.receive() == b"still mine"
    finally:
        foreign.close()
        if fd_is_open(number):
            os.close(number)


@pytest.mark.parametrize("end", ["closed", "collected"])
def test_closing_the_reporter_leaves_a_reused_number_open(udp_listener, end):
    reporter = Reporter(udp_listener.address)
    reporter.report(**REQUEST)
    number = reporter_fd(reporter)
    read_end, write_end = os.pipe()
    try:
        os.dup2(write_end, number)
        if end == "closed":
            reporter.close()
        else:
            del reporter
            gc.collect()
        os.write(number, b"x")  # raises EBADF if the reporter closed it
        assert os.read(read_end, 1) == b"x"
    finally:
        for fd in (read_end, write_end, number):
            if fd_is_open(fd):
                os.close(fd)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_leaves_a_reused_number_open(sent_once):
    number = reporter_fd(sent_once)
    read_end, write_end = os.pipe()
    try:
        os.dup2(write_end, number)
        pid = os.fork()
        if pid == 0:  # the after-fork handler has let go of the child's copies of the sockets
            os._exit(0 if fd_is_open(number) else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        for fd in (read_end, write_end):
            os.close(fd)
        sent_once.close()
        if fd_is_open(number):
            os.close(number)


def test_each_reuse_is_counted_and_logged_once_per_interval(sent_once, udp_listener, caplog):
    reporter = sent_once
    with caplog.at_level(logging.WARNING, logger="pynba"):
        for _ in range(2):
            read_end, write_end = os.pipe()
            os.dup2(write_end, reporter_fd(reporter))
            reporter.report(**REQUEST)
            for fd in (read_end, write_end):
                os.close(fd)
    assert len(udp_listener.pending(timeout=0.2)) == 2
    assert reporter.stats["fd_reused"] == 2
    assert len(pynba_warnings(caplog)) == 1

"""The fault matrix: what the monitored application sees when reporting fails.

Each fault is real where the OS can produce it on demand (a name that does
not resolve, a closed port answering with ICMP port-unreachable, a datagram
too large for UDP, a socket closed under the reporter, a send buffer full
behind a throttled interface in a private network namespace, gunicorn
forking its workers); the resolver failing after a success is the one fault
injected. For each, with ``raise_on_fail`` off and on: the application's
response is unchanged, nothing is raised into it unless asked, one warning
is logged per kind of failure per interval, and the counters are right.
"""

import gc
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
import weakref
from collections import Counter
from pathlib import Path

import pytest

from packets import Packet
from pynba import PynbaMiddleware, pynba
from pynba.reporter import Reporter
from resolving import wait_for_addresses, wait_until

ROOT = Path(__file__).resolve().parent.parent
BODY = b"Hello, world!\n"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]
REQUESTS = 5


@pytest.fixture(autouse=True)
def production_mode(monkeypatch):
    """Internal errors are logged, as in production, not raised as the suite's strict mode does."""
    monkeypatch.delenv("PYNBA_STRICT", raising=False)


def hello(environ, start_response):
    with pynba.timer(group="hello"):
        start_response("200 OK", list(HEADERS))
        return [BODY]


def serve(app, path="/hello"):
    """Call ``app`` as a WSGI server does: (status, headers, body, error raised by close())."""
    environ = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "HTTP_HOST": "example.com",
        "wsgi.url_scheme": "http",
    }
    started = {}

    def start_response(status, headers, exc_info=None):
        started["status"], started["headers"] = status, headers

    result = app(environ, start_response)
    body = b"".join(result)
    error = None
    try:
        result.close()
    except Exception as raised:
        error = raised
    return started["status"], started["headers"], body, error


BARE_RESPONSE = ("200 OK", HEADERS, BODY)


def pynba_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "pynba" and r.levelno >= 30]


def run_requests(app, caplog, count=REQUESTS, path="/hello"):
    """Serve ``count`` requests; the errors raised by close(), and the warnings logged."""
    errors = []
    with caplog.at_level(logging.WARNING, logger="pynba"):
        for _ in range(count):
            status, headers, body, error = serve(app, path)
            assert (status, headers, body) == BARE_RESPONSE  # the response is unchanged
            errors.append(error)
    return errors, pynba_warnings(caplog)


def closed_port():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


@pytest.fixture
def reporters():
    made = []

    def make(*args, **kwargs):
        reporter = Reporter(*args, **kwargs)
        made.append(reporter)
        return reporter

    yield make
    for reporter in made:
        reporter.close()


# -- an unresolvable name --------------------------------------------------------


@pytest.mark.parametrize("raise_on_fail", [False, True])
def test_unresolvable_name(raise_on_fail, caplog, reporters):
    reporter = reporters("pinba.invalid:30002", raise_on_fail=raise_on_fail)
    app = PynbaMiddleware(hello, reporter)
    errors, _ = run_requests(app, caplog, count=1)  # starts the lookup, in the background
    wait_until(lambda: reporter.stats.get("lookup_failed", 0) >= 1)
    more_errors, warnings = run_requests(app, caplog, count=REQUESTS - 1)
    errors += more_errors
    # Tried again after 0.5 s, 1 s, 2 s, ...: not once per request.
    assert reporter.stats.pop("lookup_failed") < REQUESTS
    assert reporter.stats == {"sent": 0, "failed": REQUESTS, "oversize": 0, "resolve": REQUESTS}
    if raise_on_fail:
        assert all(isinstance(error, socket.gaierror) for error in errors), errors
        assert warnings == []
    else:
        assert errors == [None] * REQUESTS
        assert len(warnings) == 1 and "pinba.invalid:30002" in warnings[0], warnings


# -- the resolver fails after a success: the last good address is kept ------------------


@pytest.mark.parametrize("raise_on_fail", [False, True])
def test_resolver_failing_after_success_keeps_the_last_address(
    raise_on_fail, caplog, reporters, udp_listener_factory, monkeypatch
):
    real_getaddrinfo = socket.getaddrinfo
    family, *_, sockaddr = real_getaddrinfo("localhost", None, type=socket.SOCK_DGRAM)[0]
    listener = udp_listener_factory(sockaddr[0], family)
    reporter = reporters(
        f"localhost:{listener.port}", raise_on_fail=raise_on_fail, resolve_interval=0
    )
    app = PynbaMiddleware(hello, reporter)
    wait_for_addresses(reporter)
    errors, warnings = run_requests(app, caplog)
    assert warnings == [] and errors == [None] * REQUESTS

    def failing_getaddrinfo(*args, **kwargs):
        # The one injected fault: a resolver cannot be made to fail on demand.
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", failing_getaddrinfo)
    caplog.clear()
    wait_until(lambda: reporter.stats.get("lookup_failed", 0) >= 2)  # looked up in the background
    errors, warnings = run_requests(app, caplog)
    assert errors == [None] * REQUESTS  # the packets went out: nothing to raise
    packets = [Packet(listener.receive()) for _ in range(2 * REQUESTS)]
    assert listener.pending(timeout=0.05) == []
    assert {packet.script_name for packet in packets} == {"/hello"}
    assert reporter.stats.pop("lookup_failed") >= 2
    assert reporter.stats == {"sent": 2 * REQUESTS, "failed": 0, "oversize": 0}
    assert len(warnings) == 1 and "still sending to" in warnings[0], warnings


# -- ICMP port-unreachable ------------------------------------------------------------


@pytest.mark.parametrize("raise_on_fail", [False, True])
def test_icmp_port_unreachable_is_harmless(raise_on_fail, caplog, reporters, udp_listener):
    # The closed port answers every datagram with ICMP port-unreachable; the
    # ECONNREFUSED this causes on the next send must not become an error.
    reporter = reporters(
        [("127.0.0.1", closed_port()), udp_listener.address], raise_on_fail=raise_on_fail
    )
    errors, warnings = run_requests(PynbaMiddleware(hello, reporter), caplog, count=20)
    assert errors == [None] * 20
    assert warnings == []
    assert reporter.stats == {"sent": 40, "failed": 0, "oversize": 0}
    assert len([Packet(udp_listener.receive()) for _ in range(20)]) == 20


# -- EMSGSIZE -------------------------------------------------------------------------


def huge_tags_app(environ, start_response):
    for i in range(70):  # a tag value is sent up to 1,024 bytes: no UDP datagram carries 70
        pynba.set_tag(f"t{i}", str(i).ljust(1024, "x"))
    return hello(environ, start_response)


def many_timers_app(environ, start_response):
    for i in range(3000):
        pynba.timer(group="g" * 20, index=i).add(0.001)
    return hello(environ, start_response)


@pytest.mark.parametrize("raise_on_fail", [False, True])
def test_datagram_too_large_for_udp(raise_on_fail, caplog, reporters, udp_listener):
    reporter = reporters(udp_listener.address, raise_on_fail=raise_on_fail)
    errors, warnings = run_requests(PynbaMiddleware(huge_tags_app, reporter), caplog)
    # Too large even without its timers: sent without its request tags too, never lost.
    assert errors == [None] * REQUESTS
    assert reporter.stats == {
        "sent": REQUESTS,
        "failed": 0,
        "oversize": REQUESTS,
        "oversize_tags": REQUESTS,
    }
    for _ in range(REQUESTS):
        packet = Packet(udp_listener.receive())
        assert packet.tags == [] and packet.status == 200
    assert len(warnings) == 1 and "70 request tags" in warnings[0], warnings


@pytest.mark.parametrize("raise_on_fail", [False, True])
def test_too_many_timers_are_dropped_not_the_request(
    raise_on_fail, caplog, reporters, udp_listener
):
    reporter = reporters(udp_listener.address, raise_on_fail=raise_on_fail)
    errors, warnings = run_requests(PynbaMiddleware(many_timers_app, reporter), caplog)
    assert errors == [None] * REQUESTS
    assert reporter.stats == {"sent": REQUESTS, "failed": 0, "oversize": REQUESTS}
    for _ in range(REQUESTS):
        packet = Packet(udp_listener.receive())
        assert packet.timers == [] and packet.status == 200
    assert len(warnings) == 1 and "sent without its 3001 timers" in warnings[0], warnings


# -- the socket closed under the reporter -----------------------------------------------


def reporter_sockets(reporter):
    return [route.sock for route in reporter._sockets.values()]


@pytest.mark.parametrize("raise_on_fail", [False, True])
def test_socket_closed_under_the_reporter(raise_on_fail, caplog, reporters, udp_listener):
    reporter = reporters(udp_listener.address, raise_on_fail=raise_on_fail)
    app = PynbaMiddleware(hello, reporter)
    run_requests(app, caplog, count=1)
    Packet(udp_listener.receive())
    for sock in reporter_sockets(reporter):
        sock.close()  # e.g. a daemonizing library closing every descriptor
    caplog.clear()
    errors, warnings = run_requests(app, caplog)
    # The send that finds the socket closed makes a new one first: nothing is lost.
    assert errors == [None] * REQUESTS
    assert len(udp_listener.pending(timeout=0.2)) == REQUESTS
    assert reporter.stats == {"sent": 1 + REQUESTS, "failed": 0, "oversize": 0, "fd_closed": 1}
    assert len(warnings) == 1 and "was closed by the application" in warnings[0], warnings


def test_a_descriptor_number_reused_by_a_file_is_left_alone(
    caplog, reporters, udp_listener, tmp_path
):
    # A daemonizing library closes every descriptor (behind the socket
    # objects' backs) and opens its log file, which gets the socket's number.
    # The reporter's next send finds that the number is no longer its socket:
    # it must forget its socket without closing that number, which is the
    # log file's now, and send from a new one.
    reporter = reporters(udp_listener.address)
    app = PynbaMiddleware(hello, reporter)
    run_requests(app, caplog, count=1)
    Packet(udp_listener.receive())
    (sock,) = reporter_sockets(reporter)
    number = sock.fileno()
    os.close(number)
    log = open(tmp_path / "daemon.log", "w")  # noqa: SIM115
    try:
        if log.fileno() != number:
            pytest.skip("the file did not get the socket's descriptor number")
        old_socket = weakref.ref(sock)
        del sock
        errors, _ = run_requests(app, caplog, count=3)
        gc.collect()
        # Freed, or (when something such as a logged traceback still holds
        # it) let go of its number: either way it will not close the file.
        assert old_socket() is None or old_socket().fileno() == -1
        assert errors == [None] * 3
        assert reporter.stats == {"sent": 4, "failed": 0, "oversize": 0, "fd_reused": 1}
        log.write("still open\n")
        log.flush()  # raises OSError (EBADF) if the reporter closed the number
        os.fstat(number)
        assert (tmp_path / "daemon.log").read_text() == "still open\n"
        assert len(udp_listener.pending(timeout=0.2)) == 3  # from a new socket
    finally:
        log.close()


# -- one warning per kind per interval ----------------------------------------------------


def test_one_warning_per_kind_per_interval(caplog, reporters):
    reporter = reporters("pinba.invalid:30002", log_interval=0.2)
    app = PynbaMiddleware(hello, reporter)
    _, warnings = run_requests(app, caplog, count=10)
    assert len(warnings) == 1
    time.sleep(0.25)
    caplog.clear()
    _, warnings = run_requests(app, caplog, count=1)
    assert len(warnings) == 1
    assert "(9 more since the last such message)" in warnings[0], warnings
    assert reporter.stats["failed"] == reporter.stats["resolve"] == 11


# -- EAGAIN: a full send buffer behind a slow interface ------------------------------------

BURST_SCRIPT = textwrap.dedent(
    """
    import json, logging, socket, subprocess, sys

    # A private network namespace: its loopback is throttled to 8 kbit/s so
    # that datagrams wait in the queue and fill the reporter's send buffer.
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run("tc qdisc add dev lo root tbf rate 8kbit burst 1600 limit 3000",
                   shell=True, check=True)

    from pynba import PynbaMiddleware, pynba
    from pynba.reporter import Reporter

    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("pynba").addHandler(handler)
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    raise_on_fail = sys.argv[1] == "1"
    reporter = Reporter(listener.getsockname(), raise_on_fail=raise_on_fail)

    def hello(environ, start_response):
        with pynba.timer(group="hello"):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"Hello, world!\\n"]

    app = PynbaMiddleware(hello, reporter)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/burst", "SERVER_NAME": "x",
               "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
    bodies, errors = set(), []
    for i in range(200):
        if i == 1:  # the socket exists now: give it the smallest send buffer
            for route in reporter._sockets.values():
                route.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
        statuses = []
        result = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
        bodies.add((statuses[0], b"".join(result)))
        try:
            result.close()
        except OSError as error:
            errors.append(error.errno)
    print(json.dumps({"bodies": [[s, b.decode()] for s, b in bodies], "errors": errors,
                      "stats": reporter.stats, "warnings": records}))
    """
)


def private_network_namespace_available():
    if sys.platform != "linux" or not shutil.which("unshare") or not shutil.which("tc"):
        return False
    probe = subprocess.run(
        ["unshare", "--net", "tc", "qdisc", "add", "dev", "lo", "root", "pfifo"],
        capture_output=True,
    )
    return probe.returncode == 0


@pytest.mark.skipif(
    not private_network_namespace_available(),
    reason="needs unshare --net and tc (CAP_NET_ADMIN) to make the kernel refuse sends",
)
@pytest.mark.parametrize("raise_on_fail", [False, True])
def test_full_send_buffer_under_a_burst(raise_on_fail):
    environment = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    environment.pop("PYNBA_STRICT", None)
    done = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", BURST_SCRIPT, str(int(raise_on_fail))],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["bodies"] == [["200 OK", "Hello, world!\n"]]  # every response unchanged
    stats = outcome["stats"]
    refused = stats.get("EAGAIN", 0)
    assert refused > 100, stats  # the kernel refused most of the burst
    assert stats["sent"] + stats["failed"] == 200
    assert stats["failed"] == refused
    if raise_on_fail:
        assert outcome["errors"] == [11] * refused  # EAGAIN, raised from close()
        assert outcome["warnings"] == []
    else:
        assert outcome["errors"] == []
        assert len(outcome["warnings"]) == 1, outcome["warnings"]
        assert "Resource temporarily unavailable" in outcome["warnings"][0]


# -- fork: gunicorn --preload with two workers -------------------------------------------

FORK_APP = textwrap.dedent(
    """
    import os
    import time

    from pynba import PynbaMiddleware, pynba
    from pynba.reporter import Reporter

    reporter = Reporter(os.environ["PYNBA_FAULT_SERVER"])
    # Sent by the master before it forks: the workers inherit a socket in use.
    reporter.report(hostname="master", server_name="", script_name="/preload",
                    tags={"pid": str(os.getpid())})


    def hello(environ, start_response):
        request_id = environ["PATH_INFO"].rsplit("/", 1)[1]
        with pynba.timer(group="hello", request=request_id):
            time.sleep(0.002)  # keep a worker busy so that both serve
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"Hello, " + request_id.encode() + b"\\n"]


    application = PynbaMiddleware(
        hello, reporter, tags={"pid": os.getpid}, script_name=lambda environ: "/hello"
    )
    """
)
FORK_CONFIG = textwrap.dedent(
    """
    import json
    import os


    def worker_exit(server, worker):
        from fork_app import reporter

        path = os.path.join(os.environ["PYNBA_FAULT_STATS"], f"{os.getpid()}.json")
        with open(path, "w") as out:
            json.dump(reporter.stats, out)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_gunicorn_preload_workers_each_report_on_their_own(tmp_path, udp_listener):
    load = pytest.importorskip("test_load").load
    (tmp_path / "fork_app.py").write_text(FORK_APP)
    (tmp_path / "fork_config.py").write_text(FORK_CONFIG)
    stats_dir = tmp_path / "stats"
    stats_dir.mkdir()
    server = load.Gunicorn(
        tmp_path,
        "fork_app",
        workers=2,
        preload=True,
        config=tmp_path / "fork_config.py",
        env={
            "PYNBA_FAULT_SERVER": "{}:{}".format(*udp_listener.address),
            "PYNBA_FAULT_STATS": str(stats_dir),
        },
    )
    request_count = 120
    answers = {}
    try:
        server.wait_ready()

        def fetch(first):
            for i in range(first, request_count, 8):
                url = f"http://127.0.0.1:{server.port}/hello/{i}"
                with urllib.request.urlopen(url, timeout=10) as response:
                    answers[i] = (response.status, response.read())

        threads = [threading.Thread(target=fetch, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        output = server.stop()
    assert answers == {i: (200, f"Hello, {i}\n".encode()) for i in range(request_count)}

    udp_listener.sock.settimeout(5.0)
    packets = []
    for _ in range(request_count + 1):
        datagram, sender = udp_listener.sock.recvfrom(70000)
        packets.append((Packet(datagram), sender))
    assert udp_listener.pending(timeout=0.2) == []

    master = [(p, s) for p, s in packets if p.hostname == "master"]
    assert len(master) == 1
    master_pid, master_sender = master[0][0].tags[0][1], master[0][1]
    by_worker = {}
    for packet, sender in packets:
        if packet.hostname == "master":
            continue
        pid = dict(packet.tags)["pid"]
        by_worker.setdefault(pid, []).append((packet, sender))
        # Exactly its own request's timer.
        (timer,) = packet.timers
        assert timer.tags[0] == ("group", "hello")
    ids = sorted(int(dict(p.timers[0].tags)["request"]) for p, _ in packets if p.timers)
    assert ids == list(range(request_count))  # every request's packet arrived, once
    assert len(by_worker) >= 2, "one worker served every request"
    assert master_pid not in by_worker
    senders = {pid: {sender for _, sender in sent} for pid, sent in by_worker.items()}
    for pid, ports in senders.items():
        assert len(ports) == 1, f"worker {pid} sent from several sockets: {ports}"
        assert ports != {master_sender}, "a worker sent through the master's socket"
    assert len({frozenset(ports) for ports in senders.values()}) == len(senders)  # none shared
    # Each worker counts its own packets, after the one it inherited from the
    # master (the counters are copied by fork, not shared).
    stats = {path.stem: json.loads(path.read_text()) for path in stats_dir.glob("*.json")}
    assert Counter({pid: len(sent) + 1 for pid, sent in by_worker.items()}) == Counter(
        {pid: stats[pid]["sent"] for pid in by_worker}
    ), (stats, output)
    for pid in by_worker:
        assert stats[pid]["failed"] == 0
    assert "Traceback" not in output, output

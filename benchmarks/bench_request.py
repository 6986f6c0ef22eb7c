"""Per-request overhead of the WSGI middleware, next to the floor it cannot beat.

The floor is what any Pinba client pays per request: 2 x perf_counter +
2 x getrusage + 1 sendto of the request's datagram, measured here in the same
process. Overhead is (monitored app) - (bare app), both called the way a WSGI
server calls them (call, iterate, close), reporting to a loopback UDP socket
that another process keeps drained. Also: the cost of ``with pynba.timer(...)`` and
of disabled monitoring. Run: python benchmarks/bench_request.py [--quick]
"""

import argparse
import atexit
import contextvars
import os
import resource
import socket
import subprocess
import sys
import timeit
from time import perf_counter

from pynba import PynbaMiddleware, encode, pynba
from pynba.collector import CollectorSettings, RequestCollector
from pynba.context import activate
from pynba.reporter import Reporter
from pynba.rusage import usage
from pynba.wire.encoder import IMPLEMENTATION

RUSAGE_WHO = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
GROUPS = ("db", "cache", "http", "queue", "render")
ENVIRON = {
    "REQUEST_METHOD": "GET",
    "SCRIPT_NAME": "",
    "PATH_INFO": "/users/42",
    "QUERY_STRING": "",
    "SERVER_NAME": "127.0.0.1",
    "SERVER_PORT": "8000",
    "HTTP_HOST": "shop.example.com",
    "wsgi.url_scheme": "https",
}
BODY = [b"hello world"]


def start_response(status, headers, exc_info=None):
    return None


def bare_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return BODY


def app_with_timers(environ, start_response):
    timer = pynba.timer
    for i in range(10):
        group, op = GROUPS[i % 5], f"op{i}"
        with timer(group=group, op=op):
            pass
    start_response("200 OK", [("Content-Type", "text/plain")])
    return BODY


def bare_app_with_loop(environ, start_response):
    # The same loop, computing the same tag values, without timers: only the
    # timers' cost is counted.
    for i in range(10):
        group, op = GROUPS[i % 5], f"op{i}"  # noqa: F841
    start_response("200 OK", [("Content-Type", "text/plain")])
    return BODY


_DRAIN = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
recv = sock.recv
while True:
    recv(70000)
"""


class DrainedSocket:
    """A loopback UDP socket that another process keeps empty.

    A process rather than a thread: a draining thread would contend for this
    process's GIL on every datagram, adding noise to every measurement.
    """

    def __init__(self):
        self.process = subprocess.Popen(
            [sys.executable, "-c", _DRAIN], stdout=subprocess.PIPE, text=True
        )
        self.address = ("127.0.0.1", int(self.process.stdout.readline()))
        atexit.register(self.process.kill)
        pin_apart(self.process.pid)


def pin_apart(other_pid):
    """Run this process and ``other_pid`` on different CPUs, when there are several.

    Left to the scheduler, the two sometimes share a CPU and every datagram
    then costs a context switch: the figures would swing from run to run.
    """
    cpus = sorted(getattr(os, "sched_getaffinity", lambda pid: ())(0))
    if len(cpus) >= 2:
        os.sched_setaffinity(0, {cpus[0]})
        os.sched_setaffinity(other_pid, set(cpus[1:]))


def serve(app):
    """One request as a WSGI server makes it."""
    response = app(ENVIRON, start_response)
    for _chunk in response:
        pass
    close = getattr(response, "close", None)
    if close is not None:
        close()


def best(func, number, repeat):
    return min(timeit.repeat(func, number=number, repeat=repeat)) / number * 1e6


def floor(address, datagram, number, repeat):
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setblocking(False)

    def one():
        perf_counter()
        resource.getrusage(RUSAGE_WHO)
        perf_counter()
        resource.getrusage(RUSAGE_WHO)
        sender.sendto(datagram, address)

    return best(one, number, repeat)


def sample_datagram(timer_count):
    timers = [
        (((("group", GROUPS[i % 5]), ("op", f"op{i}"))), 0.0001, 1, 0.0, 0.0)
        for i in range(timer_count)
    ]
    return encode(
        "web-1", "shop.example.com", "/users/42", 1, 11, 24 << 20, 0.001, 0.001, 0.0,
        200, 0, "https", (), timers,
    )  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (noisier)")
    options = parser.parse_args()
    number, repeat = (2000, 3) if options.quick else (20000, 7)
    sink = DrainedSocket()
    reporter = Reporter(sink.address)

    def run_in_fresh_context(func):
        return contextvars.copy_context().run(func)

    rows = []

    floor_plain = floor(sink.address, sample_datagram(0), number, repeat)
    floor_timers = floor(sink.address, sample_datagram(10), number, repeat)
    # What per-timer CPU adds at most: a getrusage call at each start and stop
    # (the compiled build shares one between readings less than 1 us apart).
    one_cpu_reading = best(usage, number, repeat)
    bare = best(lambda: serve(bare_app), number, repeat)
    bare_loop = best(lambda: serve(bare_app_with_loop), number, repeat)

    cases = [
        ("no timers", bare_app, bare, {}, floor_plain, 1.5),
        ("10 timers x 2 tags", app_with_timers, bare_loop, {}, floor_timers, 3.5),
        (
            "10 timers x 2 tags, per-timer CPU",
            app_with_timers,
            bare_loop,
            {"timer_rusage": True},
            floor_timers,
            5.0,
        ),
    ]
    for label, app, bare_cost, config, floor_cost, limit in cases:
        monitored = PynbaMiddleware(app, reporter, **config)
        cost = run_in_fresh_context(lambda m=monitored: best(lambda: serve(m), number, repeat))
        overhead = cost - bare_cost
        rows.append(
            (f"middleware, {label}", overhead, f"{overhead / floor_cost:.2f} x floor", limit, "x")
        )

    disabled = PynbaMiddleware(bare_app, reporter, enabled=False)
    disabled_cost = run_in_fresh_context(lambda: best(lambda: serve(disabled), number, repeat))
    rows.append(("middleware, disabled", disabled_cost - bare, "", 0.5, "us"))

    for label, rusage in (("", False), (", per-timer CPU", True)):
        collector = RequestCollector(CollectorSettings(reporter, timer_rusage=rusage))

        def timed_block():
            with pynba.timer(group="db", op="select"):
                pass

        def measure(collector=collector):
            activate(collector)
            cost = best(timed_block, number, repeat)
            collector._timers.clear()
            return cost

        cost = run_in_fresh_context(measure)
        rows.append(
            (f"with pynba.timer(group, op){label}", cost, "", 1.0 if not rusage else None, "us")
        )

    print(f"encoder: {IMPLEMENTATION}; best of {repeat} runs of {number}")
    print(f"floor (2 perf_counter + 2 getrusage + sendto): {floor_plain:.2f} us bare datagram, "
          f"{floor_timers:.2f} us with 10 timers")  # fmt: skip
    print(f"bare app served: {bare:.2f} us (with the timers' loop: {bare_loop:.2f} us)")
    readings = 20 * one_cpu_reading / floor_timers
    print(f"one getrusage (pynba.rusage.usage()): {one_cpu_reading:.2f} us; per-timer CPU reads "
          f"at each start and stop, 20 readings for 10 timers: {readings:.2f} x floor "
          f"(fewer calls where readings are less than 1 us apart)")  # fmt: skip
    print()
    print(f"{'case':<52} {'us/request':>10}  {'ratio':>14}  {'target':>9}  ok")
    for label, cost, ratio, limit, unit in rows:
        if limit is None:
            target, ok = "", ""
        elif unit == "x":
            target = f"<= {limit} x"
            ok = "yes" if float(ratio.split()[0]) <= limit else "NO"
        else:
            target = f"<= {limit} us"
            ok = "yes" if cost <= limit else "NO"
        print(f"{label:<52} {cost:>10.2f}  {ratio:>14}  {target:>9}  {ok}")


if __name__ == "__main__":
    main()

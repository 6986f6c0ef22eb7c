"""Per-request CPU under concurrency: requests sharing a thread share its CPU."""

import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import textwrap
import threading

import pytest

from cpu import burn_cpu
from packets import make_collector, receive, receive_all
from pynba.asgi import PynbaASGIMiddleware
from pynba.context import activate, deactivate
from pynba.rusage import RUSAGE_WHO, thread_cpu

CONCURRENCY = 50

pytestmark = pytest.mark.skipif(
    RUSAGE_WHO == resource.RUSAGE_SELF, reason="per-thread CPU readings are Linux-only"
)


@pytest.fixture(autouse=True)
def _no_request_left_sharing_the_thread():
    # A request an earlier test dropped unfinished shares its thread's CPU
    # until it is freed, which the garbage collector may do in the middle of
    # a test here: freed before.
    gc.collect()


def thread_seconds():
    usage = resource.getrusage(RUSAGE_WHO)
    return usage.ru_utime + usage.ru_stime


def cpu_of(packet):
    return packet.ru_utime + packet.ru_stime


async def interleaved(scope, receive, send):
    for _ in range(5):  # CPU in slices, the other requests' slices in between
        burn_cpu(0.002)
        await asyncio.sleep(0)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_asyncio_requests_on_one_loop_add_up_to_the_threads_cpu(udp_listener):
    middleware = PynbaASGIMiddleware(interleaved, udp_listener.address)

    async def request():
        async def receive():
            return {"type": "http.request", "body": b""}

        async def send(message):
            pass

        scope = {"type": "http", "path": "/r", "headers": [], "scheme": "http"}
        await middleware(scope, receive, send)

    async def run():
        before = thread_seconds()
        for _ in range(4):
            await asyncio.gather(*(request() for _ in range(CONCURRENCY)))
        return thread_seconds() - before

    used = asyncio.run(run())
    packets = receive_all(udp_listener, 4 * CONCURRENCY)
    reported = sum(cpu_of(packet) for packet in packets)
    # Each request used about 10 ms; unshared, each would report the whole
    # loop's CPU while it ran (about 50 times too much).
    assert reported == pytest.approx(used, rel=0.10)
    assert max(cpu_of(packet) for packet in packets) < 0.05


GEVENT_RUN = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    import http.client, json, resource, socket, sys, time

    import gevent
    from gevent.pywsgi import WSGIServer

    from pynba import PynbaMiddleware

    def busy(seconds):
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    def app(environ, start_response):
        for _ in range(5):
            busy(0.002)
            gevent.sleep(0)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    listener.bind(("127.0.0.1", 0))
    server = WSGIServer(("127.0.0.1", 0), PynbaMiddleware(app, listener.getsockname()), log=None)
    server.start()
    port = server.server_port

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port)
        for _ in range(4):
            connection.request("GET", "/r")
            connection.getresponse().read()
        connection.close()

    before = resource.getrusage(resource.RUSAGE_SELF)
    gevent.joinall([gevent.spawn(client) for _ in range(int(sys.argv[1]))])
    after = resource.getrusage(resource.RUSAGE_SELF)
    server.stop()
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    listener.settimeout(2)
    datagrams = []
    while len(datagrams) < 4 * int(sys.argv[1]):
        datagrams.append(listener.recv(70000))
    print(json.dumps({"used": used, "datagrams": [d.hex() for d in datagrams]}))
    """
)


def test_gevent_requests_on_one_hub_add_up_to_the_process_cpu(tmp_path):
    pytest.importorskip("gevent")
    script = tmp_path / "gevent_run.py"
    script.write_text(GEVENT_RUN)
    result = subprocess.run(
        [sys.executable, str(script), str(CONCURRENCY)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    from packets import Packet

    packets = [Packet(bytes.fromhex(d)) for d in outcome["datagrams"]]
    reported = sum(cpu_of(packet) for packet in packets)
    # The process also ran the clients and the server's HTTP parsing, outside
    # any request: a few percent at most next to 10 ms of work per request.
    assert reported == pytest.approx(outcome["used"], rel=0.10)


def test_requests_one_at_a_time_in_threads_get_their_own_cpu(udp_listener):
    rounds = 3

    def serve(seconds):
        for _ in range(rounds):
            collector = make_collector(udp_listener, script_name=f"{seconds}")
            burn_cpu(seconds)
            collector.finish()

    threads = [threading.Thread(target=serve, args=(s,)) for s in (0.02, 0.06)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reported = {"0.02": 0.0, "0.06": 0.0}
    for packet in receive_all(udp_listener, 2 * rounds):
        reported[packet.script_name] += cpu_of(packet)
    # Each thread's own CPU, as its thread measured it: not its neighbour's,
    # which would add at least the other thread's 60 ms (a thread's requests
    # span the other's whole run, or they take turns). Summed over a
    # thread's requests: a single reading can be a few ms off.
    for name, cpu in reported.items():
        wanted = rounds * float(name)
        assert wanted * 0.9 <= cpu <= wanted + 0.03, (name, cpu)


def test_nested_requests_share_and_sequential_ones_do_not(udp_listener):
    outer = make_collector(udp_listener, script_name="outer")
    inner = make_collector(udp_listener, script_name="inner")
    burn_cpu(0.02)  # both running: half each
    inner.finish()
    burn_cpu(0.02)  # the outer one alone
    outer.finish()
    inner_packet, outer_packet = receive_all(udp_listener, 2)
    assert cpu_of(inner_packet) == pytest.approx(0.01, abs=0.004)
    assert cpu_of(outer_packet) == pytest.approx(0.03, abs=0.006)


def test_a_request_dropped_unfinished_stops_sharing_the_thread(udp_listener):
    running = thread_cpu().running
    abandoned = make_collector(udp_listener, script_name="abandoned")
    assert thread_cpu().running == running + 1
    del abandoned
    gc.collect()
    assert thread_cpu().running == running
    collector = make_collector(udp_listener)
    burn_cpu(0.02)
    collector.finish()
    assert cpu_of(receive(udp_listener)) >= 0.018  # all of it: nobody else is running


def test_skipped_and_failed_requests_stop_sharing_the_thread(udp_listener):
    running = thread_cpu().running
    skipped = make_collector(udp_listener)
    skipped.enabled = False
    skipped.finish()
    assert thread_cpu().running == running
    assert udp_listener.pending() == []


def test_a_request_that_ends_on_another_thread_counts_from_there(udp_listener):
    collector = make_collector(udp_listener)
    token = activate(collector)
    deactivate(token)
    begun_on = thread_cpu()
    running = begun_on.running
    burn_cpu(0.02)  # on the thread it began on: cannot be read from the other one
    thread = threading.Thread(target=collector.finish)
    thread.start()
    thread.join()
    assert begun_on.running == running - 1
    assert cpu_of(receive(udp_listener)) < 0.01


def test_a_script_monitor_between_jobs_does_not_share_the_thread(udp_listener):
    from pynba import ScriptMonitor

    monitor = ScriptMonitor(udp_listener.address, autostart=False)
    monitor.start()
    burn_cpu(0.01)
    monitor.send()  # its job ends; none runs until start()
    collector = make_collector(udp_listener, script_name="alone")
    burn_cpu(0.02)
    collector.finish()
    monitor_packet, alone = receive_all(udp_listener, 2)
    assert cpu_of(monitor_packet) >= 0.009
    assert cpu_of(alone) >= 0.018
    monitor.start()
    burn_cpu(0.01)
    monitor.close()
    assert cpu_of(receive(udp_listener)) >= 0.009

"""Isolation: many requests at once, each packet holding exactly its own timers and tags.

64 threads, 1,000 asyncio tasks and 200 gevent greenlets run monitored
requests concurrently, switching in the middle of their timers; every
packet must carry its own request's tag and timers, and nobody else's.
"""

import asyncio
import threading

import pytest

from packets import Packet
from pynba import PynbaMiddleware, pynba
from pynba.reporter import Reporter
from pynba.script import ScriptMonitor

ENVIRON = {
    "REQUEST_METHOD": "GET",
    "SCRIPT_NAME": "",
    "QUERY_STRING": "",
    "SERVER_NAME": "127.0.0.1",
    "SERVER_PORT": "80",
    "wsgi.url_scheme": "http",
}


def check_packets(listener, count):
    """Each of ``count`` packets holds the tag and timers of the request it names."""
    seen = set()
    for _ in range(count):
        packet = Packet(listener.receive())
        request_id = packet.script_name.rsplit("/", 1)[1]
        assert dict(packet.tags) == {"request": request_id}
        assert packet.timer_tags() == [
            (("request", request_id), ("step", "inner")),
            (("request", request_id), ("step", "outer")),
        ]
        for timer in packet.timers:
            assert timer.hit_count == 2
        seen.add(request_id)
    assert len(seen) == count
    assert listener.pending(timeout=0.05) == []


def test_64_threads(udp_listener):
    count = 64
    barrier = threading.Barrier(count)

    def app(environ, start_response):
        request_id = environ["PATH_INFO"].rsplit("/", 1)[1]
        pynba.set_tag("request", request_id)
        for _ in range(2):
            with pynba.timer(step="outer", request=request_id):
                barrier.wait(timeout=10)  # every request is inside a timer at once
                with pynba.timer(step="inner", request=request_id):
                    pass
        start_response("200 OK", [])
        return [request_id.encode()]

    middleware = PynbaMiddleware(app, Reporter(udp_listener.address))
    bodies = {}

    def serve(n):
        result = middleware({**ENVIRON, "PATH_INFO": f"/r/{n}"}, lambda *args: None)
        bodies[n] = b"".join(result)
        result.close()

    threads = [threading.Thread(target=serve, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert bodies == {n: str(n).encode() for n in range(count)}
    check_packets(udp_listener, count)


def test_1000_asyncio_tasks(udp_listener):
    count = 1000
    monitor = ScriptMonitor(udp_listener.address, autostart=False)

    async def job(n):
        with monitor.job(f"/r/{n}", tags={"request": str(n)}):
            for _ in range(2):
                with pynba.timer(step="outer", request=n):
                    await asyncio.sleep(0)  # every other task runs here
                    with pynba.timer(step="inner", request=n):
                        await asyncio.sleep(0)

    async def main():
        await asyncio.gather(*(job(n) for n in range(count)))

    asyncio.run(main())
    check_packets(udp_listener, count)
    assert monitor.reporter.stats["sent"] == count


def test_gevent_greenlets(udp_listener):
    gevent = pytest.importorskip("gevent")
    count = 200

    def app(environ, start_response):
        request_id = environ["PATH_INFO"].rsplit("/", 1)[1]
        pynba.set_tag("request", request_id)
        for _ in range(2):
            with pynba.timer(step="outer", request=request_id):
                gevent.sleep(0)  # every other greenlet runs here
                with pynba.timer(step="inner", request=request_id):
                    gevent.sleep(0)
        start_response("200 OK", [])
        return [request_id.encode()]

    middleware = PynbaMiddleware(app, Reporter(udp_listener.address))

    def serve(n):
        result = middleware({**ENVIRON, "PATH_INFO": f"/r/{n}"}, lambda *args: None)
        body = b"".join(result)
        gevent.sleep(0)
        result.close()
        return body

    greenlets = [gevent.spawn(serve, n) for n in range(count)]
    gevent.joinall(greenlets, raise_error=True)
    assert [g.value for g in greenlets] == [str(n).encode() for n in range(count)]
    check_packets(udp_listener, count)

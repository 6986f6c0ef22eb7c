"""Never crash, never raise, never lose a request: how requests end, under real servers.

WSGI under wsgiref and werkzeug, ASGI under uvicorn, reporting over real UDP.
"""

import asyncio
import contextlib
import gc
import http.client
import io
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.util import setup_testing_defaults

import pytest

from packets import receive
from pynba import PynbaMiddleware, pynba
from pynba.asgi import PynbaASGIMiddleware

# -- real WSGI servers that record their own errors ---------------------------------


class RecordingHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass

    def get_stderr(self):
        return self.server.errors  # where wsgiref prints the tracebacks of failed requests


def last_lines(traceback_text):
    """The ``Type: message`` line of each traceback in ``traceback_text``."""
    skipped = ("Traceback", "During handling", "The above exception", " ", "^", "-")
    return [line for line in traceback_text.splitlines() if line and not line.startswith(skipped)]


@contextlib.contextmanager
def wsgiref_server(app):
    server = make_server(
        "127.0.0.1", 0, app, server_class=WSGIServer, handler_class=RecordingHandler
    )
    server.errors = io.StringIO()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1], lambda: last_lines(server.errors.getvalue())
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def werkzeug_server(app):
    serving = pytest.importorskip("werkzeug.serving")
    records = Records()
    logger = logging.getLogger("werkzeug")
    logger.addHandler(records)
    server = serving.make_server("127.0.0.1", 0, app)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield server.server_port, lambda: [m.splitlines()[-1] for m in records.messages]
    finally:
        server.shutdown()
        thread.join()
        logger.removeHandler(records)


WSGI_SERVERS = {"wsgiref": wsgiref_server, "werkzeug": werkzeug_server}


@pytest.fixture(params=sorted(WSGI_SERVERS))
def wsgi_server(request):
    return WSGI_SERVERS[request.param]


def fetch(port, path="/"):
    """(status, body), or the name of the error when the server cut the response short."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    except (http.client.HTTPException, ConnectionError) as error:
        return type(error).__name__
    finally:
        connection.close()


def make_environ(**extra):
    environ = {"QUERY_STRING": ""}
    setup_testing_defaults(environ)
    environ.update(extra)
    return environ


def hello(environ, start_response):
    with pynba.timer(group="db"):
        pass
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def streaming(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"first"
    yield b"second"


# -- 1. start_response gets exc_info only when the application gave one ------------


def test_a_two_argument_start_response(udp_listener):
    calls = []

    def start_response(status, headers):  # an old test harness's
        calls.append(status)

    response = PynbaMiddleware(hello, udp_listener.address)(make_environ(), start_response)
    assert b"".join(response) == b"hello"
    response.close()
    assert calls == ["200 OK"]
    packet = receive(udp_listener)
    assert (packet.status, packet.document_size) == (200, 5)


def test_a_two_argument_start_response_of_a_middleware_under_a_real_server(
    wsgi_server, udp_listener
):
    def outer(environ, start_response):
        def two_arguments(status, headers):
            return start_response(status, headers + [("X-Outer", "1")])

        return PynbaMiddleware(hello, udp_listener.address)(environ, two_arguments)

    with wsgi_server(outer) as (port, errors):
        assert fetch(port) == (200, b"hello")
    assert errors() == []
    assert receive(udp_listener).status == 200
    assert udp_listener.pending(0.1) == []


# -- 2. a response never closed is reported when it is freed -------------------------


@pytest.mark.parametrize("app", [hello, streaming], ids=["list", "stream"])
def test_a_response_the_test_client_never_closes_is_reported_when_dropped(udp_listener, app):
    test = pytest.importorskip("werkzeug.test")
    middleware = PynbaMiddleware(app, udp_listener.address)
    client = test.Client(middleware)
    gc.collect()
    gc.disable()  # no reference cycle: freed, and reported, as soon as it is dropped
    try:
        response = client.get("/page")
        assert response.status_code == 200
        response.get_data()
        assert udp_listener.pending(0.1) == []  # not before it is dropped
        del response
        packet = receive(udp_listener, timeout=1.0)
        assert udp_listener.pending(0.1) == []
    finally:
        gc.enable()
    assert (packet.script_name, packet.status) == ("/page", 200)
    assert packet.document_size == (5 if app is hello else 11)
    assert middleware.reporter.stats["unclosed"] == 1

    with client.get("/closed") as response:
        response.get_data()
    assert receive(udp_listener).script_name == "/closed"
    assert udp_listener.pending(0.1) == []
    assert middleware.reporter.stats["unclosed"] == 1  # a closed response is not counted


def test_an_unclosed_stream_never_read_to_its_end_reports_its_status_not_499(udp_listener):
    test = pytest.importorskip("werkzeug.test")

    def suspended(environ, start_response):
        # The generator holds start_response while it is suspended: no cycle for all that.
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first"
        yield b"second"

    middleware = PynbaMiddleware(suspended, udp_listener.address)
    gc.collect()
    gc.disable()
    try:
        response = test.Client(middleware).get("/")  # reads up to the first chunk
        assert response.status_code == 200
        del response
        packet = receive(udp_listener, timeout=1.0)
    finally:
        gc.enable()
    assert (packet.status, packet.document_size) == (200, len(b"first"))
    assert middleware.reporter.stats["unclosed"] == 1


def test_a_request_pynba_could_not_monitor_leaves_no_finalizer_error(
    udp_listener, monkeypatch, caplog
):
    monkeypatch.delenv("PYNBA_STRICT")
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    middleware = PynbaMiddleware(hello, udp_listener.address)
    with caplog.at_level(logging.ERROR, logger="pynba"):
        response = middleware(make_environ(HTTP_HOST=5), lambda *args: None)  # not a str
    assert b"".join(response) == b"hello"
    del response
    gc.collect()
    assert "cannot monitor the request" in caplog.text
    assert unraisable == []
    assert udp_listener.pending(0.1) == []
    assert "unclosed" not in middleware.reporter.stats


SHUTDOWN_SCRIPT = textwrap.dedent(
    """
    import gc
    import sys
    from pynba import PynbaMiddleware

    gc.disable()  # the cycle below is collected at exit, not by a collection before

    def app(environ, start_response):
        start_response("200 OK", [])
        return [b"x"]

    middleware = PynbaMiddleware(app, (sys.argv[1], int(sys.argv[2])))
    environ = {"PATH_INFO": "/", "wsgi.url_scheme": "http"}
    dropped = middleware(environ, lambda *args: None)
    del dropped  # reported now
    kept = middleware(environ, lambda *args: None)  # still open at exit


    class Cycle:
        pass


    cycle = Cycle()
    cycle.self = cycle
    cycle.response = middleware(environ, lambda *args: None)
    del cycle
    """
)


@pytest.mark.parametrize("strict", ["0", "1"])
def test_responses_still_open_at_interpreter_shutdown_are_dropped_quietly(udp_listener, strict):
    env = dict(os.environ, PYNBA_STRICT=strict)
    result = subprocess.run(
        [sys.executable, "-c", SHUTDOWN_SCRIPT, udp_listener.host, str(udp_listener.port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert receive(udp_listener).status == 200  # the one dropped before the exit
    assert udp_listener.pending(0.2) == []


# -- 3. close() before the end of a streamed body: the client went away -------------


def test_closing_a_stream_before_its_end_reports_499(udp_listener):
    def sets_status(environ, start_response):
        pynba.status = 206
        return streaming(environ, start_response)

    def fails(environ, start_response):
        start_response("200 OK", [])
        yield b"first"
        raise ValueError("midway")

    middleware = PynbaMiddleware(streaming, udp_listener.address)
    response = middleware(make_environ(), lambda *args: None)
    assert next(iter(response)) == b"first"
    response.close()
    packet = receive(udp_listener)
    assert (packet.status, packet.document_size) == (499, 5)

    # Read to its end, a stream is complete.
    response = middleware(make_environ(), lambda *args: None)
    assert b"".join(response) == b"firstsecond"
    response.close()
    assert receive(udp_listener).status == 200

    # A list is complete by construction, read or not.
    response = PynbaMiddleware(hello, udp_listener.address)(make_environ(), lambda *a: None)
    response.close()
    assert receive(udp_listener).status == 200

    # A status the application set wins; a failed request is a 500.
    response = PynbaMiddleware(sets_status, udp_listener.address)(make_environ(), lambda *a: None)
    next(iter(response))
    response.close()
    assert receive(udp_listener).status == 206
    response = PynbaMiddleware(fails, udp_listener.address)(make_environ(), lambda *a: None)
    body = iter(response)
    next(body)
    with pytest.raises(ValueError):
        next(body)
    response.close()
    assert receive(udp_listener).status == 500
    assert udp_listener.pending(0.1) == []


def test_a_client_gone_mid_stream_under_a_real_server_reports_499(wsgi_server, udp_listener):
    started = threading.Event()

    def long_stream(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        started.set()
        for _ in range(1000):
            time.sleep(0.005)
            yield b"." * 1024

    with wsgi_server(PynbaMiddleware(long_stream, udp_listener.address)) as (port, errors):
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        client.sendall(b"GET /long HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert client.recv(100).startswith(b"HTTP/1")
        client.close()
        packet = receive(udp_listener, timeout=10)
    assert (packet.script_name, packet.status) == ("/long", 499)
    assert 0 < packet.document_size < 1000 * 1024


# -- 5. a body chunk of the wrong type: the server's own error, and a packet --------


def list_of_ints(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [1, 2]


def yields_str(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield "text"


def yields_int_after_bytes(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"bytes first"
    yield 3


def writes_int(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(1)
    return []


@pytest.mark.parametrize("app", [list_of_ints, yields_str, yields_int_after_bytes, writes_int])
def test_a_chunk_that_is_not_bytes_fails_as_it_would_without_pynba(wsgi_server, udp_listener, app):
    with wsgi_server(app) as (port, errors):
        bare = fetch(port), errors()
    with wsgi_server(PynbaMiddleware(app, udp_listener.address)) as (port, errors):
        monitored = fetch(port), errors()
    assert monitored == bare
    assert bare[1], "the server reports its own error"
    packet = receive(udp_listener)
    assert packet.status == 500
    assert udp_listener.pending(0.1) == []


# -- real uvicorn -------------------------------------------------------------------


@contextlib.contextmanager
def uvicorn_server(app, **config):
    uvicorn = pytest.importorskip("uvicorn")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(app, log_config=None, lifespan="off", loop="asyncio", http="h11", **config)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    try:
        yield server, sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


# -- 4. a cancelled application task: the client is gone ------------------------------


def test_a_task_cancelled_by_the_server_shutting_down_reports_499(udp_listener):
    running = threading.Event()

    async def slow(scope, receive, send):
        running.set()
        with pynba.timer(group="slow"):
            await asyncio.sleep(30)

    app = PynbaASGIMiddleware(slow, udp_listener.address)
    with uvicorn_server(app, timeout_graceful_shutdown=0.2) as (server, port):
        client = threading.Thread(target=fetch, args=(port, "/slow"))
        client.start()
        assert running.wait(10)
        server.should_exit = True  # waits 0.2 s for the task, then cancels it
        client.join(20)
    packet = receive(udp_listener)
    assert (packet.script_name, packet.status) == ("/slow", 499)
    assert packet.timer(group="slow").hit_count == 1


def test_a_cancelled_task_reports_499(udp_listener):
    async def waits(scope, receive, send):
        await send({"type": "http.response.start", "status": 200})
        await asyncio.sleep(30)

    async def send(message):
        pass

    async def main():
        scope = {"type": "http", "path": "/waits", "headers": []}
        task = asyncio.create_task(
            PynbaASGIMiddleware(waits, udp_listener.address)(scope, None, send)
        )
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert receive(udp_listener).status == 499


# -- 5. ASGI: a body that is not bytes ------------------------------------------------


async def body_none(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": None})


async def body_str(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": "text"})


@pytest.mark.parametrize("app, status", [(body_none, 200), (body_str, 500)])
def test_a_body_that_is_not_bytes_fails_as_it_would_without_pynba(
    udp_listener, caplog, app, status
):
    def served(application):
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="uvicorn.error"):
            with uvicorn_server(application) as (_, port):
                outcome = fetch(port)
                time.sleep(0.1)  # the server logs the application's error after the response
        errors = [(type(r.exc_info[1]), str(r.exc_info[1])) for r in caplog.records if r.exc_info]
        return outcome, errors

    bare = served(app)
    assert served(PynbaASGIMiddleware(app, udp_listener.address)) == bare
    packet = receive(udp_listener)
    assert (packet.status, packet.document_size) == (status, 0)
    assert udp_listener.pending(0.1) == []


# -- 6. ASGI: the timers of background work after the response ----------------------


def test_background_task_timers_go_with_the_request(udp_listener):
    pytest.importorskip("starlette")
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask, BackgroundTasks
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    response_read = threading.Event()

    async def send_mail(to):
        # Runs once the client has the response (it waits for the test to say so).
        while not response_read.is_set():
            await asyncio.sleep(0.005)
        with pynba.timer(group="mail", to=to):
            await asyncio.sleep(0.2)

    def write_log():
        with pynba.timer(group="log"):  # a sync task, run in the thread pool
            pass

    async def signup(request):
        with pynba.timer(group="db"):
            pass
        tasks = BackgroundTasks()
        tasks.add_task(send_mail, "ann")
        tasks.add_task(write_log)
        return PlainTextResponse("welcome", background=tasks)

    async def broken_task():
        raise RuntimeError("after the response")

    async def fails_later(request):
        return PlainTextResponse("fine", background=BackgroundTask(broken_task))

    app = Starlette(routes=[Route("/signup", signup), Route("/later", fails_later)])
    monitored = PynbaASGIMiddleware(app, udp_listener.address)
    with uvicorn_server(monitored) as (_, port):
        assert fetch(port, "/signup") == (200, b"welcome")
        response_read.set()
        packet = receive(udp_listener)
        # An error in the background work leaves the response's status.
        assert fetch(port, "/later") == (200, b"fine")
        later = receive(udp_listener)
    assert packet.timer_tags() == [
        (("group", "db"),),
        (("group", "log"),),
        (("group", "mail"), ("to", "ann")),
    ]
    mail = packet.timer(group="mail", to="ann")
    assert mail.hit_count == 1
    assert packet.request_time < mail.value  # the response's time, not the background work's
    assert (packet.status, packet.document_size) == (200, len(b"welcome"))
    assert (later.script_name, later.status) == ("/later", 200)
    assert udp_listener.pending(0.1) == []

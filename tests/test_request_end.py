"""Never crash, never raise, never lose a request: how requests end, under real servers.

WSGI under wsgiref and werkzeug, reporting over real UDP.
"""

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
    import sys
    from pynba import PynbaMiddleware

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

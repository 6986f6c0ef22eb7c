"""The WSGI middleware, served by real servers (wsgiref, werkzeug), reporting over real UDP."""

import contextvars
import gc
import http.client
import logging
import sys
import threading
import time
from contextlib import contextmanager
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import pytest

from packets import receive, receive_all
from pynba import PynbaMiddleware, monitor, pynba
from pynba.context import current_collector


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


class ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


@contextmanager
def wsgiref_server(app, threading_server=False):
    server = make_server(
        "127.0.0.1",
        0,
        app,
        server_class=ThreadingServer if threading_server else WSGIServer,
        handler_class=QuietHandler,
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


@contextmanager
def werkzeug_server(app, threading_server=False):
    serving = pytest.importorskip("werkzeug.serving")
    server = serving.make_server("127.0.0.1", 0, app, threaded=threading_server)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        thread.join()


SERVERS = {"wsgiref": wsgiref_server, "werkzeug": werkzeug_server}


@pytest.fixture(params=sorted(SERVERS))
def serve(request):
    return SERVERS[request.param]


def get(port, path="/", headers=None, method="GET"):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def hello(environ, start_response):
    with pynba.timer(group="db", op="select"):
        pass
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello ", b"world"]


# -- what the packet says ---------------------------------------------------


def test_a_request_through_a_real_server(serve, udp_listener):
    app = PynbaMiddleware(hello, udp_listener.address, tags={"app": "hello"})
    with serve(app) as port:
        status, body = get(port, "/caf%C3%A9/x?query=string", headers={"Host": "example.com:8080"})
    assert (status, body) == (200, b"hello world")
    packet = receive(udp_listener)
    assert packet.script_name == "/café/x"  # UTF-8, without the query string
    assert packet.server_name == "example.com"
    assert packet.schema == "http"
    assert packet.status == 200
    assert packet.document_size == len(b"hello world")
    assert packet.request_time > 0
    assert packet.tags == [("app", "hello")]
    assert packet.timer_tags() == [(("group", "db"), ("op", "select"))]
    assert udp_listener.pending() == []


def test_validators_in_front_of_and_behind_the_middleware(udp_listener):
    # wsgiref only: werkzeug's environ has an int REMOTE_PORT, which the validator refuses.
    def streaming(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"a"
        yield b"bc"

    for app in (hello, streaming):
        wrapped = validator(PynbaMiddleware(validator(app), udp_listener.address))
        with wsgiref_server(wrapped) as port:
            assert get(port)[0] == 200
        assert receive(udp_listener).status == 200


def test_streaming_ends_the_request_at_close(serve, udp_listener):
    def streaming(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        for i in range(3):
            with pynba.timer(group="chunk"):  # the request is current while streaming
                time.sleep(0.02)
            yield b"x" * (i + 1)

    with serve(PynbaMiddleware(streaming, udp_listener.address)) as port:
        assert get(port) == (200, b"xxxxxx")
    packet = receive(udp_listener)
    assert packet.document_size == 6
    assert packet.request_time >= 0.06  # covers the streaming, not just the call
    assert packet.timer(group="chunk").hit_count == 3


def test_the_write_callable_is_counted(udp_listener):
    def legacy(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"12345")
        return [b"678"]

    with wsgiref_server(PynbaMiddleware(legacy, udp_listener.address)) as port:
        assert get(port) == (200, b"12345678")
    assert receive(udp_listener).document_size == 8


def test_an_exception_from_the_app_reports_500_and_propagates_unchanged(udp_listener):
    error = KeyError("boom")

    def broken(environ, start_response):
        with pynba.timer(group="before-crash"):
            raise error

    app = PynbaMiddleware(broken, udp_listener.address)
    with pytest.raises(KeyError) as raised:
        app(make_environ(), lambda *a: None)
    assert raised.value is error
    assert current_collector() is None
    packet = receive(udp_listener)
    assert packet.status == 500
    assert packet.timer(group="before-crash").hit_count == 1


def test_an_exception_while_streaming_reports_500(serve, udp_listener):
    def breaks_midway(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"part"
        raise ValueError("midway")

    app = PynbaMiddleware(breaks_midway, udp_listener.address)
    with serve(app) as port:
        try:
            get(port)
        except (http.client.HTTPException, ConnectionError):
            pass  # the server cuts the response short
    assert receive(udp_listener).status == 500


def test_start_response_with_exc_info_sets_the_status(serve, udp_listener):
    def recovers(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise RuntimeError("before any byte was sent")
        except RuntimeError:
            start_response(
                "503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info()
            )
        return [b"try later"]

    with serve(PynbaMiddleware(recovers, udp_listener.address)) as port:
        assert get(port) == (503, b"try later")
    assert receive(udp_listener).status == 503


class ClosingBody:
    def __init__(self, chunks):
        self.chunks = chunks
        self.closed = 0

    def __iter__(self):
        return iter(self.chunks)

    def close(self):
        self.closed += 1


def test_close_is_passed_on_once_and_ends_the_request(udp_listener):
    body = ClosingBody([b"ab", b"c"])

    def app(environ, start_response):
        start_response("200 OK", [])
        return body

    response = PynbaMiddleware(app, udp_listener.address)(make_environ(), lambda *a: None)
    # Current only while the request's own code runs (the app, the body's
    # iteration and close), not in the server's code between them.
    assert current_collector() is None
    assert list(response) == [b"ab", b"c"]
    assert udp_listener.pending(0.05) == []  # not over before close()
    response.close()
    response.close()
    assert body.closed == 1
    assert current_collector() is None
    assert receive(udp_listener).document_size == 3
    assert udp_listener.pending(0.05) == []


def test_close_is_counted_through_a_real_server(serve, udp_listener):
    bodies = []

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        bodies.append(ClosingBody([b"one", b"two"]))
        return bodies[-1]

    with serve(PynbaMiddleware(app, udp_listener.address)) as port:
        for _ in range(3):
            assert get(port) == (200, b"onetwo")
    assert [b.closed for b in bodies] == [1, 1, 1]
    assert [p.document_size for p in receive_all(udp_listener, 3)] == [6, 6, 6]


def test_a_file_wrapper_is_handed_to_the_server_untouched(tmp_path, udp_listener):
    path = tmp_path / "data.bin"
    path.write_bytes(b"0123456789" * 100)
    opened = []

    def sends_file(environ, start_response):
        start_response("200 OK", [("Content-Length", "1000"), ("Content-Type", "text/plain")])
        opened.append(open(path, "rb"))  # noqa: SIM115 - closed by the server
        wrapper = environ["wsgi.file_wrapper"](opened[-1])
        opened.append(wrapper)
        return wrapper

    app = PynbaMiddleware(sends_file, udp_listener.address)
    environ = make_environ()
    from wsgiref.util import FileWrapper

    environ["wsgi.file_wrapper"] = FileWrapper
    response = app(environ, lambda *a: None)
    assert response is opened[1]  # the server still sees its own file wrapper
    assert udp_listener.pending(0.05) == []
    response.close()
    assert opened[0].closed
    assert receive(udp_listener).document_size == 1000

    with wsgiref_server(
        validator(PynbaMiddleware(validator(sends_file), udp_listener.address))
    ) as port:
        assert get(port) == (200, b"0123456789" * 100)
    assert opened[-2].closed
    assert receive(udp_listener).document_size == 1000


# -- naming -------------------------------------------------------------------


def make_environ(**extra):
    environ = {"QUERY_STRING": ""}
    setup_testing_defaults(environ)
    environ.update(extra)
    return environ


def run(app, **environ):
    response = app(make_environ(**environ), lambda *a: None)
    body = b"".join(response)
    if hasattr(response, "close"):
        response.close()
    return body


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({"HTTP_HOST": "example.com:8080"}, "example.com"),
        ({"HTTP_HOST": "example.com"}, "example.com"),
        ({"HTTP_HOST": "[::1]:8080"}, "[::1]"),
        ({"HTTP_HOST": "[::1]"}, "[::1]"),
        ({"SERVER_NAME": "fallback.example"}, "fallback.example"),
        ({"HTTP_HOST": "", "SERVER_NAME": "fallback.example"}, "fallback.example"),
        # Normalised (see test_names.py): one spelling per host, a bounded name.
        ({"HTTP_HOST": "Example.COM.:8080"}, "example.com"),
        ({"HTTP_HOST": "[0::1]:8080"}, "[::1]"),
        ({"HTTP_HOST": "xn--bcher-kva.example"}, "bücher.example"),
        ({"HTTP_HOST": "x" * 8000}, "<invalid-host>"),
        ({"HTTP_HOST": "evil.test/<script>"}, "<invalid-host>"),
    ],
)
def test_server_name_is_the_host_without_port_else_server_name(udp_listener, environ, expected):
    app = PynbaMiddleware(hello, udp_listener.address)
    base = make_environ()
    base.pop("HTTP_HOST", None)
    base.update(environ)
    response = app(base, lambda *a: None)
    response.close()
    assert receive(udp_listener).server_name == expected


def test_prefix_and_script_name_callable_read_at_the_end_of_the_request(udp_listener):
    def routed(environ, start_response):
        environ["route"] = "/users/{id}"  # what a router leaves behind
        return hello(environ, start_response)

    app = PynbaMiddleware(
        routed, udp_listener.address, prefix="api:", script_name=lambda environ: environ["route"]
    )
    run(app, SCRIPT_NAME="/app", PATH_INFO="/users/42", QUERY_STRING="a=1")
    assert receive(udp_listener).script_name == "api:/users/{id}"
    plain = PynbaMiddleware(hello, udp_listener.address, prefix="api:")
    for _ in range(2):  # a path seen before is named from the known ones
        run(plain, SCRIPT_NAME="/app", PATH_INFO="/users/42")
        assert receive(udp_listener).script_name == "api:/app/users/42"


def test_a_script_name_set_by_the_app_is_sent_as_is(udp_listener):
    def names_itself(environ, start_response):
        assert pynba.script_name == "p/x"  # the default, readable during the request
        pynba.script_name = "/chosen"
        return hello(environ, start_response)

    run(PynbaMiddleware(names_itself, udp_listener.address, prefix="p"), PATH_INFO="/x")
    assert receive(udp_listener).script_name == "/chosen"


def test_the_app_may_set_any_field(udp_listener):
    def sets_fields(environ, start_response):
        pynba.document_size = 99
        pynba.memory_peak = 1234
        pynba.memory_footprint = 5678
        pynba.status = 299
        pynba.set_tag("user", "u1")
        return hello(environ, start_response)

    run(PynbaMiddleware(sets_fields, udp_listener.address, tags={"a": "b"}))
    packet = receive(udp_listener)
    assert (packet.document_size, packet.memory_peak, packet.memory_footprint) == (99, 1234, 5678)
    assert packet.status == 299
    assert sorted(packet.tags) == [("a", "b"), ("user", "u1")]


# -- composition, configuration, failures ---------------------------------------


def test_nested_middlewares_send_two_packets_and_keep_the_outer_request(udp_listener):
    inner = PynbaMiddleware(hello, udp_listener.address, prefix="inner")

    def outer_app(environ, start_response):
        response = inner(environ, start_response)
        body = b"".join(response)
        response.close()
        with pynba.timer(group="after-inner"):  # the outer request is current again
            pass
        return [body]

    outer = PynbaMiddleware(outer_app, udp_listener.address, prefix="outer")
    run(outer, PATH_INFO="/p")
    first, second = receive_all(udp_listener, 2)
    assert first.script_name == "inner/p"
    assert first.timer_tags() == [(("group", "db"), ("op", "select"))]
    assert second.script_name == "outer/p"
    assert second.timer_tags() == [(("group", "after-inner"),)]


def test_monitor_decorates_and_exposes_the_reporter(udp_listener):
    @monitor(udp_listener.address, tags={"foo": "bar"})
    def app(environ, start_response):
        """The app."""
        return hello(environ, start_response)

    assert app.__name__ == "app" and app.__doc__ == "The app."
    app.reporter.raise_on_fail = True
    assert run(app) == b"hello world"
    assert receive(udp_listener).tags == [("foo", "bar")]
    with pytest.raises(TypeError, match="monitor takes the server address"):
        monitor(hello)


def test_disabled_monitoring_calls_the_app_directly(udp_listener):
    seen = []

    def app(environ, start_response):
        timer = pynba.timer(group="db")
        with timer:
            pynba.document_size = 3
        seen.append(timer)
        return hello(environ, start_response)

    disabled = PynbaMiddleware(app, udp_listener.address, enabled=False)
    assert disabled.reporter is not None
    body = contextvars.copy_context().run(run, disabled)
    assert body == b"hello world"
    assert seen[0].hit_count == 0  # the no-op timer
    assert udp_listener.pending(0.1) == []


def test_bad_configuration_is_refused_naming_the_option(udp_listener):
    address = udp_listener.address
    with pytest.raises(TypeError, match="prefx"):
        PynbaMiddleware(hello, address, prefx="/x")
    with pytest.raises(TypeError, match="prefix"):
        PynbaMiddleware(hello, address, prefix=1)
    with pytest.raises(TypeError, match="script_name"):
        PynbaMiddleware(hello, address, script_name="/fixed")
    with pytest.raises(TypeError, match="tag names must be str"):
        PynbaMiddleware(hello, address, tags={1: "x"})
    with pytest.raises(TypeError, match="app"):
        PynbaMiddleware(None, address)


def test_errors_inside_pynba_never_reach_the_app(udp_listener, monkeypatch, caplog):
    monkeypatch.delenv("PYNBA_STRICT")

    def bad_name(environ):
        raise LookupError("router state missing")

    app = PynbaMiddleware(hello, udp_listener.address, script_name=bad_name)
    with caplog.at_level(logging.ERROR, logger="pynba"):
        assert run(app) == b"hello world"
    assert "script_name failed" in caplog.text
    assert receive(udp_listener).script_name == ""


def test_errors_inside_pynba_are_raised_with_raise_on_fail(udp_listener, monkeypatch):
    monkeypatch.delenv("PYNBA_STRICT")

    def bad_name(environ):
        raise LookupError("router state missing")

    app = PynbaMiddleware(hello, udp_listener.address, script_name=bad_name, raise_on_fail=True)
    assert app.reporter.raise_on_fail
    with pytest.raises(LookupError):
        run(app)


def test_32_threads_each_see_only_their_own_timers(udp_listener):
    barrier = threading.Barrier(32, timeout=20)

    def app(environ, start_response):
        ident = environ["PATH_INFO"].strip("/")
        barrier.wait()
        for step in range(4):
            with pynba.timer(owner=ident, step=str(step)):
                time.sleep(0.001)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [ident.encode()]

    results = []
    with wsgiref_server(PynbaMiddleware(app, udp_listener.address), threading_server=True) as port:
        clients = [
            threading.Thread(target=lambda i=i: results.append(get(port, f"/c{i}")))
            for i in range(32)
        ]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
    assert sorted(results) == sorted((200, f"c{i}".encode()) for i in range(32))
    packets = receive_all(udp_listener, 32)
    assert sorted(p.script_name for p in packets) == sorted(f"/c{i}" for i in range(32))
    for packet in packets:
        ident = packet.script_name.strip("/")
        assert {dict(t.tags)["owner"] for t in packet.timers} == {ident}
        assert len(packet.timers) == 4


def test_requests_interleaved_in_one_thread_keep_their_own_timers(udp_listener):
    # Single-threaded event-loop servers (bjoern, meinheld) call the next
    # application before the previous streamed body is done.
    def app(environ, start_response):
        page = environ["PATH_INFO"]
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body():
            with pynba.timer(group="render", page=page):
                yield page.encode()
            with pynba.timer(group="cleanup", page=page):
                yield b"."

        with pynba.timer(group="handler", page=page):
            pass
        return body()

    monitored = PynbaMiddleware(app, udp_listener.address)
    bodies = []
    for page in ("/one", "/two"):
        environ = {}
        setup_testing_defaults(environ)
        environ["PATH_INFO"] = page
        bodies.append(monitored(environ, lambda status, headers, exc_info=None: None))
    assert current_collector() is None
    for body in bodies:
        assert b"".join(body) in (b"/one.", b"/two.")
        body.close()
    assert current_collector() is None
    packets = {packet.script_name: packet for packet in receive_all(udp_listener, 2)}
    for page in ("/one", "/two"):
        tags = sorted(packets[page].timer_tags())
        assert tags == [
            (("group", group), ("page", page)) for group in ("cleanup", "handler", "render")
        ]


@pytest.mark.parametrize("body", ["list", "stream"])
def test_a_finished_request_leaves_nothing_for_the_garbage_collector(udp_listener, body):
    # Every object of a request is freed by reference counting when it ends:
    # a reference cycle per request would make the cycle collector run (and
    # cost) in proportion to the traffic.
    def app(environ, start_response):
        with pynba.timer(group="db"):
            pass
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"] if body == "list" else iter([b"hel", b"lo"])

    middleware = PynbaMiddleware(app, udp_listener.address)
    gc.collect()
    gc.disable()
    try:
        for _ in range(50):
            response = middleware(make_environ(), lambda *a: None)
            assert b"".join(response) == b"hello"
            response.close()
        del response
        unreachable = gc.collect()
    finally:
        gc.enable()
    assert unreachable == 0
    assert len(receive_all(udp_listener, 50)) == 50

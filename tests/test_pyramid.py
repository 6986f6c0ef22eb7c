"""The Pyramid integration: with WebTest, and served by a real server (wsgiref)."""

import http.client
import threading
import warnings
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

with warnings.catch_warnings():
    # Pyramid imports pkg_resources, which warns on recent setuptools.
    warnings.simplefilter("ignore")
    pytest.importorskip("pyramid")
    pytest.importorskip("pyramid.config")
webtest = pytest.importorskip("webtest")

from pyramid.config import Configurator  # noqa: E402
from pyramid.httpexceptions import HTTPNotFound  # noqa: E402
from pyramid.response import Response  # noqa: E402
from webob.dec import wsgify  # noqa: E402

from conftest import UDPListener  # noqa: E402
from packets import receive  # noqa: E402
from pynba import pynba  # noqa: E402
from pynba.pyramid import monitor  # noqa: E402


def user(request):
    with pynba.timer(group="db", op="select"):
        pass
    return Response(f"user{request.matchdict['id']}")


def missing(request):
    raise HTTPNotFound()


def make_app(**settings):
    with Configurator(settings=settings) as config:
        config.add_route("user", "/users/{id}")
        config.add_view(user, route_name="user")
        config.add_route("missing", "/missing/{what}")
        config.add_view(missing, route_name="missing")
        return config.make_wsgi_app()


def test_route_pattern_status_size_and_timers(udp_listener):
    app = webtest.TestApp(monitor(make_app(), udp_listener.address, tags={"app": "pyramid"}))
    assert app.get("/users/42", headers={"Host": "shop.test:6543"}).text == "user42"
    packet = receive(udp_listener)
    assert packet.script_name == "/users/{id}"
    assert (packet.status, packet.document_size) == (200, len(b"user42"))
    assert packet.server_name == "shop.test"
    assert packet.tags == [("app", "pyramid")]
    assert packet.timer_tags() == [(("group", "db"), ("op", "select"))]
    app.get("/missing/thing", status=404)
    assert (lambda p: (p.script_name, p.status))(receive(udp_listener)) == ("/missing/{what}", 404)
    app.get("/no/route", status=404)
    assert (lambda p: (p.script_name, p.status))(receive(udp_listener)) == ("<unmatched>", 404)
    assert udp_listener.pending() == []


def test_route_names_and_settings(udp_listener):
    settings = {
        "pinba.server": f"{udp_listener.host}:{udp_listener.port}",
        "pinba.prefix": "shop:",
        "pinba.pinboard": "true",
        "pinba.hostname": "web2",
    }
    app = webtest.TestApp(monitor(make_app(**settings), script_name="name"))
    app.get("/users/1")
    packet = receive(udp_listener)
    assert packet.script_name == "shop:user"
    assert packet.timer_tags() == [
        (("__hostname", "web2"), ("__server_name", "localhost"), ("group", "db"), ("op", "select"))
    ]


def test_plain_webob_application(udp_listener):
    @wsgify
    def hello(request):
        return Response("hello")

    app = webtest.TestApp(monitor(hello, udp_listener.address))
    assert app.get("/hello/there").text == "hello"
    assert receive(udp_listener).script_name == "/hello/there"


def test_bad_arguments(udp_listener):
    with pytest.raises(ValueError, match="script_name"):
        monitor(make_app(), udp_listener.address, script_name="path")


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def test_real_server():
    listener = UDPListener()
    server = make_server(
        "127.0.0.1", 0, monitor(make_app(), listener.address), WSGIServer, QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
        connection.request("GET", "/users/9")
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, b"user9")
        connection.close()
        packet = receive(listener)
        assert (packet.script_name, packet.status, packet.document_size) == ("/users/{id}", 200, 5)
        assert packet.timer_tags() == [(("group", "db"), ("op", "select"))]
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
        listener.close()


def test_names_from_the_settings(udp_listener):
    settings = {
        "pinba.server": f"{udp_listener.host}:{udp_listener.port}",
        "pinba.unmatched_name": "not-found",
        "pinba.server_names": "shop.test, api.test",
    }
    app = webtest.TestApp(monitor(make_app(**settings)))
    app.get("/reset/secret-token", headers={"Host": "API.test:6543"}, status=404)
    app.get("/users/1", headers={"Host": "scanner.test"})
    packets = [receive(udp_listener) for _ in range(2)]
    assert [(p.script_name, p.server_name) for p in packets] == [
        ("not-found", "api.test"),
        ("/users/{id}", "<other>"),
    ]


def test_plain_webob_application_paths_are_limited(udp_listener):
    @wsgify
    def hello(request):
        return Response("hello")

    middleware = monitor(hello, udp_listener.address, name_limit=2)
    app = webtest.TestApp(middleware)
    for path in ("/a", "/b", "/c", "/a"):
        app.get(path)
    assert [receive(udp_listener).script_name for _ in range(4)] == ["/a", "/b", "<other>", "/a"]
    assert middleware.reporter.stats["script_name_overflow"] == 1


def test_real_server_404s_are_unmatched_and_host_normalised():
    listener = UDPListener()
    server = make_server(
        "127.0.0.1", 0, monitor(make_app(), listener.address), WSGIServer, QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        for path, host in (("/reset/secret-token", "Shop.Test.:6543"), ("/.env", "[::1]:6543")):
            connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1])
            connection.request("GET", path, headers={"Host": host})
            assert connection.getresponse().status == 404
            connection.close()
        packets = [receive(listener) for _ in range(2)]
        assert [(p.script_name, p.server_name, p.status) for p in packets] == [
            ("<unmatched>", "shop.test", 404),
            ("<unmatched>", "[::1]", 404),
        ]
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
        listener.close()

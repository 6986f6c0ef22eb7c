"""The Django middleware: with Django's test client, and served by real servers (WSGI and ASGI)."""

import asyncio
import http.client
import socket
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402

if not settings.configured:
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=["pynba.django.PynbaMiddleware"],
        SECRET_KEY="not secret",
        INSTALLED_APPS=[],
        DATABASES={},
        LOGGING_CONFIG=None,
        PINBA_SERVER="127.0.0.1:1",  # each test names its own listener
    )
    django.setup()

from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.http import (  # noqa: E402
    FileResponse,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.test import Client, override_settings  # noqa: E402
from django.urls import include, path, re_path  # noqa: E402

from conftest import UDPListener  # noqa: E402
from packets import receive  # noqa: E402
from pynba import pynba  # noqa: E402
from pynba.django import PynbaMiddleware  # noqa: E402


def user(request, user_id):
    with pynba.timer(group="db", op="select"):
        pass
    return HttpResponse(f"user{user_id}")


async def async_user(request, user_id):
    with pynba.timer(group="db", op="async"):
        await asyncio.sleep(0)
    return JsonResponse({"id": user_id})


def stream(request):
    def chunks():
        for number in range(3):
            with pynba.timer(group="stream"):
                pass
            yield f"chunk{number}\n"

    return StreamingHttpResponse(chunks())


def async_stream(request):
    async def chunks():
        for number in range(3):
            with pynba.timer(group="async-stream"):
                await asyncio.sleep(0)
            yield f"part{number}\n"

    return StreamingHttpResponse(chunks())


def failing_stream(request):
    def chunks():
        yield "first\n"
        if "status" in request.GET:
            pynba.status = 206
        raise ValueError("midway")

    return StreamingHttpResponse(chunks())


def download(request):
    import io

    return FileResponse(io.BytesIO(b"x" * 5000), filename="data.bin")


def boom(request):
    raise RuntimeError("the view failed")


def named(request):
    pynba.script_name = "chosen by the view"
    return HttpResponse(status=204)


def article(request, year):
    return HttpResponse(year)


urlpatterns = [
    path("users/<int:user_id>/", user, name="user-detail"),
    path("async/users/<int:user_id>/", async_user, name="async-user"),
    path("stream/", stream),
    path("async-stream/", async_stream),
    path("failing-stream/", failing_stream),
    path("download/", download),
    path("boom/", boom),
    path("named/", named),
    path("blog/", include([re_path(r"^articles/(?P<year>[0-9]{4})/$", article)])),
]


@pytest.fixture
def pinba(udp_listener):
    """Django's settings pointing pynba at the test's listener."""
    with override_settings(PINBA_SERVER=f"{udp_listener.host}:{udp_listener.port}"):
        yield udp_listener


def test_route_status_size_and_timers(pinba):
    response = Client().get("/users/42/", HTTP_HOST="example.test:8000")
    assert response.content == b"user42"
    packet = receive(pinba)
    assert packet.script_name == "/users/<int:user_id>/"
    assert (packet.status, packet.document_size) == (200, len(b"user42"))
    assert packet.server_name == "example.test"
    assert packet.schema == "http"
    assert packet.timer_tags() == [(("group", "db"), ("op", "select"))]
    assert pinba.pending() == []


def test_async_view(pinba):
    assert Client().get("/async/users/7/").json() == {"id": 7}
    packet = receive(pinba)
    assert packet.script_name == "/async/users/<int:user_id>/"
    assert packet.timer_tags() == [(("group", "db"), ("op", "async"))]


def test_view_names_and_callables(pinba):
    with override_settings(PINBA_SCRIPT_NAME="view", PINBA_PREFIX="site:"):
        Client().get("/users/1/")
        Client().get("/blog/articles/2024/")
    assert receive(pinba).script_name == "site:user-detail"
    assert receive(pinba).script_name == "site:" + __name__ + ".article"
    with override_settings(PINBA_SCRIPT_NAME=lambda request: request.method + " " + request.path):
        Client().get("/users/1/")
    assert receive(pinba).script_name == "GET /users/1/"


def test_included_regex_routes(pinba):
    Client().get("/blog/articles/2024/")
    assert receive(pinba).script_name == "/blog/articles/(?P<year>[0-9]{4})/$"


def test_streaming_response_timed_to_its_end(pinba):
    response = Client().get("/stream/")
    assert b"".join(response.streaming_content) == b"chunk0\nchunk1\nchunk2\n"
    packet = receive(pinba)
    assert packet.script_name == "/stream/"
    assert packet.document_size == len(b"chunk0\nchunk1\nchunk2\n")
    assert packet.timer(group="stream").hit_count == 3


def test_a_stream_that_fails_or_is_never_read(pinba):
    response = Client().get("/failing-stream/")
    content = iter(response.streaming_content)
    assert next(content) == b"first\n"
    with pytest.raises(ValueError, match="midway"):
        next(content)
    response.close()
    packet = receive(pinba)
    assert (packet.script_name, packet.status, packet.document_size) == ("/failing-stream/", 500, 6)
    # A status the view set wins, as with the WSGI middleware.
    response = Client().get("/failing-stream/?status")
    content = iter(response.streaming_content)
    next(content)
    with pytest.raises(ValueError):
        next(content)
    assert receive(pinba).status == 206
    # Closed unread (a client gone, a HEAD request): reported then, its size unknown.
    Client().get("/stream/").close()
    packet = receive(pinba)
    assert (packet.script_name, packet.status, packet.document_size) == ("/stream/", 200, 0)
    assert pinba.pending(0.05) == []


def test_file_response(pinba):
    response = Client().get("/download/")
    assert len(b"".join(response.streaming_content)) == 5000
    packet = receive(pinba)
    assert (packet.script_name, packet.status, packet.document_size) == ("/download/", 200, 5000)


def test_errors_and_404(pinba):
    client = Client(raise_request_exception=False)
    assert client.get("/boom/").status_code == 500
    assert (lambda p: (p.script_name, p.status))(receive(pinba)) == ("/boom/", 500)
    assert client.get("/no/such/page").status_code == 404
    assert (lambda p: (p.script_name, p.status))(receive(pinba)) == ("<unmatched>", 404)
    assert Client().get("/named/").status_code == 204
    assert (lambda p: (p.script_name, p.status))(receive(pinba)) == ("chosen by the view", 204)


def test_disabled_sends_nothing_and_timers_do_nothing(pinba):
    with override_settings(PINBA_ENABLED=False):
        assert Client().get("/users/3/").content == b"user3"
        assert b"".join(Client().get("/stream/").streaming_content).count(b"chunk") == 3
    assert pinba.pending() == []


def test_settings_are_checked_when_the_middleware_is_built(monkeypatch):
    monkeypatch.delenv("PINBA_SERVER", raising=False)
    with override_settings(PINBA_SERVER=None):  # no server: monitoring off, runserver still starts
        assert not PynbaMiddleware(lambda request: None).enabled
    with override_settings(PINBA_SERVER="bad:port"):
        with pytest.raises(ImproperlyConfigured, match="bad:port"):
            PynbaMiddleware(lambda request: None)
    with override_settings(PINBA_SCRIPT_NAME="path"):
        with pytest.raises(ImproperlyConfigured, match="PINBA_SCRIPT_NAME"):
            PynbaMiddleware(lambda request: None)


def test_environment_fallback_and_pinboard(udp_listener, monkeypatch):
    monkeypatch.setenv("PINBA_SERVER", f"{udp_listener.host}:{udp_listener.port}")
    monkeypatch.setenv("PINBA_PINBOARD", "yes")
    with override_settings(PINBA_SERVER=None, PINBA_HOSTNAME="web1"):
        Client().get("/users/5/", HTTP_HOST="shop.test")
    packet = receive(udp_listener)
    assert packet.hostname == "web1"
    assert packet.timer_tags() == [
        (("__hostname", "web1"), ("__server_name", "shop.test"), ("group", "db"), ("op", "select"))
    ]


# -- real servers: Django's WSGI handler under wsgiref, its ASGI handler under uvicorn


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def http_get(port, path, host=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": host} if host else {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def wsgi_served():
    from django.core.wsgi import get_wsgi_application

    listener = UDPListener()
    with override_settings(PINBA_SERVER=f"{listener.host}:{listener.port}"):
        application = get_wsgi_application()  # builds the middleware: reads the settings
    server = make_server("127.0.0.1", 0, application, WSGIServer, QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1], listener
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
        listener.close()


@pytest.fixture(scope="module")
def asgi_served():
    uvicorn = pytest.importorskip("uvicorn")
    from django.core.asgi import get_asgi_application

    listener = UDPListener()
    with override_settings(PINBA_SERVER=f"{listener.host}:{listener.port}"):
        application = get_asgi_application()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(application, log_level="critical", lifespan="off", http="h11")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1], listener
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        listener.close()


@pytest.fixture(params=["wsgi", "asgi"])
def served(request):
    port, listener = request.getfixturevalue(request.param + "_served")
    listener.pending(0.05)
    yield port, listener
    assert listener.pending(0.05) == []


def test_real_server_routes(served):
    port, listener = served
    assert http_get(port, "/users/9/") == (200, b"user9")
    packet = receive(listener)
    assert (packet.script_name, packet.status, packet.document_size) == (
        "/users/<int:user_id>/",
        200,
        len(b"user9"),
    )
    assert packet.timer_tags() == [(("group", "db"), ("op", "select"))]
    assert http_get(port, "/async/users/3/") == (200, b'{"id": 3}')
    assert receive(listener).script_name == "/async/users/<int:user_id>/"


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume")
def test_real_server_streaming_and_errors(served):
    port, listener = served
    assert http_get(port, "/async-stream/") == (200, b"part0\npart1\npart2\n")
    packet = receive(listener)
    assert (packet.script_name, packet.document_size) == ("/async-stream/", 18)
    assert packet.timer(group="async-stream").hit_count == 3
    assert http_get(port, "/stream/") == (200, b"chunk0\nchunk1\nchunk2\n")
    packet = receive(listener)
    assert (packet.script_name, packet.document_size) == ("/stream/", 21)
    assert packet.timer(group="stream").hit_count == 3
    assert http_get(port, "/download/")[1] == b"x" * 5000
    packet = receive(listener)
    assert (packet.script_name, packet.document_size) == ("/download/", 5000)
    assert http_get(port, "/boom/")[0] == 500
    assert (lambda p: (p.script_name, p.status))(receive(listener)) == ("/boom/", 500)


def test_real_server_host_is_normalised_and_404s_are_unmatched(served):
    port, listener = served
    sent = [
        ("Shop.Example.COM.:8080", "shop.example.com"),
        ("[::1]:8000", "[::1]"),
        ("xn--bcher-kva.example", "bücher.example"),
        ("a" * 8000, "<invalid-host>"),
    ]
    for host, _ in sent:
        assert http_get(port, "/users/1/", host)[0] == 200
    assert [receive(listener).server_name for _ in sent] == [name for _, name in sent]
    for sent_path in ("/reset/secret-token/", "/login;jsessionid=secret", "/.env"):
        assert http_get(port, sent_path)[0] == 404
        assert (lambda p: (p.script_name, p.status))(receive(listener)) == ("<unmatched>", 404)


def test_name_settings(pinba):
    with override_settings(
        PINBA_UNMATCHED_NAME="not-found",
        PINBA_SERVER_NAMES=["shop.example.com"],
        PINBA_PREFIX="shop:",
    ):
        client = Client()
        client.get("/users/1/", HTTP_HOST="SHOP.example.com:443")
        client.get("/users/1/", HTTP_HOST="scanner.test")
        client.get("/no/such/page", HTTP_HOST="shop.example.com")
    packets = [receive(pinba) for _ in range(3)]
    assert [p.server_name for p in packets] == ["shop.example.com", "<other>", "shop.example.com"]
    assert [p.script_name for p in packets][2] == "shop:not-found"
    with override_settings(PINBA_NAME_LIMIT="1"):
        client = Client()
        for host in ("a.test", "b.test", "A.test"):
            client.get("/users/1/", HTTP_HOST=host)
        middleware = PynbaMiddleware(lambda request: None)
    assert [receive(pinba).server_name for _ in range(3)] == ["a.test", "<other>", "a.test"]
    assert middleware.monitoring.host_names.limit == 1
    with override_settings(PINBA_NAME_LIMIT="many"):
        with pytest.raises(ImproperlyConfigured, match="PINBA_NAME_LIMIT"):
            PynbaMiddleware(lambda request: None)


def test_script_name_callable_returning_none_is_unmatched(pinba):
    def by_path(request):
        return None if request.path.startswith("/users/") else request.path

    with override_settings(PINBA_SCRIPT_NAME=by_path):
        Client().get("/users/1/")
        Client().get("/blog/articles/2024/")
    assert [receive(pinba).script_name for _ in range(2)] == ["<unmatched>", "/blog/articles/2024/"]

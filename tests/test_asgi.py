"""The ASGI middleware under a real uvicorn server, with Starlette and FastAPI routes."""

import asyncio
import contextlib
import http.client
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.responses import PlainTextResponse, StreamingResponse  # noqa: E402
from starlette.routing import Mount, Route  # noqa: E402

from conftest import UDPListener  # noqa: E402
from packets import receive  # noqa: E402
from pynba import pynba  # noqa: E402
from pynba.asgi import PynbaASGIMiddleware  # noqa: E402

LIFESPAN_EVENTS = []


async def lookup(user_id):
    with pynba.timer(group="db", op="select"):
        await asyncio.sleep(0.001)
    return f"user{user_id}"


async def user(request):
    user_id = request.path_params["id"]
    # A task started by the handler reports into the same request.
    name = await asyncio.create_task(lookup(user_id))
    return PlainTextResponse(name)


async def tagged(request):
    # Concurrent requests each time their own "request" tag.
    number = request.path_params["number"]
    with pynba.timer(group="work", request=number):
        await asyncio.sleep(0.02)
    with pynba.timer(group="work", request=number, step="second"):
        await asyncio.sleep(0.01)
    return PlainTextResponse(number)


def sync_page(request):
    # Run in the thread pool, with the request's context copied.
    with pynba.timer(group="sync"):
        pass
    return PlainTextResponse("sync page")


async def stream(request):
    async def chunks():
        for number in range(3):
            with pynba.timer(group="stream"):
                await asyncio.sleep(0.001)
            yield b"chunk%d\n" % number

    return StreamingResponse(chunks())


async def slow_stream(request):
    async def chunks():
        for _ in range(200):
            await asyncio.sleep(0.01)
            yield b"." * 1024

    return StreamingResponse(chunks())


async def boom(request):
    raise RuntimeError("the handler failed")


async def named(request):
    pynba.script_name = "chosen by the handler"
    pynba.status = 299
    return PlainTextResponse("named")


async def item(request):
    return PlainTextResponse(request.path_params["item"])


fastapi_app = FastAPI()


@fastapi_app.get("/users/{user_id}")
async def fastapi_user(user_id: int):
    with pynba.timer(group="fastapi"):
        await asyncio.sleep(0)
    return {"id": user_id}


@fastapi_app.get("/plain/{slug}")
def fastapi_sync(slug: str):
    with pynba.timer(group="fastapi", kind="sync"):
        pass
    return {"slug": slug}


@contextlib.asynccontextmanager
async def lifespan(app):
    LIFESPAN_EVENTS.append("startup")
    yield
    LIFESPAN_EVENTS.append("shutdown")


starlette_app = Starlette(
    routes=[
        Route("/users/{id:int}", user),
        Route("/tagged/{number}", tagged),
        Route("/sync", sync_page),
        Route("/stream", stream),
        Route("/slow-stream", slow_stream),
        Route("/boom", boom),
        Route("/named", named),
        Mount("/api", routes=[Route("/items/{item}", item)]),
        Mount("/fast", app=fastapi_app),
    ],
    lifespan=lifespan,
)


class Served:
    def __init__(self, listener, port):
        self.listener = listener
        self.port = port

    def get(self, path):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", path, headers={"Host": "example.test:8000"})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def packet(self):
        return receive(self.listener)


@pytest.fixture(scope="module")
def served():
    listener = UDPListener()
    app = PynbaASGIMiddleware(
        starlette_app, listener.address, tags={"app": "asgi-test"}, raise_on_fail=True
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="critical", lifespan="on", loop="asyncio", http="h11")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    try:
        yield Served(listener, sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        listener.close()


@pytest.fixture
def server(served):
    served.listener.pending(0.05)  # leftovers of an earlier test
    yield served
    assert served.listener.pending(0.05) == []


def test_route_template_and_awaited_task_timers(server):
    assert server.get("/users/8812") == (200, b"user8812")
    packet = server.packet()
    assert packet.script_name == "/users/{id}"
    assert (packet.status, packet.document_size) == (200, len("user8812"))
    assert packet.server_name == "example.test"
    assert packet.schema == "http"
    assert packet.tags == [("app", "asgi-test")]
    assert packet.timer_tags() == [(("group", "db"), ("op", "select"))]
    assert packet.timer(group="db", op="select").value > 0


def test_lifespan_passes_through_without_a_packet(server):
    assert LIFESPAN_EVENTS == ["startup"]


def test_sync_handler_in_thread_pool(server):
    assert server.get("/sync") == (200, b"sync page")
    packet = server.packet()
    assert packet.script_name == "/sync"
    assert packet.timer_tags() == [(("group", "sync"),)]


def test_streaming_response_is_timed_to_its_end(server):
    assert server.get("/stream") == (200, b"chunk0\nchunk1\nchunk2\n")
    packet = server.packet()
    assert packet.script_name == "/stream"
    assert packet.document_size == len(b"chunk0\nchunk1\nchunk2\n")
    timer = packet.timer(group="stream")
    assert timer.hit_count == 3
    assert packet.request_time >= timer.value


def test_exception_reports_500(server):
    status, _ = server.get("/boom")
    assert status == 500
    packet = server.packet()
    assert (packet.script_name, packet.status) == ("/boom", 500)


def test_names_set_by_the_handler_win(server):
    assert server.get("/named")[0] == 200
    packet = server.packet()
    assert (packet.script_name, packet.status) == ("chosen by the handler", 299)


def test_mounted_routes(server):
    assert server.get("/api/items/42") == (200, b"42")
    assert server.packet().script_name == "/api/items/{item}"


def test_fastapi_routes(server):
    assert server.get("/fast/users/7") == (200, b'{"id":7}')
    packet = server.packet()
    assert packet.script_name == "/fast/users/{user_id}"
    assert packet.timer_tags() == [(("group", "fastapi"),)]
    assert server.get("/fast/plain/x")[0] == 200
    packet = server.packet()
    assert packet.script_name == "/fast/plain/{slug}"
    assert packet.timer_tags() == [(("group", "fastapi"), ("kind", "sync"))]


def test_unmatched_path_is_reported_under_one_name(server):
    # Never the path the visitor chose: a scanner would make a row per path.
    for path in ("/no/such/page", "/reset;jsessionid=secret", "/.env"):
        assert server.get(path)[0] == 404
        packet = server.packet()
        assert (packet.script_name, packet.status) == ("<unmatched>", 404)


def test_concurrent_requests_keep_their_own_timers(server):
    numbers = [str(n) for n in range(8)]
    with ThreadPoolExecutor(len(numbers)) as pool:
        results = list(pool.map(lambda n: server.get(f"/tagged/{n}"), numbers))
    assert [body for _, body in results] == [n.encode() for n in numbers]
    packets = [server.packet() for _ in numbers]
    seen = set()
    for packet in packets:
        assert packet.script_name == "/tagged/{number}"
        (number,) = {
            value for timer in packet.timers for name, value in timer.tags if name == "request"
        }
        seen.add(number)
        assert packet.timer_tags() == [
            (("group", "work"), ("request", number)),
            (("group", "work"), ("request", number), ("step", "second")),
        ]
    assert seen == set(numbers)


def test_client_disconnect_reports_499(server):
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    connection.sendall(b"GET /slow-stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert connection.recv(100).startswith(b"HTTP/1.1 200")
    connection.close()
    packet = server.packet()
    assert (packet.script_name, packet.status) == ("/slow-stream", 499)
    assert packet.document_size < 200 * 1024


# -- without a server: the ASGI protocol itself ------------------------------


def run(coroutine):
    return asyncio.run(coroutine)


def test_websocket_and_lifespan_scopes_are_passed_through_untouched(udp_listener):
    calls = []

    async def app(scope, receive, send):
        calls.append((scope, receive, send))

    async def receive():
        return {}

    async def send(message):
        pass

    middleware = PynbaASGIMiddleware(app, udp_listener.address)
    for kind in ("websocket", "lifespan"):
        scope = {"type": kind}
        run(middleware(scope, receive, send))
        assert calls[-1] == (scope, receive, send)
    assert udp_listener.pending() == []


def http_scope(path="/"):
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "scheme": "https",
        "headers": [(b"host", b"[::1]:8443")],
        "server": ("127.0.0.1", 8443),
    }


def test_pathsend_size_and_trailers(udp_listener):
    async def app(scope, receive, send):
        await send(
            {
                "type": "http.response.start",
                "status": 206,
                "headers": [(b"content-length", b"1234")],
            }
        )
        await send({"type": "http.response.pathsend", "path": "/some/file"})

    async def with_trailers(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "trailers": True})
        await send({"type": "http.response.body", "body": b"abc"})
        with pynba.timer(group="before-trailers"):
            pass
        await send({"type": "http.response.trailers", "headers": []})

    sent = []

    async def send(message):
        sent.append(message)

    for application in (app, with_trailers):
        run(PynbaASGIMiddleware(application, udp_listener.address)(http_scope(), None, send))
    file_packet, trailers_packet = receive(udp_listener), receive(udp_listener)
    assert (file_packet.status, file_packet.document_size) == (206, 1234)
    assert file_packet.server_name == "[::1]" and file_packet.schema == "https"
    assert (trailers_packet.status, trailers_packet.document_size) == (200, 3)
    assert trailers_packet.timer_tags() == [(("group", "before-trailers"),)]
    assert [m["type"] for m in sent].count("http.response.start") == 2


def test_returning_without_a_response_reports_500(udp_listener):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200})

    async def send(message):
        pass

    run(PynbaASGIMiddleware(app, udp_listener.address, prefix="x:")(http_scope("/p"), None, send))
    packet = receive(udp_listener)
    assert (packet.script_name, packet.status) == ("x:/p", 500)


def test_script_name_callable_and_disabled(udp_listener):
    async def app(scope, receive, send):
        with pynba.timer(group="t"):
            pass
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(message):
        pass

    named = PynbaASGIMiddleware(
        app, udp_listener.address, script_name=lambda scope: scope["path"].upper()
    )
    run(named(http_scope("/abc"), None, send))
    assert receive(udp_listener).script_name == "/ABC"
    run(PynbaASGIMiddleware(app, udp_listener.address, enabled=False)(http_scope(), None, send))
    assert udp_listener.pending() == []


def test_add_middleware_with_fastapi_and_environment_address(udp_listener, monkeypatch):
    testclient = pytest.importorskip("starlette.testclient")
    monkeypatch.setenv("PINBA_SERVER", f"{udp_listener.host}:{udp_listener.port}")
    monkeypatch.setenv("PINBA_PREFIX", "api:")
    app = FastAPI()

    @app.get("/things/{thing_id}")
    async def thing(thing_id: int):
        return {"thing": thing_id}

    app.add_middleware(PynbaASGIMiddleware, pinboard=True)
    with testclient.TestClient(app) as client:
        assert client.get("/things/3").json() == {"thing": 3}
    packet = receive(udp_listener)
    assert packet.script_name == "api:/things/{thing_id}"


def test_bad_arguments(udp_listener):
    with pytest.raises(TypeError, match="app"):
        PynbaASGIMiddleware(None, udp_listener.address)
    with pytest.raises(TypeError, match="script_name"):
        PynbaASGIMiddleware(lambda *a: None, udp_listener.address, script_name="x")
    with pytest.raises(TypeError, match="prefix"):
        PynbaASGIMiddleware(lambda *a: None, udp_listener.address, prefix=1)


def test_timers_in_websocket_and_lifespan_code_do_nothing(udp_listener):
    # Code shared with HTTP routes runs there too; nothing is reported.
    ran = []

    async def app(scope, receive, send):
        with pynba.timer(group="db", op="select"):
            ran.append(scope["type"])

    async def receive():
        return {}

    async def send(message):
        pass

    monitored = PynbaASGIMiddleware(app, udp_listener.address)
    for kind in ("websocket", "lifespan"):
        asyncio.run(monitored({"type": kind}, receive, send))
    assert ran == ["websocket", "lifespan"]
    assert udp_listener.pending(0.1) == []

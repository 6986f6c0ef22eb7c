"""``pynba demo``: a monitored WSGI application, load driven at it, and the report.

The application has the routes a real one has: pages with database-like and
cache-like timers (``/users/{id}``, ``/search``), a streaming response
(``/stream``) and a route that fails (``/error``). It runs under wsgiref's
threaded server, wrapped in ``PynbaMiddleware``, reporting to a listener in
the same process.
"""

from __future__ import annotations

import io
import random
import re
import socketserver
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from ..context import pynba
from ..wsgi import PynbaMiddleware
from .listener import Listener
from .top import Report

__all__ = ["DemoServer", "application", "monitored", "route_template", "run_demo"]

WSGIApplication = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_cache: dict[int, dict[str, object]] = {}
_cache_lock = threading.Lock()

ROUTES = [
    (re.compile(r"^/$"), "/"),
    (re.compile(r"^/users/(\d+)$"), "/users/{id}"),
    (re.compile(r"^/search$"), "/search"),
    (re.compile(r"^/stream$"), "/stream"),
    (re.compile(r"^/error$"), "/error"),
]


def _pretend_query(seconds: float) -> None:
    time.sleep(seconds)


def _user(user_id: int) -> dict[str, object]:
    with pynba.timer(group="cache", op="get"):
        with _cache_lock:
            user = _cache.get(user_id)
    if user is None:
        with pynba.timer(group="db", op="select", table="users"):
            _pretend_query(0.002)
            user = {"id": user_id, "name": f"user{user_id}"}
        with pynba.timer(group="cache", op="set"), _cache_lock:
            _cache[user_id] = user
    return user


def _stream() -> Iterator[bytes]:
    for part in range(5):
        with pynba.timer(group="render", op="chunk"):
            _pretend_query(0.0005)
            yield f"chunk {part}\n".encode()


def _route(path: str) -> tuple[str, re.Match[str]] | None:
    """The template of the route ``path`` takes, and its match; None when none matches."""
    for pattern, template in ROUTES:
        match = pattern.match(path)
        if match:
            return template, match
    return None


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The demo WSGI application (not monitored: see ``monitored()``)."""
    routed = _route(environ.get("PATH_INFO", ""))
    if routed is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    template, match = routed
    environ["demo.route"] = template
    if template == "/users/{id}":
        body = f"{_user(int(match.group(1)))['name']}\n".encode()
    elif template == "/search":
        with pynba.timer(group="db", op="search", table="users"):
            _pretend_query(0.004)
        body = b"3 results\n"
    elif template == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _stream()
    elif template == "/error":
        with pynba.timer(group="db", op="select", table="orders"):
            _pretend_query(0.001)
        raise RuntimeError("the demo's failing route")
    else:
        body = b"home\n"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


def route_template(environ: dict[str, Any]) -> str:
    """The route's template as the script name: /users/1 and /users/2 report together."""
    return environ.get("demo.route", "unknown")


def monitored(address: object) -> PynbaMiddleware:
    """The demo application wrapped in ``PynbaMiddleware``, reporting to ``address``."""
    return PynbaMiddleware(
        application,
        address,
        script_name=route_template,
        server_name="demo.local",
        tags={"app": "demo"},
    )


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def get_stderr(self) -> io.StringIO:
        return io.StringIO()  # the failing route's tracebacks are expected


class DemoServer:
    """A WSGI application served by wsgiref's threaded server on a free loopback port."""

    def __init__(self, app: WSGIApplication) -> None:
        self.server = make_server(
            "127.0.0.1", 0, app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> DemoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self._thread.join()
        self.server.server_close()


def _paths(count: int, seed: int = 1) -> list[str]:
    chooser = random.Random(seed)
    weighted = ["/users"] * 10 + ["/search"] * 4 + ["/stream"] * 2 + ["/"] * 3 + ["/error"]
    paths = []
    for _ in range(count):
        path = chooser.choice(weighted)
        paths.append(f"/users/{chooser.randint(1, 30)}" if path == "/users" else path)
    return paths


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as page:
            page.read()
            return page.status
    except urllib.error.HTTPError as error:
        error.read()
        return error.code


def drive(
    base_url: str, requests: int, duration: float | None = None, clients: int = 4
) -> Counter[int]:
    """Send ``requests`` requests (fewer if ``duration`` seconds pass); statuses seen."""
    deadline = None if duration is None else time.monotonic() + duration
    paths = iter(_paths(requests))
    lock = threading.Lock()
    stopping = threading.Event()
    statuses: Counter[int] = Counter()
    failures: list[BaseException] = []

    def client() -> None:
        while not stopping.is_set():
            with lock:
                path = next(paths, None)
            if path is None or (deadline is not None and time.monotonic() > deadline):
                return
            try:
                status = _get(base_url + path)
            except Exception as error:
                if not stopping.is_set():  # not the server going away on Ctrl-C
                    failures.append(error)
                    stopping.set()
                return
            with lock:
                statuses[status] += 1

    # Daemon threads rather than an executor: Ctrl-C can land while the main
    # thread holds one of an executor's locks, and its workers then hang the
    # interpreter's exit, which joins them.
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.1)
    except BaseException:
        stopping.set()  # Ctrl-C: the requests not sent yet are not sent
        raise
    if failures:
        raise failures[0]
    return statuses


def run_demo(
    requests: int = 300,
    duration: float | None = None,
    out: TextIO | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
) -> int:
    """Run the demo; 0 when every request's packet arrived and a server would accept it."""
    out = out or sys.stdout
    report = Report()
    stop = threading.Event()
    with Listener(host, port) as listener:

        def receive() -> None:
            while not stop.is_set():
                received = listener.receive(timeout=0.05)
                if received is not None:
                    report.add(received)

        receiver = threading.Thread(target=receive, daemon=True)
        receiver.start()
        app = monitored(listener.address)
        print(
            f"pynba demo: listening for Pinba packets on {host}:{listener.port}; "
            f"driving {requests} requests at the demo application...",
            file=out,
            flush=True,
        )
        try:
            with DemoServer(app) as server:
                statuses = drive(server.url, requests, duration)
            sent = sum(statuses.values())
            deadline = time.monotonic() + 5.0
            while report.received < sent and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            stop.set()
            receiver.join()
            app.reporter.close()
    print(file=out)
    print(report.render(), file=out)
    print(file=out)
    answered = " ".join(f"{code}:{n}" for code, n in sorted(statuses.items()))
    print(
        f"{sent} requests sent ({answered}), {report.received} packets received, "
        f"{report.dropped} a Pinba server would drop.",
        file=out,
    )
    if report.received != sent or report.dropped:
        print("Some packets are missing or invalid: see above.", file=out)
        return 1
    print(
        "Every request sent one valid packet. Point your application at a listener with "
        "`pynba listen` to see its own.",
        file=out,
    )
    return 0

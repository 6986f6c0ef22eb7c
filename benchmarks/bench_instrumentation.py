"""Cost of the automatic timers per call: next to the bare call and a hand-written pynba.timer.

Each case is one library call made three ways, each measured inside
monitored requests of 50 calls each (reporting to a loopback socket nobody
reads; the requests' start and end are not counted):

- bare: the library alone, not instrumented;
- hand-written: the same call in ``with pynba.timer(...)`` with the tags
  the automatic timer sends;
- automatic: the call through the integration.

The table gives µs per call (each way's best run), the automatic timer's
cost over the hand-written one (the bar: at most 1.0 µs: the mean of the
rounds', with its standard error), and over the bare call outside any
request (what a hook costs where nothing is recorded). Each case is
measured in processes of its own, its ways in turn in each; those of an
integration that patches its library in pairs of processes, the library
patched in one of each pair only (``measure_in_processes``), but for the
HTTP clients' and Redis', whose hooked method is replaced once by a switch
between the three ways (``switched_case``). Then the
automatic timer's cost next to a local Redis ``GET`` (the bar: under 1%),
and a whole monitored request making 10 sqlite3 queries, timed by hand and
automatically.

The servers are private: a redis-server and a memcached (Debian's
binaries) on free loopback ports, and an HTTP/1.1 server on 127.0.0.1 in a
process of its own, each started for its case and stopped after it. A case
whose library or server is missing is skipped, saying why.

With ``--two-cpus``, the processes that measure, and the servers they
start, are not pinned to one CPU: a server's answer then comes from the
other CPU while the client's waits idle, as a remote server's does, and
what the client runs next finds less in the caches. ``--only PREFIX``
measures the cases whose name starts so.

With ``--in-turn``, the cases measured in one process (the databases
without a server, Redis, the HTTP clients, OpenTelemetry) have their calls timed
one at a time instead, the three ways taking turns call by call, each
way's figure its median (``calls_in_turn``); the others say they are
measured in pairs.

To add a case: write a function returning a ``Case`` (or why it is
skipped) and list it in ``CASES``.

Run: python benchmarks/bench_instrumentation.py [--quick] [--seconds S] [--in-turn]
"""

from __future__ import annotations

import argparse
import contextvars
import importlib.util
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from types import ModuleType
from typing import Any

from pynba import PynbaMiddleware, pynba
from pynba.collector import CollectorSettings, RequestCollector
from pynba.context import activate, deactivate
from pynba.reporter import Reporter
from pynba.wire.encoder import IMPLEMENTATION

#: The automatic timer may cost this much more than the hand-written one (µs).
BAR = 1.0
#: ... and at most this share of a local Redis GET (%).
REDIS_BAR = 1.0
#: The calls a request makes (its timers then go with its packet, as in a real one).
CALLS_PER_REQUEST = 50
#: How long a run of calls lasts, at least one call (s): the best runs are those
#: nothing else interrupted.
RUN = 0.0002
#: The queries of the whole request measured at the end.
QUERIES = 10


@dataclass
class Case:
    """One library call, made bare, in a hand-written timer, and through its integration.

    ``instrument``, when given, turns the integration on for the automatic
    calls only (in processes of their own): an integration that patches its
    library's classes would otherwise time the bare calls too. ``bare_twin``, when
    given, is the bare call made through a second object built as the
    first: the gap between the two, which do the same work, is how far
    apart the figures of identical calls lie (their objects' places in
    memory differ).
    """

    name: str
    bare: Callable[[], object]
    hand_written: Callable[[], object]
    automatic: Callable[[], object]
    close: Callable[[], object] | None = None
    instrument: Callable[[], object] | None = None
    bare_twin: Callable[[], object] | None = None


#: What a case function returns: the case, or why it is skipped.
Made = Case | str


def patched_case(
    name: str,
    call: Callable[[], object],
    tags: dict[str, str],
    integration: ModuleType,
    close: Callable[[], object] | None = None,
    bare_twin: Callable[[], object] | None = None,
) -> Case:
    """The case of an integration that patches its library (its ``instrument()``):
    ``call`` bare, in a hand-written ``pynba.timer(**tags)``, and through the integration.
    """

    def hand_written() -> None:
        with pynba.timer(**tags):
            call()

    return Case(
        name,
        call,
        hand_written,
        call,
        close,
        integration.instrument,
        bare_twin,
    )


def switched_case(
    name: str,
    call: Callable[[], object],
    tags: dict[str, str],
    integration: ModuleType,
    owner: type,
    attribute: str,
    close: Callable[[], object] | None = None,
    bare_twin: Callable[[], object] | None = None,
) -> Case:
    """The case of an integration hooking one method, ``owner.attribute``, measured in one process.

    The method is replaced once, before anything is measured, by a switch
    that calls the original method or the integration's hook of it (its
    ``instrument()`` makes the hook, and ``uninstrument()`` puts the method
    back, for the switch to replace). The bare and hand-written ways set
    the switch to the original, the hand-written one making ``call`` in a
    ``pynba.timer(**tags)``; the automatic way sets it to the hook. The
    three ways run in one process, through the same objects. ``close()``
    puts the method back, and the integration as it was.

    For a call to a server (140 to 330 µs), measured in pairs of processes
    (``patched_case``), automatic - hand-written moved by 2 µs and more
    from one pair to the next.
    """
    before = owner.__dict__[attribute]
    integration.uninstrument()
    original = owner.__dict__[attribute]
    was_on = before is not original
    integration.instrument()
    hook = owner.__dict__[attribute]
    integration.uninstrument()
    if hook is original:
        raise RuntimeError(f"{integration.__name__}.instrument() left {attribute} as it was")
    target = [original]

    def switch(*args: Any, **kwargs: Any) -> Any:
        return target[0](*args, **kwargs)

    def hand_written() -> None:
        with pynba.timer(**tags):
            call()

    def through(function: Callable[..., Any], made: Callable[[], object]) -> Callable[[], object]:
        def way() -> object:
            target[0] = function
            return made()

        return way

    def close_all() -> None:
        setattr(owner, attribute, original)
        if was_on:
            integration.instrument()
        if close is not None:
            close()

    setattr(owner, attribute, switch)
    return Case(
        name,
        through(original, call),
        through(original, hand_written),
        through(hook, call),
        close_all,
        None,
        None if bare_twin is None else through(original, bare_twin),
    )


def missing(*modules: str) -> str | None:
    """Why a case needing ``modules`` cannot run (the first not installed), or None."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    return None


# -- private servers -------------------------------------------------------------------


class Server:
    """A server process of a case, on a free loopback port; ``stop()`` ends it."""

    def __init__(self, process: subprocess.Popen, port: int, directory: str | None = None):
        self.process = process
        self.port = port
        self.directory = directory

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(5)
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_cache_server(binary: str, hello: bytes, answer: bytes) -> Server | str:
    """A redis-server or memcached on a free port (as tests/cache_servers.py starts them)."""
    path = shutil.which(binary)
    if path is None:
        return f"{binary} is not installed (Debian: apt-get install {binary})"
    port = free_port()
    directory = tempfile.mkdtemp(prefix=f"pynba-bench-{binary}-")
    if binary == "redis-server":
        command = [path, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", directory]
    else:
        command = [path, "-p", str(port), "-l", "127.0.0.1", "-U", "0"]
        if os.geteuid() == 0:
            command += ["-u", "root"]  # memcached refuses to run as root unless told so
    with open(os.path.join(directory, "server.log"), "wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    server = Server(process, port, directory)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                connection.sendall(hello)
                if connection.recv(100).startswith(answer):
                    return server
        except OSError:
            time.sleep(0.02)
    server.stop()
    return f"{binary} did not start"


# An HTTP/1.1 server answering every request with the same 2 bytes, connections
# kept alive (a thread each), in a process of its own: not competing for this
# one's GIL. It reads no more than the requests' heads (the benchmark sends GETs):
# http.server would take some 200 µs a request, and its variations with it.
_HTTP_SERVER = """
import socket, threading

ANSWER = b"HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\nContent-Length: 2\\r\\n\\r\\nok"

def serve(connection):
    pending = b""
    with connection:
        while data := connection.recv(65536):
            pending += data
            while b"\\r\\n\\r\\n" in pending:
                pending = pending.partition(b"\\r\\n\\r\\n")[2]
                connection.sendall(ANSWER)

listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
while True:
    connection, _ = listener.accept()
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threading.Thread(target=serve, args=(connection,), daemon=True).start()
"""


def start_http_server() -> Server:
    # Not this process's stderr: a server left running by a failing child
    # would hold the pipe its parent reads the child's through.
    process = subprocess.Popen(
        [sys.executable, "-c", _HTTP_SERVER],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    return Server(process, int(process.stdout.readline()))


# -- the cases -------------------------------------------------------------------


def dbapi_sqlite3() -> Made:
    import sqlite3

    from pynba.instrumentation.dbapi import wrap_connection

    bare_cursor = sqlite3.connect(":memory:").cursor()
    timed_cursor = wrap_connection(sqlite3.connect(":memory:")).cursor()

    def hand_written() -> None:
        with pynba.timer(group="db", op="select", db="sqlite3"):
            bare_cursor.execute("SELECT 1")

    return Case(
        "dbapi: sqlite3 in memory, cursor.execute('SELECT 1')",
        lambda: bare_cursor.execute("SELECT 1"),
        hand_written,
        lambda: timed_cursor.execute("SELECT 1"),
    )


def sqlalchemy_sqlite() -> Made:
    if why := missing("sqlalchemy"):
        return why
    import sqlalchemy

    from pynba.instrumentation.sqlalchemy import instrument_engine

    statement = sqlalchemy.text("SELECT 1")
    bare_connection = sqlalchemy.create_engine("sqlite://").connect()
    timed_engine = sqlalchemy.create_engine("sqlite://")
    instrument_engine(timed_engine)
    timed_connection = timed_engine.connect()

    def hand_written() -> None:
        with pynba.timer(group="db", op="select", db="sqlite"):
            bare_connection.execute(statement)

    def close() -> None:
        bare_connection.close()
        timed_connection.close()

    return Case(
        "sqlalchemy: sqlite in memory, connection.execute(text('SELECT 1'))",
        lambda: bare_connection.execute(statement),
        hand_written,
        lambda: timed_connection.execute(statement),
        close,
    )


def configure_django() -> None:
    """Django's settings for the Django cases: sqlite in memory, no application."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
            INSTALLED_APPS=[],
        )
        django.setup()


def django_db_sqlite() -> Made:
    if why := missing("django"):
        return why
    configure_django()
    from django.db import connections

    from pynba.instrumentation import django_db

    # A connection of its own (not one of ``connections``), opened before
    # instrument(), for the bare and hand-written calls.
    bare_db = connections.create_connection("default")
    bare_cursor = bare_db.cursor()
    timed_db = connections["default"]
    timed_cursor = timed_db.cursor()
    django_db.instrument()

    def hand_written() -> None:
        with pynba.timer(group="db", op="select", db="default"):
            bare_cursor.execute("SELECT 1")

    def close() -> None:
        django_db.uninstrument()
        bare_db.close()
        timed_db.close()

    return Case(
        "django_db: sqlite in memory, Django cursor.execute('SELECT 1')",
        lambda: bare_cursor.execute("SELECT 1"),
        hand_written,
        lambda: timed_cursor.execute("SELECT 1"),
        close,
    )


def redis_get() -> Made:
    if why := missing("redis"):
        return why
    server = start_cache_server("redis-server", b"PING\r\n", b"+PONG")
    if isinstance(server, str):
        return server
    import redis

    from pynba.instrumentation import redis as redis_integration

    client = redis.Redis(host="127.0.0.1", port=server.port)
    client.set("user:42", "ada")
    address = f"127.0.0.1:{server.port}"

    def close() -> None:
        client.close()
        server.stop()

    # Switched (one process, the three ways through the same client), as
    # the HTTP clients are: measured in pairs of processes, automatic −
    # hand-written moved by 0.3 µs from one run to the next, more than the
    # 1% of the call it is compared with.
    try:
        return switched_case(
            "redis: local redis-server (TCP), client.get(key)",
            lambda: client.get("user:42"),
            {"group": "cache", "op": "get", "server": address},
            redis_integration,
            redis.Redis,
            "execute_command",
            close,
        )
    except BaseException:
        close()
        raise


def pymemcache_get() -> Made:
    if why := missing("pymemcache"):
        return why
    server = start_cache_server("memcached", b"version\r\n", b"VERSION")
    if isinstance(server, str):
        return server
    import pymemcache

    from pynba.instrumentation import pymemcache as pymemcache_integration

    client = pymemcache.Client(("127.0.0.1", server.port))
    client.set("user:42", b"ada")
    address = f"127.0.0.1:{server.port}"

    def close() -> None:
        client.close()
        server.stop()

    return patched_case(
        "pymemcache: local memcached, client.get(key)",
        lambda: client.get("user:42"),
        {"group": "cache", "op": "get", "server": address},
        pymemcache_integration,
        close,
    )


def http_case(
    library: str,
    hooked: tuple[str, str],
    make_get: Callable[[str], tuple[Callable[[], object], Callable[[], object]]],
) -> Made:
    """A GET to a local HTTP server: ``make_get(url)`` gives the call and what closes it.

    ``hooked``: the class of ``library`` and the method its integration hooks
    (see ``switched_case``).
    """
    if why := missing(library):
        return why
    integration = importlib.import_module(f"pynba.instrumentation.{library}")
    owner = getattr(importlib.import_module(library), hooked[0])
    server = start_http_server()
    host = f"127.0.0.1:{server.port}"
    try:
        get, close_client = make_get(f"http://{host}/users/42")
    except BaseException:
        server.stop()
        raise

    def close() -> None:
        close_client()
        server.stop()

    try:
        return switched_case(
            f"{library}: GET from a local HTTP server (kept alive)",
            get,
            {"group": "http", "op": "get", "host": host, "status": "2xx"},
            integration,
            owner,
            hooked[1],
            close,
        )
    except BaseException:
        close()
        raise


def httpx_get() -> Made:
    def make_get(url: str) -> tuple[Callable[[], object], Callable[[], object]]:
        import httpx

        client = httpx.Client(trust_env=False)  # no proxy from the environment
        return lambda: client.get(url), client.close

    return http_case("httpx", ("Client", "send"), make_get)


def httpx_in_process() -> Made:
    """The httpx hook alone: a client whose transport answers in this process, no network."""
    if why := missing("httpx"):
        return why
    import httpx

    from pynba.instrumentation import httpx as httpx_integration

    # A response of its own for each call (see bench_hooks_speed's httpx case).
    client = httpx.Client(
        transport=httpx.MockTransport(lambda request: httpx.Response(200, content=b"ok"))
    )
    return switched_case(
        "httpx: GET answered in this process (MockTransport, no network)",
        lambda: client.get("http://127.0.0.1:8080/users/42"),
        {"group": "http", "op": "get", "host": "127.0.0.1:8080", "status": "2xx"},
        httpx_integration,
        httpx.Client,
        "send",
        client.close,
    )


def requests_get() -> Made:
    def make_get(url: str) -> tuple[Callable[[], object], Callable[[], object]]:
        import requests

        session = requests.Session()
        session.trust_env = False  # no proxy from the environment
        return lambda: session.get(url), session.close

    return http_case("requests", ("Session", "send"), make_get)


def answering_session() -> Any:
    """A requests session whose adapter answers each request itself: a 200, ``ok``, no network."""
    import requests
    import requests.adapters

    class Answering(requests.adapters.BaseAdapter):
        """A response of its own for each request (as httpx's MockTransport gives)."""

        def send(self, request: Any, **kwargs: Any) -> Any:
            response = requests.Response()
            response.status_code = 200
            response._content = b"ok"
            response.url = request.url
            response.request = request
            return response

        def close(self) -> None:
            pass

    session = requests.Session()
    session.trust_env = False  # no proxy settings read from the environment per call
    session.mount("http://", Answering())
    return session


def requests_in_process() -> Made:
    """The requests hook alone: a session whose adapter answers in this process, no network."""
    if why := missing("requests"):
        return why
    import requests

    from pynba.instrumentation import requests as requests_integration

    session = answering_session()
    return switched_case(
        "requests: GET answered in this process (an adapter, no network)",
        lambda: session.get("http://127.0.0.1:8080/users/42"),
        {"group": "http", "op": "get", "host": "127.0.0.1:8080", "status": "2xx"},
        requests_integration,
        requests.Session,
        "send",
        session.close,
    )


def urllib3_get() -> Made:
    def make_get(url: str) -> tuple[Callable[[], object], Callable[[], object]]:
        import urllib3

        pool = urllib3.PoolManager()
        return lambda: pool.request("GET", url), pool.clear

    return http_case("urllib3", ("HTTPConnectionPool", "urlopen"), make_get)


def jinja2_render() -> Made:
    if why := missing("jinja2"):
        return why
    import jinja2

    from pynba.instrumentation import jinja2 as jinja2_integration

    templates = jinja2.Environment(
        loader=jinja2.DictLoader({"user.html": "<h1>{{ name }}</h1><p>{{ email }}</p>"})
    )
    template = templates.get_template("user.html")
    return patched_case(
        "jinja2: template.render(name=..., email=...)",
        lambda: template.render(name="Ada", email="ada@example.com"),
        {"group": "render", "template": "user.html"},
        jinja2_integration,
    )


def django_template_render() -> Made:
    if why := missing("django"):
        return why
    configure_django()
    from django.template import Context, Engine

    from pynba.instrumentation import django_templates

    source = "<h1>{{ name }}</h1><p>{{ email }}</p>"
    engine = Engine(loaders=[("django.template.loaders.locmem.Loader", {"user.html": source})])
    template = engine.get_template("user.html")
    context = Context({"name": "Ada", "email": "ada@example.com"})
    return patched_case(
        "django_templates: Template.render(context)",
        lambda: template.render(context),
        {"group": "render", "template": "user.html"},
        django_templates,
    )


def opentelemetry_span() -> Made:
    if why := missing("opentelemetry.sdk"):
        return why
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import SpanKind

    from pynba.instrumentation.opentelemetry import PinbaSpanProcessor

    bare_tracer = TracerProvider().get_tracer("bench")
    bridged = TracerProvider()
    bridged.add_span_processor(PinbaSpanProcessor())
    bridged_tracer = bridged.get_tracer("bench")
    attributes = {
        "db.system.name": "postgresql",
        "db.operation.name": "SELECT",
        "db.namespace": "shop",
    }

    def bare() -> None:
        bare_tracer.start_span("SELECT users", kind=SpanKind.CLIENT, attributes=attributes).end()

    def hand_written() -> None:
        with pynba.timer(group="db", op="select", db="shop"):
            bare()

    def automatic() -> None:
        bridged_tracer.start_span("SELECT users", kind=SpanKind.CLIENT, attributes=attributes).end()

    return Case(
        "opentelemetry: a span started and ended, with PinbaSpanProcessor",
        bare,
        hand_written,
        automatic,
    )


#: Every case, in the table's order.
CASES: list[Callable[[], Made]] = [
    dbapi_sqlite3,
    sqlalchemy_sqlite,
    django_db_sqlite,
    redis_get,
    pymemcache_get,
    httpx_get,
    httpx_in_process,
    requests_get,
    requests_in_process,
    urllib3_get,
    jinja2_render,
    django_template_render,
    opentelemetry_span,
]


# -- measuring -------------------------------------------------------------------


def per_call(func: Callable[[], object], number: int) -> float:
    """µs per call over ``number`` calls."""
    return timeit.timeit(func, number=number) / number * 1e6


def best_run(func: Callable[[], object], number: int, run: int) -> float:
    """The fastest of ``number // run`` runs of ``run`` calls: ``per_call()`` of that run."""
    return min(per_call(func, run) for _ in range(max(1, number // run)))


def outside(func: Callable[[], object], number: int, run: int) -> float:
    """``best_run()`` outside any request."""
    return contextvars.copy_context().run(best_run, func, number, run)


def in_requests(func: Callable[[], object], reporter: Reporter, number: int, run: int) -> float:
    """``best_run()`` of ``func`` called in monitored requests of ``CALLS_PER_REQUEST`` calls.

    (``number`` calls in one request, when fewer.) Only the calls are timed:
    not the requests' start and end.
    """
    best = float("inf")
    for _ in range(max(1, number // CALLS_PER_REQUEST)):
        collector = RequestCollector(CollectorSettings(reporter), "/bench")

        def one_request(collector: RequestCollector = collector) -> float:
            token = activate(collector)
            try:
                return best_run(func, min(number, CALLS_PER_REQUEST), run)
            finally:
                deactivate(token)
                collector.finish()

        best = min(best, contextvars.copy_context().run(one_request))
    return best


#: A process's automatic - hand-written, where it measures both (see ``measure_side``).
PAIRED = "auto - hand, paired"
#: The calls that warm a case's call before it is measured.
WARM_CALLS = 20
#: The processes (or pairs of processes) that measure a case, one after the
#: other (one for a smoke test, ``--seconds 0``): see ``measure_in_processes``.
PROCESS_ROUNDS = 6


@dataclass
class Figures:
    """What a case measured: each way's best run, and automatic - hand-written in each round."""

    best: dict[str, float]
    over_hand: list[float]

    def over(self) -> tuple[float, str]:
        """The mean of the rounds' automatic - hand-written, and its standard error as a column."""
        mean = statistics.fmean(self.over_hand)
        if len(self.over_hand) < 2:
            return mean, f"{'-':>5}"
        error = statistics.stdev(self.over_hand) / math.sqrt(len(self.over_hand))
        return mean, f"{error:5.2f}"


def interleaved(
    ways: dict[str, Callable[[], float]], seconds: float, rounds: int
) -> dict[str, list[float]]:
    """Each way's figure in each round, the ways in turn: ``seconds``, ``rounds`` at least."""
    runs: dict[str, list[float]] = {way: [] for way in ways}
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(next(iter(runs.values()))) < rounds:
        for way, measure_way in ways.items():
            runs[way].append(measure_way())
    return runs


def sizes(case: Case) -> tuple[int, int]:
    """How many calls a way makes in a round, and in a run (see ``measure_side``)."""
    one = per_call(case.bare, CALLS_PER_REQUEST) / 1e6
    run = max(1, min(CALLS_PER_REQUEST, round(RUN / one)))
    return max(1, round(0.002 / (one * CALLS_PER_REQUEST))) * CALLS_PER_REQUEST, run


def side_ways(case: Case, reporter: Reporter, side: str) -> dict[str, Callable[[], float]]:
    """The ways a side measures: ``plain`` (bare, hand-written...) or ``automatic``, warmed."""
    number, run = sizes(case)
    calls = {"bare": case.bare, "hand": case.hand_written}
    if case.bare_twin is not None:
        calls["bare twin"] = case.bare_twin
    if side == "automatic":
        calls = {"auto": case.automatic}
    for call in calls.values():
        in_requests(call, reporter, WARM_CALLS, WARM_CALLS)
    ways = {way: partial(in_requests, call, reporter, number, run) for way, call in calls.items()}
    ways[f"{next(iter(calls))} outside"] = partial(outside, next(iter(calls.values())), number, run)
    return ways


#: The side that times calls one at a time, the three ways in turn (see ``calls_in_turn``).
IN_TURN = "in turn"
#: Turns (a call of each way) a request makes, in ``calls_in_turn``.
TURNS_PER_REQUEST = 30


def calls_in_turn(case: Case, reporter: Reporter, seconds: float) -> dict[str, float]:
    """Each way's median µs per call, its calls timed one at a time, the ways taking turns.

    The ways run call by call, in an order that rotates from one turn to the
    next, in monitored requests of ``TURNS_PER_REQUEST`` turns, for
    ``seconds`` (three requests at least). Between two calls of a way run
    the calls of the others: less of each way's code and data is still in
    the caches than in a run of its own calls, as in an application, where
    other code runs between two calls of a library. ``PAIRED`` is the
    median of the automatic calls less that of the hand-written ones.
    """
    ways = {"bare": case.bare, "hand": case.hand_written, "auto": case.automatic}
    for call in ways.values():
        in_requests(call, reporter, WARM_CALLS, WARM_CALLS)
    names = list(ways)
    orders = [names[turn:] + names[:turn] for turn in range(len(names))]
    times: dict[str, list[int]] = {way: [] for way in ways}
    clock = time.perf_counter_ns

    def one_request() -> None:
        collector = RequestCollector(CollectorSettings(reporter), "/bench")
        token = activate(collector)
        try:
            for turn in range(TURNS_PER_REQUEST):
                for way in orders[turn % len(orders)]:
                    call = ways[way]
                    start = clock()
                    call()
                    times[way].append(clock() - start)
        finally:
            deactivate(token)
            collector.finish()

    deadline = time.perf_counter() + seconds
    requests = 0
    while requests < 3 or time.perf_counter() < deadline:
        contextvars.copy_context().run(one_request)
        requests += 1
    figures = {way: statistics.median(taken) / 1e3 for way, taken in times.items()}
    figures[PAIRED] = figures["auto"] - figures["hand"]
    return figures


def measure_side(case: Case, side: str, seconds: float) -> dict[str, float]:
    """The best run of each way of one side, here (a child of ``measure_in_processes``).

    Where both are measured here, also ``PAIRED``: the mean of the rounds'
    automatic - hand-written, which every round counts in. The difference
    of the two ways' best runs, one round each, moved by 2 µs from one
    process to the next for a call to a server (httpx).

    A round makes calls for about 2 ms each way, in requests of
    ``CALLS_PER_REQUEST`` calls (as many as the bare call's time allows),
    timed in runs of about ``RUN``: a run of slow calls is one or a few
    (a call to another process waits, now and then, for the scheduler:
    short runs, more of them free of such waits). Interleaved, the ways
    share what else the machine does; many short runs give each a chance
    to run alone.
    """
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    reporter = Reporter(sink.getsockname())
    try:
        if side == IN_TURN:
            return calls_in_turn(case, reporter, seconds)
        if side == "automatic" and case.instrument is not None:
            case.instrument()
        ways: dict[str, Callable[[], float]] = {}
        for part in ("plain", "automatic") if side == "all" else (side,):
            ways.update(side_ways(case, reporter, part))
        runs = interleaved(ways, seconds, 3 if seconds > 0 else 1)
        figures = {way: min(values) for way, values in runs.items()}
        if "auto" in runs and "hand" in runs:
            pairs = zip(runs["auto"], runs["hand"], strict=True)
            figures[PAIRED] = statistics.fmean(auto - hand for auto, hand in pairs)
        return figures
    finally:
        reporter.close()
        sink.close()


def measure_in_processes(
    case: Case,
    script: str,
    name: str,
    seconds: float,
    in_turn: bool = False,
    two_cpus: bool = False,
) -> Figures:
    """``case`` (the case ``name`` of ``script``) measured in ``PROCESS_ROUNDS`` processes or pairs.

    Identical calls run faster in one process than in another (where
    their objects lie in memory, how the hash of a string falls): the
    same case measured in one process, then in another, moved by up to
    0.6 µs. A round is one process, one after the other, and the figures
    are their mean. An integration that patches its library is measured
    in a pair of processes a round: patching a class, and putting it
    back, drops what the interpreter had specialized of the calls to it,
    for good after many times over (the bare calls of a process that
    patched httpx 3,000 times stay about 1 µs slower), and turned on and
    off each round, the automatic calls were measured 1 to 2 µs slower
    than they run. So the library is never patched where the bare and
    hand-written calls are measured, and patched once where the automatic
    ones are. A round's automatic - hand-written is its process's
    ``PAIRED`` figure, and for a pair the difference of the two
    processes' best runs.
    """
    rounds = PROCESS_ROUNDS if seconds > 0 else 1
    runs: dict[str, list[float]] = {}
    over_hand = []
    if in_turn and case.instrument is not None:
        raise CaseFailed("measured in pairs of processes, its ways cannot take turns")
    for _ in range(rounds):
        if case.instrument is None:
            side = IN_TURN if in_turn else "all"
            figures = side_in_process(script, name, side, seconds / rounds, two_cpus)
        else:
            figures = side_in_process(script, name, "plain", seconds / rounds / 2, two_cpus)
            figures.update(
                side_in_process(script, name, "automatic", seconds / rounds / 2, two_cpus)
            )
        paired = figures.pop(PAIRED, None)
        for way, value in figures.items():
            runs.setdefault(way, []).append(value)
        over_hand.append(figures["auto"] - figures["hand"] if paired is None else paired)
    return Figures({way: min(values) for way, values in runs.items()}, over_hand)


class CaseFailed(Exception):
    """A case that could not be measured (a child process failed), and why."""


def side_in_process(
    script: str, name: str, side: str, seconds: float, two_cpus: bool = False
) -> dict[str, float]:
    command = [sys.executable, script, "--case", name, "--side", side, "--seconds", str(seconds)]
    if two_cpus:
        command.append("--two-cpus")
    done = subprocess.run(command, capture_output=True, text=True, timeout=600 + 2 * seconds)
    if done.returncode != 0:
        raise CaseFailed(f"its {side} process failed: {done.stderr.strip().splitlines()[-1:]}")
    figures: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return figures


def run_case(
    case: Case,
    seconds: float,
    script: str,
    name: str,
    in_turn: bool = False,
    two_cpus: bool = False,
) -> Figures:
    """Close ``case`` (the case ``name`` of ``script``), then measure it in processes of its own.

    ``in_turn``: its calls timed one at a time, the ways in turn (``calls_in_turn``).
    ``two_cpus``: those processes, and the servers they start, not pinned (see ``print_side``).
    """
    if case.close is not None:
        case.close()
    return measure_in_processes(case, script, name, seconds, in_turn, two_cpus)


def add_side_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a script's child processes (``measure_in_processes``)."""
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument(
        "--side", choices=("plain", "automatic", "all", IN_TURN, COUNTED), help=argparse.SUPPRESS
    )
    parser.add_argument("--way", choices=WAYS, default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--two-cpus",
        action="store_true",
        help="leave the measuring processes and their servers free to run on any CPU, not on "
        "one: a server then answers from another CPU while the client's waits idle, as a "
        "remote one does (noisier)",
    )


def side_wanted(parser: argparse.ArgumentParser, options: argparse.Namespace) -> bool:
    """Whether this process is a child measuring a side (``--case`` and ``--side`` both given)."""
    if (options.case is None) != (options.side is None):
        parser.error("--case and --side go together (the options of a child process)")
    return options.side is not None


def print_side(
    cases: list[Callable[[], Case | str | None]],
    name: str,
    side: str,
    seconds: float,
    two_cpus: bool = False,
    way: str = "auto",
    calls: int = 0,
) -> None:
    """A child process's part: the best run of each way of its side, as JSON.

    It runs on one CPU, and so do the servers its case starts: a call to a
    server and its answer then take turns on that CPU, as steady from one
    process to the next as the calls within one (on two CPUs, how the
    scheduler placed the two moved a Redis GET by up to 50 µs). With
    ``two_cpus``, on any CPU: while a server answers, the client's CPU
    may sit idle, and lose what its caches held, as it does while a
    remote server answers.
    """
    found = [make for make in cases if make.__name__ == name]
    if not found:
        raise SystemExit(f"no case {name!r}: {', '.join(make.__name__ for make in cases)}")
    if hasattr(os, "sched_setaffinity") and not two_cpus and side != COUNTED:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # counts need no CPU of their own
    case = found[0]()
    if not isinstance(case, Case):
        raise SystemExit(f"{name}: {case}")
    try:
        if side == COUNTED:
            make_calls(case, way, calls)
        else:
            print(json.dumps(measure_side(case, side, seconds)))
    finally:
        if case.close is not None:
            case.close()


# -- counted by callgrind ------------------------------------------------------------

#: The side that makes a way's calls under callgrind, and the ways.
COUNTED = "counted"
WAYS = ("bare", "hand", "auto")


def make_calls(case: Case, way: str, calls: int) -> None:
    """A child process's part under callgrind: ``calls`` calls of ``way``, in monitored requests."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    reporter = Reporter(sink.getsockname())
    try:
        if way == "auto" and case.instrument is not None:
            case.instrument()
        call = {"bare": case.bare, "hand": case.hand_written, "auto": case.automatic}[way]
        in_requests(call, reporter, WARM_CALLS, WARM_CALLS)
        settings = CollectorSettings(reporter)
        for first in range(0, calls, CALLS_PER_REQUEST):
            collector = RequestCollector(settings, "/bench")
            token = activate(collector)
            try:
                for _ in range(min(CALLS_PER_REQUEST, calls - first)):
                    call()
            finally:
                deactivate(token)
                collector.finish()
    finally:
        reporter.close()
        sink.close()


def instructions(script: str, name: str, way: str, calls: int, seed: int, out_dir: str) -> int:
    """The instructions a child process making ``calls`` calls of ``way`` runs, by callgrind.

    ``seed`` is its ``PYTHONHASHSEED``: the same one gives about the same count in every run.
    """
    out = os.path.join(out_dir, f"{name}.{way}.{calls}.{seed}")
    command = [
        "valgrind", "-q", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
        script, "--case", name, "--side", COUNTED, "--way", way, "--calls", str(calls),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONHASHSEED=str(seed))
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600, env=env)
    except subprocess.TimeoutExpired:
        raise CaseFailed(f"its {way} process ran for more than an hour") from None
    if done.returncode != 0:
        raise CaseFailed(f"its {way} process failed: {done.stderr.strip().splitlines()[-1:]}")
    with open(out, encoding="utf-8", errors="replace") as counts:
        for line in counts:
            if line.startswith("totals:"):
                return int(line.split()[1])  # the first event: instructions
    raise CaseFailed(f"no totals in callgrind's output for its {way} process")


def count_case(script: str, name: str, calls: int, seeds: int) -> dict[str, list[float]]:
    """Each way's instructions per call with each hash seed: what 2 * ``calls`` more calls cost.

    Where a process's objects lie, which its hash seed changes, moves its
    count: the interpreter's method cache is indexed by addresses, and two
    lookups that fall in one entry miss it by turns. What a library draws
    at random (a span's ids) moves it a little from one run to the next.
    """
    runs = [(way, n, seed) for seed in range(seeds) for way in WAYS for n in (calls, 3 * calls)]
    with tempfile.TemporaryDirectory(prefix="pynba-count-") as out_dir:
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(instructions, script, name, *run, out_dir) for run in runs]
            try:
                counted = [future.result() for future in futures]
            except BaseException:
                for future in futures:  # the runs not started: the case failed already
                    future.cancel()
                raise
    total = dict(zip(runs, counted, strict=True))
    return {
        way: [
            (total[way, 3 * calls, seed] - total[way, calls, seed]) / (2 * calls)
            for seed in range(seeds)
        ]
        for way in WAYS
    }


def positive(text: str) -> int:
    """An option's value that must be a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def print_counts(only: str | None, calls: int, seeds: int) -> None:
    """The table of ``--count``: each case's instructions per call, each way, by callgrind."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--count needs valgrind (Debian: apt-get install valgrind)")
    print(f"encoder: {IMPLEMENTATION}; instructions per call by callgrind, {calls} and "
          f"{3 * calls} calls a way, each in a process of its own, with hash seeds 0 to "
          f"{seeds - 1}: medians, and auto-hand's lowest and highest")  # fmt: skip
    print(
        f"{'case':<68} {'bare':>9} {'hand-bare':>10} {'auto-bare':>10} {'auto-hand':>10} "
        f"{'lowest':>8} {'highest':>8}"
    )
    for make in CASES:
        if only and not make.__name__.startswith(only):
            continue
        case = make()
        if isinstance(case, str):
            print(f"{make.__name__:<68} skipped: {case}")
            continue
        if case.close is not None:
            case.close()
        try:
            per_call = count_case(__file__, make.__name__, calls, seeds)
        except CaseFailed as failed:
            print(f"{make.__name__:<68} failed: {failed}")
            continue
        bare, hand, auto = (statistics.median(per_call[way]) for way in WAYS)
        over_hand = [a - h for a, h in zip(per_call["auto"], per_call["hand"], strict=True)]
        print(
            f"{case.name:<68} {bare:9,.0f} {hand - bare:10,.0f} {auto - bare:10,.0f} "
            f"{statistics.median(over_hand):10,.0f} {min(over_hand):8,.0f} {max(over_hand):8,.0f}"
        )
    print(
        "instructions a call: for the same build, inputs and hash seed, about the same in "
        "every run (what a library draws at random moves them a little), whatever else the "
        "machine does"
    )


# -- a whole request -------------------------------------------------------------------


ENVIRON = {
    "REQUEST_METHOD": "GET",
    "SCRIPT_NAME": "",
    "PATH_INFO": "/users",
    "QUERY_STRING": "",
    "SERVER_NAME": "127.0.0.1",
    "SERVER_PORT": "8000",
    "HTTP_HOST": "127.0.0.1",
    "wsgi.url_scheme": "http",
}


def start_response(status: str, headers: list, exc_info: object = None) -> None:
    return None


def request_with_queries(address: tuple[str, int], seconds: float) -> dict[str, float]:
    """µs per monitored request making ``QUERIES`` sqlite3 queries: untimed, by hand, automatic.

    Each request is the whole of it, as a WSGI server makes it through
    ``PynbaMiddleware``: its start, the queries, its end (packet encoded
    and sent).
    """
    import sqlite3

    from pynba.instrumentation.dbapi import wrap_connection

    def database() -> sqlite3.Connection:
        connection = sqlite3.connect(":memory:")
        connection.execute("CREATE TABLE users (id integer PRIMARY KEY, name text)")
        connection.executemany(
            "INSERT INTO users VALUES (?, ?)", [(n, f"user{n}") for n in range(QUERIES)]
        )
        return connection

    bare_db, timed_db = database(), wrap_connection(database())
    query = "SELECT name FROM users WHERE id = ?"

    def untimed_app(environ: dict, start_response: Callable) -> list[bytes]:
        cursor = bare_db.cursor()
        for user_id in range(QUERIES):
            cursor.execute(query, (user_id,)).fetchone()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    def hand_written_app(environ: dict, start_response: Callable) -> list[bytes]:
        cursor = bare_db.cursor()
        timer = pynba.timer
        for user_id in range(QUERIES):
            with timer(group="db", op="select", db="sqlite3"):
                cursor.execute(query, (user_id,))
            cursor.fetchone()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    def automatic_app(environ: dict, start_response: Callable) -> list[bytes]:
        cursor = timed_db.cursor()
        for user_id in range(QUERIES):
            cursor.execute(query, (user_id,)).fetchone()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    apps = {
        way: PynbaMiddleware(app, address)
        for way, app in (
            ("untimed", untimed_app),
            ("hand", hand_written_app),
            ("auto", automatic_app),
        )
    }

    def serve(app: PynbaMiddleware) -> Callable[[], None]:
        def one_request() -> None:
            body = app(dict(ENVIRON), start_response)
            for _ in body:
                pass
            body.close()

        return one_request

    calls = {way: serve(app) for way, app in apps.items()}
    for call in calls.values():
        call()
    runs: dict[str, list[float]] = {way: [] for way in calls}
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(runs["untimed"]) < 10:
        for way, call in calls.items():
            runs[way].append(outside(call, 20, 5))
    return {way: min(values) for way, values in runs.items()}


# -- the report -------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s a case (noisier)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="seconds of runs a case (default 10; 0: one round, to see the script run)",
    )
    parser.add_argument(
        "--in-turn",
        action="store_true",
        help="medians of single calls, the ways in turn (the cases measured in one process)",
    )
    parser.add_argument("--only", help="the cases whose name starts with this")
    parser.add_argument(
        "--count",
        type=positive,
        nargs="?",
        const=200,
        metavar="CALLS",
        help="instructions per call of each way, counted by callgrind (CALLS and 3 x CALLS "
        "calls a way, default 200), instead of times",
    )
    parser.add_argument(
        "--seeds", type=positive, help="--count: the hash seeds, 0 to SEEDS - 1 (default 3)"
    )
    add_side_arguments(parser)
    options = parser.parse_args()
    seconds = options.seconds if options.seconds is not None else 1.0 if options.quick else 10.0
    if side_wanted(parser, options):
        print_side(
            CASES, options.case, options.side, seconds, options.two_cpus, options.way, options.calls
        )
        return
    if options.seeds is not None and options.count is None:
        parser.error("--seeds goes with --count")
    if options.count is not None:
        print_counts(options.only, options.count, options.seeds or 3)
        return
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))

    cpus = ", on two CPUs (--two-cpus)" if options.two_cpus else ""
    if options.in_turn:
        print(f"encoder: {IMPLEMENTATION}; µs per call, medians of calls timed one at a time, "
              f"the ways in turn (calls_in_turn), {seconds:g} s a case{cpus}")  # fmt: skip
    else:
        print(f"encoder: {IMPLEMENTATION}; µs per call, the best of short runs interleaved for "
              f"{seconds:g} s a case{cpus}")  # fmt: skip
    header = (
        f"{'case':<68} {'bare':>7} {'hand':>7} {'auto':>7} {'auto-hand':>9} {'±':>5} "
        f"{'outside':>8} {'rounds':>6}  ok"
    )
    print(header)
    results: dict[str, dict[str, float]] = {}
    for make in CASES:
        if options.only and not make.__name__.startswith(options.only):
            continue
        case = make()
        if isinstance(case, str):
            print(f"{make.__name__:<68} skipped: {case}")
            continue
        if options.in_turn and case.instrument is not None:
            if case.close is not None:
                case.close()
            print(f"{make.__name__:<68} not timed in turn: measured in pairs of processes")
            continue
        try:
            figures = run_case(
                case, seconds, __file__, make.__name__, options.in_turn, options.two_cpus
            )
        except CaseFailed as failed:
            print(f"{make.__name__:<68} failed: {failed}")
            continue
        best = results[make.__name__] = figures.best
        over, error = figures.over()
        untimed = "-" if options.in_turn else f"{best['auto outside'] - best['bare outside']:.2f}"
        ok = "yes" if over <= BAR else "NO"
        print(
            f"{case.name:<68} {best['bare']:7.2f} {best['hand']:7.2f} {best['auto']:7.2f} "
            f"{over:9.2f} {error} {untimed:>8} {len(figures.over_hand):6d}  {ok}"
        )
    print(
        f"auto-hand: the automatic timer over the hand-written one, the mean of the rounds' "
        f"(bar: <= {BAR} µs), ± its standard error; a round is a process (a pair for an "
        "integration that patches its library: see measure_in_processes); outside: the "
        "integration's cost outside any request"
    )
    if options.in_turn:
        sink.close()
        return  # the lines below are of calls made back to back

    redis = results.get("redis_get")
    if redis is None:
        print("\nnext to a Redis GET: skipped: the redis case did not run")
    else:
        timer = redis["auto"] - redis["bare"]
        share = timer / redis["bare"] * 100
        ok = "yes" if share < REDIS_BAR else "NO"
        print(
            f"\nnext to a local Redis GET ({redis['bare']:.2f} µs): the automatic timer costs "
            f"{timer:.2f} µs, {share:.2f}% of it (bar: < {REDIS_BAR:g}%)  ok: {ok}; over the "
            f"hand-written timer {redis['auto'] - redis['hand']:.2f} µs, "
            f"{(redis['auto'] - redis['hand']) / redis['bare'] * 100:.2f}%"
        )

    request = request_with_queries(sink.getsockname(), seconds)
    over = request["auto"] - request["hand"]
    ok = "yes" if over <= BAR * QUERIES else "NO"
    print(
        f"\na monitored request making {QUERIES} sqlite3 queries, µs per request: "
        f"no timer {request['untimed']:.2f}, hand-written timers {request['hand']:.2f}, "
        f"automatic timers {request['auto']:.2f}; automatic - hand-written {over:.2f} "
        f"({over / QUERIES:.2f} a query, bar: <= {BAR} µs)  ok: {ok}"
    )
    sink.close()


if __name__ == "__main__":
    main()

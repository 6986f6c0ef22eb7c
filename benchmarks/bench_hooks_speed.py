"""Cost of the HTTP client hooks (requests, httpx, urllib3) and the OpenTelemetry bridge, per call.

The calls make no network traffic, so that the hook's own cost is not lost
in a server's: requests goes through an adapter, urllib3 through a pool
whose ``_make_request`` gives a canned response; everything else of each
library runs. Each case is measured as ``bench_instrumentation.py``
measures its cases (best of short runs inside monitored requests), bare, in
a hand-written ``pynba.timer``, automatic. The method an HTTP client's
integration hooks is replaced once by a switch between the original and
the hook (``switched_case``; the hand-written timer is around the call),
so that the three ways run in one process, through the same objects:

- requests: ``Session.send(prepared)``, through a canned adapter;
- httpx: ``Client.get(url)`` answered by a ``MockTransport``;
- urllib3: ``PoolManager.urlopen("GET", url)``, and a pool's
  ``urlopen("GET", path)`` alone (as requests calls it);
- OpenTelemetry: a span started and ended (an HTTP client span, a database
  span): bare and hand-written through a ``TracerProvider`` without the
  processor, automatic through one with a ``PinbaSpanProcessor``.

Each case also makes its bare call through a second object built as the
first (A/A): the two do the same work, and the gap between their figures is
how far apart identical calls lie, as their objects sit in different places
in memory. A gap under it says nothing.

With ``--in-turn``, the calls are timed one at a time instead, the three
ways taking turns call by call, and each way's figure is its median
(``calls_in_turn``): the code of each way is less in the caches, as in an
application between two calls of a library.

Run: python benchmarks/bench_hooks_speed.py [--quick] [--seconds S] [--only NAME] [--in-turn]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from bench_instrumentation import (
    BAR,
    TURNS_PER_REQUEST,
    Case,
    CaseFailed,
    add_side_arguments,
    answering_session,
    missing,
    print_side,
    run_case,
    side_wanted,
    switched_case,
)

from pynba import pynba
from pynba.wire.encoder import IMPLEMENTATION

URL = "http://127.0.0.1:8080/users/42?page=1"
HOST = "127.0.0.1:8080"
HTTP_TAGS = {"group": "http", "op": "get", "host": HOST, "status": "2xx"}


def requests_send() -> Case | None:
    if missing("requests"):
        return None
    import requests

    from pynba.instrumentation import requests as hooks

    one, twin = answering_session(), answering_session()
    prepared = one.prepare_request(requests.Request("GET", URL))
    return switched_case(
        "requests: Session.send(prepared GET), canned adapter",
        lambda: one.send(prepared),
        HTTP_TAGS,
        hooks,
        requests.Session,
        "send",
        bare_twin=lambda: twin.send(prepared),
    )


def httpx_client_get() -> Case | None:
    if missing("httpx"):
        return None
    import httpx

    from pynba.instrumentation import httpx as hooks

    # A response of its own for each call: httpx wraps a response's stream
    # again on each send, and one shared would grow with every call.
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=b"ok"))
    one, twin = httpx.Client(transport=transport), httpx.Client(transport=transport)

    def close() -> None:
        one.close()
        twin.close()

    return switched_case(
        "httpx: Client.get(url), MockTransport",
        lambda: one.get(URL),
        HTTP_TAGS,
        hooks,
        httpx.Client,
        "send",
        close,
        bare_twin=lambda: twin.get(URL),
    )


def urllib3_cases(manager: bool) -> Case | None:
    """urllib3 through a pool manager, or a pool alone."""
    if missing("urllib3"):
        return None
    import urllib3

    from pynba.instrumentation import urllib3 as hooks

    class CannedPool(urllib3.HTTPConnectionPool):
        """A pool whose requests get a 200 response with an empty body; no network."""

        def _make_request(self, conn: Any, method: str, url: str, **kwargs: Any) -> Any:
            return urllib3.HTTPResponse(
                body=b"", status=200, request_method=method, request_url=url, pool=self
            )

    one, twin = urllib3.PoolManager(), urllib3.PoolManager()
    one.pool_classes_by_scheme = twin.pool_classes_by_scheme = {"http": CannedPool}
    if manager:
        label = "urllib3: PoolManager.urlopen('GET', url), canned response"
        call: Callable[[], object] = lambda: one.urlopen("GET", URL)  # noqa: E731
        twin_call: Callable[[], object] = lambda: twin.urlopen("GET", URL)  # noqa: E731
    else:
        # What requests' adapter calls.
        label = "urllib3: HTTPConnectionPool.urlopen('GET', path), canned response"
        path = URL[URL.index("/", len("http://")) :]
        pool, twin_pool = one.connection_from_url(URL), twin.connection_from_url(URL)
        call = lambda: pool.urlopen("GET", path)  # noqa: E731
        twin_call = lambda: twin_pool.urlopen("GET", path)  # noqa: E731

    def close() -> None:
        one.clear()
        twin.clear()

    return switched_case(
        label,
        call,
        HTTP_TAGS,
        hooks,
        urllib3.HTTPConnectionPool,
        "urlopen",
        close,
        bare_twin=twin_call,
    )


def urllib3_urlopen() -> Case | None:
    return urllib3_cases(manager=True)


def urllib3_pool_urlopen() -> Case | None:
    return urllib3_cases(manager=False)


def otel_span(
    case: str,
    label: str,
    name: str,
    kind_name: str,
    attributes: dict[str, Any],
    tags: dict[str, str],
) -> Callable[[], Case | None]:
    def make() -> Case | None:
        if missing("opentelemetry.sdk"):
            return None
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.trace import SpanKind

        from pynba.instrumentation.opentelemetry import PinbaSpanProcessor

        kind = SpanKind[kind_name]
        bare_tracer = TracerProvider().get_tracer("bench")
        twin_tracer = TracerProvider().get_tracer("bench")
        provider = TracerProvider()
        provider.add_span_processor(PinbaSpanProcessor())
        timed_tracer = provider.get_tracer("bench")

        def bare() -> None:
            bare_tracer.start_span(name, kind=kind, attributes=attributes).end()

        def hand_written() -> None:
            with pynba.timer(**tags):
                bare_tracer.start_span(name, kind=kind, attributes=attributes).end()

        def automatic() -> None:
            timed_tracer.start_span(name, kind=kind, attributes=attributes).end()

        def bare_twin() -> None:
            twin_tracer.start_span(name, kind=kind, attributes=attributes).end()

        return Case(label, bare, hand_written, automatic, provider.shutdown, bare_twin=bare_twin)

    make.__name__ = case
    return make


otel_http = otel_span(
    "otel_http",
    "opentelemetry: an HTTP client span started and ended",
    "GET",
    "CLIENT",
    {
        "http.request.method": "GET",
        "server.address": "127.0.0.1",
        "server.port": 8080,
        "url.full": URL,
        "http.response.status_code": 200,
    },
    {"group": "http", "op": "get", "host": "127.0.0.1", "status": "2xx"},
)
otel_db = otel_span(
    "otel_db",
    "opentelemetry: a database client span started and ended",
    "SELECT app",
    "CLIENT",
    {
        "db.system.name": "postgresql",
        "db.namespace": "app",
        "db.operation.name": "SELECT",
        "db.query.text": "SELECT * FROM users WHERE id = $1",
        "server.address": "127.0.0.1",
        "server.port": 5432,
    },
    {"group": "db", "op": "select", "db": "app"},
)

CASES: list[Callable[[], Case | None]] = [
    requests_send,
    httpx_client_get,
    urllib3_urlopen,
    urllib3_pool_urlopen,
    otel_http,
    otel_db,
]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (noisier)")
    parser.add_argument("--seconds", type=float, help="seconds a case (default 10, quick 1)")
    parser.add_argument("--only", help="the cases whose name starts with this")
    parser.add_argument(
        "--in-turn", action="store_true", help="medians of single calls, the ways in turn"
    )
    add_side_arguments(parser)
    options = parser.parse_args()
    seconds = options.seconds
    if seconds is None:
        seconds = 1.0 if options.quick else 10.0
    if side_wanted(parser, options):
        print_side(CASES, options.case, options.side, seconds, options.two_cpus)
        return
    if options.in_turn:
        print(
            f"encoder: {IMPLEMENTATION}; µs per call, medians of calls timed one at a time, "
            f"the ways in turn, in requests of {TURNS_PER_REQUEST} turns, {seconds:g} s a case"
        )
    else:
        print(
            f"encoder: {IMPLEMENTATION}; µs per call, best of short runs for {seconds:g} s a case"
        )
    print(
        f"{'case':<58} {'bare':>7} {'hand':>7} {'auto':>7} {'auto-hand':>9} {'±':>5}"
        f" {'outside':>8} {'A/A':>6}  ok"
    )
    for make in CASES:
        if options.only and not make.__name__.startswith(options.only):
            continue
        case = make()
        if case is None:
            print(f"{make.__name__:<58} (not installed)")
            continue
        try:
            figures = run_case(
                case, seconds, __file__, make.__name__, options.in_turn, options.two_cpus
            )
        except CaseFailed as failed:
            print(f"{make.__name__:<58} failed: {failed}")
            continue
        best = figures.best
        bare, hand, auto = best["bare"], best["hand"], best["auto"]
        over, error = figures.over()
        ok = "yes" if over <= BAR else "NO"
        if options.in_turn:  # neither measured
            outside = twin = "-"
        else:
            outside = f"{best['auto outside'] - best['bare outside']:.2f}"
            twin = f"{best['bare twin'] - bare:.2f}"
        print(
            f"{case.name:<58} {bare:7.2f} {hand:7.2f} {auto:7.2f} {over:9.2f} {error} "
            f"{outside:>8} {twin:>6}  {ok}"
        )
    if not options.in_turn:  # else not measured
        print(
            "A/A: the bare call through a second object built as the first, less the bare call:"
            " how far apart the figures of identical calls lie"
        )


if __name__ == "__main__":
    main()

"""The OpenTelemetry bridge: spans of a real SDK TracerProvider, reported as Pinba timers."""

import asyncio
import gc
import time
from collections.abc import Mapping

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.trace import SpanKind  # noqa: E402

from packets import make_collector, receive  # noqa: E402
from pynba import PynbaMiddleware, ScriptMonitor  # noqa: E402
from pynba.context import activate, current_collector, deactivate  # noqa: E402
from pynba.instrumentation.opentelemetry import (  # noqa: E402
    VALUE_LENGTH,
    VALUE_LIMIT,
    PinbaSpanProcessor,
)
from pynba.rusage import thread_cpu  # noqa: E402
from scripts import run_script  # noqa: E402


@pytest.fixture
def processor():
    return PinbaSpanProcessor()


@pytest.fixture
def tracer(processor):
    """A tracer of a provider of the test's own (not the global one), with the processor."""
    provider = TracerProvider()
    provider.add_span_processor(processor)
    yield provider.get_tracer("tests")
    provider.shutdown()


@pytest.fixture
def monitor(udp_listener):
    monitor = ScriptMonitor(udp_listener.address, autostart=False)
    yield monitor
    monitor.close()


def call(app):
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "SERVER_NAME": "localhost",
        "wsgi.url_scheme": "http",
    }
    body = app(environ, lambda status, headers, exc_info=None: None)
    b"".join(body)
    if hasattr(body, "close"):
        body.close()


def span(tracer, name, kind=SpanKind.INTERNAL, seconds=0.0, **attributes):
    """Start and end a span named ``name`` (dots in attribute names written as ``__``)."""
    attributes = {key.replace("__", "."): value for key, value in attributes.items()}
    with tracer.start_as_current_span(name, kind=kind, attributes=attributes):
        if seconds:
            time.sleep(seconds)


def test_spans_ended_inside_a_request_become_its_timers(udp_listener, tracer):
    def app(environ, start_response):
        span(
            tracer,
            "SELECT shop.users",
            SpanKind.CLIENT,
            0.02,
            db__system__name="postgresql",
            db__operation__name="SELECT",
            db__namespace="shop",
        )
        span(
            tracer,
            "GET",
            SpanKind.CLIENT,
            0.01,
            http__request__method="GET",
            server__address="api.test",
            http__response__status_code=404,
        )
        span(
            tracer,
            "orders process",
            SpanKind.CONSUMER,
            0.01,
            messaging__system="rabbitmq",
            messaging__operation__type="process",
        )
        span(
            tracer,
            "shop.Cart/Add",
            SpanKind.CLIENT,
            rpc__system__name="grpc",
            rpc__method="shop.Cart/Add",
        )
        span(
            tracer,
            "GET",
            SpanKind.CLIENT,
            db__system__name="redis",
            server__address="127.0.0.1",
            server__port=6379,
        )
        span(tracer, "render invoice", seconds=0.01)
        span(tracer, "render invoice")
        start_response("200 OK", [])
        return [b"ok"]

    call(PynbaMiddleware(app, udp_listener.address))
    packet = receive(udp_listener)
    assert packet.timer(group="db", op="select", db="shop").value >= 0.02
    http = packet.timer(group="http", op="get", host="api.test", status="4xx")
    assert http.value >= 0.01
    assert packet.timer(group="queue", op="process", system="rabbitmq").value >= 0.01
    assert packet.timer(group="rpc", op="shop.Cart/Add", system="grpc").hit_count == 1
    assert packet.timer(group="cache", op="get", server="127.0.0.1:6379").hit_count == 1
    render = packet.timer(group="otel", op="render invoice")
    assert (render.hit_count, render.value >= 0.01) == (2, True)
    assert len(packet.timers) == 6


def test_the_older_attribute_names_are_read_too(monitor, udp_listener, tracer):
    with monitor.job():
        span(tracer, "INSERT", db__system="mysql", db__operation="INSERT", db__name="shop")
        span(tracer, "SELECT users", db__system="sqlite")  # no operation: the name's first word
        span(
            tracer,
            "HTTP DELETE",
            SpanKind.CLIENT,
            http__method="DELETE",
            net__peer__name="api.test",
            http__status_code=204,
        )
        span(
            tracer,
            "jobs send",
            SpanKind.PRODUCER,
            messaging__system="kafka",
            messaging__operation="publish",
        )
        span(
            tracer,
            "S3.GetObject",
            SpanKind.CLIENT,
            rpc__system="aws-api",
            rpc__service="S3",
            rpc__method="GetObject",
        )
        span(tracer, "get", db__system="memcached", net__peer__name="cache", net__peer__port=11211)
    packet = receive(udp_listener)
    assert packet.timer_tags() == sorted(
        [
            (("db", "shop"), ("group", "db"), ("op", "insert")),
            (("db", "sqlite"), ("group", "db"), ("op", "select")),
            (("group", "http"), ("host", "api.test"), ("op", "delete"), ("status", "2xx")),
            (("group", "queue"), ("op", "publish"), ("system", "kafka")),
            (("group", "rpc"), ("op", "S3/GetObject"), ("system", "aws-api")),
            (("group", "cache"), ("op", "get"), ("server", "cache:11211")),
        ]
    )


def test_server_spans_are_the_request_itself_and_not_timed(monitor, udp_listener, tracer):
    with monitor.job():
        span(tracer, "GET /users/{id}", SpanKind.SERVER, http__request__method="GET")
        span(tracer, "orders process", SpanKind.SERVER, messaging__system="kafka")
        # HTTP attributes on a span that is no client call: a span like any other.
        span(tracer, "handler", SpanKind.INTERNAL, http__request__method="GET")
        span(tracer, "QUERY", SpanKind.CLIENT, http__request__method="_OTHER")
    packet = receive(udp_listener)
    assert packet.timer_tags() == [
        (("group", "http"), ("op", "other")),
        (("group", "otel"), ("op", "handler")),
    ]


def test_spans_outside_a_request_are_not_timed(monitor, udp_listener, tracer):
    span(tracer, "before")
    with monitor.job():
        outliving = tracer.start_span("outlives its request")
        span(tracer, "inside")
    outliving.end()
    span(tracer, "after")
    packet = receive(udp_listener)
    assert packet.timer_tags() == [(("group", "otel"), ("op", "inside"))]
    assert udp_listener.pending(timeout=0.1) == []


def test_a_span_ending_after_its_request_ended_is_dropped_quietly(udp_listener, tracer):
    collector = make_collector(udp_listener)
    token = activate(collector)
    try:
        late = tracer.start_span("late")
        collector.finish()
        late.end()  # the finished request is still current here: no timer, no error (strict)
    finally:
        deactivate(token)
    assert receive(udp_listener).timer_tags() == []


def test_a_span_is_timed_by_the_request_where_it_ends(monitor, udp_listener, tracer):
    with monitor.job("first"):
        handed_over = tracer.start_span("handed over")
        with monitor.job("second"):
            span(tracer, "second's own")
            handed_over.end()
        span(tracer, "first's own")
    second, first = receive(udp_listener), receive(udp_listener)
    assert (first.script_name, second.script_name) == ("first", "second")
    assert first.timer_tags() == [(("group", "otel"), ("op", "first's own"))]
    assert second.timer_tags() == [
        (("group", "otel"), ("op", "handed over")),
        (("group", "otel"), ("op", "second's own")),
    ]


def test_concurrent_async_requests_each_get_the_spans_they_end(monitor, udp_listener, tracer):
    async def request(name, handed, other_started, started):
        with monitor.job(name):
            started.set()
            await other_started.wait()  # both requests are running from here on
            with tracer.start_as_current_span(f"{name}'s own"):
                await asyncio.sleep(0.01)
            if name == "first":
                await handed.put(tracer.start_span("started by first"))
            else:
                (await handed.get()).end()

    async def main():
        handed = asyncio.Queue()
        first_started, second_started = asyncio.Event(), asyncio.Event()
        await asyncio.gather(
            request("first", handed, second_started, first_started),
            request("second", handed, first_started, second_started),
        )

    asyncio.run(main())
    packets = {
        packet.script_name: packet for packet in (receive(udp_listener), receive(udp_listener))
    }
    assert packets["first"].timer_tags() == [(("group", "otel"), ("op", "first's own"))]
    assert packets["second"].timer_tags() == [
        (("group", "otel"), ("op", "second's own")),
        (("group", "otel"), ("op", "started by first")),
    ]
    assert packets["first"].timer(group="otel", op="first's own").value >= 0.01


class Attributes(Mapping):
    """Span attributes in a mapping of no known kind (without ``copy()``)."""

    def __init__(self, items):
        self._items = items

    def __getitem__(self, key):
        return self._items[key]

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)


def test_attributes_of_unexpected_types_are_left_out_and_never_raise(
    monitor, udp_listener, tracer, processor
):
    with monitor.job():
        span(tracer, "SELECT 1", db__system=5, db__operation=["SELECT"])
        span(tracer, "SELECT 2", db__system="postgresql", db__operation=7, db__name=True)
        span(
            tracer,
            "GET",
            SpanKind.CLIENT,
            http__request__method="GET",
            server__address=80,
            http__response__status_code="abc",
        )
        span(
            tracer,
            "POST",
            SpanKind.CLIENT,
            http__request__method="POST",
            http__response__status_code=99999,
        )
        span(
            tracer,
            "PUT",
            SpanKind.CLIENT,
            http__request__method="PUT",
            http__response__status_code="²00",
        )
        span(
            tracer, "PATCH", SpanKind.CLIENT, http__request__method="PATCH", http__status_code="503"
        )
        span(tracer, "GET", db__system="redis", server__address="cache", server__port="6379")
        span(tracer, "")
        # Spans made by hand, as no SDK tracer makes them: still no error.
        processor.on_end(
            ReadableSpan(None, attributes={"db.system": object()}, start_time=0, end_time=10**9)
        )
        processor.on_end(ReadableSpan("no times"))
        plain = {"db.system": "sqlite", "db.name": "main", "db.operation": "DELETE"}
        processor.on_end(
            ReadableSpan("mapping", attributes=Attributes(plain), start_time=0, end_time=0)
        )
        processor.on_end(ReadableSpan("backwards", start_time=10**9, end_time=0))
    packet = receive(udp_listener)
    assert packet.timer_tags() == sorted(
        [
            (("group", "otel"), ("op", "SELECT 1")),
            (("db", "postgresql"), ("group", "db"), ("op", "select")),
            (("group", "http"), ("op", "get")),
            (("group", "http"), ("op", "post")),
            (("group", "http"), ("op", "put")),
            (("group", "http"), ("op", "patch"), ("status", "5xx")),
            (("group", "cache"), ("op", "get"), ("server", "cache")),
            (("group", "otel"), ("op", "other")),
            (("group", "otel"), ("op", "backwards")),
            (("db", "main"), ("group", "db"), ("op", "delete")),
        ]
    )
    other = packet.timer(group="otel", op="other")
    assert (other.hit_count, other.value >= 1.0) == (2, True)  # unnamed, and named None
    assert packet.timer(group="otel", op="backwards").value == 0.0


def test_tag_values_are_capped_in_length_and_number(monitor, udp_listener, tracer):
    with monitor.job():
        span(tracer, "x" * 500)
    assert receive(udp_listener).timer_tags() == [(("group", "otel"), ("op", "x" * VALUE_LENGTH))]
    with monitor.job():
        for number in range(1, VALUE_LIMIT + 5):
            span(tracer, f"step {number}")
        span(tracer, "x" * 500)  # seen already: still its own
    packet = receive(udp_listener)
    ops = {dict(timer.tags)["op"]: timer.hit_count for timer in packet.timers}
    assert len(ops) == VALUE_LIMIT + 1
    assert (ops["x" * VALUE_LENGTH], ops["step 1"], ops["other"]) == (1, 1, 5)


def test_the_spans_of_each_job_are_timed_in_that_job(monitor, udp_listener, tracer):
    # Each job's spans are counted in its own packet, never in the one before.
    for count in (2, 3):
        with monitor.job():
            for _ in range(count):
                span(tracer, "GET", SpanKind.CLIENT, http__request__method="GET")
                span(tracer, "SELECT", SpanKind.CLIENT, db__system__name="sqlite")
        packet = receive(udp_listener)
        assert packet.timer(group="http", op="get").hit_count == count
        assert packet.timer(group="db", op="select", db="sqlite").hit_count == count


def test_a_request_dropped_unfinished_after_a_span_is_freed(processor, udp_listener, tracer):
    running = thread_cpu().running
    collector = make_collector(udp_listener)
    token = activate(collector)
    span(tracer, "GET", SpanKind.CLIENT, http__request__method="GET")
    deactivate(token)
    del collector
    gc.collect()
    assert thread_cpu().running == running


def test_the_span_duration_is_the_timer_value(monitor, udp_listener, tracer):
    with monitor.job():
        timed = tracer.start_span("timed", start_time=5 * 10**9)
        timed.end(end_time=5 * 10**9 + 250_000_000)
    assert receive(udp_listener).timer(group="otel", op="timed").value == 0.25


def test_cache_systems_are_known_whatever_their_case(monitor, udp_listener, tracer):
    with monitor.job():
        for system in ("Redis", "VALKEY", "redis", "MemCached", "Postgresql", "x" * 100_000):
            span(tracer, "GET", db__system__name=system, server__address="cache")
    packet = receive(udp_listener)
    assert packet.timer(group="cache", op="get", server="cache").hit_count == 4
    assert packet.timer(group="db", op="get", db="Postgresql").hit_count == 1
    assert packet.timer(group="db", op="get", db="x" * VALUE_LENGTH).hit_count == 1


class SpanOfAnotherMake:
    """A span with ReadableSpan's public properties and none of its own fields."""

    def __init__(self, name, kind, start_time, end_time, attributes):
        self.values = {"name": name, "kind": kind, "start_time": start_time,
                       "end_time": end_time, "attributes": attributes}  # fmt: skip

    name = property(lambda self: self.values["name"])
    kind = property(lambda self: self.values["kind"])
    start_time = property(lambda self: self.values["start_time"])
    end_time = property(lambda self: self.values["end_time"])
    attributes = property(lambda self: self.values["attributes"])


def test_a_span_of_another_make_is_read_through_its_properties(monitor, udp_listener, processor):
    # The SDK's own spans are read where ReadableSpan keeps its fields; any
    # other through the public properties.
    query = {"db.system.name": "mysql", "db.operation.name": "UPDATE", "db.namespace": "shop"}
    with monitor.job():
        processor.on_end(SpanOfAnotherMake("q", SpanKind.CLIENT, 10**9, 10**9 + 5 * 10**8, query))
        processor.on_end(SpanOfAnotherMake("s", SpanKind.SERVER, 0, 10**9, {}))
        processor.on_end(SpanOfAnotherMake("no end", SpanKind.INTERNAL, 0, None, {}))
    packet = receive(udp_listener)
    assert packet.timer_tags() == [(("db", "shop"), ("group", "db"), ("op", "update"))]
    assert packet.timer(group="db", op="update", db="shop").value == 0.5


class ServerReadableSpan(ReadableSpan):
    """A subclass of the SDK's span that overrides what it says of itself."""

    @property
    def kind(self):
        return SpanKind.SERVER


class ShiftedReadableSpan(ReadableSpan):
    @property
    def start_time(self):
        return self._start_time - 10**9


def test_a_subclass_of_the_sdk_s_span_is_read_through_its_properties(
    monitor, udp_listener, processor
):
    with monitor.job():
        as_client = {"kind": SpanKind.CLIENT, "start_time": 10**9, "end_time": 2 * 10**9}
        processor.on_end(ServerReadableSpan("server", **as_client))
        processor.on_end(ShiftedReadableSpan("shifted", **as_client))
    packet = receive(udp_listener)
    assert packet.timer_tags() == [(("group", "otel"), ("op", "shifted"))]
    assert packet.timer(group="otel", op="shifted").value == 2.0


def test_the_sdk_s_other_calls_of_a_processor_record_nothing(monitor, udp_listener, processor):
    with monitor.job():
        started = TracerProvider().get_tracer("tests").start_span("never ended")
        processor.on_start(started)
        processor.on_start(started, parent_context=None)
        processor._on_ending(started)
    assert receive(udp_listener).timer_tags() == []


def test_a_disabled_processor_or_request_times_nothing(monitor, udp_listener, tracer, processor):
    processor.enabled = False
    with monitor.job():
        span(tracer, "processor off")
    assert receive(udp_listener).timer_tags() == []
    processor.enabled = True

    def app(environ, start_response):
        assert not current_collector().enabled
        span(tracer, "request off")
        start_response("204 No Content", [])
        return []

    call(PynbaMiddleware(app, udp_listener.address, enabled=False))
    with monitor.job() as job:
        job.enabled = False  # skipped: sends nothing
        span(tracer, "job skipped")
    assert udp_listener.pending(timeout=0.1) == []


# -- instrument(): the global provider, in an interpreter of its own -----------


def test_instrument_adds_one_processor_to_the_global_provider(udp_listener):
    packets, done = run_script(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        import pynba
        from pynba import ScriptMonitor
        from pynba.instrumentation import uninstrument

        trace.set_tracer_provider(TracerProvider())
        tracer = trace.get_tracer("tests")
        monitor = ScriptMonitor(ADDRESS, autostart=False)
        print(pynba.instrument("opentelemetry"), pynba.instrument("otel"))
        with monitor.job("twice"):
            tracer.start_span("one span").end()
        uninstrument("opentelemetry")
        with monitor.job("off"):
            tracer.start_span("not timed").end()
        uninstrument("opentelemetry")
        pynba.instrument("opentelemetry")
        with monitor.job("on again"):
            tracer.start_span("timed again").end()
        monitor.close()
        """,
        udp_listener,
    )
    assert done.stdout == "('opentelemetry',) ('opentelemetry',)\n"
    assert [(packet.script_name, packet.timer_tags()) for packet in packets] == [
        ("twice", [(("group", "otel"), ("op", "one span"))]),
        ("off", []),
        ("on again", [(("group", "otel"), ("op", "timed again"))]),
    ]
    assert [timer.hit_count for packet in packets for timer in packet.timers] == [1, 1]


def test_instrument_without_an_sdk_provider_warns_once_and_takes_nothing_over(udp_listener):
    packets, done = run_script(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        import pynba
        from pynba import ScriptMonitor

        pynba.instrument("opentelemetry")
        pynba.instrument("opentelemetry")
        print(type(trace.get_tracer_provider()).__name__)
        trace.set_tracer_provider(TracerProvider())  # the application sets its tracing up later
        pynba.instrument("opentelemetry")
        with ScriptMonitor(ADDRESS, autostart=False).job("job"):
            trace.get_tracer("tests").start_span("timed").end()
        """,
        udp_listener,
        stderr=True,
    )
    assert done.stdout == "ProxyTracerProvider\n"
    assert done.stderr.count("no OpenTelemetry SDK TracerProvider is set") == 1
    assert "PinbaSpanProcessor()" in done.stderr
    assert [packet.timer_tags() for packet in packets] == [[(("group", "otel"), ("op", "timed"))]]

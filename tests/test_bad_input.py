"""Bad input at every public entry point: a clear error where it is written, or a clean packet.

Wrong types and impossible values are refused with a TypeError or
ValueError naming the argument, at the call that passed them. Values the
documentation says are sanitized (invalid UTF-8, NUL bytes, lone
surrogates, huge strings, negative and non-finite numbers given to the
encoder) give a packet that pinba2 accepts.
"""

import math

import pytest

from packets import Packet, make_collector
from pynba import PynbaMiddleware, ScriptMonitor, monitor, pynba
from pynba.collector import CollectorSettings, RequestCollector
from pynba.reporter import Reporter

NASTY_TEXT = [
    "",
    "nul\0inside",
    "lone \udcff surrogate",
    "astral \U0001f600",
    b"invalid utf-8 \xff\xfe",
    b"nul\0bytes",
    "x" * 5000,
]
NASTY_NUMBERS = [-1, -(2**70), 2**70, -0.5, math.nan, math.inf, -math.inf, 1e300, 5e-324]


class Unprintable:
    """A tag value whose str() fails: refused where it is written."""

    def __str__(self):
        raise RuntimeError("no text")


def looped():
    """A list that contains itself."""
    value = []
    value.append(value)
    return value


def app(environ, start_response):
    start_response("200 OK", [])
    return [b"ok"]


# -- the constructors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, error, named",
    [
        (lambda: Reporter(42), TypeError, "address"),
        (lambda: Reporter(None), TypeError, "address"),
        (lambda: Reporter(""), ValueError, "address"),
        (lambda: Reporter("host:0"), ValueError, "port"),
        (lambda: Reporter("host:99999"), ValueError, "port"),
        (lambda: Reporter("bad!host:1"), ValueError, "host name"),
        (lambda: Reporter("ho\0st:1"), ValueError, "address"),
        (lambda: Reporter(("127.0.0.1", "30002")), ValueError, "port is written"),
        (lambda: Reporter("127.0.0.1:1", resolve_interval=-1), ValueError, "resolve_interval"),
        (lambda: Reporter("127.0.0.1:1", resolve_interval="1"), TypeError, "resolve_interval"),
        (lambda: Reporter("127.0.0.1:1", log_interval=math.nan), ValueError, "log_interval"),
        (lambda: PynbaMiddleware(None, "127.0.0.1:1"), TypeError, "app"),
        (lambda: PynbaMiddleware(app, "127.0.0.1:1", prefix=1), TypeError, "prefix"),
        (lambda: PynbaMiddleware(app, "127.0.0.1:1", server_name=1), TypeError, "server_name"),
        (lambda: PynbaMiddleware(app, "127.0.0.1:1", script_name="x"), TypeError, "script_name"),
        (lambda: PynbaMiddleware(app, "127.0.0.1:1", hostname=1), TypeError, "hostname"),
        (lambda: PynbaMiddleware(app, "127.0.0.1:1", tags=[("a", 1)]), TypeError, "tags"),
        (lambda: PynbaMiddleware(app, "127.0.0.1:1", tags={"": 1}), ValueError, "tag names"),
        (lambda: PynbaMiddleware(app, "127.0.0.1:1", tags={1: 1}), TypeError, "tag names"),
        (lambda: PynbaMiddleware(app, "127.0.0.1:1", tags={"a": Unprintable()}), TypeError, "'a'"),
        (lambda: PynbaMiddleware(app, "127.0.0.1:1", tags={"a": looped()}), ValueError, "'a'"),
        (lambda: monitor(app), TypeError, "address"),
        (lambda: ScriptMonitor("127.0.0.1:1", scriptname=1), TypeError, "scriptname"),
        (lambda: ScriptMonitor("127.0.0.1:1", servername=b"x"), TypeError, "servername"),
        (lambda: ScriptMonitor("127.0.0.1:1", tags={"a": {1.5: "x"}}), TypeError, "'a'"),
    ],
)
def test_constructors_refuse_bad_arguments_naming_them(call, error, named):
    with pytest.raises(error, match=named):
        call()


# -- inside a request -----------------------------------------------------------------------


@pytest.fixture
def collector(udp_listener):
    return make_collector(udp_listener, script_name="/bad-input")


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("status", "200", TypeError),
        ("status", -1, ValueError),
        ("status", 2**32, ValueError),
        ("status", True, TypeError),
        ("document_size", 1.5, TypeError),
        ("document_size", -1, ValueError),
        ("memory_peak", -5, ValueError),
        ("memory_footprint", "1", TypeError),
        ("request_time", -0.1, ValueError),
        ("request_time", math.nan, ValueError),
        ("request_time", math.inf, ValueError),
        ("request_time", "1", TypeError),
        ("ru_utime", -math.inf, ValueError),
        ("ru_stime", None.__class__, TypeError),
        ("script_name", 1, TypeError),
        ("server_name", 1.0, TypeError),
        ("hostname", ["h"], TypeError),
        ("schema", object(), TypeError),
        ("tags", [("a", "b")], TypeError),
    ],
)
def test_fields_refuse_bad_values_naming_them(collector, field, value, error):
    with pytest.raises(error, match=field if field != "tags" else "tags"):
        setattr(collector, field, value)


@pytest.mark.parametrize(
    "call, error, named",
    [
        (lambda c: c.timer(), ValueError, "at least one tag"),
        (lambda c: c.timer(group=Unprintable()), TypeError, "'group'"),
        (lambda c: c.timer(group=looped()), ValueError, "'group'"),
        (lambda c: c.timer(group=[{"a": 1}]), TypeError, "'group'"),
        (lambda c: c.timer(group={None: 1}), TypeError, "'group'"),
        (lambda c: c.timer(**{"": "x"}), ValueError, "tag names"),
        (lambda c: c.set_tag(1, "x"), TypeError, "tag names"),
        (lambda c: c.set_tag("", "x"), ValueError, "tag names"),
        (lambda c: c.set_tag("a", Unprintable()), TypeError, "'a'"),
        (lambda c: c.set_tag("a", looped()), ValueError, "'a'"),
        (lambda c: c.timer(group="g").add(-1.0), ValueError, "value"),
        (lambda c: c.timer(group="g").add(math.nan), ValueError, "value"),
        (lambda c: c.timer(group="g").add(math.inf), ValueError, "value"),
        (lambda c: c.timer(group="g").add("1"), TypeError, "value"),
        (lambda c: c.timer(group="g").add(1.0, 0), ValueError, "hit_count"),
        (lambda c: c.timer(group="g").add(1.0, 1.5), TypeError, "hit_count"),
        (lambda c: c.timer(group="g").stop(), RuntimeError, "not started"),
        (lambda c: c.timer(group="g")(42), TypeError, "decorates a function"),
    ],
)
def test_request_calls_refuse_bad_arguments_where_written(collector, call, error, named):
    with pytest.raises(error, match=named):
        call(collector)
    collector.finish()  # and the request still reports cleanly


@pytest.mark.parametrize(
    "names, values, error, named",
    [
        (["group"], ("db",), TypeError, "names"),
        (("group",), ["db"], TypeError, "values"),
        (None, None, TypeError, "names"),
        (("group", "op"), ("db",), ValueError, "as many"),
        (("group",), ("db", "select"), ValueError, "as many"),
        ((), (), ValueError, "at least one tag"),
        (("",), ("db",), ValueError, "tag names"),
        ((1,), ("db",), TypeError, "tag names"),
        (("group",), (["db", "cache"],), TypeError, "'group'"),
        (("group",), (Unprintable(),), TypeError, "'group'"),
    ],
)
def test_new_checked_timer_refuses_tags_not_split_as_timer_tags_gives_them(
    collector, udp_listener, names, values, error, named
):
    # Public: a wrong call must neither lose the request's packet nor send a bad one.
    with pytest.raises(error, match=named):
        collector.new_checked_timer(names, values)
    assert collector.timers == ()
    collector.new_checked_timer(("group",), ("db",)).add(0.5)
    collector.finish()
    assert Packet(udp_listener.receive()).timer_tags() == [(("group", "db"),)]


def test_the_proxy_refuses_bad_arguments_outside_and_inside_a_request(udp_listener):
    with pytest.raises(RuntimeError, match="no monitored request"):
        pynba.status = 200
    with pytest.raises(TypeError, match="'group'"):
        pynba.timer(group=Unprintable())  # checked at once, even outside a request
    seen = []

    def checking_app(environ, start_response):
        with pytest.raises(ValueError, match="status"):
            pynba.status = -1
        with pytest.raises(TypeError, match="'a'"):
            pynba.set_tag("a", Unprintable())
        seen.append(True)
        return app(environ, start_response)

    middleware = PynbaMiddleware(checking_app, Reporter(udp_listener.address))
    result = middleware({"PATH_INFO": "/x", "REQUEST_METHOD": "GET"}, lambda *a: None)
    assert b"".join(result) == b"ok"
    result.close()
    assert seen == [True]
    Packet(udp_listener.receive())


# -- documented sanitization: the packet stays valid -------------------------------------------


@pytest.mark.parametrize("value", NASTY_TEXT)
def test_nasty_text_everywhere_gives_a_valid_packet(collector, udp_listener, value):
    collector.script_name = value
    collector.server_name = value
    collector.hostname = value or "h"
    collector.schema = value
    collector.set_tag("t" + ("" if isinstance(value, bytes) else value[:50]), value)
    collector.timer(group=value, other=value).add(0.5)
    collector.finish()
    packet = Packet(udp_listener.receive())
    assert packet.status == 0
    assert len(packet.timers) == 1


def test_a_huge_path_host_and_tags_still_report_the_request(udp_listener):
    huge = "é" * 35_000  # 70 kB of UTF-8

    def tagging_app(environ, start_response):
        pynba.set_tag("huge", huge)
        with pynba.timer(group="g", huge=huge):
            pass
        return app(environ, start_response)

    middleware = PynbaMiddleware(tagging_app, Reporter(udp_listener.address))
    path = ("/" + huge).encode().decode("latin-1")  # as PEP 3333 hands it over
    environ = {"PATH_INFO": path, "HTTP_HOST": "h" * 70_000, "REQUEST_METHOD": "GET"}
    result = middleware(environ, lambda *a: None)
    result.close()
    packet = Packet(udp_listener.receive())
    assert packet.script_name == "/" + huge[:511]  # 1,023 bytes: a whole "é" more would pass
    assert packet.server_name == "<invalid-host>"  # longer than any host name can be
    assert packet.tags == [("huge", huge[:512])]
    assert packet.timers[0].tags == (("group", "g"), ("huge", huge[:512]))
    assert middleware.reporter.stats["oversize"] == 0


@pytest.mark.parametrize("value", NASTY_NUMBERS)
def test_nasty_numbers_at_the_encoder_give_a_valid_packet(encode, value):
    number = value if isinstance(value, float) else int(value)
    datagram = encode(
        "h",
        "s",
        "/",
        number if isinstance(number, int) else 1,
        0,
        0,
        number,
        number,
        number,
        number if isinstance(number, int) else 0,
        0,
        None,
        {"n": value},
        [({"n": value}, number, 1, number, number)],
    )
    Packet(datagram)


@pytest.mark.parametrize("value", NASTY_NUMBERS + NASTY_TEXT + [None, True, False])
def test_nasty_tag_values_give_a_valid_packet(collector, udp_listener, value):
    collector.set_tag("value", value)
    collector.timer(group="g", value=value).add(0.25, 3)
    collector.finish()
    packet = Packet(udp_listener.receive())
    assert packet.timers[0].hit_count == 3


def test_reporter_report_never_raises_on_bad_input_unless_asked(udp_listener):
    reporter = Reporter(udp_listener.address)
    reporter.report(hostname=object(), server_name="s", script_name="/", timers=42)
    assert reporter.stats["encode"] == 1 and reporter.stats["failed"] == 1
    reporter.raise_on_fail = True
    with pytest.raises((TypeError, ValueError)):
        reporter.report(hostname="h", server_name="s", script_name="/", timers=42)
    with pytest.raises(TypeError):
        reporter.report("h", "s", "/")  # keyword-only
    assert udp_listener.pending(timeout=0.05) == []
    reporter.close()


def test_collector_settings_refuse_bad_types(udp_listener):
    reporter = Reporter(udp_listener.address)
    with pytest.raises(TypeError, match="hostname"):
        CollectorSettings(reporter, hostname=b"h")
    with pytest.raises(TypeError, match="tags"):
        CollectorSettings(reporter, tags="a=b")
    with pytest.raises(TypeError, match="reporter must be a Reporter"):
        CollectorSettings(udp_listener.address)
    with pytest.raises(TypeError, match="settings must be a CollectorSettings"):
        RequestCollector(reporter)
    reporter.close()

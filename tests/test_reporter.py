"""The UDP reporter, against real sockets on the loopback interface."""

import errno
import inspect
import logging
import math
import os
import signal
import socket
import threading
import time

import pytest

from pinba_pb2 import Request
from pynba.address import DEFAULT_PORT, ServerAddress, parse_addresses
from pynba.record import RequestRecord
from pynba.reporter import Reporter
from pynba.wire import encoder, fallback, framing
from resolving import route_of, wait_for_addresses, wait_until

REQUEST = {
    "hostname": "web-1",
    "server_name": "example.com",
    "script_name": "/checkout",
    "request_count": 1,
    "document_size": 5120,
    "memory_peak": 1 << 20,
    "request_time": 0.25,
    "ru_utime": 0.125,
    "ru_stime": 0.0625,
    "status": 200,
    "memory_footprint": 2 << 20,
    "schema": "https",
    "tags": {"region": "eu", "release": "42"},
    "timers": [({"group": "db", "op": "select"}, 0.125, 3, 0.0, 0.0)],
}


def encoded(**request):
    """The bytes ``pynba.wire.encoder.encode`` makes for ``request``."""
    return encoder.encode(
        request["hostname"],
        request["server_name"],
        request["script_name"],
        request.get("request_count", 1),
        request.get("document_size", 0),
        request.get("memory_peak", 0),
        request.get("request_time", 0.0),
        request.get("ru_utime", 0.0),
        request.get("ru_stime", 0.0),
        request.get("status", 0),
        request.get("memory_footprint", 0),
        request.get("schema"),
        request.get("tags", ()),
        request.get("timers", ()),
    )


def decode(data):
    message = Request()
    message.ParseFromString(data)
    return message


def receive_exactly(listener, count):
    """The next ``count`` datagrams, checking that no more follow."""
    received = [listener.receive() for _ in range(count)]
    assert listener.pending(timeout=0.05) == []
    return received


def request_tags(message):
    words = message.dictionary
    return {
        words[name]: words[value]
        for name, value in zip(message.tag_name, message.tag_value, strict=True)
    }


def pynba_warnings(caplog):
    return [r for r in caplog.records if r.name == "pynba" and r.levelno == logging.WARNING]


def free_then_closed_port():
    """A loopback UDP port that was just bound and is now closed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def ipv6_loopback_available():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback")


@pytest.fixture
def getaddrinfo_calls(monkeypatch):
    """Hosts passed to socket.getaddrinfo, which still does the real lookup."""
    calls = []
    real_getaddrinfo = socket.getaddrinfo

    def recording_getaddrinfo(host, *args, **kwargs):
        calls.append(host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording_getaddrinfo)
    return calls


# -- address parsing ---------------------------------------------------------


@pytest.mark.parametrize(
    "address, expected",
    [
        (("127.0.0.1", 30002), [("127.0.0.1", 30002)]),
        (("localhost", 1), [("localhost", 1)]),
        (("::1", 4000), [("::1", 4000)]),
        (("[::1]", 4000), [("::1", 4000)]),
        ("127.0.0.1:30002", [("127.0.0.1", 30002)]),
        ("pinba.example.com:65535", [("pinba.example.com", 65535)]),
        ("pinba.example.com", [("pinba.example.com", DEFAULT_PORT)]),
        ("localhost.", [("localhost.", DEFAULT_PORT)]),
        ("pinba_1.internal", [("pinba_1.internal", DEFAULT_PORT)]),
        ("bücher.example", [("bücher.example", DEFAULT_PORT)]),
        ("[::1]:3002", [("::1", 3002)]),
        ("[2001:db8::1]", [("2001:db8::1", DEFAULT_PORT)]),
        ("::1", [("::1", DEFAULT_PORT)]),
        ("2001:db8::7", [("2001:db8::7", DEFAULT_PORT)]),
        ("fe80::1%lo", [("fe80::1%lo", DEFAULT_PORT)]),
        ("a:1, b:2", [("a", 1), ("b", 2)]),
        ("a:1 b:2,c", [("a", 1), ("b", 2), ("c", DEFAULT_PORT)]),
        (" a:1 ,\t[::1]:2 ", [("a", 1), ("::1", 2)]),
        (["a:1", ("b", 2), "[::1]"], [("a", 1), ("b", 2), ("::1", DEFAULT_PORT)]),
        (("a:1", "b:2"), [("a", 1), ("b", 2)]),
        ((("a", 1), ("b", 2)), [("a", 1), ("b", 2)]),
        (["a:1, b:2", "c:3"], [("a", 1), ("b", 2), ("c", 3)]),
        (["a:1", "a:1", ("a", 1)], [("a", 1)]),
        (ServerAddress("a", 7), [("a", 7)]),
        ([ServerAddress("a", 7), "b"], [("a", 7), ("b", DEFAULT_PORT)]),
    ],
)
def test_address_forms(address, expected):
    servers = parse_addresses(address)
    assert [(server.host, server.port) for server in servers] == expected
    assert Reporter(address).servers == servers


@pytest.mark.parametrize(
    "address, error",
    [
        ("", ValueError),
        ("  ,  ", ValueError),
        ([], ValueError),
        ((), ValueError),
        ([""], ValueError),
        ("host:", ValueError),
        (":30002", ValueError),
        ("host:0", ValueError),
        ("host:65536", ValueError),
        ("host:-1", ValueError),
        ("host:port", ValueError),
        ("host:3e4", ValueError),
        ("host:٣٠", ValueError),
        ("[::1]x", ValueError),
        ("[::1]:", ValueError),
        ("[::1", ValueError),
        ("[localhost]:1", ValueError),
        ("::1:2:zz", ValueError),
        ("a..b", ValueError),
        ("a/b:1", ValueError),
        ("x" * 64 + ".example", ValueError),
        ("30002", ValueError),
        ("300.1.2.3", ValueError),
        (("host", 0), ValueError),
        (("host", 70000), ValueError),
        (("", 30002), ValueError),
        (("host:1", 30002), ValueError),
        (("localhost", "30002"), ValueError),  # a list of two hosts, one a bare number
        (("host", 30002.0), TypeError),
        (("host", True), TypeError),
        ((b"host", 30002), TypeError),
        ([("host", "1", 2)], TypeError),
        ([("host", "1")], TypeError),
        ([("host", 1.5)], TypeError),
        ([(b"host", 1)], TypeError),
        (b"host:1", TypeError),
        (30002, TypeError),
        (None, TypeError),
        ({"host": 1}, TypeError),
        (["a:1", 5], TypeError),
    ],
)
def test_invalid_addresses_are_refused_naming_the_argument(address, error):
    with pytest.raises(error, match="address"):
        Reporter(address)


def test_server_address_text():
    assert str(ServerAddress("::1", 5)) == "[::1]:5"
    assert str(ServerAddress("example.com", 5)) == "example.com:5"
    assert ServerAddress("10.0.0.1", 1).is_ip_literal
    assert ServerAddress("::1", 1).is_ip_literal
    assert not ServerAddress("localhost", 1).is_ip_literal


@pytest.mark.parametrize(
    "keyword, value, error",
    [
        ("resolve_interval", -1, ValueError),
        ("resolve_interval", math.nan, ValueError),
        ("resolve_interval", "60", TypeError),
        ("resolve_interval", None, TypeError),
        ("log_interval", -0.5, ValueError),
        ("log_interval", True, TypeError),
    ],
)
def test_invalid_intervals_are_refused_naming_the_argument(keyword, value, error):
    with pytest.raises(error, match=keyword):
        Reporter("127.0.0.1:30002", **{keyword: value})


def test_construction_never_waits_for_a_lookup(monkeypatch):
    looked_up_in = []
    release = threading.Event()

    def slow_getaddrinfo(host, *args, **kwargs):
        looked_up_in.append(threading.current_thread().name)
        release.wait(5)
        raise socket.gaierror(socket.EAI_NONAME, "not here")

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    started = time.monotonic()
    reporter = Reporter(["nonexistent.invalid", "127.0.0.1:2"])
    assert time.monotonic() - started < 1.0  # the lookup runs in the reporter's thread
    deadline = time.monotonic() + 5
    while not looked_up_in and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    reporter.close()
    assert set(looked_up_in) == {"pynba-resolver"}  # started at once, never on this thread


# -- sending -------------------------------------------------------------------


def test_report_arrives_with_every_field(udp_listener, reporter_factory):
    reporter = reporter_factory(udp_listener.address)
    reporter.report(**REQUEST)
    data = udp_listener.receive()
    assert data == encoded(**REQUEST)
    message = decode(data)
    assert message.hostname == "web-1"
    assert message.server_name == "example.com"
    assert message.script_name == "/checkout"
    assert message.request_count == 1
    assert message.document_size == 5120
    assert message.memory_peak == 1 << 20
    assert message.request_time == 0.25
    assert message.ru_utime == 0.125
    assert message.ru_stime == 0.0625
    assert message.status == 200
    assert message.memory_footprint == 2 << 20
    assert message.schema == "https"
    assert request_tags(message) == {"region": "eu", "release": "42"}
    assert list(message.timer_value) == [0.125]
    assert list(message.timer_hit_count) == [3]
    assert reporter.stats == {"sent": 1, "failed": 0, "oversize": 0}


def test_report_defaults(udp_listener, reporter_factory):
    reporter = reporter_factory(f"127.0.0.1:{udp_listener.port}")
    reporter.report(hostname="h", server_name="s", script_name="/")
    message = udp_listener.receive_request()
    assert (message.hostname, message.server_name, message.script_name) == ("h", "s", "/")
    assert message.request_count == 1
    assert list(message.timer_value) == []
    assert not message.HasField("schema")


def test_report_fields_are_keyword_only(reporter_factory):
    reporter = reporter_factory("127.0.0.1:30002")
    with pytest.raises(TypeError):
        reporter.report("h", "s", "/")


def test_the_request_record_holds_the_encoders_arguments_in_order():
    arguments = tuple(inspect.signature(fallback.encode).parameters)
    assert RequestRecord._fields == arguments[: len(RequestRecord._fields)]
    assert arguments[len(RequestRecord._fields) :] == ("packed",)
    assert RequestRecord._fields == encoder.ARGUMENTS


def test_report_request_takes_a_record_or_a_plain_tuple_of_its_fields(
    udp_listener, reporter_factory
):
    reporter = reporter_factory(udp_listener.address)
    record = RequestRecord(**REQUEST)
    reporter.report_request(record)
    reporter.report_request(tuple(record))
    reporter.report(**REQUEST)
    assert receive_exactly(udp_listener, 3) == [encoded(**REQUEST)] * 3
    assert reporter.stats == {"sent": 3, "failed": 0, "oversize": 0}


def test_a_tuple_of_13_fields_fails_as_encode_fails_with_them(udp_listener, reporter_factory):
    fields = tuple(RequestRecord(**REQUEST))[:13]
    with pytest.raises(TypeError) as expected:
        encoder.encode(*fields)
    reporter = reporter_factory(udp_listener.address, raise_on_fail=True)
    with pytest.raises(TypeError) as raised:
        reporter.report_request(fields)
    assert str(raised.value) == str(expected.value)
    assert reporter.stats["failed"] == 1
    assert udp_listener.pending() == []


def test_a_tuple_of_the_fields_and_packed_is_encoded_as_encode_takes_it(
    udp_listener, reporter_factory
):
    reporter = reporter_factory(udp_listener.address)
    reporter.report_request((*RequestRecord(**REQUEST), True))
    packed = encoder.encode(*RequestRecord(**REQUEST), True)
    assert packed != encoded(**REQUEST)
    assert receive_exactly(udp_listener, 1) == [packed]


@pytest.mark.parametrize("form", [RequestRecord._make, tuple], ids=["record", "plain tuple"])
@pytest.mark.parametrize("wire", ["", "pinba2://"])
def test_an_oversize_request_reported_as_a_record_or_a_tuple_is_sent_degraded(
    udp_listener, reporter_factory, form, wire
):
    timers = [({"n": f"{number:06d}" + "v" * 60}, 0.5, 1, 0.0, 0.0) for number in range(2000)]
    blobs = {f"blob{i}": str(i).ljust(1024, "b") for i in range(encoder.MAX_DATAGRAM // 1000)}
    reporter = reporter_factory(f"{wire}127.0.0.1:{udp_listener.port}")
    reporter.report_request(form(RequestRecord(**{**REQUEST, "timers": timers})))
    reporter.report_request(form(RequestRecord(**{**REQUEST, "tags": blobs})))
    without_timers, without_tags = (
        decode(framing.unframe(data)) for data in receive_exactly(udp_listener, 2)
    )
    assert list(without_timers.timer_value) == []
    assert request_tags(without_timers) == {"region": "eu", "release": "42"}
    assert (list(without_tags.timer_value), request_tags(without_tags)) == ([], {})
    assert reporter.stats["oversize"] == 2
    assert reporter.stats["oversize_tags"] == 1


def test_fan_out_sends_identical_bytes(udp_listener_factory, reporter_factory):
    first, second = udp_listener_factory(), udp_listener_factory()
    reporter = reporter_factory(f"127.0.0.1:{first.port}, 127.0.0.1:{second.port}")
    reporter.report(**REQUEST)
    first_bytes, second_bytes = first.receive(), second.receive()
    assert first_bytes == second_bytes == encoded(**REQUEST)
    assert reporter.stats["sent"] == 2
    assert first.pending() == second.pending() == []


def test_send_passes_bytes_through(udp_listener, reporter_factory):
    reporter = reporter_factory([udp_listener.address])
    reporter.send(b"\x0a\x01h")
    assert udp_listener.receive() == b"\x0a\x01h"


@needs_ipv6
def test_ipv6_loopback(udp_listener_factory, reporter_factory):
    listener = udp_listener_factory("::1", socket.AF_INET6)
    for address in (f"[::1]:{listener.port}", ("::1", listener.port), ("[::1]", listener.port)):
        reporter = reporter_factory(address)
        reporter.report(**REQUEST)
        assert listener.receive() == encoded(**REQUEST)


@needs_ipv6
def test_fan_out_over_both_families(udp_listener_factory, reporter_factory):
    v4 = udp_listener_factory()
    v6 = udp_listener_factory("::1", socket.AF_INET6)
    reporter = reporter_factory([v4.address, f"[::1]:{v6.port}"])
    reporter.report(**REQUEST)
    assert v4.receive() == v6.receive() == encoded(**REQUEST)
    assert reporter.stats["sent"] == 2


def test_ip_literals_are_parsed_once_without_a_name_lookup(
    udp_listener, reporter_factory, getaddrinfo_calls
):
    reporter = reporter_factory(udp_listener.address, resolve_interval=0)
    for _ in range(5):
        reporter.report(**REQUEST)
    assert len(receive_exactly(udp_listener, 5)) == 5
    assert getaddrinfo_calls == ["127.0.0.1"]


def test_ip_literals_need_no_wait_for_an_address(udp_listener, reporter_factory):
    """A script's last report waits for names only: an IP literal has its address already."""
    reporter = reporter_factory(udp_listener.address)
    assert reporter.wait_for_addresses(timeout=0.5) is True
    reporter.report(**REQUEST)
    assert len(receive_exactly(udp_listener, 1)) == 1


def test_names_are_looked_up_once_per_interval(
    udp_listener_factory, reporter_factory, getaddrinfo_calls
):
    family, _, _, _, sockaddr = socket.getaddrinfo("localhost", None, type=socket.SOCK_DGRAM)[0]
    listener = udp_listener_factory(sockaddr[0], family)
    getaddrinfo_calls.clear()
    reporter = reporter_factory(f"localhost:{listener.port}", resolve_interval=3600)
    wait_for_addresses(reporter)
    for _ in range(5):
        reporter.report(**REQUEST)
    assert len(receive_exactly(listener, 5)) == 5
    assert getaddrinfo_calls == ["localhost"]


# -- failures ------------------------------------------------------------------


def test_unresolvable_name_is_counted_and_logged_once(caplog, reporter_factory):
    reporter = reporter_factory("nonexistent.invalid:30002")
    with caplog.at_level(logging.WARNING, logger="pynba"):
        reporter.report(**REQUEST)  # starts the lookup, which fails in the background
        wait_until(lambda: reporter.stats.get("lookup_failed", 0) >= 1)
        for _ in range(19):
            reporter.report(**REQUEST)
    warnings = pynba_warnings(caplog)
    assert len(warnings) == 1
    assert "nonexistent.invalid:30002" in warnings[0].getMessage()
    lookups = reporter.stats.pop("lookup_failed")
    assert lookups < 20  # retried after 0.5 s, 1 s, ...: not once per request
    assert reporter.stats == {"sent": 0, "failed": 20, "oversize": 0, "resolve": 20}


def test_unresolvable_name_raises_when_asked(reporter_factory):
    reporter = reporter_factory("nonexistent.invalid", raise_on_fail=True)
    with pytest.raises(socket.gaierror):
        reporter.report(**REQUEST)  # the address is not known yet, or cannot be
    wait_until(lambda: reporter.stats.get("lookup_failed", 0) >= 1)
    # Then the last lookup's failure, again and again, without a lookup per request.
    for _ in range(2):
        with pytest.raises(socket.gaierror) as raised:
            reporter.report(**REQUEST)
        assert "not known yet" not in str(raised.value)
    assert reporter.stats["failed"] == reporter.stats["resolve"] == 3


def test_raise_on_fail_is_a_settable_attribute(reporter_factory):
    reporter = reporter_factory("nonexistent.invalid")
    reporter.report(**REQUEST)
    reporter.raise_on_fail = True
    with pytest.raises(OSError):
        reporter.report(**REQUEST)
    reporter.raise_on_fail = False
    reporter.report(**REQUEST)
    assert reporter.stats["failed"] == 3


def test_unresolvable_server_does_not_stop_the_others(udp_listener, reporter_factory):
    reporter = reporter_factory(["nonexistent.invalid", udp_listener.address], raise_on_fail=True)
    with pytest.raises(OSError):
        reporter.report(**REQUEST)
    # Every server was tried before the failure was raised.
    assert udp_listener.receive() == encoded(**REQUEST)
    assert reporter.stats["sent"] == 1


@pytest.mark.parametrize("raise_on_fail", [False, True])
def test_closed_port_neither_raises_nor_disturbs_other_servers(
    udp_listener, reporter_factory, raise_on_fail
):
    # The closed port answers with ICMP port-unreachable, which the kernel
    # reports as ECONNREFUSED on the next send of the connected socket: that
    # datagram is sent again, so nothing is observable to the application,
    # with or without raise_on_fail, and the live server gets every packet.
    closed_port = free_then_closed_port()
    reporter = reporter_factory(
        [("127.0.0.1", closed_port), udp_listener.address], raise_on_fail=raise_on_fail
    )
    for number in range(10):
        reporter.report(**{**REQUEST, "script_name": f"/page/{number}"})
    received = [decode(data).script_name for data in receive_exactly(udp_listener, 10)]
    assert received == [f"/page/{number}" for number in range(10)]
    assert reporter.stats == {"sent": 20, "failed": 0, "oversize": 0}


def test_send_error_is_counted_and_logged_once(udp_listener, caplog, reporter_factory):
    reporter = reporter_factory(udp_listener.address)
    too_big = b"\x0a" * (encoder.MAX_DATAGRAM + 1)
    with caplog.at_level(logging.WARNING, logger="pynba"):
        for _ in range(5):
            reporter.send(too_big)
    warnings = pynba_warnings(caplog)
    assert len(warnings) == 1
    assert str(udp_listener.port) in warnings[0].getMessage()
    assert reporter.stats == {"sent": 0, "failed": 5, "oversize": 0, "EMSGSIZE": 5}
    reporter.report(**REQUEST)
    assert udp_listener.pending() == [encoded(**REQUEST)]


def test_send_error_raises_when_asked(udp_listener, caplog, reporter_factory):
    reporter = reporter_factory(udp_listener.address, raise_on_fail=True)
    with caplog.at_level(logging.WARNING, logger="pynba"), pytest.raises(OSError) as raised:
        reporter.send(b"\x0a" * (encoder.MAX_DATAGRAM + 1))
    assert raised.value.errno == errno.EMSGSIZE
    assert reporter.stats["EMSGSIZE"] == 1
    assert pynba_warnings(caplog) == []


def test_log_interval_zero_logs_every_failure(caplog, reporter_factory):
    reporter = reporter_factory("nonexistent.invalid", log_interval=0)
    with caplog.at_level(logging.WARNING, logger="pynba"):
        for _ in range(4):
            reporter.report(**REQUEST)
    assert len(pynba_warnings(caplog)) == 4


def test_each_kind_of_failure_is_logged(udp_listener, caplog, reporter_factory):
    reporter = reporter_factory(["nonexistent.invalid", udp_listener.address])
    with caplog.at_level(logging.WARNING, logger="pynba"):
        for _ in range(3):
            reporter.send(b"\x0a" * (encoder.MAX_DATAGRAM + 1))
    messages = [record.getMessage() for record in pynba_warnings(caplog)]
    assert len(messages) == 2
    assert "nonexistent.invalid" in messages[0]
    assert "too long" in messages[1].lower()
    assert reporter.stats["resolve"] == reporter.stats["EMSGSIZE"] == 3


@pytest.mark.parametrize(
    "timers",
    [5, [object()], [({"a": "b"}, "not a number", 1, 0.0, 0.0)], [({"a": "b"},)]],
)
def test_encoding_error_is_counted_and_logged(udp_listener, caplog, reporter_factory, timers):
    reporter = reporter_factory(udp_listener.address)
    with caplog.at_level(logging.WARNING, logger="pynba"):
        reporter.report(**{**REQUEST, "timers": timers})
        reporter.report(**{**REQUEST, "timers": timers})
    warnings = pynba_warnings(caplog)
    assert len(warnings) == 1
    assert warnings[0].exc_info is not None
    assert reporter.stats == {"sent": 0, "failed": 2, "oversize": 0, "encode": 2}
    assert udp_listener.pending() == []

    reporter.raise_on_fail = True
    with pytest.raises((TypeError, ValueError)):
        reporter.report(**{**REQUEST, "timers": timers})
    assert reporter.stats["encode"] == 3


def test_oversize_request_is_sent_without_timers(udp_listener, caplog, reporter_factory):
    timers = [
        ({"group": "cache", "key": f"user-profile-{number:05d}-" + "k" * 40}, 0.001, 1, 0.0, 0.0)
        for number in range(3000)
    ]
    request = {**REQUEST, "timers": timers, "tags": {"route": "/big", "env": "test"}}
    full_size = len(encoded(**request))
    assert full_size > encoder.MAX_DATAGRAM

    reporter = reporter_factory(udp_listener.address)
    with caplog.at_level(logging.WARNING, logger="pynba"):
        reporter.report(**request)

    data = udp_listener.receive()
    assert data == encoded(**{**request, "timers": ()})
    message = decode(data)
    assert list(message.timer_value) == []
    assert list(message.timer_hit_count) == []
    assert (message.hostname, message.server_name, message.script_name) == (
        "web-1",
        "example.com",
        "/checkout",
    )
    assert message.request_time == 0.25
    assert message.status == 200
    assert message.schema == "https"
    assert request_tags(message) == {"route": "/big", "env": "test"}

    warnings = pynba_warnings(caplog)
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert str(full_size) in text
    assert f"sent without its 3000 timers ({len(data)} bytes)" in text
    assert reporter.stats == {"sent": 1, "failed": 0, "oversize": 1}


def test_oversize_is_not_a_failure_even_when_raising(udp_listener, reporter_factory):
    timers = [({"n": f"{number:06d}" + "v" * 60}, 0.5, 1, 0.0, 0.0) for number in range(2000)]
    reporter = reporter_factory(udp_listener.address, raise_on_fail=True)
    reporter.report(**{**REQUEST, "timers": timers})
    assert list(udp_listener.receive_request().timer_value) == []
    assert reporter.stats["oversize"] == 1


@pytest.mark.parametrize("raise_on_fail", [False, True])
def test_request_too_big_even_without_timers_is_sent_without_its_tags(
    udp_listener, caplog, reporter_factory, raise_on_fail
):
    blobs = {f"blob{i}": str(i).ljust(1024, "b") for i in range(encoder.MAX_DATAGRAM // 1000)}
    request = {**REQUEST, "tags": blobs}
    reporter = reporter_factory(udp_listener.address, raise_on_fail=raise_on_fail)
    with caplog.at_level(logging.WARNING, logger="pynba"):
        reporter.report(**request)
    data = udp_listener.receive()
    assert data == encoded(**{**request, "timers": (), "tags": ()})
    message = decode(data)
    assert (message.script_name, message.status, request_tags(message)) == ("/checkout", 200, {})
    assert reporter.stats == {"sent": 1, "failed": 0, "oversize": 1, "oversize_tags": 1}
    [warning] = pynba_warnings(caplog)
    assert f"sent without its 1 timer and {len(blobs)} request tags (" in warning.getMessage()


def test_count_adds_to_a_counter_of_its_own(reporter_factory):
    reporter = reporter_factory("127.0.0.1:1")
    reporter.count("unclosed")
    reporter.count("unclosed", 3)
    reporter.count("sent", 0)
    assert reporter.stats == {"sent": 0, "failed": 0, "oversize": 0, "unclosed": 4}
    assert type(reporter.stats) is dict


@pytest.mark.parametrize(
    "args, error, named",
    [
        ((1,), TypeError, "kind"),
        ((b"unclosed",), TypeError, "kind"),
        (("unclosed", 1.0), TypeError, "n must"),
        (("unclosed", True), TypeError, "n must"),
        (("unclosed", "1"), TypeError, "n must"),
        (("unclosed", -1), ValueError, "n must"),
    ],
)
def test_count_refuses_bad_input_naming_the_argument(reporter_factory, args, error, named):
    reporter = reporter_factory("127.0.0.1:1")
    with pytest.raises(error, match=named):
        reporter.count(*args)
    assert reporter.stats == {"sent": 0, "failed": 0, "oversize": 0}


# -- resolution ----------------------------------------------------------------


def test_last_good_address_is_kept_when_a_lookup_fails(
    udp_listener_factory, reporter_factory, getaddrinfo_calls, monkeypatch, caplog
):
    family, _, _, _, sockaddr = socket.getaddrinfo("localhost", None, type=socket.SOCK_DGRAM)[0]
    listener = udp_listener_factory(sockaddr[0], family)
    reporter = reporter_factory(f"localhost:{listener.port}", resolve_interval=0)
    getaddrinfo_calls.clear()
    wait_for_addresses(reporter)
    for _ in range(3):
        reporter.report(**REQUEST)
    assert len(receive_exactly(listener, 3)) == 3
    # Looked up again and again (every 0.1 s at the least), in the background.
    wait_until(lambda: len(getaddrinfo_calls) >= 3)
    assert set(getaddrinfo_calls) == {"localhost"}

    # The one fault injected in these tests: the resolver can't be made to
    # fail on demand otherwise.
    def failing_getaddrinfo(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    reporter.raise_on_fail = True  # the packets still go out: nothing to raise
    with caplog.at_level(logging.WARNING, logger="pynba"):
        monkeypatch.setattr(socket, "getaddrinfo", failing_getaddrinfo)
        wait_until(lambda: reporter.stats.get("lookup_failed", 0) >= 2)
        for _ in range(3):
            reporter.report(**REQUEST)
    assert len(receive_exactly(listener, 3)) == 3
    assert reporter.stats.pop("lookup_failed") >= 2
    assert reporter.stats == {"sent": 6, "failed": 0, "oversize": 0}
    warnings = pynba_warnings(caplog)
    assert len(warnings) == 1
    assert "still sending to" in warnings[0].getMessage()


def _listener_on(host, family, port):
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        pytest.skip(f"cannot listen on {host} port {port}: {error}")
    sock.settimeout(5)
    return sock


@pytest.mark.parametrize("moved_to", ["127.0.0.2", "::1"])
def test_a_name_that_moves_is_followed(udp_listener, reporter_factory, monkeypatch, moved_to):
    # Each server's socket is connected to the address its lookup found; a
    # later lookup that finds another one (of the same family or not) moves
    # the datagrams there. The resolver is replaced: it can't be made to
    # move a name on demand otherwise.
    family = socket.AF_INET6 if ":" in moved_to else socket.AF_INET
    new_home = _listener_on(moved_to, family, udp_listener.port)
    answers = [(socket.AF_INET, ("127.0.0.1", udp_listener.port))]

    def moving_getaddrinfo(host, port, *args, **kwargs):
        answer_family, sockaddr = answers[-1]
        return [(answer_family, socket.SOCK_DGRAM, 17, "", sockaddr)]

    monkeypatch.setattr(socket, "getaddrinfo", moving_getaddrinfo)
    reporter = reporter_factory(f"pinba.example:{udp_listener.port}", resolve_interval=0)
    try:
        wait_for_addresses(reporter)
        reporter.report(**REQUEST)
        assert udp_listener.receive() == encoded(**REQUEST)
        sockaddr = (moved_to, udp_listener.port) + ((0, 0) if family == socket.AF_INET6 else ())
        answers.append((family, sockaddr))
        wait_until(lambda: route_of(reporter) == sockaddr, what="the move")
        for _ in range(3):
            reporter.report(**REQUEST)
        assert [new_home.recv(70000) for _ in range(3)] == [encoded(**REQUEST)] * 3
        assert udp_listener.pending(0.05) == []
        assert reporter.stats == {"sent": 4, "failed": 0, "oversize": 0}
        assert len(reporter._sockets) == 1  # one server, one socket
    finally:
        new_home.close()


def test_a_moved_server_gets_datagrams_from_a_source_address_fit_for_it(
    udp_listener, reporter_factory, monkeypatch
):
    # A UDP socket keeps the source address chosen when it was first
    # connected: a server that moves from a remote address to this host must
    # get a new socket, not the old one connected again.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routed, never answered
        remote_source = probe.getsockname()[0]
    except OSError:
        pytest.skip("no route to a remote address here")
    finally:
        probe.close()
    if remote_source.startswith("127."):
        pytest.skip("remote addresses are reached from a loopback address here")
    listener = _listener_on("127.0.0.1", socket.AF_INET, 0)
    port = listener.getsockname()[1]
    answers = [("192.0.2.1", port)]
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda *args, **kwargs: [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", answers[-1])],
    )
    reporter = reporter_factory(f"pinba.example:{port}", resolve_interval=0)
    try:
        wait_for_addresses(reporter)
        reporter.report(**REQUEST)  # to the remote address: lost, as expected
        answers.append(("127.0.0.1", port))
        wait_until(lambda: route_of(reporter) == ("127.0.0.1", port), what="the move")
        reporter.report(**REQUEST)
        data, (source, _) = listener.recvfrom(70000)
        assert data == encoded(**REQUEST)
        assert source == "127.0.0.1"
    finally:
        listener.close()


def test_a_name_that_resolves_later_is_used(
    udp_listener, reporter_factory, getaddrinfo_calls, monkeypatch
):
    real_getaddrinfo = socket.getaddrinfo

    def failing_getaddrinfo(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", failing_getaddrinfo)
    reporter = reporter_factory(f"localhost:{udp_listener.port}", resolve_interval=0)
    reporter.report(**REQUEST)
    wait_until(lambda: reporter.stats.get("lookup_failed", 0) >= 1)
    assert reporter.stats["resolve"] == 1

    monkeypatch.setattr(socket, "getaddrinfo", real_getaddrinfo)
    family = real_getaddrinfo("localhost", None, type=socket.SOCK_DGRAM)[0][0]
    if family != socket.AF_INET:
        pytest.skip("localhost does not resolve to IPv4 first here")
    wait_for_addresses(reporter)  # tried again 0.1 s later (resolve_interval=0)
    reporter.report(**REQUEST)
    assert udp_listener.receive() == encoded(**REQUEST)
    assert reporter.stats["sent"] == 1


# -- lifecycle -----------------------------------------------------------------


def test_close_is_idempotent_and_later_sends_fail_quietly(udp_listener, caplog):
    with Reporter(udp_listener.address) as reporter:
        reporter.report(**REQUEST)
    assert udp_listener.receive() == encoded(**REQUEST)
    reporter.close()
    reporter.close()
    with caplog.at_level(logging.WARNING, logger="pynba"):
        reporter.report(**REQUEST)
    assert reporter.stats["failed"] == 1
    assert len(pynba_warnings(caplog)) == 1
    reporter.raise_on_fail = True
    with pytest.raises(OSError):
        reporter.report(**REQUEST)
    assert udp_listener.pending() == []


def test_close_before_any_send():
    reporter = Reporter("127.0.0.1:30002")
    reporter.close()
    reporter.close()


def test_threads_share_one_socket(udp_listener, reporter_factory):
    reporter = reporter_factory(udp_listener.address)
    thread_count, per_thread = 8, 5
    start = threading.Barrier(thread_count)

    def send_some():
        start.wait()
        for _ in range(per_thread):
            reporter.report(**REQUEST)

    threads = [threading.Thread(target=send_some) for _ in range(thread_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert reporter.stats == {"sent": thread_count * per_thread, "failed": 0, "oversize": 0}
    udp_listener.sock.settimeout(5.0)
    sources = set()
    for _ in range(thread_count * per_thread):
        data, source = udp_listener.sock.recvfrom(70000)
        assert data == encoded(**REQUEST)
        sources.add(source)
    assert len(sources) == 1
    assert reporter.stats["sent"] == thread_count * per_thread


def wait_for_child(pid, timeout=10.0):
    """The child's exit code; kills it and fails if it does not finish in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child did not finish")


def run_in_child(action):
    """Run ``action`` in a forked child; its exit code: 0 when it returned True."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if action() else 2
        finally:
            os._exit(code)
    return wait_for_child(pid)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_sends_from_its_own_socket(udp_listener, reporter_factory):
    reporter = reporter_factory(udp_listener.address)
    udp_listener.sock.settimeout(5.0)
    reporter.report(**{**REQUEST, "hostname": "parent"})
    data, parent_source = udp_listener.sock.recvfrom(70000)
    assert decode(data).hostname == "parent"

    def child():
        reporter.report(**{**REQUEST, "hostname": "child"})
        return reporter.stats["failed"] == 0

    assert run_in_child(child) == 0
    data, child_source = udp_listener.sock.recvfrom(70000)
    assert decode(data).hostname == "child"
    assert child_source != parent_source  # a socket of the child's own

    reporter.report(**{**REQUEST, "hostname": "parent"})
    data, source = udp_listener.sock.recvfrom(70000)
    assert decode(data).hostname == "parent"
    assert source == parent_source  # the parent's socket survived the child


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("held", ["socket creation", "counting"])
def test_forked_child_does_not_inherit_a_held_lock(udp_listener, reporter_factory, held):
    reporter = reporter_factory(udp_listener.address)
    lock = reporter._socket_lock if held == "socket creation" else reporter._count_lock

    def child():
        reporter.report(**{**REQUEST, "hostname": "child"})
        return reporter.stats["sent"] == 1

    # Fork while another thread is creating the socket or counting.
    holding, forked = threading.Event(), threading.Event()

    def hold():
        with lock:
            holding.set()
            forked.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(10)
    try:
        exit_code = run_in_child(child)
    finally:
        forked.set()
        holder.join()
    assert exit_code == 0
    assert udp_listener.receive_request().hostname == "child"

"""The oversize rule: a request too large for a datagram is degraded in steps, never lost.

(1) the full request; (2) without its timers; (3) without its timers and request
tags (the encoder caps every string, so that what is left always fits). Each
step arrives over real UDP in both wire forms (classic; pinba2's packed,
LZ4-compressed when that helps), from both encoders, decodes with Google
protobuf and passes pinba2's rules.
"""

import logging
import random

import pytest

from pinba2_rules import assert_valid
from pinba_pb2 import Request
from pynba import reporter
from pynba.reporter import Reporter
from pynba.wire import framing, validate
from pynba.wire.decode import unframe
from pynba.wire.encoder import MAX_DATAGRAM, MAX_TEXT_BYTES

NAMES = {"hostname": "web-1", "server_name": "example.com", "script_name": "/checkout"}
FIELDS = {
    "document_size": 5120,
    "memory_peak": 1 << 20,
    "request_time": 0.25,
    "ru_utime": 0.125,
    "ru_stime": 0.0625,
    "status": 200,
    "memory_footprint": 2 << 20,
    "schema": "https",
}


def noise(rng, size):
    """Text that LZ4 cannot shorten: it makes a request too large in every wire form."""
    return rng.randbytes(size // 2).hex()


def many_timers(count, rng):
    return [({"group": "cache", "key": noise(rng, 40)}, 0.001, 1, 0.0, 0.0) for _ in range(count)]


@pytest.fixture(params=["classic", "pinba2"])
def wire(request):
    if request.param == "pinba2" and not framing.LZ4_AVAILABLE:
        pytest.skip("the lz4 package is not installed")
    return request.param


@pytest.fixture
def send_to(udp_listener, wire, encode, monkeypatch):
    """A reporter using the ``encode`` of the test (each encoder in turn) for ``wire``."""
    monkeypatch.setattr(reporter, "encode", encode)
    prefix = "pinba2://" if wire == "pinba2" else ""
    made = Reporter(f"{prefix}{udp_listener.host}:{udp_listener.port}")
    yield made
    made.close()


def received(listener, wire):
    """The one datagram that arrives, checked against pinba2's rules, decoded, and its framing."""
    datagram = listener.receive()
    assert listener.pending(timeout=0.05) == []
    assert len(datagram) <= MAX_DATAGRAM
    assert validate.violations(datagram, packed_ok=True) == []
    payload, form = unframe(datagram)
    assert_valid(payload, packed_ok=wire == "pinba2")
    message = Request()
    message.ParseFromString(payload)
    return message, form, len(datagram)


def request_tags(message):
    words = message.dictionary
    return {
        words[name]: words[value]
        for name, value in zip(message.tag_name, message.tag_value, strict=True)
    }


def oversize_warnings(caplog):
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "pynba" and record.levelno == logging.WARNING
    ]


def assert_fields_intact(message):
    assert (message.hostname, message.server_name, message.script_name) == tuple(NAMES.values())
    assert (message.document_size, message.memory_peak, message.memory_footprint) == (
        5120,
        1 << 20,
        2 << 20,
    )
    assert (message.request_time, message.ru_utime, message.ru_stime) == (0.25, 0.125, 0.0625)
    assert (message.status, message.schema, message.request_count) == (200, "https", 1)


def test_step_1_a_request_that_fits_goes_whole(udp_listener, wire, send_to, caplog):
    timers = many_timers(300, random.Random(1))
    send_to.report(**NAMES, **FIELDS, tags={"route": "/big"}, timers=timers)
    message, form, _ = received(udp_listener, wire)
    assert len(message.timer_value) == 300
    assert request_tags(message) == {"route": "/big"}
    assert send_to.stats["oversize"] == 0
    assert oversize_warnings(caplog) == []


def test_step_2_without_timers(udp_listener, wire, send_to, caplog):
    timers = many_timers(3000, random.Random(2))
    # Long enough to be compressed for pinba2 once the timers are gone.
    tags = {"route": "/big", "env": "test"}
    tags.update({f"note{i}": f"again and again {i} " * 50 for i in range(4)})
    with caplog.at_level(logging.WARNING, logger="pynba"):
        send_to.report(**NAMES, **FIELDS, tags=tags, timers=timers)

    message, form, size = received(udp_listener, wire)
    assert_fields_intact(message)
    assert request_tags(message) == tags
    assert list(message.timer_value) == list(message.timer_hit_count) == []
    assert form == ("v1+lz4" if wire == "pinba2" else "v0")
    [warning] = oversize_warnings(caplog)
    assert f"({wire}) exceeds 65507 bytes; sent without its 3000 timers ({size} bytes)" in warning
    assert send_to.stats["oversize"] == 1
    assert "oversize_tags" not in send_to.stats
    assert (send_to.stats["sent"], send_to.stats["failed"]) == (1, 0)


def test_step_3_without_timers_and_request_tags(udp_listener, wire, send_to, caplog):
    rng = random.Random(3)
    timers = many_timers(1000, rng)
    tags = {f"t{number}-{noise(rng, 8)}": noise(rng, 16) for number in range(5000)}
    names = {**NAMES, "script_name": "/report/" + "ab" * 400}
    with caplog.at_level(logging.WARNING, logger="pynba"):
        send_to.report(**names, **FIELDS, tags=tags, timers=timers)

    message, form, size = received(udp_listener, wire)
    assert message.script_name == names["script_name"]
    assert (message.hostname, message.server_name, message.status) == ("web-1", "example.com", 200)
    assert (message.request_time, message.document_size, message.schema) == (0.25, 5120, "https")
    assert list(message.timer_value) == list(message.tag_name) == list(message.dictionary) == []
    assert form == "v0"  # small enough to go uncompressed
    [warning] = oversize_warnings(caplog)
    assert (
        f"({wire}) exceeds 65507 bytes; "
        f"sent without its 1000 timers and 5000 request tags ({size} bytes)"
    ) in warning
    assert send_to.stats["oversize"] == send_to.stats["oversize_tags"] == 1
    assert (send_to.stats["sent"], send_to.stats["failed"]) == (1, 0)


def test_names_too_long_for_any_datagram_are_capped_not_oversize(
    udp_listener, wire, send_to, caplog
):
    names = {
        "hostname": "é" * 40000,  # two bytes a character: cut between characters
        "server_name": "s" * 70000,
        "script_name": "/" + "ж" * 40000,
    }
    fields = {**FIELDS, "schema": "h" * 70000}
    with caplog.at_level(logging.WARNING, logger="pynba"):
        send_to.report(**names, **fields, tags={"a": "b"}, timers=many_timers(1, random.Random(5)))
    message, _, _ = received(udp_listener, wire)
    assert message.hostname == "é" * (MAX_TEXT_BYTES["hostname"] // 2)
    assert message.server_name == "s" * MAX_TEXT_BYTES["server_name"]
    assert message.script_name == "/" + "ж" * ((MAX_TEXT_BYTES["script_name"] - 1) // 2)
    assert message.schema == "h" * MAX_TEXT_BYTES["schema"]
    assert request_tags(message) == {"a": "b"} and len(message.timer_value) == 1
    assert oversize_warnings(caplog) == [] and send_to.stats["oversize"] == 0


def test_each_step_warns_at_most_once_per_interval_and_is_counted(
    udp_listener, wire, send_to, caplog
):
    rng = random.Random(4)
    timers = many_timers(3000, rng)
    tags = {f"t{number}": noise(rng, 16) for number in range(5000)}
    with caplog.at_level(logging.WARNING, logger="pynba"):
        for _ in range(2):
            send_to.report(**NAMES, timers=timers)
            send_to.report(**NAMES, tags=tags, timers=timers)
    for _ in range(4):
        assert validate.violations(udp_listener.receive(), packed_ok=True) == []
    first, second = oversize_warnings(caplog)
    assert "sent without its 3000 timers (" in first
    assert "sent without its 3000 timers and 5000 request tags (" in second
    assert send_to.stats["oversize"] == 4
    assert send_to.stats["oversize_tags"] == 2
    assert (send_to.stats["sent"], send_to.stats["failed"]) == (4, 0)

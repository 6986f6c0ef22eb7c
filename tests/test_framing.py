"""pinba2's v1 framing (LZ4) and the per-server wire option, over real UDP on 127.0.0.1."""

import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import lz4.block
import pytest

from pinba2_rules import assert_valid
from pynba import config
from pynba import reporter as reporter_module
from pynba.address import WIRE_CLASSIC, WIRE_PINBA2, ServerAddress, parse_addresses
from pynba.reporter import DEFAULT_COMPRESS_ABOVE, Reporter
from pynba.wire import decode, encoder, framing
from pynba.wire.encoder import ARGUMENTS

BASE = {
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
    "tags": {"region": "eu", "page": "checkout-checkout-checkout"},
    "timers": [({"group": "db", "op": "select"}, 0.125, 3, 0.0, 0.0)],
}


def with_timers(timers, **changes):
    return {**BASE, "timers": timers, **changes}


#: Packed, well under the default threshold, and LZ4 would still shrink it.
SMALL = BASE
#: Packed, about 1,850 bytes: over the threshold, and compresses well.
COMPRESSIBLE = with_timers(
    [({"group": "db", "op": f"select-{i}"}, 0.001 * i, 1, 0.0001, 0.0) for i in range(60)]
)


def noise(size, seed=7):
    """Random bytes without NUL (which the encoder would replace): LZ4 cannot shrink them."""
    rng = random.Random(seed)
    return bytes(rng.randrange(1, 256) for _ in range(size))


#: Over the threshold, but mostly random bytes: LZ4 makes it longer.
INCOMPRESSIBLE = with_timers(
    [({"blob": noise(1000, seed)}, 0.5, 1, 0.0, 0.0) for seed in (1, 2)], tags={"r": "eu"}
)
#: Over 65,507 bytes unpacked (per-timer CPU included); fits once packed and compressed
#: (about 13 kB).
CLASSIC_OVERSIZE = with_timers([({"n": f"{i:05d}"}, 0.001, 1, 0.001, 0.0) for i in range(2100)])
#: Over 65,507 bytes however it is sent: random bytes, more than 64 KiB packed.
ALWAYS_OVERSIZE = with_timers(
    [({"blob": noise(1000, seed)}, 0.5, 1, 0.0, 0.0) for seed in range(70)]
)


def encoded(request, packed=False):
    return encoder.encode(*(request[name] for name in ARGUMENTS), packed=packed)


def without_timers(request):
    return {**request, "timers": ()}


def pinba2(listener):
    host, port = listener.address
    return f"pinba2://{host}:{port}"


def classic(listener):
    host, port = listener.address
    return f"{host}:{port}"


# -- framing ---------------------------------------------------------------------------


def test_compress_writes_the_v1_header_then_an_lz4_block():
    request = encoded(COMPRESSIBLE, packed=True)
    datagram = framing.compress(request)
    size = len(request)
    assert datagram[:4] == bytes((0x10, 0x01, size >> 8, size & 0xFF))
    assert datagram[4:] == lz4.block.compress(request, store_size=False)
    assert lz4.block.decompress(datagram[4:], uncompressed_size=size) == request
    assert len(datagram) < size


def test_unframe_round_trip():
    for request in (SMALL, COMPRESSIBLE, INCOMPRESSIBLE, CLASSIC_OVERSIZE):
        for packed in (False, True):
            data = encoded(request, packed=packed)
            if len(data) <= framing.MAX_UNCOMPRESSED:
                assert framing.unframe(framing.compress(data)) == data


def test_unframe_passes_classic_datagrams_through():
    data = encoded(SMALL)
    assert data[0] == 0x0A
    assert framing.unframe(data) == data
    assert framing.unframe(b"") == b""


def test_unframe_reads_an_uncompressed_v1_datagram():
    data = encoded(SMALL, packed=True)
    header = bytes((0x10, 0x00, len(data) >> 8, len(data) & 0xFF))
    assert framing.unframe(header + data) == data


@pytest.mark.parametrize(
    ("datagram", "complaint"),
    [
        (b"\x20\x01\x00\x05abcde", "version 2"),
        (b"\x10\x03\x00\x05abcde", "flags 0x003"),
        (b"\x11\x01\x00\x05abcde", "flags 0x101"),
        (b"\x10\x01", "shorter than its header"),
        (b"\x10\x01\x00\x05" + b"\xff" * 8, "does not decompress"),
    ],
)
def test_unframe_rejects_what_pinba2_would_drop(datagram, complaint):
    with pytest.raises(framing.FramingError, match=complaint):
        framing.unframe(datagram)
    assert issubclass(framing.FramingError, ValueError)


def test_compress_refuses_what_does_not_fit_the_header():
    framing.compress(b"\x0a" + b"x" * (framing.MAX_UNCOMPRESSED - 1))
    with pytest.raises(ValueError, match="request: 65536 bytes"):
        framing.compress(b"\x0a" + b"x" * framing.MAX_UNCOMPRESSED)


def test_project_decoder_reads_lz4_datagrams():
    for request in (SMALL, COMPRESSIBLE, CLASSIC_OVERSIZE):
        datagram = framing.compress(encoded(request, packed=True))
        payload, framing_name = decode.unframe(datagram)
        assert framing_name == "v1+lz4"
        assert payload == encoded(request, packed=True)
        assert decode.read_datagram(datagram) == decode.read_datagram(encoded(request))


# -- the wire option in addresses -----------------------------------------------------


def test_addresses_say_which_wire_form_each_server_reads():
    servers = parse_addresses("pinba2://a:1, b:2 PINBA2://[::1]:3 classic://c pinba2://::1")
    assert servers == (
        ServerAddress("a", 1, WIRE_PINBA2),
        ServerAddress("b", 2, WIRE_CLASSIC),
        ServerAddress("::1", 3, WIRE_PINBA2),
        ServerAddress("c", 30002, WIRE_CLASSIC),
        ServerAddress("::1", 30002, WIRE_PINBA2),
    )
    assert parse_addresses([("pinba2://h", 5), ("h2", 6)]) == (
        ServerAddress("h", 5, WIRE_PINBA2),
        ServerAddress("h2", 6, WIRE_CLASSIC),
    )
    assert ServerAddress("h", 1).wire == WIRE_CLASSIC


def test_address_text_round_trips_with_its_wire():
    for text in ("pinba2://a:1", "pinba2://[::1]:30002", "a:1", "[::1]:2"):
        (server,) = parse_addresses(text)
        assert str(server) == text
        assert parse_addresses(str(server)) == (server,)


@pytest.mark.parametrize(
    ("address", "complaint"),
    [
        ("pinba3://a:1", "unknown wire 'pinba3'"),
        ("a:1 pinba2://a:1", "listed both as classic and as pinba2"),
        ("pinba2://", "empty host"),
        ("pinba2://a:x", "port"),
        (("pinba2://", 5), "empty host"),
    ],
)
def test_bad_wire_options_are_value_errors_naming_the_argument(address, complaint):
    with pytest.raises(ValueError, match=complaint) as raised:
        parse_addresses(address)
    assert str(raised.value).startswith("address")


def test_server_address_checks_its_wire():
    with pytest.raises(ValueError, match="wire must be one of classic, pinba2"):
        ServerAddress("a", 1, "pinba3")


def test_the_environment_variable_carries_the_wire_option(udp_listener_factory, reporter_factory):
    new, old = udp_listener_factory(), udp_listener_factory()
    settings = config.resolve(environ={"PINBA_SERVER": f"{pinba2(new)},{classic(old)}"})
    reporter = reporter_factory(settings.address)
    assert [server.wire for server in reporter.servers] == [WIRE_PINBA2, WIRE_CLASSIC]
    reporter.report(**COMPRESSIBLE)
    assert new.receive() == framing.compress(encoded(COMPRESSIBLE, packed=True))
    assert old.receive() == encoded(COMPRESSIBLE)


# -- the reporter: each server gets its form ------------------------------------------


def test_fan_out_sends_each_server_its_form(udp_listener_factory, reporter_factory):
    old_1, new_1, old_2, new_2 = (udp_listener_factory() for _ in range(4))
    reporter = reporter_factory(
        [classic(old_1), pinba2(new_1), classic(old_2), pinba2(new_2)], raise_on_fail=True
    )
    for request, pinba2_form in (
        (SMALL, encoded(SMALL, packed=True)),
        (COMPRESSIBLE, framing.compress(encoded(COMPRESSIBLE, packed=True))),
    ):
        reporter.report(**request)
        for listener in (old_1, old_2):
            data = listener.receive()
            assert data == encoded(request)
            assert_valid(data)
        for listener in (new_1, new_2):
            data = listener.receive()
            assert data == pinba2_form
            assert_valid(framing.unframe(data), packed_ok=True)
            assert decode.read_datagram(data) == decode.read_datagram(encoded(request))
    assert reporter.stats == {"sent": 8, "failed": 0, "oversize": 0, "compressed": 1}
    assert "pinba2://" in repr(reporter)


def test_an_encoding_failure_is_raised_after_every_server_was_tried(
    udp_listener_factory, reporter_factory, monkeypatch
):
    # The one fault injected here: no real request encodes in one wire form
    # and fails in the other.
    classic_listener, pinba2_listener = udp_listener_factory(), udp_listener_factory()
    real_encode = encoder.encode

    def classic_fails(*args, **kwargs):
        if not (args[14] if len(args) > 14 else kwargs.get("packed", False)):
            raise ValueError("cannot encode this one")
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(reporter_module, "encode", classic_fails)
    reporter = reporter_factory(
        [classic(classic_listener), pinba2(pinba2_listener)], raise_on_fail=True
    )
    with pytest.raises(ValueError, match="cannot encode this one"):
        reporter.report(**SMALL)
    assert decode.read_datagram(pinba2_listener.receive()).script_name == SMALL["script_name"]
    assert classic_listener.pending(timeout=0.05) == []
    assert reporter.stats == {"sent": 1, "failed": 1, "oversize": 0, "encode": 1}


def test_a_request_is_encoded_once_per_wire_form(
    udp_listener_factory, reporter_factory, monkeypatch
):
    listeners = [udp_listener_factory() for _ in range(4)]
    calls = []
    real_encode = encoder.encode

    def counting_encode(*args, **kwargs):
        calls.append(bool(args[14]) if len(args) > 14 else kwargs.get("packed", False))
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(reporter_module, "encode", counting_encode)
    reporter = reporter_factory([pinba2(listeners[0]), classic(listeners[1]),
                                 pinba2(listeners[2]), classic(listeners[3])])  # fmt: skip
    reporter.report(**SMALL)
    assert sorted(calls) == [False, True]
    assert reporter.stats["sent"] == 4
    for listener in listeners:
        listener.receive()


def test_pinba2_small_requests_are_packed_not_compressed(udp_listener, reporter_factory):
    packed = encoded(SMALL, packed=True)
    assert len(packed) <= DEFAULT_COMPRESS_ABOVE
    assert len(framing.compress(packed)) < len(packed)  # would shrink, but fits anyway
    reporter = reporter_factory(pinba2(udp_listener))
    reporter.report(**SMALL)
    assert udp_listener.receive() == packed
    assert "compressed" not in reporter.stats


def test_the_threshold_is_configurable_and_exclusive(udp_listener, reporter_factory):
    packed = encoded(SMALL, packed=True)
    at_threshold = reporter_factory(pinba2(udp_listener), compress_above=len(packed))
    at_threshold.report(**SMALL)
    assert udp_listener.receive() == packed
    below = reporter_factory(pinba2(udp_listener), compress_above=len(packed) - 1)
    below.report(**SMALL)
    assert udp_listener.receive() == framing.compress(packed)
    assert below.stats["compressed"] == 1
    below.compress_above = 65507
    below.report(**COMPRESSIBLE)
    assert udp_listener.receive() == encoded(COMPRESSIBLE, packed=True)


def test_large_requests_are_compressed_only_when_it_helps(udp_listener, reporter_factory):
    packed = encoded(INCOMPRESSIBLE, packed=True)
    assert len(packed) > DEFAULT_COMPRESS_ABOVE
    assert len(framing.compress(packed)) >= len(packed)
    reporter = reporter_factory(pinba2(udp_listener))
    reporter.report(**INCOMPRESSIBLE)
    data = udp_listener.receive()
    assert data == packed
    assert_valid(data, packed_ok=True)
    assert "compressed" not in reporter.stats


@pytest.mark.parametrize("value", [-1, 1.5, "1472", True, None])
def test_compress_above_is_checked(value):
    error = ValueError if value == -1 else TypeError
    with pytest.raises(error, match="compress_above"):
        Reporter("127.0.0.1:30002", compress_above=value)


# -- the oversize policy, per server ----------------------------------------------------


def test_oversize_is_decided_per_server_after_packing_and_compression(
    udp_listener_factory, reporter_factory, caplog
):
    old, new = udp_listener_factory(), udp_listener_factory()
    assert len(encoded(CLASSIC_OVERSIZE)) > encoder.MAX_DATAGRAM
    reporter = reporter_factory([classic(old), pinba2(new)])
    with caplog.at_level(logging.WARNING, logger="pynba"):
        reporter.report(**CLASSIC_OVERSIZE)
    assert old.receive() == encoded(without_timers(CLASSIC_OVERSIZE))
    data = new.receive()
    assert len(data) < encoder.MAX_DATAGRAM
    assert data == framing.compress(encoded(CLASSIC_OVERSIZE, packed=True))
    assert len(decode.read_datagram(data).timers) == 2100  # the pinba2 server keeps them
    assert reporter.stats == {"sent": 2, "failed": 0, "oversize": 1, "compressed": 1}
    (warning,) = [r for r in caplog.records if r.name == "pynba"]
    assert "(classic)" in warning.getMessage()
    assert "2100 timers" in warning.getMessage()


def test_a_request_too_big_even_compressed_goes_without_timers_to_every_server(
    udp_listener_factory, reporter_factory, caplog
):
    old, new = udp_listener_factory(), udp_listener_factory()
    assert len(encoded(ALWAYS_OVERSIZE, packed=True)) > framing.MAX_UNCOMPRESSED
    reporter = reporter_factory([pinba2(new), classic(old)], raise_on_fail=True)
    with caplog.at_level(logging.WARNING, logger="pynba"):
        reporter.report(**ALWAYS_OVERSIZE)
    bare = without_timers(ALWAYS_OVERSIZE)
    assert old.receive() == encoded(bare)
    assert new.receive() == encoded(bare, packed=True)  # small again: not compressed
    assert encoded(bare) != encoded(bare, packed=True)
    assert reporter.stats == {"sent": 2, "failed": 0, "oversize": 2}
    messages = [r.getMessage() for r in caplog.records if r.name == "pynba"]
    assert len(messages) == 2
    assert any("(pinba2)" in message for message in messages)
    assert any("(classic)" in message for message in messages)


def test_incompressible_packed_request_over_the_limit_goes_without_timers(
    udp_listener, reporter_factory
):
    # Packed it fits in a v1 frame, but random bytes do not compress (a tag value
    # is sent up to 1,024 bytes: many tags make it big).
    blobs = {str(seed): noise(1000, seed) for seed in range(65)}
    request = with_timers([(blobs, 0.5, 1, 0.0, 0.0)])
    blobs["64"] = blobs["64"][: 1000 - (len(encoded(request, packed=True)) - 65520)]
    request = with_timers([(blobs, 0.5, 1, 0.0, 0.0)])
    packed = encoded(request, packed=True)
    assert len(packed) == 65520
    assert encoder.MAX_DATAGRAM < len(packed) <= framing.MAX_UNCOMPRESSED
    reporter = reporter_factory(pinba2(udp_listener))
    reporter.report(**request)
    assert udp_listener.receive() == encoded(without_timers(request), packed=True)
    assert reporter.stats["oversize"] == 1


# -- without the lz4 package ------------------------------------------------------------

WITHOUT_LZ4 = """
import ast, sys
sys.modules["lz4"] = None  # as if the optional extra were not installed
sys.modules["lz4.block"] = None
from pynba.wire import framing
from pynba.reporter import Reporter
assert not framing.LZ4_AVAILABLE
request = ast.literal_eval(sys.argv[2])
with Reporter(sys.argv[1], raise_on_fail=True) as reporter:
    reporter.report(**request)
print(sorted(reporter.stats.items()))
try:
    framing.compress(b"\\x0a")
except RuntimeError as error:
    print(error)
"""


def test_without_lz4_pinba2_servers_get_packed_datagrams(udp_listener):
    source = Path(__file__).resolve().parents[1] / "src"
    environment = {**os.environ, "PYTHONPATH": str(source)}
    completed = subprocess.run(
        [sys.executable, "-c", WITHOUT_LZ4, pinba2(udp_listener), repr(COMPRESSIBLE)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=True,
    )
    assert udp_listener.receive() == encoded(COMPRESSIBLE, packed=True)
    lines = completed.stdout.splitlines()
    assert lines[0] == "[('failed', 0), ('oversize', 0), ('sent', 1)]"
    assert "pip install lz4" in lines[1]

"""The packed form (proto2 ``[packed=true]`` for fields 10-14 and 20-23) of both encoders."""

import struct

import pytest
from hypothesis import given, settings

from pinba2_rules import assert_valid, fields, violations
from pinba_pb2 import Request
from pynba.wire import decode, fallback
from test_properties import EXAMPLES, PROPERTY, encode_with, requests, timer_lists

PACKED_FIELDS = (10, 11, 12, 13, 14, 20, 21, 22, 23)


def request(timer_count, tags=None):
    """A request like a web application's, with ``timer_count`` distinct timers."""
    timers = [
        ({"group": ("db", "cache", "http")[i % 3], "op": f"op-{i}"}, 0.001 * (i + 1), 1 + i % 4,
         0.0001 * i, 0.00005 * i)
        for i in range(timer_count)
    ]  # fmt: skip
    if tags is None:
        tags = {"app": "shop", "country": "fr"}
    return ("web-1", "shop.example.com", "/users/{id}", 1, 5120, 24 << 20,
            0.0421, 0.0183, 0.0021, 200, 1 << 20, "https", tags, timers)  # fmt: skip


def parse(datagram):
    message = Request()
    message.ParseFromString(datagram)
    return message


CASES = {
    "no timers, no tags": request(0, tags={}),
    "no timers": request(0),
    "one timer": request(1),
    "typical": request(10),
    "dictionary past 127 words": request(200),
    "large hit counts": (*request(3)[:-1], [({"a": "b"}, 0.5, 300, 0.0, 0.0)]),
}


@pytest.mark.parametrize("arguments", CASES.values(), ids=CASES.keys())
def test_packed_is_byte_identical_in_both_encoders(encode, arguments):
    assert encode(*arguments, packed=True) == fallback.encode(*arguments, packed=True)


@pytest.mark.parametrize("arguments", CASES.values(), ids=CASES.keys())
def test_protobuf_reads_packed_as_the_same_message_as_unpacked(encode, arguments):
    packed = encode(*arguments, packed=True)
    unpacked = encode(*arguments)
    assert parse(packed) == parse(unpacked)
    assert parse(packed).SerializeToString() == unpacked  # protobuf itself writes unpacked


@pytest.mark.parametrize("arguments", CASES.values(), ids=CASES.keys())
def test_packed_datagrams_pass_pinba2_rules(encode, arguments):
    packed = encode(*arguments, packed=True)
    assert_valid(packed, packed_ok=True)
    assert violations(packed, packed_ok=True) == []


@pytest.mark.parametrize("arguments", CASES.values(), ids=CASES.keys())
def test_each_packed_field_is_sent_once_and_only_when_it_has_values(encode, arguments):
    packed = encode(*arguments, packed=True)
    walked = fields(packed)
    numbers = [number for number, _, _ in walked]
    for number in PACKED_FIELDS:
        assert numbers.count(number) <= 1
    for number, wire_type, value in walked:
        if number in PACKED_FIELDS:
            assert wire_type == 2
            assert value  # an empty repeated field is left out
    unpacked_numbers = {number for number, _, _ in fields(encode(*arguments))}
    assert set(numbers) == unpacked_numbers  # same fields, same order of first appearance


def test_packed_is_the_classic_form_when_nothing_repeats(encode):
    arguments = CASES["no timers, no tags"]
    assert encode(*arguments, packed=True) == encode(*arguments)


def test_packed_is_smaller_from_a_few_timers_on(encode):
    for timer_count in (3, 10, 200):
        arguments = request(timer_count)
        assert len(encode(*arguments, packed=True)) < len(encode(*arguments))
    # A one-value field costs a length byte more packed than unpacked: fields 10-12
    # (+3), and 22 and 23 when the timer has CPU times (+2); the request tags' fields
    # 20 and 21 hold two values each and save a byte each (-2).
    one = request(1)  # its timer has no CPU times
    assert len(encode(*one, packed=True)) == len(encode(*one)) + 1
    with_cpu = (*one[:-1], [(*one[-1][0][:3], 0.5, 0.0)])
    assert len(encode(*with_cpu, packed=True)) == len(encode(*with_cpu)) + 3


def f32(value):
    return struct.pack("<f", value)


def test_golden_bytes_of_a_small_packed_request(encode):
    datagram = encode(
        "h", "s", "/", 1, 2, 3, 0.5, 0.25, 0.0, 200, 0, None,
        {"a": "b"}, [({"g": "db"}, 1.0, 300, 0.5, 0.0)], packed=True,
    )  # fmt: skip
    # Dictionary: request tags first ("a" 0, "b" 1), then the timer's ("g" 2, "db" 3).
    expected = b"".join([
        b"\x0a\x01h", b"\x12\x01s", b"\x1a\x01/",           # 1-3 strings
        b"\x20\x01", b"\x28\x02", b"\x30\x03",              # 4-6 varints
        b"\x3d" + f32(0.5), b"\x45" + f32(0.25), b"\x4d" + f32(0.0),  # 7-9 floats
        b"\x52\x02\xac\x02",         # 10 packed: [300], a 2-byte varint: length 2
        b"\x5a\x04" + f32(1.0),      # 11 packed: [1.0]
        b"\x62\x01\x01",             # 12 packed: [1 tag]
        b"\x6a\x01\x02",             # 13 packed: name "g"
        b"\x72\x01\x03",             # 14 packed: value "db"
        b"\x7a\x01a", b"\x7a\x01b", b"\x7a\x01g", b"\x7a\x02db",  # 15 dictionary
        b"\x80\x01\xc8\x01",         # 16 status 200
        b"\x88\x01\x00",             # 17 memory_footprint 0
        b"\xa2\x01\x01\x00",         # 20 packed: [0] ("a")
        b"\xaa\x01\x01\x01",         # 21 packed: [1] ("b")
        b"\xb2\x01\x04" + f32(0.5),  # 22 packed: [0.5]
        b"\xba\x01\x04" + f32(0.0),  # 23 packed: [0.0]
    ])  # fmt: skip
    assert datagram == expected


def test_golden_bytes_of_a_small_packed_request_without_timer_cpu(encode):
    datagram = encode(
        "h", "s", "/", 1, 2, 3, 0.5, 0.25, 0.0, 200, 0, None,
        {"a": "b"}, [({"g": "db"}, 1.0, 300, 0.0, 0.0), ({"g": "x"}, 0.5, 1, -1.0, 0.0)],
        packed=True,
    )  # fmt: skip
    expected = b"".join([
        b"\x0a\x01h", b"\x12\x01s", b"\x1a\x01/",
        b"\x20\x01", b"\x28\x02", b"\x30\x03",
        b"\x3d" + f32(0.5), b"\x45" + f32(0.25), b"\x4d" + f32(0.0),
        b"\x52\x03\xac\x02\x01",        # 10 packed: [300, 1]
        b"\x5a\x08" + f32(1.0) + f32(0.5),  # 11 packed
        b"\x62\x02\x01\x01",            # 12 packed: [1, 1]
        b"\x6a\x02\x02\x02",            # 13 packed: "g", "g"
        b"\x72\x02\x03\x04",            # 14 packed: "db", "x"
        b"\x7a\x01a", b"\x7a\x01b", b"\x7a\x01g", b"\x7a\x02db", b"\x7a\x01x",
        b"\x80\x01\xc8\x01", b"\x88\x01\x00",
        b"\xa2\x01\x01\x00", b"\xaa\x01\x01\x01",
        # no 22, no 23: every timer's CPU times are 0 (-1.0 is sent as 0)
    ])  # fmt: skip
    assert datagram == expected
    assert_valid(datagram, packed_ok=True)
    assert not parse(datagram).timer_ru_utime and not parse(datagram).timer_ru_stime


def test_packed_varint_lengths_count_bytes_not_values(encode):
    timers = [({"n": str(i)}, 0.001, 1, 0.0, 0.0) for i in range(300)]
    datagram = encode("h", "s", "/", 1, 0, 0, 0.0, 0.0, 0.0, 0, 0, None, {}, timers, packed=True)
    walked = {number: value for number, _, value in fields(datagram)}
    # value indices run 1..300: 127 one-byte varints, 173 two-byte ones
    assert len(walked[14]) == 127 + 2 * 173
    assert decode.unpack_varints(walked[14]) == list(range(1, 301))
    assert len(walked[11]) == 300 * 4


def test_packed_is_false_by_default_and_taken_by_keyword_or_position(encode):
    arguments = request(5)
    assert encode(*arguments) == encode(*arguments, packed=False)
    assert encode(*arguments, True) == encode(*arguments, packed=True)


def test_project_decoder_reads_packed_as_unpacked(encode):
    for arguments in CASES.values():
        packed = decode.read_datagram(encode(*arguments, packed=True))
        unpacked = decode.read_datagram(encode(*arguments))
        assert packed == unpacked


@settings(PROPERTY, max_examples=max(EXAMPLES // 3, 50))
@given(arguments=requests)
def test_random_requests_packed(encode, arguments):
    packed = encode_with(lambda *a: encode(*a, packed=True), arguments)
    assert packed == encode_with(lambda *a: fallback.encode(*a, packed=True), arguments)
    assert_valid(packed, packed_ok=True)
    assert parse(packed) == parse(encode_with(encode, arguments))


@settings(PROPERTY, max_examples=30)
@given(arguments=requests, timers=timer_lists(max_timers=400))
def test_random_requests_packed_with_many_timers(encode, arguments, timers):
    arguments = {**arguments, "timers": timers}
    packed = encode_with(lambda *a: encode(*a, packed=True), arguments)
    assert packed == encode_with(lambda *a: fallback.encode(*a, packed=True), arguments)
    assert_valid(packed, packed_ok=True)
    assert parse(packed) == parse(encode_with(encode, arguments))

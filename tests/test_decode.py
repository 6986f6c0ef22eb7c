"""The pure-Python decoder against Google protobuf, pinba2's framing, and random bytes."""

import math
import os
import random
import struct

import lz4.block
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pinba2_rules import fields
from pinba_pb2 import Request
from pynba.cli.listener import examine
from pynba.wire import validate
from pynba.wire.decode import (
    FIELD_NAMES,
    DecodeError,
    PinbaRequest,
    decode_request,
    read_datagram,
    unframe,
)

EXAMPLES = int(os.environ.get("PYNBA_HYPOTHESIS_EXAMPLES", "300"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SCALAR_FIELDS = [name for number, name in FIELD_NAMES.items() if number not in (18,)]
PACKABLE = (10, 11, 12, 13, 14, 20, 21, 22, 23)

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
uint32 = st.integers(0, 2**32 - 1)
float32 = st.floats(width=32)


@st.composite
def messages(draw):
    """Any Pinba.Request Google protobuf can serialize (valid protobuf, not always valid Pinba)."""
    message = Request(
        hostname=draw(text),
        server_name=draw(text),
        script_name=draw(text),
        request_count=draw(uint32),
        document_size=draw(uint32),
        memory_peak=draw(uint32),
        request_time=draw(float32),
        ru_utime=draw(float32),
        ru_stime=draw(float32),
    )
    for name in ("timer_hit_count", "timer_tag_count", "timer_tag_name", "timer_tag_value"):
        getattr(message, name).extend(draw(st.lists(uint32, max_size=6)))
    for name in ("tag_name", "tag_value"):
        getattr(message, name).extend(draw(st.lists(st.integers(0, 8), max_size=4)))
    for name in ("timer_value", "timer_ru_utime", "timer_ru_stime"):
        getattr(message, name).extend(draw(st.lists(float32, max_size=6)))
    message.dictionary.extend(draw(st.lists(text, max_size=8)))
    for name in ("status", "memory_footprint"):
        if draw(st.booleans()):
            setattr(message, name, draw(uint32))
    if draw(st.booleans()):
        message.schema = draw(text)
    return message


def same_float(a, b):
    return struct.pack("<f", a) == struct.pack("<f", b) or (math.isnan(a) and math.isnan(b))


def assert_same(decoded: PinbaRequest, message: Request):
    for name in SCALAR_FIELDS:
        ours, theirs = getattr(decoded, name), getattr(message, name)
        if isinstance(ours, list):
            theirs = list(theirs)
            assert len(ours) == len(theirs), name
            if ours and isinstance(ours[0], float):
                assert all(map(same_float, ours, theirs)), name
            else:
                assert ours == theirs, name
        elif isinstance(ours, float):
            assert same_float(ours, theirs), name
        else:
            assert ours == theirs, name
    assert decoded.nested_requests == len(message.requests)


def packed(datagram):
    """The same message with every repeated scalar field packed, where its first element was."""
    groups = {}
    order = []
    for number, wire_type, value in fields(datagram):
        if number in PACKABLE:
            if number not in groups:
                groups[number] = b""
                order.append(("packed", number))
            if wire_type == 5:
                groups[number] += value
            else:
                groups[number] += _varint(value)
        else:
            order.append((number, wire_type, value))
    out = b""
    for item in order:
        if item[0] == "packed":
            number = item[1]
            out += _varint(number << 3 | 2) + _varint(len(groups[number])) + groups[number]
        else:
            number, wire_type, value = item
            out += _varint(number << 3 | wire_type)
            if wire_type == 0:
                out += _varint(value)
            elif wire_type == 2:
                out += _varint(len(value)) + value
            else:
                out += value
    return out


def _varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def parse(datagram):
    message = Request()
    message.ParseFromString(datagram)
    return message


@PROPERTY
@given(messages())
def test_decodes_what_google_protobuf_decodes(message):
    datagram = message.SerializeToString()
    assert_same(decode_request(datagram), message)


@PROPERTY
@given(messages())
def test_decodes_packed_repeated_fields(message):
    datagram = packed(message.SerializeToString())
    assert_same(decode_request(datagram), parse(datagram))
    assert_same(decode_request(datagram), message)


def test_decodes_what_the_encoder_sends(encode):
    chooser = random.Random(7)
    for _ in range(200):
        timers = [
            (
                {f"t{chooser.randint(0, 3)}": chooser.choice(["a", "b", 1, 2.5, True])},
                chooser.random(),
                chooser.randint(1, 5),
                chooser.random(),
                chooser.random(),
            )
            for _ in range(chooser.randint(0, 5))
        ]
        tags = {f"r{i}": chooser.choice(["x", "é", "", 7]) for i in range(chooser.randint(0, 3))}
        datagram = encode(
            "host", "server", "/s", 1, 10, 20, chooser.random(), 0.01, 0.02, 200, 30,
            chooser.choice([None, "https"]), tags, timers,
        )  # fmt: skip
        decoded = decode_request(datagram)
        message = parse(datagram)
        assert_same(decoded, message)
        words = list(message.dictionary)
        assert decoded.tags == [
            (words[n], words[v]) for n, v in zip(message.tag_name, message.tag_value, strict=True)
        ]
        assert [t.hit_count for t in decoded.timers] == list(message.timer_hit_count)
        sent_as = {True: "1"}
        distinct = {
            tuple((name, sent_as.get(value, str(value))) for name, value in t[0].items())
            for t in timers
        }
        assert len(decoded.timers) == len(distinct)


def test_resolves_tags_and_timers():
    message = Request(
        hostname="h", server_name="s", script_name="/users/{id}", request_count=1,
        document_size=0, memory_peak=0, request_time=0.5, ru_utime=0, ru_stime=0,
        dictionary=["group", "db", "op", "select", "app"],
        timer_hit_count=[2], timer_value=[0.25], timer_tag_count=[2],
        timer_tag_name=[0, 2], timer_tag_value=[1, 3],
        timer_ru_utime=[0.125], timer_ru_stime=[0.0625],
        tag_name=[4], tag_value=[1], status=200,
    )  # fmt: skip
    request = decode_request(message.SerializeToString())
    assert request.script_name == "/users/{id}"
    assert request.tags == [("app", "db")]
    (timer,) = request.timers
    assert timer.tags == (("group", "db"), ("op", "select"))
    assert (timer.value, timer.hit_count, timer.ru_utime, timer.ru_stime) == (
        0.25,
        2,
        0.125,
        0.0625,
    )
    assert request.timer(op="select", group="db") is not None
    assert timer.tag("op") == "select"
    with pytest.raises(LookupError):
        request.timer(group="cache")
    assert request.as_dict()["timers"][0]["tags"] == [["group", "db"], ["op", "select"]]


def test_an_index_past_the_dictionary_is_shown_not_raised():
    message = parse(
        Request(
            hostname="h", server_name="s", script_name="x", request_count=1, document_size=0,
            memory_peak=0, request_time=0, ru_utime=0, ru_stime=0, tag_name=[5], tag_value=[0],
            dictionary=["a"],
        ).SerializeToString()
    )  # fmt: skip
    request = decode_request(message.SerializeToString())
    assert request.tags == [("<no dictionary entry 5>", "a")]


def valid_datagram():
    return Request(
        hostname="web-1", server_name="shop", script_name="/", request_count=1,
        document_size=10, memory_peak=20, request_time=0.1, ru_utime=0.01, ru_stime=0.0,
        timer_hit_count=[1], timer_value=[0.05], timer_tag_count=[1], timer_tag_name=[0],
        timer_tag_value=[1], dictionary=["group", "db"], status=200, timer_ru_utime=[0.0],
        timer_ru_stime=[0.0],
    ).SerializeToString()  # fmt: skip


def v1_frame(payload, compressed):
    if compressed:
        body = lz4.block.compress(payload, store_size=False)
        return struct.pack(">HH", 0x1001, len(payload)) + body
    return struct.pack(">HH", 0x1000, len(payload)) + payload


@pytest.mark.parametrize("compressed", [False, True], ids=["v1", "v1+lz4"])
def test_reads_pinba2_framed_datagrams(compressed):
    payload = valid_datagram()
    framed = v1_frame(payload, compressed)
    assert unframe(framed) == (payload, "v1+lz4" if compressed else "v1")
    assert read_datagram(framed) == decode_request(payload)
    received = examine(framed)
    assert received.accepted, received.problems
    assert received.framing == ("v1+lz4" if compressed else "v1")


def test_lz4_frame_with_no_length_in_its_header():
    payload = valid_datagram()
    framed = struct.pack(">HH", 0x1001, 0) + lz4.block.compress(payload, store_size=False)
    assert unframe(framed)[0] == payload


@pytest.mark.parametrize(
    "datagram, reason",
    [
        (b"", "empty datagram"),
        (b"\x20\x00\x00\x00", "unknown datagram version 2"),
        (b"\x10\x02\x00\x00", "unknown flags 0x002"),
        (b"\x10\x01\x00\x10\xff\xff", "does not decompress"),
        (b"\x10", "shorter than its header"),
    ],
)
def test_bad_frames_say_why(datagram, reason):
    with pytest.raises(DecodeError, match=reason):
        unframe(datagram)
    assert not examine(datagram).accepted


@pytest.mark.parametrize(
    "datagram, reason",
    [
        (valid_datagram()[:-3], "truncated"),
        (b"\x0a\x01h", "missing required fields: server_name"),
        (b"\x0a\x01h\x10\x01", "hostname"),  # field 2 as a varint: wrong wire type
        (b"\x0a\x05ab", "truncated field 1"),
        (b"\x0f", "wire type 7"),
        (b"\x0a" + b"\xff" * 11, "varint longer than 10 bytes"),
        (b"\x00", "field number 0"),
    ],
)
def test_malformed_messages_say_why(datagram, reason):
    with pytest.raises(DecodeError):
        decode_request(datagram)
    received = examine(datagram)
    assert not received.accepted
    assert received.drop_reasons
    assert received.request is None


def test_drops_and_warnings_are_told_apart():
    accepted = examine(valid_datagram())
    assert accepted.accepted and accepted.problems == []
    nul = parse(valid_datagram())
    nul.dictionary[1] = "d\x00b"
    received = examine(nul.SerializeToString())
    assert received.accepted
    assert any("NUL" in warning for warning in received.warnings)
    nan = parse(valid_datagram())
    nan.timer_value[0] = math.nan
    received = examine(nan.SerializeToString())
    assert not received.accepted
    assert received.drop_reasons == ["timer_value[0]: NaN float32 0000c07f"]
    assert validate.drop_reasons(nan.SerializeToString()) == received.drop_reasons


def test_starting_with_another_field_is_a_drop():
    datagram = valid_datagram()
    # script_name first: pinba2 reads byte 0x1a as a v1 header.
    moved = bytes.fromhex("1a012f") + datagram.replace(b"\x1a\x01/", b"")
    assert decode_request(moved).script_name == "/"
    (reason,) = validate.drop_reasons(moved)
    assert "non-zero high nibble" in reason


@PROPERTY
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(data):
    check_never_crashes(data)


@PROPERTY
@given(st.data())
def test_damaged_datagrams_never_crash(data):
    datagram = bytearray(valid_datagram())
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(datagram) - 1))
        datagram[position] = data.draw(st.integers(0, 255))
    check_never_crashes(bytes(datagram))
    cut = data.draw(st.integers(0, len(datagram)))
    check_never_crashes(bytes(datagram[:cut]))
    check_never_crashes(v1_frame(bytes(datagram[:cut]), compressed=True))


def test_every_truncation_is_reported_unless_it_is_a_valid_message():
    datagram = valid_datagram()
    required_end = datagram.index(b"M") + 5  # the key of field 9, then its 4 bytes
    for cut in range(len(datagram)):
        received = check_never_crashes(datagram[:cut])
        if cut < required_end:
            assert not received.accepted, cut
        if received.accepted:  # cut between fields: Google protobuf agrees it is whole
            message = parse(datagram[:cut])
            assert message.IsInitialized()
            assert_same(received.request, message)


def check_never_crashes(data):
    try:
        request = read_datagram(data)
    except DecodeError:
        request = None
    else:
        assert isinstance(request, PinbaRequest)
        request.tags, request.timers, request.as_dict()  # resolving never raises either
    received = examine(data)
    assert received.accepted == (not received.drop_reasons and received.request is not None)
    if request is None:
        assert not received.accepted and received.drop_reasons
    return received

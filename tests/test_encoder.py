"""The datagram encoder, checked through Google protobuf and pinba2's rules.

Every test runs against both encoders (the ``encode`` fixture); every datagram
made here must pass ``pinba2_rules.assert_valid``.
"""

import collections
import math
import random
import struct
import sys
import threading

import pytest

from conftest import compiled_encoder
from pinba2_rules import assert_valid, fields, timer_cpu, violations
from pinba_pb2 import Request
from pynba.wire import fallback
from pynba.wire.encoder import ARGUMENTS, MAX_TEXT_BYTES

FLT_MIN = 1.1754943508222875e-38  # 2**-126
FLT_MAX = 3.4028234663852886e38  # (2 - 2**-23) * 2**127
UINT32_MAX = 2**32 - 1
NAN = float("nan")
INF = float("inf")

DEFAULTS = {
    "hostname": "web1",
    "server_name": "example.com",
    "script_name": "/index",
    "request_count": 1,
    "document_size": 0,
    "memory_peak": 0,
    "request_time": 0.0,
    "ru_utime": 0.0,
    "ru_stime": 0.0,
    "status": 200,
    "memory_footprint": 0,
    "schema": None,
    "tags": (),
    "timers": (),
}


def make(encode, **arguments):
    """The datagram for DEFAULTS overridden by ``arguments``, checked against pinba2's rules."""
    merged = {**DEFAULTS, **arguments}
    datagram = encode(*(merged[name] for name in ARGUMENTS))
    assert isinstance(datagram, bytes)
    assert_valid(datagram)
    return datagram


def decode(datagram):
    message = Request()
    message.ParseFromString(datagram)
    return message


def roundtrip(encode, **arguments):
    return decode(make(encode, **arguments))


def f32(value):
    """``value`` as it reads back after a float32 round trip."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def raw(text):
    """A decoded string field as bytes (protobuf gives bytes when it is not UTF-8)."""
    return text if isinstance(text, bytes) else text.encode("utf-8")


def words(message):
    return [raw(word) for word in message.dictionary]


def request_tags(message):
    dictionary = words(message)
    return [
        (dictionary[n], dictionary[v])
        for n, v in zip(message.tag_name, message.tag_value, strict=True)
    ]


def timers(message):
    """Each timer as ``(tags, value, hit_count, ru_utime, ru_stime)``, tags as byte pairs."""
    dictionary = words(message)
    out = []
    start = 0
    for i, count in enumerate(message.timer_tag_count):
        names = message.timer_tag_name[start : start + count]
        values = message.timer_tag_value[start : start + count]
        start += count
        tags = [(dictionary[n], dictionary[v]) for n, v in zip(names, values, strict=True)]
        out.append(
            (
                tags,
                message.timer_value[i],
                message.timer_hit_count[i],
                *timer_cpu(message, i),
            )
        )
    return out


def numbers(datagram):
    return [number for number, _, _ in fields(datagram)]


def timer(tags, value=0.001, hit_count=1, ru_utime=0.0, ru_stime=0.0):
    return (tags, value, hit_count, ru_utime, ru_stime)


# -- round trip -------------------------------------------------------------------


def test_every_field_round_trips(encode):
    message = roundtrip(
        encode,
        hostname="web-01.local",
        server_name="shop.example.com",
        script_name="/cart/checkout",
        request_count=3,
        document_size=12345,
        memory_peak=2**31 + 7,
        request_time=0.123456,
        ru_utime=0.05,
        ru_stime=0.007,
        status=503,
        memory_footprint=4096,
        schema="https",
        tags={"country": "nl", "user": "guest"},
        timers=[
            timer({"group": "db", "op": "select"}, 0.0314, 2, 0.01, 0.002),
            timer({"group": "cache"}, 0.5, 7, 0.25, 0.125),
        ],
    )
    assert message.hostname == "web-01.local"
    assert message.server_name == "shop.example.com"
    assert message.script_name == "/cart/checkout"
    assert message.request_count == 3
    assert message.document_size == 12345
    assert message.memory_peak == 2**31 + 7
    assert message.request_time == f32(0.123456)
    assert message.ru_utime == f32(0.05)
    assert message.ru_stime == f32(0.007)
    assert message.status == 503
    assert message.memory_footprint == 4096
    assert message.schema == "https"
    assert request_tags(message) == [(b"country", b"nl"), (b"user", b"guest")]
    assert timers(message) == [
        ([(b"group", b"db"), (b"op", b"select")], f32(0.0314), 2, f32(0.01), f32(0.002)),
        ([(b"group", b"cache")], 0.5, 7, 0.25, 0.125),
    ]
    assert not message.requests


def test_required_fields_are_sent_when_empty_or_zero(encode):
    datagram = make(
        encode,
        hostname="",
        server_name="",
        script_name="",
        request_count=0,
        document_size=0,
        memory_peak=0,
        request_time=0.0,
        ru_utime=0.0,
        ru_stime=0.0,
        status=0,
        memory_footprint=0,
    )
    walked = fields(datagram)
    assert [number for number, _, _ in walked] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17]
    assert [value for _, _, value in walked] == [b"", b"", b"", 0, 0, 0] + [bytes(4)] * 3 + [0, 0]
    message = decode(datagram)
    assert message.IsInitialized()
    for name in ("hostname", "server_name", "script_name", "request_count", "ru_stime"):
        assert message.HasField(name)


def test_fields_follow_the_reference_client_order(encode):
    datagram = make(
        encode,
        schema="http",
        tags=[("a", "1"), ("b", "2"), ("c", "3")],
        timers=[
            timer({"x": "1", "y": "2"}),
            timer({"x": "2"}),
            timer({"z": "1", "x": "1", "y": "2"}, ru_stime=0.5),  # CPU: 22 and 23 are sent
        ],
    )
    timer_count, pairs, tags = 3, 6, 3
    dictionary = len(decode(datagram).dictionary)
    assert numbers(datagram) == [
        *range(1, 10),
        *[10] * timer_count,
        *[11] * timer_count,
        *[12] * timer_count,
        *[13] * pairs,
        *[14] * pairs,
        *[15] * dictionary,
        16,
        17,
        19,
        *[20] * tags,
        *[21] * tags,
        *[22] * timer_count,
        *[23] * timer_count,
    ]


def test_repeated_fields_are_not_packed(encode):
    datagram = make(encode, tags={"a": "b"}, timers=[timer({"a": "c"}), timer({"d": "e"})])
    for number, wire_type, _ in fields(datagram):
        if number in (10, 12, 13, 14, 20, 21):
            assert wire_type == 0, number
        if number in (7, 8, 9, 11, 22, 23):
            assert wire_type == 5, number


@pytest.mark.parametrize("schema", [None, "", b"", False])
def test_schema_is_left_out_when_not_set(encode, schema):
    datagram = make(encode, schema=schema)
    assert 19 not in numbers(datagram)
    assert not decode(datagram).HasField("schema")


@pytest.mark.parametrize(("schema", "expected"), [("http", "http"), (b"https", "https")])
def test_schema_is_sent_when_set(encode, schema, expected):
    message = roundtrip(encode, schema=schema)
    assert message.HasField("schema")
    assert message.schema == expected


def test_status_and_memory_footprint_are_always_sent(encode):
    walked = fields(make(encode, status=0, memory_footprint=0))
    assert (16, 0, 0) in walked
    assert (17, 0, 0) in walked


def test_no_timers_means_no_timer_fields(encode):
    datagram = make(encode, timers=[])
    assert not set(numbers(datagram)) & {10, 11, 12, 13, 14, 22, 23}


@pytest.mark.parametrize("packed", [False, True])
def test_timer_cpu_is_left_out_when_no_timer_has_any(encode, packed):
    """Fields 22 and 23 of zeros carry nothing: pinba2 reads a missing entry as 0."""
    zeros = [
        timer({"a": "1"}),
        timer({"a": "2"}, ru_utime=-1.0, ru_stime=NAN),  # sent as 0
        timer({"a": "3"}, ru_utime=1e-40, ru_stime=INF),  # float32 subnormal, infinite: 0
        timer({"a": "1"}, ru_utime=None, ru_stime=0),  # merged with the first
    ]
    datagram = make(encode, timers=zeros) if not packed else encode_packed(encode, zeros)
    assert not {22, 23} & set(numbers(datagram))
    message = decode(datagram)
    assert len(message.timer_ru_utime) == len(message.timer_ru_stime) == 0
    assert [entry[3:] for entry in timers(message)] == [(0.0, 0.0)] * 3


@pytest.mark.parametrize("packed", [False, True])
def test_one_timer_with_cpu_sends_cpu_for_every_timer(encode, packed):
    entries = [
        timer({"a": "1"}),
        timer({"a": "2"}, ru_stime=0.25),
        timer({"a": "3"}),
        timer({"a": "1"}, ru_utime=-1.0),  # merged with the first, still 0
    ]
    datagram = make(encode, timers=entries) if not packed else encode_packed(encode, entries)
    message = decode(datagram)
    assert list(message.timer_ru_utime) == [0.0, 0.0, 0.0]
    assert list(message.timer_ru_stime) == [0.0, 0.25, 0.0]
    expected = [22, 23] if packed else [22] * 3 + [23] * 3
    assert [n for n in numbers(datagram) if n in (22, 23)] == expected


def encode_packed(encode, timers_):
    """The packed datagram of DEFAULTS with these timers, checked against pinba2's rules."""
    datagram = encode(*(DEFAULTS[name] for name in ARGUMENTS[:-1]), timers_, packed=True)
    assert_valid(datagram, packed_ok=True)
    return datagram


# -- request tags ----------------------------------------------------------------------


def test_request_tags_keep_their_order(encode):
    message = roundtrip(encode, tags=[("zeta", "1"), ("alpha", "2"), ("mid", "3")])
    assert request_tags(message) == [(b"zeta", b"1"), (b"alpha", b"2"), (b"mid", b"3")]
    assert words(message) == [b"zeta", b"1", b"alpha", b"2", b"mid", b"3"]


def test_request_tags_from_a_mapping(encode):
    message = roundtrip(encode, tags={"country": "de", "lang": "de"})
    assert request_tags(message) == [(b"country", b"de"), (b"lang", b"de")]
    assert words(message) == [b"country", b"de", b"lang"]


def test_request_tag_pairs_may_repeat(encode):
    message = roundtrip(encode, tags=[("a", "1"), ("a", "1"), ("a", "2")])
    assert request_tags(message) == [(b"a", b"1"), (b"a", b"1"), (b"a", b"2")]
    assert words(message) == [b"a", b"1", b"2"]


def test_request_tags_only(encode):
    message = roundtrip(encode, tags={"k": "v"}, timers=())
    assert list(message.tag_name) == [0]
    assert list(message.tag_value) == [1]
    assert not message.timer_value


# -- timer tags and the dictionary -----------------------------------------------------------


def test_timer_tags_are_sorted_by_name_bytes(encode):
    message = roundtrip(
        encode,
        timers=[timer({"b": "1", "é": "2", "a": "3", "B": "4", "z": "5", "aa": "6"})],
    )
    names = [name for name, _ in timers(message)[0][0]]
    assert names == [b"B", b"a", b"aa", b"b", b"z", "é".encode()]


def test_timer_tags_are_sorted_as_sent_not_as_given(encode):
    # "A" < "\ud800" as text, but the surrogate is sent as "?" which sorts first;
    # "a\x00" < "a\x01" as text, but NUL is sent as U+FFFD which sorts last.
    message = roundtrip(
        encode, timers=[timer([("A", "1"), ("\ud800", "2"), ("a\x00", "3"), ("a\x01", "4")])]
    )
    names = [name for name, _ in timers(message)[0][0]]
    assert names == [b"?", b"A", b"a\x01", "a\ufffd".encode()]


def test_timer_tags_with_one_name_are_sorted_by_value(encode):
    message = roundtrip(encode, timers=[timer([("a", "2"), ("a", "10"), ("a", "1")])])
    assert timers(message)[0][0] == [(b"a", b"1"), (b"a", b"10"), (b"a", b"2")]


def test_dictionary_holds_request_tags_then_timer_tags_once(encode):
    message = roundtrip(
        encode,
        tags={"group": "web", "db": "main"},
        timers=[
            timer({"op": "select", "group": "db"}),
            timer({"group": "web"}),
            timer({"group": "cache", "op": "get"}),
        ],
    )
    assert words(message) == [
        b"group",
        b"web",
        b"db",
        b"main",
        b"op",
        b"select",
        b"cache",
        b"get",
    ]
    assert len(set(words(message))) == len(words(message))


def test_text_and_bytes_of_the_same_content_share_one_entry(encode):
    message = roundtrip(
        encode,
        tags=[("db", b"db"), (b"n", 1), ("ok", True)],
        timers=[timer({b"db": "1"}), timer({"n": b"ok"})],
    )
    assert words(message) == [b"db", b"n", b"1", b"ok"]
    assert request_tags(message) == [(b"db", b"db"), (b"n", b"1"), (b"ok", b"1")]
    assert [tags for tags, *_ in timers(message)] == [[(b"db", b"1")], [(b"n", b"ok")]]


def test_many_dictionary_entries_use_multi_byte_indexes(encode):
    count = 400
    message = roundtrip(encode, timers=[timer({"id": str(i)}, 0.001) for i in range(count)])
    assert len(message.timer_value) == count
    assert words(message)[:3] == [b"id", b"0", b"1"]
    assert len(message.dictionary) == count + 1
    assert message.timer_tag_value[-1] == count
    assert timers(message)[-1][0] == [(b"id", str(count - 1).encode())]


@pytest.mark.parametrize("size", [127, 128, 255, 1024])
def test_long_strings_round_trip(encode, size):
    text = "x" * size
    message = roundtrip(encode, script_name=text, tags={"long": text})
    assert message.script_name == text
    assert request_tags(message) == [(b"long", text.encode())]


# -- strings longer than their limit ---------------------------------------------------------

TAG_LIMIT = MAX_TEXT_BYTES["tag"]

#: Where each string goes, and the most bytes it may take there.
STRING_PLACES = {
    "hostname": (lambda text: {"hostname": text}, MAX_TEXT_BYTES["hostname"]),
    "server_name": (lambda text: {"server_name": text}, MAX_TEXT_BYTES["server_name"]),
    "script_name": (lambda text: {"script_name": text}, MAX_TEXT_BYTES["script_name"]),
    "schema": (lambda text: {"schema": text}, MAX_TEXT_BYTES["schema"]),
    "request tag name": (lambda text: {"tags": [(text, "v")]}, TAG_LIMIT),
    "request tag value": (lambda text: {"tags": {"n": text}}, TAG_LIMIT),
    "timer tag name": (lambda text: {"timers": [timer({text: "v"})]}, TAG_LIMIT),
    "timer tag value": (lambda text: {"timers": [timer([("n", text)])]}, TAG_LIMIT),
}
STRING_FIELDS = {"hostname": 1, "server_name": 2, "script_name": 3, "schema": 19}


def sent_string(datagram, place):
    """The bytes ``place`` took in ``datagram``: its field, or its dictionary entry."""
    field = STRING_FIELDS.get(place)
    values = [value for number, _, value in fields(datagram) if number == (field or 15)]
    if field:
        return values[0]
    return max(values, key=len)  # the long word, not the short name or value beside it


@pytest.mark.parametrize("place", STRING_PLACES)
@pytest.mark.parametrize("size", [1, 2, 70_000])
def test_strings_are_cut_at_their_limit(encode, place, size):
    arguments, limit = STRING_PLACES[place]
    text = "x" * (limit + size)
    assert sent_string(make(encode, **arguments(text)), place) == b"x" * limit
    assert sent_string(make(encode, **arguments(text[:limit])), place) == b"x" * limit


def test_the_limits_are_exported():
    assert MAX_TEXT_BYTES == {
        "hostname": 255,
        "server_name": 255,
        "script_name": 1024,
        "schema": 255,
        "tag": 1024,
    }


#: Each character encodes to 1, 2, 3 or 4 UTF-8 bytes; the padding moves it across the limit.
WIDE = ["é", "€", "😀"]


@pytest.mark.parametrize("place", STRING_PLACES)
@pytest.mark.parametrize("character", WIDE)
@pytest.mark.parametrize("padding", range(4))
def test_a_cut_never_splits_a_utf8_sequence(encode, place, character, padding):
    arguments, limit = STRING_PLACES[place]
    text = "a" * padding + character * limit
    sent = sent_string(make(encode, **arguments(text)), place)
    assert limit - len(character.encode()) < len(sent) <= limit
    assert text.encode().startswith(sent)
    sent.decode("utf-8")  # raises if a sequence was split


@pytest.mark.parametrize(
    "text",
    [
        "\udcff" * 2000,  # lone surrogates: each sent as "?"
        "x" * (TAG_LIMIT - 1) + "\ud800" * 10,
        "\x00" * 2000,  # each NUL sent as U+FFFD, 3 bytes
        "x" * (TAG_LIMIT - 2) + "\x00" * 10,
        "x" * (TAG_LIMIT - 1) + "\x00",
        "é" * (TAG_LIMIT // 2 - 1) + "\x00\x00",
    ],
)
def test_long_text_with_surrogates_and_nuls_is_valid_utf8(encode, text):
    for place, (arguments, limit) in STRING_PLACES.items():
        sent = sent_string(make(encode, **arguments(text)), place)
        assert limit - 3 <= len(sent) <= limit
        assert b"\x00" not in sent
        sent.decode("utf-8")


@pytest.mark.parametrize(
    "data",
    [
        b"\xff" * 2000,  # not UTF-8: cut at the limit
        b"\x80" * 2000,  # continuation bytes only: at most 3 left out
        b"x" * (TAG_LIMIT - 1) + b"\xf0\x9f\x98\x80" * 4,
        b"x" * (TAG_LIMIT - 2) + b"\x00" * 4,
    ],
)
def test_long_bytes_are_cut_as_text_is(encode, data):
    expected = fallback.cut(fallback.to_bytes(data), TAG_LIMIT)
    assert TAG_LIMIT - 3 <= len(expected) <= TAG_LIMIT
    message = roundtrip(encode, tags={"n": data}, timers=[timer({"t": data})])
    assert request_tags(message) == [(b"n", expected)]
    assert timers(message)[0][0] == [(b"t", expected)]


def test_values_alike_up_to_the_limit_are_one_word_and_their_timers_merge(encode):
    common = "v" * TAG_LIMIT
    message = roundtrip(
        encode,
        tags={"a": common + "1", "b": common + "2"},
        timers=[timer({"t": common + "1"}, 0.5), timer({"t": common + "2"}, 0.25)],
    )
    assert words(message) == [b"a", common.encode(), b"b", b"t"]
    assert timers(message) == [([(b"t", common.encode())], 0.75, 2, 0.0, 0.0)]


def test_compiled_and_pure_encoders_cut_alike():
    compiled = compiled_encoder()
    if compiled is None:
        pytest.skip("the compiled encoder is not built")
    rng = random.Random(5)
    alphabet = ["a", "é", "€", "😀", "\x00", "\ud800", "\udfff"]
    for _ in range(300):
        limit = rng.choice([255, TAG_LIMIT])
        size = rng.randrange(limit - 8, limit + 8)
        text = "".join(rng.choice(alphabet) for _ in range(size))
        data = text.encode("utf-8", "surrogatepass")[: limit + rng.randrange(-4, 5)]
        arguments = {
            "hostname": text,
            "server_name": data,
            "script_name": text * 4,
            "schema": text,
            "tags": {text: data, "d": text},
            "timers": [timer({text: text, "b": data}), timer([(data, text)])],
        }
        assert make(compiled.encode, **arguments) == make(fallback.encode, **arguments)


# -- merging timers ---------------------------------------------------------------------


def test_identical_tag_sets_merge_at_the_first_position(encode):
    message = roundtrip(
        encode,
        timers=[
            timer({"group": "db", "op": "select"}, 0.25, 1, 0.125, 0.0),
            timer({"group": "cache"}, 0.5, 2, 0.0, 0.0),
            timer({"op": "select", "group": "db"}, 0.5, 3, 0.25, 0.5),
            timer([("group", "db"), ("op", "select")], 1.0, 4, 0.0, 0.25),
        ],
    )
    assert timers(message) == [
        ([(b"group", b"db"), (b"op", b"select")], 1.75, 8, 0.375, 0.75),
        ([(b"group", b"cache")], 0.5, 2, 0.0, 0.0),
    ]


def test_timers_given_as_timer_objects_encode_as_what_they_measured(encode):
    from pynba.timer import NOOP_TIMER, Timer

    select = Timer({"op": "select", "group": "db"}).add(0.25, hit_count=2)
    cache = Timer([("group", "cache"), ("group", "redis")]).add(0.5)
    running = Timer({"group": "running"}).add(1.0).start()
    as_tuples = [
        (select.tags, 0.25, 2, 0.0, 0.0),
        (cache.tags, 0.5, 1, 0.0, 0.0),
        (select.tags, 0.125, 1, 0.0, 0.0),
    ]
    mixed = [select, cache, as_tuples[2], NOOP_TIMER]  # the no-op timer has no tags
    assert make(encode, timers=mixed) == make(encode, timers=as_tuples)
    message = roundtrip(encode, timers=[running])
    running.stop()
    ((tags, value, hits, _, _),) = timers(message)
    assert (tags, hits) == ([(b"group", b"running")], 1)
    assert 1.0 <= value <= f32(running.elapsed)  # the current run counts, as in .elapsed


def test_a_timer_whose_tags_change_while_encoding_sends_the_tags_read(encode):
    from pynba.timer import Timer

    class Rewrites(int):
        """A tag value whose str() replaces another timer's tags, and reuses memory."""

        def __str__(self):
            first.tags = {"group": "replaced"}
            junk = ["Q" * 40 + str(i) for i in range(20000)]  # noqa: F841
            return "1"

    value = "".join(["db-", "unique-value"])  # held only by the timer's tags
    first = Timer({"group": value}).add(0.5)
    del value
    second = Timer([("x", Rewrites(1))]).add(0.25)
    assert timers(roundtrip(encode, timers=[first, second])) == [
        ([(b"group", b"db-unique-value")], 0.5, 1, 0.0, 0.0),
        ([(b"x", b"1")], 0.25, 1, 0.0, 0.0),
    ]


# -- an encode inside another: each keeps its own storage ------------------------------------

INNER = {
    "tags": {"inner": "tag"},
    "timers": [timer({"group": f"inner-{i}", "op": "x"}, 0.5, 1, 0.25) for i in range(60)],
}


def outer_timers(middle_tags):
    """Enough timers that the encoder's storage grows before and after the middle one."""
    before = [timer({"group": f"outer-{i}"}, 0.125) for i in range(100)]
    after = [timer({"group": f"after-{i}"}, 0.125) for i in range(100)]
    return [*before, timer(middle_tags), *after]


def test_an_encode_inside_a_tag_conversion_leaves_both_datagrams_intact(encode):
    inner = []

    class Encodes:
        def __str__(self):
            inner.append(make(encode, **INNER))
            return "value"

    datagram = make(encode, timers=outer_timers({"x": Encodes()}))
    assert inner == [make(encode, **INNER)]
    assert datagram == make(encode, timers=outer_timers({"x": "value"}))


def test_an_encode_run_by_a_finalizer_at_the_end_of_an_encode(encode):
    """The last reference to a tag value goes when the encoder lets it go: its __del__ encodes."""
    inner = []

    class Encodes:
        def __del__(self):
            inner.append(make(encode, **INNER))

        def __str__(self):
            return "gone"

    class Clears:
        def __str__(self):
            timer_tags.clear()  # the encoder holds the only reference to the Encodes now
            return "cleared"

    timer_tags = {"a": Encodes(), "b": Clears()}
    datagram = make(encode, timers=outer_timers(timer_tags))
    assert inner == [make(encode, **INNER)]
    expected = outer_timers({"a": "gone", "b": "cleared"})
    assert datagram == make(encode, timers=expected)


def test_encodes_in_two_threads_at_once_keep_their_own_bytes(encode):
    class Slow:
        """A tag value whose conversion runs Python code: a point where threads switch."""

        def __init__(self, text):
            self.text = text

        def __str__(self):
            return self.text

    requests = [
        [timer({"thread": str(n), "slow": Slow(f"v{i % 7}")}, 0.5, 1, 0.25) for i in range(150)]
        for n in range(2)
    ]
    expected = [make(encode, timers=timers_) for timers_ in requests]
    failures = []

    def run(n):
        for _ in range(40):
            if make(encode, timers=requests[n]) != expected[n]:
                failures.append(n)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert failures == []


def test_timers_as_named_tuples_and_lists(encode):
    named = collections.namedtuple("Measured", "tags value hit_count ru_utime ru_stime")
    expected = make(encode, timers=[timer({"group": "db"}, 0.5, 2), timer({"group": "x"})])
    as_named = [named({"group": "db"}, 0.5, 2, 0.0, 0.0), [{"group": "x"}, 0.001, 1, 0.0, 0.0]]
    assert make(encode, timers=as_named) == expected


@pytest.mark.parametrize("size", [4, 6, 7])
def test_timers_of_other_sizes_are_refused(encode, size):
    bad = ({"group": "db"}, 0.5, 1, 0.0, 0.0, ("group",), "extra")[:size]
    with pytest.raises(ValueError, match=f"a timer is .*, not {size} items"):
        encode(*(DEFAULTS[name] for name in ARGUMENTS[:-1]), [bad])


def test_equal_tags_given_as_text_bytes_or_numbers_merge(encode):
    message = roundtrip(
        encode,
        timers=[
            timer({"a": "1", "b": ""}, 1.0),
            timer({b"a": b"1", b"b": b""}, 2.0),
            timer({"a": 1, "b": None}, 4.0),
            timer({"a": True, "b": False}, 8.0),
        ],
    )
    assert timers(message) == [([(b"a", b"1"), (b"b", b"")], 15.0, 4, 0.0, 0.0)]


def test_same_names_with_different_values_are_not_merged(encode):
    message = roundtrip(
        encode,
        timers=[timer({"op": "select"}, 1.0), timer({"op": "update"}, 2.0), timer({"op": ""}, 4.0)],
    )
    assert [(tags, value) for tags, value, *_ in timers(message)] == [
        ([(b"op", b"select")], 1.0),
        ([(b"op", b"update")], 2.0),
        ([(b"op", b"")], 4.0),
    ]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"a": "1"}, {"a1": ""}),
        ({"a": "1"}, {"": "a1"}),
        ({"ab": "c"}, {"a": "bc"}),
        ({"a": "b", "c": "d"}, {"a": "bc", "": "d"}),
        ({"a": "1", "b": "2"}, {"a": "1"}),
        ({"a": "1", "b": "2"}, {"a": "2", "b": "1"}),
        ([("a", "1")], [("a", "1"), ("a", "1")]),
        ({"a": "1,b=2"}, {"a": "1", "b": "2"}),
        ({"a": "b\x00c"}, {"a": "b", "c": ""}),
    ],
)
def test_different_tag_sets_that_concatenate_alike_are_not_merged(encode, first, second):
    message = roundtrip(encode, timers=[timer(first, 1.0), timer(second, 2.0)])
    assert [value for _, value, *_ in timers(message)] == [1.0, 2.0]
    first_tags, second_tags = timers(message)[0][0], timers(message)[1][0]
    assert first_tags != second_tags


def test_timers_without_tags_are_dropped(encode):
    message = roundtrip(
        encode,
        timers=[timer({}, 1.0), timer({"a": "b"}, 2.0), timer([], 4.0), timer((), 8.0)],
    )
    assert timers(message) == [([(b"a", b"b")], 2.0, 1, 0.0, 0.0)]
    assert words(message) == [b"a", b"b"]


def test_only_tagless_timers_leave_no_timer_fields(encode):
    datagram = make(encode, timers=[timer({}, 1.0), timer([], 2.0)])
    assert not set(numbers(datagram)) & {10, 11, 12, 13, 14, 15, 22, 23}


# -- how names and values become bytes ------------------------------------------------------

STRINGIFIED = [
    (True, b"1"),
    (False, b""),
    (None, b""),
    (5, b"5"),
    (0, b"0"),
    (-7, b"-7"),
    (10**30, b"1" + b"0" * 30),
    (1.5, b"1.5"),
    (0.1, b"0.1"),
    (1e300, b"1e+300"),
    ("plain", b"plain"),
    ("", b""),
    ("grüße ✓ 🙂", "grüße ✓ 🙂".encode()),
    (b"raw \xff\xfe bytes", b"raw \xff\xfe bytes"),
    (b"", b""),
    ("a\ud800b", b"a?b"),
    ("\udfff\ud83d", b"??"),
    ("a\x00b", "a\ufffdb".encode()),
    (b"a\x00b", "a\ufffdb".encode()),
    ("\x00", "\ufffd".encode()),
]


@pytest.mark.parametrize(("value", "expected"), STRINGIFIED)
def test_tag_values_become_bytes(encode, value, expected):
    message = roundtrip(encode, tags=[("v", value)], timers=[timer({"t": value})])
    assert request_tags(message) == [(b"v", expected)]
    assert timers(message)[0][0] == [(b"t", expected)]


@pytest.mark.parametrize(("value", "expected"), STRINGIFIED)
def test_tag_names_become_bytes(encode, value, expected):
    message = roundtrip(encode, tags=[(value, "r")], timers=[timer({value: "t"})])
    assert request_tags(message) == [(expected, b"r")]
    assert timers(message)[0][0] == [(expected, b"t")]


@pytest.mark.parametrize(("value", "expected"), STRINGIFIED)
def test_request_strings_become_bytes(encode, value, expected):
    datagram = make(encode, hostname=value, server_name=value, script_name=value)
    assert [value for number, _, value in fields(datagram) if number in (1, 2, 3)] == [expected] * 3


@pytest.mark.parametrize("text", ["\ud800", "x\udc00y", "\ud83d\ude00\ud800", "\udcff"])
def test_lone_surrogates_give_valid_utf8(encode, text):
    datagram = make(encode, hostname=text, tags={text: text}, timers=[timer({text: text})])
    for number, _, value in fields(datagram):
        if number in (1, 2, 3, 15, 19):
            value.decode("utf-8")  # raises if not valid UTF-8
    assert all(isinstance(word, str) for word in decode(datagram).dictionary)


def test_no_dictionary_entry_contains_nul(encode):
    nul = "\x00"
    message = roundtrip(
        encode,
        tags={nul: nul, "a" + nul: b"\x00\x00"},
        timers=[timer({nul * 3: "x" + nul}), timer({b"\x00": nul})],
    )
    assert message.dictionary
    assert all(b"\x00" not in word for word in words(message))


# -- floats -----------------------------------------------------------------------------

SANITIZED = [
    (0.0, 0.0),
    (-0.0, 0.0),
    (NAN, 0.0),
    (-NAN, 0.0),
    (INF, 0.0),
    (-INF, 0.0),
    (-1.0, 0.0),
    (-1e-40, 0.0),
    (1e-40, 0.0),  # a float32 subnormal
    (1e-39, 0.0),  # a float32 subnormal too
    (1e-310, 0.0),  # a double subnormal
    (5e-324, 0.0),
    (FLT_MIN * 0.999999, 0.0),
    (FLT_MIN, FLT_MIN),
    (1e-37, f32(1e-37)),
    (0.1, f32(0.1)),
    (2, 2.0),
    (1, 1.0),
    (FLT_MAX, FLT_MAX),
    (3.4028235e38, FLT_MAX),  # just above float32's largest value
    (1e39, FLT_MAX),
    (1e300, FLT_MAX),
    (1.7976931348623157e308, FLT_MAX),
    (10**400, FLT_MAX),  # an int beyond double range
    (-(10**400), 0.0),
    (None, 0.0),
]


def _read_float(message, field):
    if field.startswith("timer_"):
        (_, value, _, utime, stime) = timers(message)[0]
        return {"timer_value": value, "timer_ru_utime": utime, "timer_ru_stime": stime}[field]
    return getattr(message, field)


FLOAT_FIELDS = ["request_time", "ru_utime", "ru_stime", "timer_value"]
FLOAT_FIELDS += ["timer_ru_utime", "timer_ru_stime"]


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize(("value", "expected"), SANITIZED)
def test_floats_are_sanitized_for_pinba2(encode, field, value, expected):
    if field.startswith("timer_"):
        slots = {"timer_value": 1, "timer_ru_utime": 3, "timer_ru_stime": 4}
        entry = [{"a": "b"}, 0.5, 1, 0.25, 0.125]
        entry[slots[field]] = value
        datagram = make(encode, timers=[tuple(entry)])
    else:
        datagram = make(encode, **{field: value})
    message = decode(datagram)
    got = _read_float(message, field)
    assert got == expected
    if expected == 0.0:
        assert math.copysign(1.0, got) == 1.0, "zero is sent as +0.0"


def test_merged_timer_sums_are_clamped_to_float32_range(encode):
    message = roundtrip(
        encode,
        timers=[
            timer({"a": "b"}, FLT_MAX, 1, FLT_MAX, 3e38),
            timer({"a": "b"}, FLT_MAX, 1, 1e300, 3e38),
        ],
    )
    assert timers(message) == [([(b"a", b"b")], FLT_MAX, 2, FLT_MAX, FLT_MAX)]


def test_merged_timers_sum_sanitized_values(encode):
    message = roundtrip(
        encode,
        timers=[
            timer({"a": "b"}, NAN, 1, -1.0, INF),
            timer({"a": "b"}, 0.5, 1, 1e-40, 0.25),
            timer({"a": "b"}, -2.0, 1, 0.5, NAN),
        ],
    )
    assert timers(message) == [([(b"a", b"b")], 0.5, 3, 0.5, 0.25)]


# -- unsigned integers ---------------------------------------------------------------------

CLAMPED = [
    (0, 0),
    (1, 1),
    (127, 127),
    (128, 128),
    (-1, 0),
    (-(2**40), 0),
    (2**31, 2**31),
    (UINT32_MAX - 1, UINT32_MAX - 1),
    (UINT32_MAX, UINT32_MAX),
    (2**32, UINT32_MAX),
    (2**40, UINT32_MAX),
    (10**400, UINT32_MAX),
    (True, 1),
    (False, 0),
    (None, 0),
    (1.9, 1),
    (0.5, 0),
    (-0.5, 0),
    (1e300, UINT32_MAX),
    (NAN, 0),
    (INF, UINT32_MAX),
    (-INF, 0),
]


@pytest.mark.parametrize("field", ["request_count", "document_size", "memory_peak"])
@pytest.mark.parametrize(("value", "expected"), CLAMPED)
def test_unsigned_fields_are_clamped(encode, field, value, expected):
    assert getattr(roundtrip(encode, **{field: value}), field) == expected


@pytest.mark.parametrize(("value", "expected"), CLAMPED)
def test_memory_footprint_is_clamped(encode, value, expected):
    assert roundtrip(encode, memory_footprint=value).memory_footprint == expected


@pytest.mark.parametrize(("value", "expected"), CLAMPED)
def test_status_is_clamped_below_pinba2s_limit(encode, value, expected):
    assert roundtrip(encode, status=value).status == min(expected, UINT32_MAX - 1)


@pytest.mark.parametrize(
    ("hit_count", "expected"),
    [
        (1, 1),
        (5, 5),
        (0, 1),
        (-1, 1),
        (-(10**400), 1),
        (None, 1),
        (False, 1),
        (True, 1),
        (0.5, 1),
        (2.5, 2),
        (NAN, 1),
        (-INF, 1),
        (INF, UINT32_MAX),
        (2**40, UINT32_MAX),
        (10**400, UINT32_MAX),
    ],
)
def test_hit_counts_are_at_least_one(encode, hit_count, expected):
    message = roundtrip(encode, timers=[timer({"a": "b"}, 0.5, hit_count)])
    assert list(message.timer_hit_count) == [expected]


@pytest.mark.parametrize(
    "hit_counts",
    [(UINT32_MAX, 5), (2**31, 2**31), (2**31, 2**31 - 1, 1), (UINT32_MAX,) * 5, (2**40, 0)],
)
def test_merged_hit_counts_are_clamped(encode, hit_counts):
    message = roundtrip(encode, timers=[timer({"a": "b"}, 0.5, hits) for hits in hit_counts])
    assert list(message.timer_hit_count) == [UINT32_MAX]


def test_merged_hit_counts_below_the_limit_are_exact(encode):
    message = roundtrip(encode, timers=[timer({"a": "b"}, 0.5, h) for h in (2**31, 2**31 - 2, 1)])
    assert list(message.timer_hit_count) == [UINT32_MAX]
    message = roundtrip(encode, timers=[timer({"a": "b"}, 0.5, h) for h in (2**31, 2**31 - 3, 1)])
    assert list(message.timer_hit_count) == [UINT32_MAX - 1]


# -- equivalent inputs ---------------------------------------------------------------------


def test_mappings_and_pair_sequences_are_equivalent(encode):
    as_mappings = make(
        encode,
        tags={"country": "nl", "lang": "nl"},
        timers=[timer({"op": "get", "group": "cache"}, 0.5, 2), timer({"x": 1}, 0.25)],
    )
    as_lists = make(
        encode,
        tags=[("country", "nl"), ("lang", "nl")],
        timers=[timer([("op", "get"), ("group", "cache")], 0.5, 2), timer((("x", 1),), 0.25)],
    )
    as_sorted_tuples = make(
        encode,
        tags=(("country", "nl"), ("lang", "nl")),
        timers=(timer((("group", "cache"), ("op", "get")), 0.5, 2), timer([("x", 1)], 0.25)),
    )
    assert as_mappings == as_lists == as_sorted_tuples


def test_timer_lists_and_tuples_are_equivalent(encode):
    entries = [timer({"a": str(i % 3)}, i / 10, i) for i in range(1, 10)]
    assert make(encode, timers=entries) == make(encode, timers=tuple(entries))


# -- exact bytes, worked out by hand from the protobuf encoding rules ------------------------

GOLDEN = {
    "minimal": (
        dict(
            hostname="h",
            server_name="s",
            script_name="/",
            request_count=1,
            document_size=0,
            memory_peak=0,
            request_time=0.0,
            ru_utime=0.0,
            ru_stime=0.0,
            status=200,
            memory_footprint=0,
            schema=None,
            tags=(),
            timers=(),
        ),
        # 1..3: key (n<<3)|2, length, text; 4..6: key (n<<3)|0, varint;
        # 7..9: key (n<<3)|5, float32 LE; 16: key 128 = 80 01, 200 = c8 01; 17: key 88 01.
        "0a0168 120173 1a012f 2001 2800 3000 3d00000000 4500000000 4d00000000 8001c801 880100",
    ),
    "request tags and schema": (
        dict(
            hostname="web1",
            server_name="example.com",
            script_name="/index",
            request_count=1,
            document_size=1024,
            memory_peak=2097152,
            request_time=0.5,
            ru_utime=0.25,
            ru_stime=0.125,
            status=404,
            memory_footprint=300,
            schema="https",
            tags={"env": "prod"},
            timers=(),
        ),
        # 1024 = 80 08; 2**21 = 80 80 80 01; 0.5 = 0x3f000000, 0.25 = 0x3e800000,
        # 0.125 = 0x3e000000; dictionary key 0x7a; 404 = 94 03; 300 = ac 02;
        # 19: key 154 = 9a 01; 20: key 160 = a0 01; 21: key 168 = a8 01.
        "0a04 77656231"
        " 120b 6578616d706c652e636f6d"
        " 1a06 2f696e646578"
        " 2001 288008 3080808001"
        " 3d0000003f 450000803e 4d0000003e"
        " 7a03 656e76 7a04 70726f64"
        " 80019403 8801ac02"
        " 9a0105 6874747073"
        " a00100 a80101",
    ),
    "timers merged, sorted and dropped": (
        dict(
            hostname="h",
            server_name="s",
            script_name="/",
            request_count=1,
            document_size=0,
            memory_peak=0,
            request_time=1.0,
            ru_utime=0.0,
            ru_stime=0.0,
            status=0,
            memory_footprint=0,
            schema=None,
            tags={"a": "x"},
            timers=(
                ({"op": "select", "group": "db"}, 0.25, 1, 0.0, 0.0),
                ({"group": "cache"}, 0.5, 2, 0.125, 0.0),
                ({"group": "db", "op": "select"}, 0.75, 3, 0.0, 0.5),
                ({}, 9.0, 1, 0.0, 0.0),
            ),
        ),
        # dictionary: a=0 x=1 group=2 db=3 op=4 select=5 cache=6.
        # timer 1 (merged): hits 4, value 1.0, tags group=db op=select, rusage 0 / 0.5;
        # timer 2: hits 2, value 0.5, tag group=cache, rusage 0.125 / 0.
        # 10: key 50; 11: key 5d; 12: key 60; 13: key 68; 14: key 70;
        # 22: key 181 = b5 01; 23: key 189 = bd 01; 1.0 = 0x3f800000.
        "0a0168 120173 1a012f 2001 2800 3000 3d0000803f 4500000000 4d00000000"
        " 5004 5002"
        " 5d0000803f 5d0000003f"
        " 6002 6001"
        " 6802 6804 6802"
        " 7003 7005 7006"
        " 7a0161 7a0178 7a0567726f7570 7a026462 7a026f70 7a0673656c656374"
        " 7a05 6361636865"
        " 800100 880100"
        " a00100 a80101"
        " b50100000000 b5010000003e"
        " bd010000003f bd0100000000",
    ),
    "timers without CPU times": (
        dict(
            hostname="h",
            server_name="s",
            script_name="/",
            request_count=1,
            document_size=0,
            memory_peak=0,
            request_time=1.0,
            ru_utime=0.0,
            ru_stime=0.0,
            status=0,
            memory_footprint=0,
            schema=None,
            tags=(),
            timers=(({"g": "a"}, 0.5, 1, 0.0, 0.0), ({"g": "b"}, 0.25, 1, -1.0, NAN)),
        ),
        # dictionary: g=0 a=1 b=2; fields 22 and 23 are left out: every value is 0.
        "0a0168 120173 1a012f 2001 2800 3000 3d0000803f 4500000000 4d00000000"
        " 5001 5001"
        " 5d0000003f 5d0000803e"
        " 6001 6001"
        " 6800 6800"
        " 7001 7002"
        " 7a0167 7a0161 7a0162"
        " 800100 880100",
    ),
    "one timer with CPU times among three": (
        dict(
            hostname="h",
            server_name="s",
            script_name="/",
            request_count=1,
            document_size=0,
            memory_peak=0,
            request_time=1.0,
            ru_utime=0.0,
            ru_stime=0.0,
            status=0,
            memory_footprint=0,
            schema=None,
            tags=(),
            timers=(
                ({"g": "a"}, 0.5, 1, 0.0, 0.0),
                ({"g": "b"}, 0.25, 1, 0.0, 0.125),
                ({"g": "c"}, 1.0, 1, 0.0, 0.0),
            ),
        ),
        # dictionary: g=0 a=1 b=2 c=3; every timer carries 22 and 23, zeros included.
        "0a0168 120173 1a012f 2001 2800 3000 3d0000803f 4500000000 4d00000000"
        " 5001 5001 5001"
        " 5d0000003f 5d0000803e 5d0000803f"
        " 6001 6001 6001"
        " 6800 6800 6800"
        " 7001 7002 7003"
        " 7a0167 7a0161 7a0162 7a0163"
        " 800100 880100"
        " b50100000000 b50100000000 b50100000000"
        " bd0100000000 bd010000003e bd0100000000",
    ),
}


@pytest.mark.parametrize("case", list(GOLDEN))
def test_golden_bytes(encode, case):
    arguments, expected = GOLDEN[case]
    assert make(encode, **arguments).hex() == bytes.fromhex(expected).hex()


# -- the two encoders agree byte for byte ---------------------------------------------------


def varied_requests(count=300, seed=20240229):
    """Deterministic requests exercising every corner the encoders handle."""
    rng = random.Random(seed)
    texts = ["", "a", "b", "a1", "1", "é", "\ud800", "x\x00y", "long" * 40, "🙂", "B"]
    blobs = [b"", b"a", b"\xff\xfe", b"a\x00", b"1"]
    numbers_ = [0, 1, -1, 5, 2**32 - 1, 2**32, 2**40, -(2**40), 10**400]
    floats = [0.0, -0.0, 0.5, 1e-3, NAN, INF, -INF, -1.0, 1e-40, 1e-39, 1e-310]
    floats += [FLT_MIN, FLT_MAX, 3.4028235e38, 1e300, 1.5]

    def tag():
        kind = rng.random()
        if kind < 0.5:
            return rng.choice(texts)
        if kind < 0.65:
            return rng.choice(blobs)
        if kind < 0.8:
            return rng.choice(numbers_)
        if kind < 0.9:
            return rng.choice([True, False, None])
        return rng.choice(floats)

    def seconds():
        kind = rng.random()
        if kind < 0.4:
            return rng.random() * 10
        if kind < 0.9:
            return rng.choice(floats)
        return rng.choice([None, 3, 10**400, -(10**400)])

    def unsigned():
        return rng.choice([*numbers_, None, True, 1.9, NAN, INF, -INF, 1e300])

    def tag_set():
        pairs = [(tag(), tag()) for _ in range(rng.randrange(0, 4))]
        return pairs if rng.random() < 0.5 else dict(pairs)

    for _ in range(count):
        pool = [tag_set() for _ in range(rng.randrange(1, 5))]
        timer_entries = []
        for _ in range(rng.randrange(0, 12)):
            tags = rng.choice(pool)
            if isinstance(tags, list) and rng.random() < 0.5:
                tags = list(reversed(tags))
            timer_entries.append((tags, seconds(), unsigned(), seconds(), seconds()))
        yield {
            "hostname": tag(),
            "server_name": tag(),
            "script_name": tag(),
            "request_count": unsigned(),
            "document_size": unsigned(),
            "memory_peak": unsigned(),
            "request_time": seconds(),
            "ru_utime": seconds(),
            "ru_stime": seconds(),
            "status": unsigned(),
            "memory_footprint": unsigned(),
            "schema": rng.choice([None, "", "http", "https", b"https", tag()]),
            "tags": tag_set(),
            "timers": timer_entries,
        }


def test_varied_requests_pass_pinba2_rules(encode):
    for arguments in varied_requests():
        make(encode, **arguments)


def test_compiled_and_pure_encoders_give_identical_bytes():
    compiled = compiled_encoder()
    if compiled is None:
        pytest.skip("the compiled encoder is not built")
    for arguments in [*(case for case, _ in GOLDEN.values()), *varied_requests()]:
        pure = make(fallback.encode, **arguments)
        assert make(compiled.encode, **arguments) == pure, arguments


# -- the rules checker itself catches what pinba2 drops ----------------------------------------


def _request(**overrides):
    message = Request(
        hostname="h",
        server_name="s",
        script_name="/",
        request_count=1,
        document_size=0,
        memory_peak=0,
        request_time=0.0,
        ru_utime=0.0,
        ru_stime=0.0,
    )
    for name, value in overrides.items():
        if isinstance(value, list):
            getattr(message, name).extend(value)
        else:
            setattr(message, name, value)
    return message.SerializePartialToString()


BAD = {
    "NaN request_time": (_request(request_time=NAN), "request_time: NaN"),
    "subnormal ru_utime": (_request(ru_utime=1e-40), "ru_utime: subnormal"),
    "infinite ru_stime": (_request(ru_stime=INF), "ru_stime: infinite"),
    "negative timer value": (
        _request(
            timer_hit_count=[1],
            timer_value=[-1.0],
            timer_tag_count=[1],
            timer_tag_name=[0],
            timer_tag_value=[0],
            dictionary=["a"],
        ),
        "timer_value[0]: negative",
    ),
    "subnormal timer rusage": (
        _request(
            timer_hit_count=[1],
            timer_value=[1.0],
            timer_tag_count=[1],
            timer_tag_name=[0],
            timer_tag_value=[0],
            dictionary=["a"],
            timer_ru_stime=[1e-39],
        ),
        "timer_ru_stime[0]: subnormal",
    ),
    "zero hit count": (
        _request(
            timer_hit_count=[0],
            timer_value=[1.0],
            timer_tag_count=[1],
            timer_tag_name=[0],
            timer_tag_value=[0],
            dictionary=["a"],
        ),
        "timer_hit_count[0] is 0",
    ),
    "timer arrays of different lengths": (
        _request(timer_hit_count=[1, 1], timer_value=[1.0], timer_tag_count=[0, 0]),
        "timer arrays differ",
    ),
    "tag count sum off": (
        _request(
            timer_hit_count=[1],
            timer_value=[1.0],
            timer_tag_count=[2],
            timer_tag_name=[0],
            timer_tag_value=[0],
            dictionary=["a"],
        ),
        "sum(timer_tag_count)",
    ),
    "timer tag index past the dictionary": (
        _request(
            timer_hit_count=[1],
            timer_value=[1.0],
            timer_tag_count=[1],
            timer_tag_name=[0],
            timer_tag_value=[1],
            dictionary=["a"],
        ),
        "timer_tag_value[0] = 1 is past the dictionary",
    ),
    "request tag index past the dictionary": (
        _request(tag_name=[0], tag_value=[0]),
        "tag_name[0] = 0 is past the dictionary",
    ),
    "request tag arrays differ": (
        _request(tag_name=[0], dictionary=["a"]),
        "tag_name 1 and tag_value 0 differ",
    ),
    "rusage for some timers only": (
        _request(
            timer_hit_count=[1, 1],
            timer_value=[1.0, 1.0],
            timer_tag_count=[1, 1],
            timer_tag_name=[0, 0],
            timer_tag_value=[0, 0],
            dictionary=["a"],
            timer_ru_utime=[1.0],
        ),
        "timer_ru_utime has 1 values for 2 timers",
    ),
    "status 2**32-1": (_request(status=UINT32_MAX), "status 4294967295"),
    "NUL in the dictionary": (_request(dictionary=["a\x00"]), "NUL byte"),
    "missing required field": (
        Request(hostname="h", server_name="s").SerializePartialToString(),
        "missing required fields",
    ),
    "truncated": (_request()[:-2], "malformed protobuf"),
    "script_name first": (
        bytes.fromhex("1a012f") + _request()[3:],
        "first byte 0x1a has a non-zero high nibble",
    ),
    "fields out of order": (
        _request(status=200, memory_footprint=1)[:-7]
        + bytes.fromhex("880101 8001c801"),  # 17 before 16
        "fields out of ascending order",
    ),
    "packed hit counts": (
        _request(timer_value=[1.0], timer_tag_count=[1], timer_tag_name=[0], timer_tag_value=[0])
        + bytes.fromhex("520101"),
        "timer_hit_count: packed encoding",
    ),
    "uint32 overflow": (_request() + bytes.fromhex("8001ffffffff1f"), "does not fit uint32"),
    "nested requests": (_request(requests=[Request(hostname="x")]), "unexpected field 18"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_rules_checker_catches(case):
    datagram, expected = BAD[case]
    found = violations(datagram)
    assert any(expected in problem for problem in found), found


def test_rules_checker_accepts_packed_form_when_allowed():
    datagram = _request(
        timer_value=[1.0],
        timer_tag_count=[1],
        timer_tag_name=[0],
        timer_tag_value=[0],
        dictionary=["a"],
    )
    # protobuf puts fields in number order, so slot the packed field 10 in by hand
    head = _request()
    tail = datagram[len(head) :]
    packed = head + bytes.fromhex("520103") + tail
    assert [number for number, _, _ in fields(packed)][9] == 10
    assert violations(packed, packed_ok=True) == []
    assert any("packed" in problem for problem in violations(packed))

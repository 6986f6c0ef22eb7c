"""Property tests: random requests against pinba2's rules and a reference model.

The model below restates the documented encoding rules independently of the
encoders; every random request must decode to what the model predicts.
``PYNBA_HYPOTHESIS_EXAMPLES`` raises the number of examples (default 300).
"""

import math
import os
import struct
from collections.abc import Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import compiled_encoder
from pinba2_rules import assert_valid, fields, timer_cpu
from pinba_pb2 import Request
from pynba.wire import fallback
from pynba.wire.encoder import ARGUMENTS

FLT_MIN = 2.0**-126
FLT_MAX = (2 - 2.0**-23) * 2.0**127
UINT32_MAX = 2**32 - 1
STATUS_MAX = UINT32_MAX - 1
#: The most bytes sent of each string; every tag name and value takes TAG_LIMIT.
LIMITS = {"hostname": 255, "server_name": 255, "script_name": 1024, "schema": 255}
TAG_LIMIT = 1024

EXAMPLES = int(os.environ.get("PYNBA_HYPOTHESIS_EXAMPLES", "300"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- the reference model ----------------------------------------------------------------


def model_bytes(value, limit=TAG_LIMIT):
    """A name or value as the documented rules say it is sent (at most ``limit`` bytes)."""
    if value is True:
        return b"1"
    if value is False or value is None:
        return b""
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        data = "".join("?" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value).encode()
    elif isinstance(value, float):
        data = repr(value).encode()
    else:
        data = str(value).encode()
    data = data.replace(b"\x00", "\ufffd".encode())
    if len(data) > limit:  # cut, not inside a UTF-8 sequence (of at most 4 bytes)
        end = limit
        while end > limit - 3 and 0x80 <= data[end] <= 0xBF:  # data[end] continues one
            end -= 1
        data = data[:end]
    return data


def model_seconds(value):
    """A float field before narrowing: 0 for NaN/inf/negative/too small, capped at FLT_MAX."""
    if value is None:
        return 0.0
    if isinstance(value, int) and abs(value) > 10**308:
        return FLT_MAX if value > 0 else 0.0
    value = float(value)
    if math.isnan(value) or math.isinf(value) or value < FLT_MIN:
        return 0.0
    return min(value, FLT_MAX)


def model_uint(value, top=UINT32_MAX):
    if value is None:
        return 0
    if isinstance(value, float):
        if math.isnan(value) or value <= 0:
            return 0
        return top if value >= top else int(value)
    return max(0, min(int(value), top))


def f32(value):
    return struct.unpack("<f", struct.pack("<f", value))[0]


def pairs_of(tags):
    return list(tags.items()) if isinstance(tags, Mapping) else list(tags)


def model(arguments):
    """What the datagram for ``arguments`` must decode to."""
    request_tags = [(model_bytes(n), model_bytes(v)) for n, v in pairs_of(arguments["tags"])]
    merged = {}  # sorted tag pairs -> [value, hits, ru_utime, ru_stime], in first-seen order
    for tags, value, hits, utime, stime in arguments["timers"]:
        key = tuple(sorted((model_bytes(n), model_bytes(v)) for n, v in pairs_of(tags)))
        if not key:
            continue
        entry = merged.setdefault(key, [0.0, 0, 0.0, 0.0])
        entry[0] += model_seconds(value)
        entry[1] = min(entry[1] + (model_uint(hits) or 1), UINT32_MAX)
        entry[2] += model_seconds(utime)
        entry[3] += model_seconds(stime)
    dictionary = []
    for name, value in [*request_tags, *(pair for key in merged for pair in key)]:
        for word in (name, value):
            if word not in dictionary:
                dictionary.append(word)
    schema = model_bytes(arguments["schema"], LIMITS["schema"])
    return {
        "strings": [model_bytes(arguments[name], LIMITS[name]) for name in ARGUMENTS[:3]],
        "counts": [model_uint(arguments[name]) for name in ARGUMENTS[3:6]],
        "seconds": [f32(model_seconds(arguments[name])) for name in ARGUMENTS[6:9]],
        "status": model_uint(arguments["status"], STATUS_MAX),
        "memory_footprint": model_uint(arguments["memory_footprint"]),
        "schema": schema or None,
        "tags": request_tags,
        "timers": [
            (
                list(key),
                f32(model_seconds(value)),
                hits,
                f32(model_seconds(utime)),
                f32(model_seconds(stime)),
            )
            for key, (value, hits, utime, stime) in merged.items()
        ],
        "dictionary": dictionary,
    }


def read_back(datagram):
    """The datagram decoded by protobuf, in the model's terms (strings from the raw wire)."""
    message = Request()
    message.ParseFromString(datagram)
    walked = fields(datagram)
    dictionary = [value for number, _, value in walked if number == 15]
    timers = []
    start = 0
    for i, count in enumerate(message.timer_tag_count):
        names = message.timer_tag_name[start : start + count]
        values = message.timer_tag_value[start : start + count]
        start += count
        timers.append(
            (
                [(dictionary[n], dictionary[v]) for n, v in zip(names, values, strict=True)],
                message.timer_value[i],
                message.timer_hit_count[i],
                *timer_cpu(message, i),
            )
        )
    schema = [value for number, _, value in walked if number == 19]
    return {
        "strings": [value for number, _, value in walked if number in (1, 2, 3)],
        "counts": [message.request_count, message.document_size, message.memory_peak],
        "seconds": [message.request_time, message.ru_utime, message.ru_stime],
        "status": message.status,
        "memory_footprint": message.memory_footprint,
        "schema": schema[0] if schema else None,
        "tags": [
            (dictionary[n], dictionary[v])
            for n, v in zip(message.tag_name, message.tag_value, strict=True)
        ],
        "timers": timers,
        "dictionary": dictionary,
    }


# -- random requests ---------------------------------------------------------------------

TRAPS = ["", "a", "b", "1", "a1", "é", "\x00", "a\x00", "\ud800", "?", "\ufffd", "B"]
any_text = st.text(st.characters(exclude_categories=()), max_size=12)
big_ints = st.sampled_from([2**32 - 1, 2**32, 2**64, 10**400, -(10**400), -1])
scalars = st.one_of(
    st.sampled_from(TRAPS),
    any_text,
    st.binary(max_size=8),
    st.integers(),
    big_ints,
    st.floats(),
    st.booleans(),
    st.none(),
)
seconds = st.one_of(
    st.floats(min_value=0, max_value=1000),
    st.floats(),  # NaN, infinities, subnormals, huge
    st.sampled_from([1e-40, 1e-39, 1e-310, 1e300, 3.4028235e38, FLT_MIN, FLT_MAX, -0.0]),
    st.integers(min_value=-5, max_value=5),
    big_ints,
    st.booleans(),
    st.none(),
)
unsigned = st.one_of(
    st.integers(min_value=0, max_value=2**32 + 2),
    st.integers(),
    big_ints,
    st.floats(),
    st.booleans(),
    st.none(),
)
tag_sets = st.one_of(
    st.lists(st.tuples(scalars, scalars), max_size=4),
    st.dictionaries(scalars, scalars, max_size=4),
)


@st.composite
def timer_lists(draw, max_timers=30):
    """Timers whose tag sets repeat (in any order, as mapping or pairs) so merging happens."""
    pool = draw(st.lists(tag_sets, min_size=1, max_size=5))
    timers = []
    for _ in range(draw(st.integers(min_value=0, max_value=max_timers))):
        pairs = pairs_of(draw(st.sampled_from(pool)))
        pairs = draw(st.permutations(pairs))
        tags = dict(pairs) if draw(st.booleans()) and len(dict(pairs)) == len(pairs) else pairs
        timers.append((tags, draw(seconds), draw(unsigned), draw(seconds), draw(seconds)))
    return timers


requests = st.fixed_dictionaries(
    {
        "hostname": scalars,
        "server_name": scalars,
        "script_name": scalars,
        "request_count": unsigned,
        "document_size": unsigned,
        "memory_peak": unsigned,
        "request_time": seconds,
        "ru_utime": seconds,
        "ru_stime": seconds,
        "status": unsigned,
        "memory_footprint": unsigned,
        "schema": st.one_of(st.none(), st.sampled_from(["http", "https", ""]), scalars),
        "tags": tag_sets,
        "timers": timer_lists(),
    }
)


def encode_with(encode, arguments):
    return encode(*(arguments[name] for name in ARGUMENTS))


@PROPERTY
@given(arguments=requests)
def test_random_requests_mean_what_the_model_says(encode, arguments):
    datagram = encode_with(encode, arguments)
    assert_valid(datagram)
    assert read_back(datagram) == model(arguments)


@settings(PROPERTY, max_examples=max(EXAMPLES // 10, 20))
@given(arguments=requests, timers=timer_lists(max_timers=400))
def test_many_timers(encode, arguments, timers):
    datagram = encode_with(encode, {**arguments, "timers": timers})
    assert_valid(datagram)
    assert read_back(datagram) == model({**arguments, "timers": timers})


COMPILED = compiled_encoder()


@pytest.mark.skipif(COMPILED is None, reason="the compiled encoder is not built")
@PROPERTY
@given(arguments=requests)
def test_compiled_and_pure_give_identical_bytes(arguments):
    assert encode_with(COMPILED.encode, arguments) == encode_with(fallback.encode, arguments)

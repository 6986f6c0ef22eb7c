"""Fuzzing: random requests through both encoders, random datagrams through the decoder.

Every datagram must decode with Google protobuf and pass pinba2's rules, and
the compiled and pure encoders must agree byte for byte. The listener's
decoder must report (a request or an error), never crash. The default
budget is 10,000 examples per encoder; ``PYNBA_FUZZ_EXAMPLES=200000 python -m
pytest tests/test_fuzz.py`` runs a longer fuzz.
"""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import compiled_encoder
from pinba2_rules import violations
from pinba_pb2 import Request
from pynba._implementation import pure_python_forced
from pynba.wire import fallback
from pynba.wire.encoder import MAX_TEXT_BYTES

# Each test names the encoder it runs (the compiled one is built and loads in
# both of the suite's runs), and the decoder has one implementation: the
# run with the pure-Python modules forced would fuzz the same code again.
pytestmark = pytest.mark.skipif(
    pure_python_forced(), reason="fuzzed once, in the run of the compiled modules"
)

EXAMPLES = int(os.environ.get("PYNBA_FUZZ_EXAMPLES", "10000"))
DECODER_EXAMPLES = max(EXAMPLES // 5, 1)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

compiled = compiled_encoder()
needs_compiled = pytest.mark.skipif(compiled is None, reason="the compiled encoder is not built")

# Values users hand over: text with NULs, lone surrogates and astral characters,
# raw (possibly invalid UTF-8) bytes, numbers of every sign and size, flags, None.
text = st.text(st.characters(codec=None, exclude_categories=()), max_size=8)
raw = st.binary(max_size=8)
numbers = st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=True)
scalars = text | raw | numbers | st.booleans() | st.none()
names = text | raw
tag_pairs = st.lists(st.tuples(names, scalars), max_size=3)
tags = tag_pairs | st.dictionaries(text, scalars, max_size=3)
any_float = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**40), 2**40)
any_uint = st.integers(min_value=-(2**64), max_value=2**64)
timer = st.tuples(tags, any_float, st.integers(-5, 2**40), any_float, any_float)
requests = st.tuples(
    text | raw,  # hostname
    text | raw,  # server_name
    text | raw,  # script_name
    any_uint,  # request_count
    any_uint,  # document_size
    any_uint,  # memory_peak
    any_float,  # request_time
    any_float,  # ru_utime
    any_float,  # ru_stime
    any_uint,  # status
    any_uint,  # memory_footprint
    st.none() | text | raw,  # schema
    tags,
    st.lists(timer, max_size=4),
)


def check(datagram):
    problems = violations(datagram)
    assert not problems, problems


@needs_compiled
@FUZZ
@given(requests)
def test_both_encoders_agree_and_every_datagram_is_valid(request):
    datagram = fallback.encode(*request)
    assert compiled.encode(*request) == datagram
    check(datagram)


# Strings about as long as their limits (255 and 1,024 bytes), of characters of 1
# to 4 UTF-8 bytes, lone surrogates and NULs: cut alike, never inside a character.
wide = st.sampled_from(["a", "é", "€", "😀", "\x00", "\ud800"])
long_text = st.lists(wide, min_size=60, max_size=1100).map("".join)
long_strings = long_text | long_text.map(lambda text: text.encode("utf-8", "surrogatepass"))
long_requests = st.tuples(
    long_text,  # hostname
    long_strings,  # server_name
    long_text,  # script_name
    st.just(1),
    st.just(0),
    st.just(0),
    any_float,
    any_float,
    any_float,
    st.just(200),
    st.just(0),
    st.none() | long_text,  # schema
    st.lists(st.tuples(long_strings, long_strings), max_size=2),
    st.lists(st.tuples(st.dictionaries(long_text, long_strings, max_size=2), any_float,
                       st.just(1), any_float, any_float), max_size=2),
)  # fmt: skip
LONG_FUZZ = settings(FUZZ, max_examples=max(EXAMPLES // 20, 50))


@needs_compiled
@LONG_FUZZ
@given(long_requests)
def test_both_encoders_cut_long_strings_alike(request):
    datagram = fallback.encode(*request)
    assert compiled.encode(*request) == datagram
    check(datagram)
    message = Request()
    message.ParseFromString(datagram)
    for field in ("hostname", "script_name"):  # from str: valid UTF-8, at most the limit
        sent = getattr(message, field)
        sent = sent.encode() if isinstance(sent, str) else sent
        sent.decode("utf-8")
        assert len(sent) <= MAX_TEXT_BYTES[field]


@FUZZ
@given(requests)
def test_pure_encoder_datagrams_are_valid(request):
    # Runs even without the compiled encoder; with it, the test above also covers this.
    if compiled is not None and EXAMPLES <= 10_000:
        pytest.skip("covered by the comparison with the compiled encoder")
    check(fallback.encode(*request))


# -- the listener's decoder ------------------------------------------------------

decode = pytest.importorskip("pynba.wire.decode", reason="pynba.wire.decode is not available")
listener = pytest.importorskip("pynba.cli.listener", reason="pynba.cli.listener is not available")
DECODER_FUZZ = settings(FUZZ, max_examples=DECODER_EXAMPLES)


def examine_never_crashes(datagram):
    received = listener.examine(datagram)
    assert (received.request is None) != (received.error is None) or received.request
    if received.request is not None:
        # Everything the listener prints must be computable.
        received.request.as_dict()
    received.as_dict()
    try:
        decode.read_datagram(datagram)
    except decode.DecodeError:
        pass


@DECODER_FUZZ
@given(st.binary(max_size=300))
def test_decoder_reports_random_bytes(datagram):
    examine_never_crashes(datagram)


@DECODER_FUZZ
@given(requests, st.data())
def test_decoder_reports_truncated_and_mutated_datagrams(request, data):
    datagram = fallback.encode(*request)
    full = listener.examine(datagram)
    assert full.accepted, full.problems
    cut = data.draw(st.integers(0, len(datagram)))
    examine_never_crashes(datagram[:cut])
    if datagram:
        position = data.draw(st.integers(0, len(datagram) - 1))
        flipped = bytearray(datagram)
        flipped[position] ^= data.draw(st.integers(1, 255))
        examine_never_crashes(bytes(flipped))

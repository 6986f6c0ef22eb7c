"""Pinba datagram encoder in pure Python.

The twin of ``_encoder.pyx``: same signature, same bytes. ``pynba.wire.encoder``
picks one of them at import time.
"""

from collections.abc import Iterable, Mapping
from struct import Struct
from typing import Any

FLT_MIN = 1.1754943508222875e-38  # smallest normal float32
FLT_MAX = 3.4028234663852886e38
UINT32_MAX = 0xFFFFFFFF
STATUS_MAX = UINT32_MAX - 1  # pinba2 drops status == 2**32 - 1
REPLACEMENT = "\ufffd".encode()

#: The most bytes sent of each string: a longer one is cut at that length,
#: backing off so as not to split a UTF-8 sequence. "tag" is every tag name
#: and value, of the request and of its timers (they share one dictionary).
MAX_TEXT_BYTES = {
    "hostname": 255,
    "server_name": 255,
    "script_name": 1024,
    "schema": 255,
    "tag": 1024,
}
_MAX_TAG = MAX_TEXT_BYTES["tag"]

_pack_float = Struct("<f").pack
_INF = float("inf")


def _varint(n):
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def to_bytes(value):
    """Tag, name or value as the bytes sent: see README "Tag values"."""
    if isinstance(value, str):
        try:
            data = str.encode(value, "utf-8")
        except UnicodeEncodeError:  # lone surrogates
            data = str.encode(value, "utf-8", "replace")
    elif isinstance(value, bytes):
        data = value
    elif value is True:
        return b"1"
    elif value is False or value is None:
        return b""
    elif isinstance(value, (bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, int):
        try:
            data = str.encode(str(value))
        except ValueError:  # beyond Python's limit on int-to-text digits
            data = hex(value).encode()
    else:
        data = str.encode(str(value), "utf-8", "replace")
    if bytes.__contains__(data, b"\x00"):
        # The servers keep C strings: a NUL would cut the string short.
        data = bytes.replace(data, b"\x00", REPLACEMENT)
    return data


def cut(data, limit):
    """``data``, or its first ``limit`` bytes less any part of a UTF-8 sequence they end in."""
    if len(data) <= limit:
        return data
    end = limit
    # data[end] is the first byte left out: while it continues a UTF-8 sequence
    # (0b10xxxxxx), leave out the bytes of that sequence before it (at most 3).
    while end > limit - 3 and data[end] & 0xC0 == 0x80:
        end -= 1
    return data[:end]


def tag_bytes(value):
    """A tag name or value as the bytes sent (at most ``MAX_TEXT_BYTES["tag"]``)."""
    data = to_bytes(value)
    return data if len(data) <= _MAX_TAG else cut(data, _MAX_TAG)


def to_uint32(value, top=UINT32_MAX):
    """An integer field, clamped to [0, top]; None is 0."""
    if value is None:
        return 0
    if isinstance(value, float):
        if value != value:
            return 0
        if value >= top:
            return top
        if value <= 0:
            return 0
        return int(value)
    value = int(value)
    if value < 0:
        return 0
    if value > top:
        return top
    return value


def to_seconds(value):
    """A float field as a double pinba2 accepts once narrowed to float32.

    NaN, infinities, negatives and anything that would be a float32
    subnormal become 0.0; finite values above float32's range become its
    largest value.
    """
    if value is None:
        return 0.0
    try:
        value = float(value)
    except OverflowError:  # an int beyond double range
        return FLT_MAX if value > 0 else 0.0
    if not value >= FLT_MIN:
        return 0.0
    if value > FLT_MAX:
        return 0.0 if value == _INF else FLT_MAX
    return value


def _pairs(tags):
    """``tags`` (a mapping or pairs) as a tuple of pairs, which the caller's later changes leave.

    Encoding may run Python code (a value's ``__str__``): the twins both
    read what the containers held when they reached them.
    """
    if tags is None:
        return ()
    if isinstance(tags, Mapping):
        return tuple(tags.items())
    return tuple(tags)


TIMER_SHAPE = "a timer is (tags, value, hit_count, ru_utime, ru_stime) or a Timer"


def timer_tuple(timer):
    """``timer`` as a tuple of 5 items: as given, or a Timer's measurements."""
    if not isinstance(timer, (tuple, list)) and hasattr(timer, "elapsed"):  # a Timer
        return (timer.tags, timer.elapsed, timer.hit_count, timer.ru_utime, timer.ru_stime)
    timer = tuple(timer)
    if len(timer) != 5:
        raise ValueError(f"{TIMER_SHAPE}, not {len(timer)} items")
    return timer


def _key(field, wire_type):
    return _varint((field << 3) | wire_type)


def _packed(out, field, payload):
    """Appends one packed repeated field; an empty one is left out, as protobuf does."""
    if payload:
        out.extend(_key(field, 2))
        out.extend(_varint(len(payload)))
        out.extend(payload)


def _varints(numbers):
    return b"".join([_varint(n) for n in numbers])


def _floats(values):
    return b"".join([_pack_float(to_seconds(x)) for x in values])


_K = {n: _key(n, 0) for n in (4, 5, 6, 10, 12, 13, 14, 16, 17, 20, 21)}
_K.update({n: _key(n, 2) for n in (1, 2, 3, 15, 19)})
_K.update({n: _key(n, 5) for n in (7, 8, 9, 11, 22, 23)})


def encode(
    hostname: str | bytes,
    server_name: str | bytes,
    script_name: str | bytes,
    request_count: int,
    document_size: int,
    memory_peak: int,
    request_time: float,
    ru_utime: float,
    ru_stime: float,
    status: int,
    memory_footprint: int,
    schema: str | bytes | None,
    tags: Mapping[Any, Any] | Iterable[Any],
    timers: Iterable[Any],
    packed: bool = False,
) -> bytes:
    """Encode one request as a Pinba datagram.

    ``tags`` is a mapping or a sequence of ``(name, value)`` pairs; ``timers``
    a sequence of ``(tags, value, hit_count, ru_utime, ru_stime)`` tuples
    (tags as for the request), or of pynba Timers (read as their ``tags``, ``elapsed``,
    ``hit_count``, ``ru_utime`` and ``ru_stime``). Timers with the same tag
    set are merged, timers without tags dropped.

    Repeated fields are unpacked (one key per value, like the PHP extension)
    unless ``packed`` is true: then fields 10-14 and 20-23 take the proto2
    packed form (one key and length per field), which pinba2 also reads.
    The per-timer CPU times (fields 22 and 23) are left out when every timer's
    are zero: both servers read a missing entry as 0.
    """
    index: dict[bytes, int] = {}
    words: list[bytes] = []

    def word(data: bytes) -> int:
        i = index.get(data)
        if i is None:
            i = index[data] = len(words)
            words.append(data)
        return i

    tag_names = []
    tag_values = []
    for name, value in _pairs(tags):
        tag_names.append(word(tag_bytes(name)))
        tag_values.append(word(tag_bytes(value)))

    slots: dict[tuple[int, ...], int] = {}  # tag-set key -> position in merged
    merged: list[list[Any]] = []  # [key, value, hit_count, ru_utime, ru_stime]
    for timer in tuple(timers):  # as _pairs: the timers as they were
        if type(timer) is not tuple or len(timer) != 5:
            timer = timer_tuple(timer)
        timer_tags, value, hit_count, t_utime, t_stime = timer
        pairs = sorted((tag_bytes(n), tag_bytes(v)) for n, v in _pairs(timer_tags))
        if not pairs:
            continue
        words_of_pairs = []
        for name, val in pairs:
            words_of_pairs.append(word(name))
            words_of_pairs.append(word(val))
        key = tuple(words_of_pairs)
        hits = to_uint32(hit_count) or 1
        slot = slots.get(key)
        if slot is None:
            slots[key] = len(merged)
            merged.append([key, to_seconds(value), hits, to_seconds(t_utime), to_seconds(t_stime)])
        else:
            entry = merged[slot]
            entry[1] += to_seconds(value)
            entry[2] = min(entry[2] + hits, UINT32_MAX)
            entry[3] += to_seconds(t_utime)
            entry[4] += to_seconds(t_stime)

    out = bytearray()
    for field, name, text in (
        (1, "hostname", hostname),
        (2, "server_name", server_name),
        (3, "script_name", script_name),
    ):
        data = cut(to_bytes(text), MAX_TEXT_BYTES[name])
        out += _K[field]
        out += _varint(len(data))
        out += data
    for field, number in ((4, request_count), (5, document_size), (6, memory_peak)):
        out += _K[field]
        out += _varint(to_uint32(number))
    for field, seconds in ((7, request_time), (8, ru_utime), (9, ru_stime)):
        out += _K[field]
        out += _pack_float(to_seconds(seconds))
    if packed:
        _packed(out, 10, _varints([entry[2] for entry in merged]))
        _packed(out, 11, _floats([entry[1] for entry in merged]))
        _packed(out, 12, _varints([len(entry[0]) // 2 for entry in merged]))
        _packed(out, 13, _varints([i for entry in merged for i in entry[0][0::2]]))
        _packed(out, 14, _varints([i for entry in merged for i in entry[0][1::2]]))
    else:
        for entry in merged:
            out += _K[10]
            out += _varint(entry[2])
        for entry in merged:
            out += _K[11]
            out += _pack_float(to_seconds(entry[1]))
        for entry in merged:
            out += _K[12]
            out += _varint(len(entry[0]) // 2)
        for entry in merged:
            for i in entry[0][0::2]:
                out += _K[13]
                out += _varint(i)
        for entry in merged:
            for i in entry[0][1::2]:
                out += _K[14]
                out += _varint(i)
    for data in words:
        out += _K[15]
        out += _varint(len(data))
        out += data
    out += _K[16]
    out += _varint(to_uint32(status, STATUS_MAX))
    out += _K[17]
    out += _varint(to_uint32(memory_footprint))
    schema_bytes = cut(to_bytes(schema), MAX_TEXT_BYTES["schema"])
    if schema_bytes:
        out += _K[19]
        out += _varint(len(schema_bytes))
        out += schema_bytes
    # The sums of sanitized times are 0 or normal floats: nonzero is what is sent nonzero.
    timer_cpu = any(entry[3] or entry[4] for entry in merged)
    if packed:
        _packed(out, 20, _varints(tag_names))
        _packed(out, 21, _varints(tag_values))
        if timer_cpu:
            _packed(out, 22, _floats([entry[3] for entry in merged]))
            _packed(out, 23, _floats([entry[4] for entry in merged]))
        return bytes(out)
    for i in tag_names:
        out += _K[20]
        out += _varint(i)
    for i in tag_values:
        out += _K[21]
        out += _varint(i)
    if not timer_cpu:
        return bytes(out)
    for entry in merged:
        out += _K[22]
        out += _pack_float(to_seconds(entry[3]))
    for entry in merged:
        out += _K[23]
        out += _pack_float(to_seconds(entry[4]))
    return bytes(out)

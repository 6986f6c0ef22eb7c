"""Reading Pinba datagrams without protobuf: a small wire decoder for ``Pinba.Request``.

``decode_request(payload)`` turns the protobuf message into a ``PinbaRequest``
with its tags and timers resolved through the dictionary; ``unframe(datagram)``
first strips pinba2's v1 framing (and LZ4 compression, when the ``lz4``
package is installed). Malformed input raises ``DecodeError`` (a
``ValueError``) saying what is wrong; nothing else escapes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from . import framing

__all__ = [
    "DecodeError",
    "FIELD_NAMES",
    "PinbaRequest",
    "PinbaTimer",
    "UnreadableError",
    "decode_request",
    "iter_fields",
    "read_datagram",
    "unframe",
]

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5

FIELD_NAMES = {
    1: "hostname",
    2: "server_name",
    3: "script_name",
    4: "request_count",
    5: "document_size",
    6: "memory_peak",
    7: "request_time",
    8: "ru_utime",
    9: "ru_stime",
    10: "timer_hit_count",
    11: "timer_value",
    12: "timer_tag_count",
    13: "timer_tag_name",
    14: "timer_tag_value",
    15: "dictionary",
    16: "status",
    17: "memory_footprint",
    18: "requests",
    19: "schema",
    20: "tag_name",
    21: "tag_value",
    22: "timer_ru_utime",
    23: "timer_ru_stime",
}
REQUIRED = tuple(range(1, 10))
STRINGS = frozenset((1, 2, 3, 15, 19))
UINT32S = frozenset((4, 5, 6, 10, 12, 13, 14, 16, 17, 20, 21))
FLOATS = frozenset((7, 8, 9, 11, 22, 23))
REPEATED = frozenset((10, 11, 12, 13, 14, 15, 18, 20, 21, 22, 23))

_FLOAT32 = struct.Struct("<f")
_MAX_VARINT_SHIFT = 63


class DecodeError(ValueError):
    """The bytes are not a Pinba request a server could read."""


class UnreadableError(DecodeError):
    """A datagram pynba cannot read here, through no fault of the datagram.

    An LZ4-compressed (v1) one when the ``lz4`` package is not installed: a
    pinba2 server built with LZ4 may well accept it. ``framing`` tells which.
    """

    def __init__(self, reason: str, framing: str) -> None:
        super().__init__(reason)
        self.framing = framing


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``data[pos:]`` and the position after it."""
    result = shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise DecodeError(f"truncated varint at byte {pos}")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
        if shift > _MAX_VARINT_SHIFT:
            raise DecodeError(f"varint longer than 10 bytes at byte {pos}")


def iter_fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Every field as ``(number, wire_type, value)``, in wire order.

    ``value`` is an int for varints and the raw bytes otherwise (4 bytes for
    fixed32, 8 for fixed64, the payload of a length-delimited field).
    """
    data = bytes(data)
    pos = 0
    end = len(data)
    value: int | bytes
    while pos < end:
        key, pos = read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise DecodeError("field number 0")
        if wire_type == VARINT:
            value, pos = read_varint(data, pos)
        elif wire_type == FIXED32 or wire_type == FIXED64:
            size = 4 if wire_type == FIXED32 else 8
            if pos + size > end:
                raise DecodeError(f"truncated fixed{size * 8} in field {number}")
            value = data[pos : pos + size]
            pos += size
        elif wire_type == LENGTH_DELIMITED:
            size, pos = read_varint(data, pos)
            if pos + size > end:
                raise DecodeError(f"truncated field {number}: {size} bytes announced")
            value = data[pos : pos + size]
            pos += size
        else:
            raise DecodeError(f"unsupported wire type {wire_type} in field {number}")
        yield number, wire_type, value


def unpack_varints(payload: bytes) -> list[int]:
    """The varints of a packed repeated field."""
    values = []
    pos = 0
    while pos < len(payload):
        value, pos = read_varint(payload, pos)
        values.append(value)
    return values


def unpack_floats(payload: bytes) -> list[bytes]:
    """The raw 4-byte floats of a packed repeated field."""
    if len(payload) % 4:
        raise DecodeError(f"packed floats of {len(payload)} bytes (not a multiple of 4)")
    return [payload[i : i + 4] for i in range(0, len(payload), 4)]


def float32(raw: bytes) -> float:
    return _FLOAT32.unpack(raw)[0]


@dataclass
class PinbaTimer:
    """One timer of a decoded request, its tags resolved through the dictionary."""

    tags: tuple[tuple[str, str], ...]
    value: float
    hit_count: int
    ru_utime: float = 0.0
    ru_stime: float = 0.0

    def tag(self, name: str) -> str | None:
        """The value of the first tag called ``name``, or None."""
        for tag_name, value in self.tags:
            if tag_name == name:
                return value
        return None


@dataclass
class PinbaRequest:
    """A decoded ``Pinba.Request``: the protobuf fields, plus ``tags`` and ``timers``."""

    hostname: str = ""
    server_name: str = ""
    script_name: str = ""
    request_count: int = 0
    document_size: int = 0
    memory_peak: int = 0
    request_time: float = 0.0
    ru_utime: float = 0.0
    ru_stime: float = 0.0
    timer_hit_count: list[int] = field(default_factory=list)
    timer_value: list[float] = field(default_factory=list)
    timer_tag_count: list[int] = field(default_factory=list)
    timer_tag_name: list[int] = field(default_factory=list)
    timer_tag_value: list[int] = field(default_factory=list)
    dictionary: list[str] = field(default_factory=list)
    status: int = 0
    memory_footprint: int = 0
    schema: str = ""
    tag_name: list[int] = field(default_factory=list)
    tag_value: list[int] = field(default_factory=list)
    timer_ru_utime: list[float] = field(default_factory=list)
    timer_ru_stime: list[float] = field(default_factory=list)
    #: How many nested requests (field 18) the message carried; pinba2 ignores them.
    nested_requests: int = 0

    def word(self, index: int) -> str:
        """Dictionary entry ``index``; a marked placeholder when it is out of range."""
        if 0 <= index < len(self.dictionary):
            return self.dictionary[index]
        return f"<no dictionary entry {index}>"

    @property
    def tags(self) -> list[tuple[str, str]]:
        """The request tags as (name, value) pairs, in wire order."""
        return [
            (self.word(n), self.word(v))
            for n, v in zip(self.tag_name, self.tag_value, strict=False)
        ]

    @property
    def timers(self) -> list[PinbaTimer]:
        """The timers with their tags resolved (as far as the arrays agree)."""
        out = []
        position = 0
        count = min(len(self.timer_hit_count), len(self.timer_value), len(self.timer_tag_count))
        with_cpu = len(self.timer_ru_utime) == len(self.timer_ru_stime) == count
        for i in range(count):
            tag_count = self.timer_tag_count[i]
            names = self.timer_tag_name[position : position + tag_count]
            values = self.timer_tag_value[position : position + tag_count]
            position += tag_count
            out.append(
                PinbaTimer(
                    tuple(
                        (self.word(n), self.word(v)) for n, v in zip(names, values, strict=False)
                    ),
                    self.timer_value[i],
                    self.timer_hit_count[i],
                    self.timer_ru_utime[i] if with_cpu else 0.0,
                    self.timer_ru_stime[i] if with_cpu else 0.0,
                )
            )
        return out

    def timer(self, **tags: object) -> PinbaTimer:
        """The one timer sent with exactly these tags; LookupError otherwise."""
        wanted = sorted((name, str(value)) for name, value in tags.items())
        found = [timer for timer in self.timers if sorted(timer.tags) == wanted]
        if len(found) != 1:
            sent = [timer.tags for timer in self.timers]
            raise LookupError(f"{len(found)} timers with tags {wanted}; sent: {sent}")
        return found[0]

    def as_dict(self) -> dict[str, object]:
        """Plain JSON-ready values: request fields, resolved tags and timers."""
        return {
            "hostname": self.hostname,
            "server_name": self.server_name,
            "script_name": self.script_name,
            "schema": self.schema,
            "status": self.status,
            "request_count": self.request_count,
            "document_size": self.document_size,
            "memory_peak": self.memory_peak,
            "memory_footprint": self.memory_footprint,
            "request_time": self.request_time,
            "ru_utime": self.ru_utime,
            "ru_stime": self.ru_stime,
            "tags": [list(pair) for pair in self.tags],
            "timers": [
                {
                    "tags": [list(pair) for pair in timer.tags],
                    "value": timer.value,
                    "hit_count": timer.hit_count,
                    "ru_utime": timer.ru_utime,
                    "ru_stime": timer.ru_stime,
                }
                for timer in self.timers
            ],
        }


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _scalar_values(number: int, wire_type: int, value: int | bytes) -> list[int] | list[float]:
    """A uint32 or float field's values: the one sent, or each of a packed repeated field."""
    packed = wire_type == LENGTH_DELIMITED and number in REPEATED
    if number in FLOATS:
        if (wire_type == FIXED32 or packed) and isinstance(value, bytes):
            # A single fixed32 reads as a packed run of one.
            return [float32(raw) for raw in unpack_floats(value)]
        expected = "a float"
    else:
        if isinstance(value, int):  # the varint wire type
            return [value & 0xFFFFFFFF]  # uint32 keeps the low bits
        if packed:
            return [varint & 0xFFFFFFFF for varint in unpack_varints(value)]
        expected = "a varint"
    raise DecodeError(f"{FIELD_NAMES[number]}: wire type {wire_type}, expected {expected}")


def decode_request(payload: bytes) -> PinbaRequest:
    """Decode a raw (v0) ``Pinba.Request`` message; DecodeError when it is malformed.

    Repeated scalars may be packed or not. Unknown fields are skipped, as
    protobuf does; a missing required field or a known field with the wrong
    wire type is an error, as it is for the servers' decoder.
    """
    request = PinbaRequest()
    seen = set()
    for number, wire_type, value in iter_fields(payload):
        seen.add(number)
        name = FIELD_NAMES.get(number)
        if name is None:
            continue
        if number in STRINGS:
            if wire_type != LENGTH_DELIMITED or not isinstance(value, bytes):
                raise DecodeError(f"{name}: wire type {wire_type}, expected a string")
            if number == 15:
                request.dictionary.append(_text(value))
            else:
                setattr(request, name, _text(value))
        elif number in UINT32S or number in FLOATS:
            values = _scalar_values(number, wire_type, value)
            if number in REPEATED:
                getattr(request, name).extend(values)
            else:
                setattr(request, name, values[-1])
        elif number == 18:
            if wire_type != LENGTH_DELIMITED:
                raise DecodeError(f"requests: wire type {wire_type}, expected a message")
            request.nested_requests += 1
    missing = [FIELD_NAMES[number] for number in REQUIRED if number not in seen]
    if missing:
        raise DecodeError(f"missing required fields: {', '.join(missing)}")
    return request


# -- pinba2's framing -------------------------------------------------------


def unframe(datagram: bytes) -> tuple[bytes, str]:
    """The protobuf payload of a datagram and its framing: ``"v0"``, ``"v1"`` or ``"v1+lz4"``.

    pinba2 reads the first byte's high nibble: 0 is a bare message (v0), 1 a
    4-byte header before the payload, whose flag bit 0 means LZ4 block
    compression (see ``pynba.wire.framing``; reading it needs the ``lz4`` package).
    Anything else is dropped. Without the ``lz4`` package, a compressed
    datagram raises ``UnreadableError``: it cannot be read, which is not a
    reason for a server to drop it.
    """
    data = bytes(datagram)
    if not data:
        raise DecodeError("empty datagram")
    if data[0] >> 4 == 0:
        return data, "v0"
    compressed = len(data) >= framing.HEADER_SIZE and data[1] & framing.FLAG_LZ4
    kind = "v1+lz4" if compressed else "v1"
    try:
        payload = framing.unframe(data)
    except framing.LZ4UnavailableError:
        raise UnreadableError(
            "compressed (LZ4): cannot read it without the lz4 package (pip install lz4)",
            kind,
        ) from None
    except framing.FramingError as error:
        raise DecodeError(str(error)) from None
    return payload, kind


def read_datagram(datagram: bytes) -> PinbaRequest:
    """Unframe and decode a datagram as a Pinba server receives it."""
    payload, _ = unframe(datagram)
    return decode_request(payload)

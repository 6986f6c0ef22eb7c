"""pinba2's acceptance rules, applied to a raw datagram and to its protobuf decoding.

``violations(datagram)`` lists every rule a datagram breaks (empty when pinba2
would accept it); ``assert_valid(datagram)`` fails a test with that list.
Floats are checked on their raw float32 bit patterns, read by a small wire
walker, so subnormal and NaN patterns are caught whatever Python makes of them.

A few checks are stricter than pinba2 itself, because a client must never
depend on leniency: field order, unknown or nested-request fields, and (unless
``packed_ok``) packed repeated scalars.
"""

import struct

from google.protobuf.message import DecodeError

from pynba.pinba_pb2 import Request

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
UINT32_MAX = 0xFFFFFFFF

REQUIRED = tuple(range(1, 10))
SINGULAR = (*REQUIRED, 16, 17, 19)
STRINGS = (1, 2, 3, 15, 19)
UINT32S = (4, 5, 6, 10, 12, 13, 14, 16, 17, 20, 21)
FLOATS = (7, 8, 9, 11, 22, 23)
REPEATED_SCALARS = (10, 11, 12, 13, 14, 20, 21, 22, 23)
KNOWN = (*range(1, 18), *range(19, 24))  # 18 (nested requests) is never sent

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


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def read_varint(data, pos):
    """The varint at ``data[pos:]`` and the position after it."""
    result = shift = 0
    while True:
        if pos >= len(data):
            raise WireError(f"truncated varint at byte {pos}")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError(f"varint longer than 10 bytes at byte {pos}")


def fields(datagram):
    """Every field of a message as ``(field_no, wire_type, value)``, in wire order.

    ``value`` is an int for varints and the raw bytes otherwise (4 bytes for
    fixed32, 8 for fixed64, the payload for length-delimited fields).
    """
    data = bytes(datagram)
    out = []
    pos = 0
    while pos < len(data):
        key, pos = read_varint(data, pos)
        field_no, wire_type = key >> 3, key & 7
        if field_no == 0:
            raise WireError("field number 0")
        if wire_type == VARINT:
            value, pos = read_varint(data, pos)
        elif wire_type in (FIXED32, FIXED64):
            size = 4 if wire_type == FIXED32 else 8
            if pos + size > len(data):
                raise WireError(f"truncated fixed{size * 8} in field {field_no}")
            value = data[pos : pos + size]
            pos += size
        elif wire_type == LENGTH_DELIMITED:
            size, pos = read_varint(data, pos)
            if pos + size > len(data):
                raise WireError(f"truncated length-delimited field {field_no}")
            value = data[pos : pos + size]
            pos += size
        else:
            raise WireError(f"unsupported wire type {wire_type} in field {field_no}")
        out.append((field_no, wire_type, value))
    return out


def unpack_varints(payload):
    values = []
    pos = 0
    while pos < len(payload):
        value, pos = read_varint(payload, pos)
        values.append(value)
    return values


def float32_problem(raw, allow_negative=True):
    """Why pinba2 would drop this float32 bit pattern, or None when it is fine."""
    (bits,) = struct.unpack("<I", raw)
    magnitude = bits & 0x7FFFFFFF
    exponent = magnitude >> 23
    if magnitude == 0:
        return None  # +0.0 or -0.0
    if exponent == 0xFF:
        return "NaN" if magnitude & 0x7FFFFF else "infinite"
    if exponent == 0:
        return "subnormal"
    if bits >> 31 and not allow_negative:
        return "negative"
    return None


def _scalars(walked, field_no, packed_ok, problems):
    """The values of a repeated scalar field: ints for varints, raw 4 bytes for floats."""
    values = []
    expected = FIXED32 if field_no in FLOATS else VARINT
    name = FIELD_NAMES[field_no]
    for number, wire_type, value in walked:
        if number != field_no:
            continue
        if wire_type == expected:
            values.append(value)
        elif wire_type == LENGTH_DELIMITED and field_no in REPEATED_SCALARS:
            if not packed_ok:
                problems.append(f"{name}: packed encoding (the classic form is unpacked)")
            if expected == FIXED32:
                if len(value) % 4:
                    problems.append(f"{name}: packed floats of {len(value)} bytes")
                values.extend(value[i : i + 4] for i in range(0, len(value) - 3, 4))
            else:
                try:
                    values.extend(unpack_varints(value))
                except WireError as error:
                    problems.append(f"{name}: bad packed varints: {error}")
        # other wire types are reported by the wire-type check
    return values


def violations(datagram, packed_ok=False):
    """Every pinba2 rule ``datagram`` breaks, as human-readable strings."""
    data = bytes(datagram)
    problems = []
    if not data:
        return ["empty datagram"]
    if data[0] >> 4:
        problems.append(f"first byte 0x{data[0]:02x} has a non-zero high nibble (read as v1)")
    if data[0] != 0x0A:
        problems.append(f"first byte 0x{data[0]:02x} is not 0x0a (hostname key)")

    try:
        walked = fields(data)
    except WireError as error:
        return [*problems, f"malformed protobuf: {error}"]

    message = Request()
    try:
        message.ParseFromString(data)
    except DecodeError as error:
        problems.append(f"protobuf decoding failed: {error}")
    else:
        missing = message.FindInitializationErrors()
        if missing:
            problems.append(f"missing required fields: {', '.join(missing)}")

    numbers = [number for number, _, _ in walked]
    if tuple(numbers[:9]) != REQUIRED:
        problems.append(f"fields 1..9 do not come first and in order: {numbers[:9]}")
    if any(later < earlier for earlier, later in zip(numbers, numbers[1:], strict=False)):
        problems.append(f"fields out of ascending order: {numbers}")
    for number in SINGULAR:
        if numbers.count(number) > 1:
            problems.append(f"{FIELD_NAMES[number]} sent {numbers.count(number)} times")
    for number in sorted(set(numbers)):
        if number not in KNOWN:
            problems.append(f"unexpected field {number} ({FIELD_NAMES.get(number, 'unknown')})")

    for number, wire_type, value in walked:
        name = FIELD_NAMES.get(number, str(number))
        if number in STRINGS:
            ok = wire_type == LENGTH_DELIMITED
        elif number in FLOATS:
            ok = wire_type == FIXED32 or (
                wire_type == LENGTH_DELIMITED and number in REPEATED_SCALARS
            )
        elif number in UINT32S:
            ok = wire_type == VARINT or (
                wire_type == LENGTH_DELIMITED and number in REPEATED_SCALARS
            )
            if wire_type == VARINT and value > UINT32_MAX:
                problems.append(f"{name}: varint {value} does not fit uint32")
        else:
            ok = True
        if not ok:
            problems.append(f"{name}: wrong wire type {wire_type}")

    scalars = {number: _scalars(walked, number, packed_ok, problems) for number in UINT32S}
    scalars.update({number: _scalars(walked, number, packed_ok, problems) for number in FLOATS})
    dictionary = [
        value
        for number, wire_type, value in walked
        if number == 15 and wire_type == LENGTH_DELIMITED
    ]

    for number in (7, 8, 9):
        for raw in scalars[number]:
            problem = float32_problem(raw)
            if problem:
                problems.append(f"{FIELD_NAMES[number]}: {problem} float32 {raw.hex()}")
    for number in (11, 22, 23):
        for i, raw in enumerate(scalars[number]):
            problem = float32_problem(raw, allow_negative=number != 11)
            if problem:
                problems.append(f"{FIELD_NAMES[number]}[{i}]: {problem} float32 {raw.hex()}")

    hit_counts, values, tag_counts = scalars[10], scalars[11], scalars[12]
    timers = len(hit_counts)
    if not len(hit_counts) == len(values) == len(tag_counts):
        problems.append(
            f"timer arrays differ in length: hit_count {len(hit_counts)}, "
            f"value {len(values)}, tag_count {len(tag_counts)}"
        )
    for i, hits in enumerate(hit_counts):
        if hits <= 0:
            problems.append(f"timer_hit_count[{i}] is {hits}")
    timer_names, timer_values = scalars[13], scalars[14]
    pairs = sum(tag_counts)
    if not pairs == len(timer_names) == len(timer_values):
        problems.append(
            f"sum(timer_tag_count) {pairs}, timer_tag_name {len(timer_names)}, "
            f"timer_tag_value {len(timer_values)} differ"
        )
    tag_names, tag_values = scalars[20], scalars[21]
    if len(tag_names) != len(tag_values):
        problems.append(f"tag_name {len(tag_names)} and tag_value {len(tag_values)} differ")
    for number in (13, 14, 20, 21):
        for i, index in enumerate(scalars[number]):
            if index >= len(dictionary):
                problems.append(
                    f"{FIELD_NAMES[number]}[{i}] = {index} is past the dictionary "
                    f"({len(dictionary)} entries)"
                )
    for i, word in enumerate(dictionary):
        if b"\x00" in word:
            problems.append(f"dictionary[{i}] contains a NUL byte: {word!r}")
    for status in scalars[16]:
        if status >= UINT32_MAX:
            problems.append(f"status {status} is not < 2**32 - 1")
    for number in (22, 23):
        count = len(scalars[number])
        if count and count != timers:
            problems.append(f"{FIELD_NAMES[number]} has {count} values for {timers} timers")
    return problems


def assert_valid(datagram, packed_ok=False):
    """Fail with every broken rule when pinba2 would not accept ``datagram``."""
    problems = violations(datagram, packed_ok=packed_ok)
    assert not problems, "datagram breaks pinba2 rules:\n  " + "\n  ".join(problems)

"""pinba2's acceptance rules, applied to a raw datagram.

``check(datagram)`` lists every ``Problem`` with a datagram: those a Pinba
server drops the whole packet for (``drops=True``: malformed protobuf, a
missing field, NaN or subnormal floats, negative timer values, timer arrays
that disagree, a dictionary index out of range, which crashes pinba2...), and
those it survives but that a client should not send (``drops=False``: fields
out of order, a NUL byte cut by the server's C strings, ignored fields; an
LZ4 datagram that cannot be checked because the ``lz4`` package is missing).
``drop_reasons(datagram)`` keeps only the first kind. Floats are checked on
their raw float32 bit patterns, so NaN and subnormal patterns are caught
whatever Python makes of them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from .decode import (
    FIELD_NAMES,
    FIXED32,
    FLOATS,
    LENGTH_DELIMITED,
    REPEATED,
    REQUIRED,
    STRINGS,
    UINT32S,
    VARINT,
    DecodeError,
    UnreadableError,
    iter_fields,
    unframe,
    unpack_floats,
    unpack_varints,
)

__all__ = ["Problem", "check", "drop_reasons", "float32_problem", "violations"]

UINT32_MAX = 0xFFFFFFFF
SINGULAR = (*REQUIRED, 16, 17, 19)
KNOWN = frozenset((*range(1, 18), *range(19, 24)))  # 18, nested requests, is never sent
REPEATED_SCALARS = REPEATED - {15, 18}


@dataclass(frozen=True)
class Problem:
    """Something wrong with a datagram; ``drops``: a Pinba server discards the packet."""

    reason: str
    drops: bool = True

    def __str__(self) -> str:
        return self.reason


def float32_problem(raw: bytes, allow_negative: bool = True) -> str | None:
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


def check(datagram: bytes, packed_ok: bool = True) -> list[Problem]:
    """Every problem with ``datagram`` as a Pinba server would receive it.

    ``packed_ok=False`` also reports packed repeated fields (the servers
    accept them; the classic clients send them unpacked).
    """
    data = bytes(datagram)
    if not data:
        return [Problem("empty datagram")]
    try:
        payload, framing = unframe(data)
    except UnreadableError as error:
        return [Problem(f"cannot check the request: {error}", drops=False)]
    except DecodeError as error:
        if data[0] >> 4 == 1:
            return [
                Problem(
                    f"first byte 0x{data[0]:02x} has a non-zero high nibble: pinba2 reads a "
                    f"v1 frame header and finds {error}; a bare message must start "
                    "with hostname (byte 0x0a)"
                )
            ]
        return [Problem(str(error))]
    problems = []
    if framing == "v0" and data[0] != 0x0A:
        problems.append(
            Problem(f"first byte 0x{data[0]:02x} is not 0x0a (hostname first)", drops=False)
        )
    return problems + _check_message(payload, packed_ok)


def drop_reasons(datagram: bytes) -> list[str]:
    """Why a Pinba server would drop ``datagram`` (empty when it would accept it)."""
    return [problem.reason for problem in check(datagram) if problem.drops]


def violations(datagram: bytes, packed_ok: bool = False) -> list[str]:
    """Every problem, dropping or not, as text: what a client must never send."""
    return [problem.reason for problem in check(datagram, packed_ok=packed_ok)]


def _check_message(data: bytes, packed_ok: bool) -> list[Problem]:
    try:
        walked = list(iter_fields(data))
    except DecodeError as error:
        return [Problem(f"malformed protobuf: {error}")]
    problems: list[Problem] = []

    def drop(reason: str) -> None:
        problems.append(Problem(reason))

    def warn(reason: str) -> None:
        problems.append(Problem(reason, drops=False))

    numbers = [number for number, _, _ in walked]
    missing = [FIELD_NAMES[number] for number in REQUIRED if number not in numbers]
    if missing:
        drop(f"missing required fields: {', '.join(missing)}")
    if tuple(numbers[:9]) != REQUIRED and not missing:
        warn(f"fields 1..9 do not come first and in order: {numbers[:9]}")
    if any(later < earlier for earlier, later in zip(numbers, numbers[1:], strict=False)):
        warn(f"fields out of ascending order: {numbers}")
    for number in SINGULAR:
        if numbers.count(number) > 1:
            warn(f"{FIELD_NAMES[number]} sent {numbers.count(number)} times (the last one counts)")
    for number in sorted(set(numbers)):
        if number not in KNOWN:
            warn(f"unexpected field {number} ({FIELD_NAMES.get(number, 'unknown')}), ignored")

    # uint32 fields hold ints, float fields their raw float32 bytes.
    scalars: dict[int, list[Any]] = {number: [] for number in (*UINT32S, *FLOATS)}
    dictionary: list[bytes] = []
    packed: list[str] = []
    for number, wire_type, value in walked:
        name = FIELD_NAMES.get(number, str(number))
        if number in STRINGS or number == 18:
            if wire_type != LENGTH_DELIMITED:
                drop(f"{name}: wrong wire type {wire_type}")
            elif number == 15 and isinstance(value, bytes):
                dictionary.append(value)
            continue
        if number not in scalars:
            continue
        expected = FIXED32 if number in FLOATS else VARINT
        if wire_type == expected:
            if isinstance(value, int) and value > UINT32_MAX:  # a varint
                warn(f"{name}: varint {value} does not fit uint32")
            scalars[number].append(value)
        elif (
            wire_type == LENGTH_DELIMITED
            and number in REPEATED_SCALARS
            and isinstance(value, bytes)
        ):
            if name not in packed:
                packed.append(name)
            try:
                if expected == FIXED32:
                    scalars[number].extend(unpack_floats(value))
                else:
                    scalars[number].extend(unpack_varints(value))
            except DecodeError as error:
                drop(f"{name}: bad packed values: {error}")
        else:
            drop(f"{name}: wrong wire type {wire_type}")
    if not packed_ok:
        for name in packed:
            warn(f"{name}: packed encoding (the classic form is unpacked)")

    for number in (7, 8, 9):
        for raw in scalars[number]:
            problem = float32_problem(raw)
            if problem:
                drop(f"{FIELD_NAMES[number]}: {problem} float32 {raw.hex()}")
    for number in (11, 22, 23):
        for i, raw in enumerate(scalars[number]):
            problem = float32_problem(raw, allow_negative=number != 11)
            if problem:
                drop(f"{FIELD_NAMES[number]}[{i}]: {problem} float32 {raw.hex()}")

    hit_counts, values, tag_counts = scalars[10], scalars[11], scalars[12]
    timers = len(hit_counts)
    if not len(hit_counts) == len(values) == len(tag_counts):
        drop(
            f"timer arrays differ in length: hit_count {len(hit_counts)}, "
            f"value {len(values)}, tag_count {len(tag_counts)}"
        )
    for i, hits in enumerate(hit_counts):
        if hits <= 0:
            drop(f"timer_hit_count[{i}] is {hits}")
    timer_names, timer_values = scalars[13], scalars[14]
    pairs = sum(tag_counts)
    if not pairs == len(timer_names) == len(timer_values):
        drop(
            f"sum(timer_tag_count) {pairs}, timer_tag_name {len(timer_names)}, "
            f"timer_tag_value {len(timer_values)} differ"
        )
    tag_names, tag_values = scalars[20], scalars[21]
    if len(tag_names) != len(tag_values):
        drop(f"tag_name {len(tag_names)} and tag_value {len(tag_values)} differ")
    for number in (13, 14, 20, 21):
        for i, index in enumerate(scalars[number]):
            if index >= len(dictionary):
                drop(
                    f"{FIELD_NAMES[number]}[{i}] = {index} is past the dictionary "
                    f"({len(dictionary)} entries)"
                )
    for i, word in enumerate(dictionary):
        if b"\x00" in word:
            warn(f"dictionary[{i}] contains a NUL byte, where the server cuts it: {word!r}")
    for status in scalars[16]:
        if status >= UINT32_MAX:
            drop(f"status {status} is not < 2**32 - 1")
    for number in (22, 23):
        count = len(scalars[number])
        if count and count != timers:
            warn(f"{FIELD_NAMES[number]} has {count} values for {timers} timers, ignored")
    return problems

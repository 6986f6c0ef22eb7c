"""pinba2's acceptance rules for the project's tests: ``pynba.wire.validate`` plus the oracle.

``violations(datagram)`` lists every rule a datagram breaks (empty when pinba2
would accept it and a careful client would send it): the rules of
``pynba.wire.validate`` (what ``pynba listen`` flags), at their strictest, plus
whatever Google protobuf finds when it decodes the message.
``assert_valid(datagram)`` fails a test with that list.
"""

from google.protobuf.message import DecodeError as ProtobufDecodeError

from pinba_pb2 import Request
from pynba.wire import validate
from pynba.wire.decode import FIELD_NAMES, DecodeError, iter_fields, read_varint

__all__ = [
    "FIELD_NAMES",
    "WireError",
    "assert_valid",
    "fields",
    "read_varint",
    "timer_cpu",
    "violations",
]

WireError = DecodeError
float32_problem = validate.float32_problem


def fields(datagram):
    """Every field of a message as ``(field_no, wire_type, value)``, in wire order."""
    return list(iter_fields(datagram))


def violations(datagram, packed_ok=False):
    """Every pinba2 rule ``datagram`` breaks, as human-readable strings."""
    problems = validate.violations(datagram, packed_ok=packed_ok)
    message = Request()
    try:
        message.ParseFromString(bytes(datagram))
    except ProtobufDecodeError as error:
        problems.append(f"protobuf decoding failed: {error}")
    else:
        missing = message.FindInitializationErrors()
        if missing:
            problems.append(f"protobuf: missing required fields: {', '.join(missing)}")
    return problems


def assert_valid(datagram, packed_ok=False):
    """Fail with every broken rule when pinba2 would not accept ``datagram``."""
    problems = violations(datagram, packed_ok=packed_ok)
    assert not problems, "datagram breaks pinba2 rules:\n  " + "\n  ".join(problems)


def timer_cpu(message, i):
    """Timer ``i``'s ``(ru_utime, ru_stime)`` as pinba2 reads them: a missing entry is 0.

    pinba2 and pinba_engine both take fields 22 and 23 as optional: a client
    without per-timer CPU may leave them out.
    """
    utime = message.timer_ru_utime[i] if i < len(message.timer_ru_utime) else 0.0
    stime = message.timer_ru_stime[i] if i < len(message.timer_ru_stime) else 0.0
    return utime, stime

"""How ``pynba listen`` shows one datagram to a person.

Every string a datagram carries comes from whoever can reach the port, so it
is shown through ``printable`` (or ``json_line``): a terminal never receives
a control character from the network.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from ..wire.decode import PinbaRequest
from .listener import Received

__all__ = ["describe", "describe_request", "json_line", "milliseconds", "pairs", "printable"]


def _escape_unprintable(text: str, escape: Callable[[str], str]) -> str:
    # str.isprintable() is False for exactly the characters repr() escapes:
    # controls (C0, DEL, C1), format characters (bidi overrides, zero-width),
    # line and paragraph separators, spaces other than " ", surrogates,
    # private-use and unassigned code points.
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else escape(char) for char in text)


def _python_escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return {"\t": "\\t", "\n": "\\n", "\r": "\\r"}.get(char, f"\\x{code:02x}")
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 | code >> 10:04x}\\u{0xDC00 | code & 0x3FF:04x}"


def printable(text: str) -> str:
    """``text`` safe to print: what ``str.isprintable()`` rejects escaped as ``repr()`` would.

    ESC, BEL, CR, U+009B (CSI), U+2028, U+202E (right-to-left override) and
    the like become ``\\x1b``, ``\\x07``, ``\\r``, ``\\x9b``, ``\\u2028``,
    ``\\u202e``; a backslash is doubled, so an escape shown is never the
    sender's own text. Letters of any script, emoji and punctuation pass.
    """
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    return _escape_unprintable(text, _python_escape)


def json_line(value: object) -> str:
    """``value`` as one line of JSON with the characters ``printable`` escapes as ``\\uXXXX``.

    Readers of the JSON get the original strings back; a terminal gets no
    control character. Other non-ASCII text stays as it is (UTF-8).
    """
    return _escape_unprintable(json.dumps(value, ensure_ascii=False), _json_escape)


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


def pairs(tags: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> str:
    """Tags as ``name=value name=value``, printable; ``(none)`` when there are none."""
    return printable(" ".join(f"{name}={value}" for name, value in tags)) or "(none)"


def _quoted(text: str) -> str:
    return f"'{printable(text)}'"


def describe_request(request: PinbaRequest) -> list[str]:
    """The request's fields, tags and timers, a line each."""
    lines = [
        f"  script_name      {_quoted(request.script_name)}",
        f"  server_name      {_quoted(request.server_name)}",
        f"  hostname         {_quoted(request.hostname)}",
        f"  schema           {_quoted(request.schema)}",
        f"  status           {request.status}",
        f"  request_time     {milliseconds(request.request_time)}",
        f"  ru_utime         {milliseconds(request.ru_utime)}",
        f"  ru_stime         {milliseconds(request.ru_stime)}",
        f"  document_size    {request.document_size} bytes",
        f"  memory_peak      {request.memory_peak} bytes",
        f"  memory_footprint {request.memory_footprint} bytes",
        f"  request_count    {request.request_count}",
        f"  tags             {pairs(request.tags)}",
    ]
    timers = request.timers
    lines.append(f"  timers           {len(timers) or '(none)'}")
    for timer in timers:
        cpu = ""
        if timer.ru_utime or timer.ru_stime:
            cpu = (
                f", cpu {milliseconds(timer.ru_utime)} user + {milliseconds(timer.ru_stime)} system"
            )
        lines.append(
            f"    {pairs(timer.tags)}: {timer.hit_count} hit(s), {milliseconds(timer.value)}{cpu}"
        )
    return lines


def describe(received: Received, number: int | None = None) -> str:
    """A readable account of a datagram: verdict, fields, tags, timers, problems."""
    origin = f" from {received.origin}" if received.origin else ""
    framing = f", {received.framing}" if received.framing not in (None, "v0") else ""
    if received.unreadable:
        verdict = received.unreadable
    else:
        verdict = "accepted" if received.accepted else "DROPPED by a Pinba server"
    head = f"#{number} " if number is not None else ""
    lines = [f"{head}{len(received.datagram)} bytes{origin}{framing}: {verdict}"]
    for reason in received.drop_reasons:
        lines.append(f"  drop: {printable(reason)}")
    for warning in received.warnings:
        lines.append(f"  warning: {printable(warning)}")
    if received.request is not None:
        lines.extend(describe_request(received.request))
    else:
        preview = received.datagram[:64].hex()
        more = "..." if len(received.datagram) > 64 else ""
        lines.append(f"  bytes            {preview}{more}")
    return "\n".join(lines)

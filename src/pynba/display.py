"""How ``pynba listen`` shows one datagram to a person."""

from __future__ import annotations

from .decode import PinbaRequest
from .listener import Received

__all__ = ["describe", "describe_request", "milliseconds"]


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


def _pairs(tags: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> str:
    return " ".join(f"{name}={value}" for name, value in tags) or "(none)"


def describe_request(request: PinbaRequest) -> list[str]:
    """The request's fields, tags and timers, a line each."""
    lines = [
        f"  script_name      {request.script_name!r}",
        f"  server_name      {request.server_name!r}",
        f"  hostname         {request.hostname!r}",
        f"  schema           {request.schema!r}",
        f"  status           {request.status}",
        f"  request_time     {milliseconds(request.request_time)}",
        f"  ru_utime         {milliseconds(request.ru_utime)}",
        f"  ru_stime         {milliseconds(request.ru_stime)}",
        f"  document_size    {request.document_size} bytes",
        f"  memory_peak      {request.memory_peak} bytes",
        f"  memory_footprint {request.memory_footprint} bytes",
        f"  request_count    {request.request_count}",
        f"  tags             {_pairs(request.tags)}",
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
            f"    {_pairs(timer.tags)}: {timer.hit_count} hit(s), {milliseconds(timer.value)}{cpu}"
        )
    return lines


def describe(received: Received, number: int | None = None) -> str:
    """A readable account of a datagram: verdict, fields, tags, timers, problems."""
    origin = ""
    if received.sender:
        origin = f" from {received.sender[0]}:{received.sender[1]}"
    framing = f", {received.framing}" if received.framing not in (None, "v0") else ""
    verdict = "accepted" if received.accepted else "DROPPED by a Pinba server"
    head = f"#{number} " if number is not None else ""
    lines = [f"{head}{len(received.datagram)} bytes{origin}{framing}: {verdict}"]
    for reason in received.drop_reasons:
        lines.append(f"  drop: {reason}")
    for warning in received.warnings:
        lines.append(f"  warning: {warning}")
    if received.request is not None:
        lines.extend(describe_request(received.request))
    else:
        preview = received.datagram[:64].hex()
        more = "..." if len(received.datagram) > 64 else ""
        lines.append(f"  bytes            {preview}{more}")
    return "\n".join(lines)

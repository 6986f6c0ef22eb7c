"""Aggregating requests the way a Pinba report reads: per script and per timer tag set."""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from time import monotonic

from .decode import PinbaRequest
from .display import pairs, printable
from .listener import Received

__all__ = ["Report", "percentile"]

# Percentiles are computed over the most recent requests of each script.
_SAMPLES = 10_000


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(math.ceil(fraction * len(sorted_values)), 1)
    return sorted_values[rank - 1]


@dataclass
class ScriptStats:
    requests: int = 0
    time_total: float = 0.0
    cpu_total: float = 0.0
    statuses: Counter = field(default_factory=Counter)
    times: deque = field(default_factory=lambda: deque(maxlen=_SAMPLES))


@dataclass
class TimerStats:
    hits: int = 0
    total: float = 0.0
    requests: int = 0


class Report:
    """Live totals of the requests received since it was created."""

    def __init__(self) -> None:
        self.started = monotonic()
        self.scripts: dict[str, ScriptStats] = {}
        self.timers: dict[tuple, TimerStats] = {}
        self.received = 0
        self.dropped = 0
        self.drop_reasons: Counter = Counter()

    def add(self, received: Received) -> None:
        """Count one datagram: its request, or why a server would drop it."""
        self.received += 1
        if not received.accepted or received.request is None:
            self.dropped += 1
            for reason in received.drop_reasons or [received.error or "undecodable"]:
                self.drop_reasons[reason] += 1
            return
        self.add_request(received.request)

    def add_request(self, request: PinbaRequest) -> None:
        stats = self.scripts.get(request.script_name)
        if stats is None:
            stats = self.scripts[request.script_name] = ScriptStats()
        count = max(request.request_count, 1)
        stats.requests += count
        stats.time_total += request.request_time
        stats.cpu_total += request.ru_utime + request.ru_stime
        stats.statuses[request.status] += count
        stats.times.append(request.request_time)
        for timer in request.timers:
            key = tuple(sorted(timer.tags))
            timer_stats = self.timers.get(key)
            if timer_stats is None:
                timer_stats = self.timers[key] = TimerStats()
            timer_stats.hits += timer.hit_count
            timer_stats.total += timer.value
            timer_stats.requests += 1

    @property
    def requests(self) -> int:
        return sum(stats.requests for stats in self.scripts.values())

    def render(self, now: float | None = None, width: int | None = None) -> str:
        """The report as a plain-text table (lines cut at ``width`` when given)."""
        elapsed = max((monotonic() if now is None else now) - self.started, 1e-9)
        lines = [
            f"{self.requests} requests in {elapsed:.1f} s from {len(self.scripts)} scripts; "
            f"{self.received} datagrams, {self.dropped} a Pinba server would drop",
            "",
        ]
        header = (
            f"{'script_name':<28} {'requests':>8} {'req/s':>8} {'mean ms':>9} {'p50 ms':>9}"
            f" {'p95 ms':>9} {'p99 ms':>9} {'cpu ms/req':>10}  status"
        )
        lines.append(header)
        ranked = sorted(self.scripts.items(), key=lambda item: -item[1].time_total)
        for name, stats in ranked:
            times = sorted(stats.times)
            statuses = " ".join(f"{code}:{n}" for code, n in sorted(stats.statuses.items()))
            label = _fit(printable(name), 28)
            lines.append(
                f"{label:<28} {stats.requests:>8} {stats.requests / elapsed:>8.1f}"
                f" {_ms(stats.time_total / stats.requests):>9} {_ms(percentile(times, 0.5)):>9}"
                f" {_ms(percentile(times, 0.95)):>9} {_ms(percentile(times, 0.99)):>9}"
                f" {_ms(stats.cpu_total / stats.requests):>10}  {statuses}"
            )
        if self.timers:
            lines += ["", f"{'timer tags':<48} {'hits':>8} {'total ms':>10} {'mean ms':>9}"]
            ranked_timers = sorted(self.timers.items(), key=lambda item: -item[1].total)
            for tags, stats in ranked_timers:
                lines.append(
                    f"{_fit(pairs(tags), 48):<48} {stats.hits:>8} {_ms(stats.total):>10}"
                    f" {_ms(stats.total / stats.hits if stats.hits else 0.0):>9}"
                )
        if self.drop_reasons:
            lines += ["", "dropped because:"]
            for reason, count in self.drop_reasons.most_common(5):
                lines.append(f"  {count} x {printable(reason)}")
        if width is not None:
            lines = [_fit(line, width) for line in lines]
        return "\n".join(lines)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"

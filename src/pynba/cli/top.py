"""Aggregating requests the way a Pinba report reads: per script and per timer tag set.

Any client on the network chooses the script names and tags, so a report keeps
at most ``max_rows`` rows per table: past it, new names share one ``(other)``
row, and memory and redraw time stay bounded however many names arrive.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from hashlib import blake2b
from time import monotonic
from typing import Generic, TypeVar

from ..wire.decode import PinbaRequest
from .display import pairs, printable
from .listener import Received

__all__ = ["DEFAULT_MAX_ROWS", "Report", "Rows", "percentile"]

#: How many scripts, timer tag sets and drop reasons a report keeps by default.
DEFAULT_MAX_ROWS = 10_000

# Percentiles are computed over the most recent requests of each script.
_SAMPLES = 10_000

Key = TypeVar("Key", bound=Hashable)
Stats = TypeVar("Stats")


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
    statuses: Counter[int] = field(default_factory=Counter)
    times: deque[float] = field(default_factory=lambda: deque(maxlen=_SAMPLES))


@dataclass
class TimerStats:
    hits: int = 0
    total: float = 0.0
    requests: int = 0


class _DistinctCount:
    """About how many distinct keys were added, in 16 KiB: HyperLogLog, ~1% error.

    Small counts (up to a few thousand) are all but exact (linear counting).
    """

    _INDEX_BITS = 14
    _RANK_BITS = 64 - _INDEX_BITS

    def __init__(self) -> None:
        self._registers = bytearray(1 << self._INDEX_BITS)

    def add(self, key: Hashable) -> None:
        # blake2b, not hash(): the same names give the same count in every run.
        digest = blake2b(repr(key).encode(), digest_size=8).digest()
        bits = int.from_bytes(digest, "big")
        index = bits >> self._RANK_BITS
        rank = self._RANK_BITS - (bits & ((1 << self._RANK_BITS) - 1)).bit_length() + 1
        if rank > self._registers[index]:
            self._registers[index] = rank

    def estimate(self) -> int:
        registers = self._registers
        size = len(registers)
        empty = registers.count(0)
        if empty > size * 0.07:  # below about 2.5 * size keys: linear counting
            return round(size * math.log(size / empty))
        alpha = 0.7213 / (1 + 1.079 / size)
        return round(alpha * size * size / math.fsum(2.0**-rank for rank in registers))


class Rows(Generic[Key, Stats]):
    """At most ``limit`` rows by key; the keys past it share one row, ``other``."""

    def __init__(self, limit: int, make: Callable[[], Stats]) -> None:
        self.limit = limit
        self.rows: dict[Key, Stats] = {}
        #: The row of every key past ``limit``; None until one comes.
        self.other: Stats | None = None
        self._make = make
        self._folded = _DistinctCount()

    def row(self, key: Key) -> Stats:
        """The row to count ``key`` in: its own, made while there is room, else ``other``."""
        stats = self.rows.get(key)
        if stats is not None:
            return stats
        if len(self.rows) < self.limit:
            stats = self.rows[key] = self._make()
            return stats
        if self.other is None:
            self.other = self._make()
        self._folded.add(key)
        return self.other

    @property
    def folded(self) -> int:
        """About how many distinct keys ``other`` counts (0 when none)."""
        return self._folded.estimate()

    def __len__(self) -> int:
        return len(self.rows)


class Report:
    """Live totals of the requests received since it was created.

    At most ``max_rows`` scripts, timer tag sets and drop reasons each are
    kept; the rest are counted together, as ``(other)``.
    """

    def __init__(self, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        if isinstance(max_rows, bool) or not isinstance(max_rows, int):
            raise TypeError(f"max_rows must be an int, not {type(max_rows).__name__}")
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        self.started = monotonic()
        self.max_rows = max_rows
        self.scripts: Rows[str, ScriptStats] = Rows(max_rows, ScriptStats)
        self.timers: Rows[tuple[tuple[str, str], ...], TimerStats] = Rows(max_rows, TimerStats)
        self.received = 0
        self.dropped = 0
        self.drop_reasons: Counter[str] = Counter()
        #: Datagrams pynba could not read (no verdict), by why.
        self.unread: Counter[str] = Counter()

    def add(self, received: Received) -> None:
        """Count one datagram: its request, why a server would drop it, or why it is unread."""
        self.received += 1
        if received.unreadable:
            self.unread[received.unreadable] += 1
            return
        if not received.accepted or received.request is None:
            self.dropped += 1
            for reason in received.drop_reasons or [received.error or "undecodable"]:
                self._count_drop(reason)
            return
        self.add_request(received.request)

    def _count_drop(self, reason: str) -> None:
        # Reasons quote indexes and values from the datagram: bounded like the rows.
        if reason not in self.drop_reasons and len(self.drop_reasons) >= self.max_rows:
            reason = "(other reasons)"
        self.drop_reasons[reason] += 1

    def add_request(self, request: PinbaRequest) -> None:
        """Count one decoded request in its script's row and its timers' rows."""
        stats = self.scripts.row(request.script_name)
        count = max(request.request_count, 1)
        stats.requests += count
        stats.time_total += request.request_time
        stats.cpu_total += request.ru_utime + request.ru_stime
        stats.statuses[request.status] += count
        stats.times.append(request.request_time)
        for timer in request.timers:
            timer_stats = self.timers.row(tuple(sorted(timer.tags)))
            timer_stats.hits += timer.hit_count
            timer_stats.total += timer.value
            timer_stats.requests += 1

    @property
    def requests(self) -> int:
        rows = sum(stats.requests for stats in self.scripts.rows.values())
        other = self.scripts.other
        return rows + (0 if other is None else other.requests)

    def render(self, now: float | None = None, width: int | None = None) -> str:
        """The report as a plain-text table (lines cut at ``width`` when given)."""
        elapsed = max((monotonic() if now is None else now) - self.started, 1e-9)
        scripts, timers = self.scripts, self.timers
        more = f" + ~{scripts.folded} more in (other)" if scripts.other is not None else ""
        unread = f", {sum(self.unread.values())} not read" if self.unread else ""
        lines = [
            f"{self.requests} requests in {elapsed:.1f} s from {len(scripts)} scripts{more}; "
            f"{self.received} datagrams, {self.dropped} a Pinba server would drop{unread}",
            "",
            f"{'script_name':<28} {'requests':>8} {'req/s':>8} {'mean ms':>9} {'p50 ms':>9}"
            f" {'p95 ms':>9} {'p99 ms':>9} {'cpu ms/req':>10}  status",
        ]
        ranked = sorted(scripts.rows.items(), key=lambda item: -item[1].time_total)
        for name, script in ranked:
            lines.append(_script_line(printable(name), script, elapsed))
        if scripts.other is not None:
            lines.append(_script_line(f"(other: ~{scripts.folded} names)", scripts.other, elapsed))
        if timers.rows:
            lines += ["", f"{'timer tags':<48} {'hits':>8} {'total ms':>10} {'mean ms':>9}"]
            ranked_timers = sorted(timers.rows.items(), key=lambda item: -item[1].total)
            for tags, timer in ranked_timers:
                lines.append(_timer_line(pairs(tags), timer))
            if timers.other is not None:
                lines.append(_timer_line(f"(other: ~{timers.folded} tag sets)", timers.other))
        if self.drop_reasons:
            lines += ["", "dropped because:"]
            for reason, count in self.drop_reasons.most_common(5):
                lines.append(f"  {count} x {printable(reason)}")
        if self.unread:
            lines += ["", "not read:"]
            for reason, count in self.unread.most_common():
                lines.append(f"  {count} x {reason}")
        if width is not None:
            lines = [_fit(line, width) for line in lines]
        return "\n".join(lines)


def _script_line(label: str, stats: ScriptStats, elapsed: float) -> str:
    times = sorted(stats.times)
    statuses = " ".join(f"{code}:{n}" for code, n in sorted(stats.statuses.items()))
    return (
        f"{_fit(label, 28):<28} {stats.requests:>8} {stats.requests / elapsed:>8.1f}"
        f" {_ms(stats.time_total / stats.requests):>9} {_ms(percentile(times, 0.5)):>9}"
        f" {_ms(percentile(times, 0.95)):>9} {_ms(percentile(times, 0.99)):>9}"
        f" {_ms(stats.cpu_total / stats.requests):>10}  {statuses}"
    )


def _timer_line(label: str, stats: TimerStats) -> str:
    return (
        f"{_fit(label, 48):<48} {stats.hits:>8} {_ms(stats.total):>10}"
        f" {_ms(stats.total / stats.hits if stats.hits else 0.0):>9}"
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"

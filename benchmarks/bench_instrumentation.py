"""Cost of the automatic timers per call: next to the bare call and a hand-written pynba.timer.

Each case is one library call made three ways, each measured inside
monitored requests of 50 calls each (reporting to a loopback socket nobody
reads; the requests' start and end are not counted):

- bare: the library alone, not instrumented;
- hand-written: the same call in ``with pynba.timer(...)`` with the tags
  the automatic timer sends;
- automatic: the call through the integration.

The table gives µs per call, the automatic timer's cost over the
hand-written one (the bar: at most 1.0 µs), and over the bare call outside
any request (what a hook costs where nothing is recorded). An integration
whose library is not installed is skipped.

To add a case: write a function returning a ``Case`` (or None to skip) and
list it in ``CASES``.

Run: python benchmarks/bench_instrumentation.py [--quick]
"""

from __future__ import annotations

import argparse
import contextvars
import importlib.util
import socket
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass

from pynba import pynba
from pynba.collector import CollectorSettings, RequestCollector
from pynba.context import activate, deactivate
from pynba.reporter import Reporter
from pynba.wire.encoder import IMPLEMENTATION

#: The automatic timer may cost this much more than the hand-written one (µs).
BAR = 1.0
#: The calls a request makes (its timers then go with its packet, as in a real one).
CALLS_PER_REQUEST = 50


@dataclass
class Case:
    """One library call, made bare, in a hand-written timer, and through its integration."""

    name: str
    bare: Callable[[], object]
    hand_written: Callable[[], object]
    automatic: Callable[[], object]
    close: Callable[[], object] | None = None


def installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in modules)


# -- the cases -------------------------------------------------------------------


def dbapi_sqlite3() -> Case | None:
    import sqlite3

    from pynba.instrumentation.dbapi import wrap_connection

    bare_cursor = sqlite3.connect(":memory:").cursor()
    timed_cursor = wrap_connection(sqlite3.connect(":memory:")).cursor()

    def hand_written() -> None:
        with pynba.timer(group="db", op="select", db="sqlite3"):
            bare_cursor.execute("SELECT 1")

    return Case(
        "dbapi: sqlite3 in memory, cursor.execute('SELECT 1')",
        lambda: bare_cursor.execute("SELECT 1"),
        hand_written,
        lambda: timed_cursor.execute("SELECT 1"),
    )


def sqlalchemy_sqlite() -> Case | None:
    if not installed("sqlalchemy"):
        return None
    import sqlalchemy

    from pynba.instrumentation.sqlalchemy import instrument_engine

    statement = sqlalchemy.text("SELECT 1")
    bare_connection = sqlalchemy.create_engine("sqlite://").connect()
    timed_engine = sqlalchemy.create_engine("sqlite://")
    instrument_engine(timed_engine)
    timed_connection = timed_engine.connect()

    def hand_written() -> None:
        with pynba.timer(group="db", op="select", db="sqlite"):
            bare_connection.execute(statement)

    def close() -> None:
        bare_connection.close()
        timed_connection.close()

    return Case(
        "sqlalchemy: sqlite in memory, connection.execute(text('SELECT 1'))",
        lambda: bare_connection.execute(statement),
        hand_written,
        lambda: timed_connection.execute(statement),
        close,
    )


def django_db_sqlite() -> Case | None:
    if not installed("django"):
        return None
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
            INSTALLED_APPS=[],
        )
        django.setup()
    from django.db import connections

    from pynba.instrumentation import django_db

    # A connection of its own (not one of ``connections``), opened before
    # instrument(), for the bare and hand-written calls.
    bare_db = connections.create_connection("default")
    bare_cursor = bare_db.cursor()
    timed_db = connections["default"]
    timed_cursor = timed_db.cursor()
    django_db.instrument()

    def hand_written() -> None:
        with pynba.timer(group="db", op="select", db="default"):
            bare_cursor.execute("SELECT 1")

    def close() -> None:
        django_db.uninstrument()
        bare_db.close()
        timed_db.close()

    return Case(
        "django_db: sqlite in memory, Django cursor.execute('SELECT 1')",
        lambda: bare_cursor.execute("SELECT 1"),
        hand_written,
        lambda: timed_cursor.execute("SELECT 1"),
        close,
    )


#: Every case, in the table's order.
CASES: list[Callable[[], Case | None]] = [dbapi_sqlite3, sqlalchemy_sqlite, django_db_sqlite]


# -- measuring -------------------------------------------------------------------


def per_call(func: Callable[[], object], number: int) -> float:
    """µs per call over ``number`` calls."""
    return timeit.timeit(func, number=number) / number * 1e6


def in_requests(func: Callable[[], object], reporter: Reporter, number: int) -> float:
    """``per_call()`` of ``func``, made ``CALLS_PER_REQUEST`` times in each monitored request.

    Only the calls are timed: not the requests' start and end.
    """
    total = 0.0
    for _ in range(number // CALLS_PER_REQUEST):
        collector = RequestCollector(CollectorSettings(reporter), "/bench")

        def run(collector: RequestCollector = collector) -> float:
            token = activate(collector)
            try:
                return per_call(func, CALLS_PER_REQUEST)
            finally:
                deactivate(token)
                collector.finish()

        total += contextvars.copy_context().run(run)
    return total / (number // CALLS_PER_REQUEST)


def measure(case: Case, reporter: Reporter, seconds: float) -> tuple[dict[str, float], int]:
    """The best run of each way, and how many runs: short runs, interleaved, for ``seconds``.

    A run makes calls for about 2 ms. Interleaved, the ways share what else
    the machine does; many short runs give each a chance to run alone.
    """
    one = per_call(case.bare, CALLS_PER_REQUEST) / 1e6
    requests = max(1, round(0.002 / (one * CALLS_PER_REQUEST)))
    number = requests * CALLS_PER_REQUEST
    runs: dict[str, list[float]] = {way: [] for way in WAYS}
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(runs["bare"]) < 10:
        runs["bare"].append(in_requests(case.bare, reporter, number))
        runs["hand"].append(in_requests(case.hand_written, reporter, number))
        runs["auto"].append(in_requests(case.automatic, reporter, number))
        runs["bare outside"].append(contextvars.copy_context().run(per_call, case.bare, number))
        runs["auto outside"].append(
            contextvars.copy_context().run(per_call, case.automatic, number)
        )
    return {way: min(values) for way, values in runs.items()}, len(runs["bare"])


WAYS = ("bare", "hand", "auto", "bare outside", "auto outside")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (noisier)")
    options = parser.parse_args()
    seconds = 1.0 if options.quick else 10.0
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    reporter = Reporter(sink.getsockname())

    print(f"encoder: {IMPLEMENTATION}; µs per call, the best of short runs interleaved for "
          f"{seconds:g} s a case")  # fmt: skip
    header = (
        f"{'case':<68} {'bare':>7} {'hand':>7} {'auto':>7} {'auto-hand':>9} {'outside':>8} "
        f"{'runs':>5}  ok"
    )
    print(header)
    for make in CASES:
        case = make()
        if case is None:
            print(f"{make.__name__:<68} (not installed)")
            continue
        try:
            for call in (case.bare, case.hand_written, case.automatic):
                call()  # warm: the first call opens, compiles, caches
            best, runs = measure(case, reporter, seconds)
        finally:
            if case.close is not None:
                case.close()
        bare, hand, auto = best["bare"], best["hand"], best["auto"]
        over = auto - hand
        untimed = best["auto outside"] - best["bare outside"]
        ok = "yes" if over <= BAR else "NO"
        print(
            f"{case.name:<68} {bare:7.2f} {hand:7.2f} {auto:7.2f} {over:9.2f} {untimed:8.2f} "
            f"{runs:5d}  {ok}"
        )
    print(f"auto-hand: the automatic timer over the hand-written one (bar: <= {BAR} µs); "
          "outside: the integration's cost outside any request")  # fmt: skip
    reporter.close()
    sink.close()


if __name__ == "__main__":
    main()

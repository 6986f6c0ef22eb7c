"""pynba next to PHP's C extension (php-pinba), the same work in the same run.

A long-running PHP process (php-cli with the pinba extension) and this
process take turns, round by round: each round runs every row on both sides,
each side's work followed by its empty loop. Each side subtracts its own empty loop
(PHP: the loop computing the same tag values; pynba: the same loop in a bare
WSGI app served the same way), so each figure is what the client itself
costs per request. Both report to one loopback UDP socket that another
process keeps drained. The bytes column is the size of one datagram of the
row, captured on a second socket. Each figure is given two ways: the best
round of the work less the best round of the empty loop, and the median of
the per-round differences (steadier when the cost is small next to the
empty loop, as for the request tags).

Rows: a bare request (the middleware vs ``pinba_flush()``); 3 request tags
(their cost on top of a bare request); 3 tags + 10 timers started and
stopped, per-timer CPU on (PHP's default; pynba's ``timer_rusage=True``);
10 timers added with a measured value; and building the datagram of a
10-timer request (``PinbaClient`` + ``setTimer`` + ``getData`` vs the
encoder).

Run: python benchmarks/bench_vs_php.py [--rounds 7] [--number 20000]
"""

from __future__ import annotations

import argparse
import contextvars
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import timeit
from collections.abc import Callable

from bench_request import BODY, ENVIRON, GROUPS, DrainedSocket, serve

from pynba import PynbaMiddleware, compiled_modules, encode, pynba
from pynba.reporter import Reporter

SCRIPT_NAME = ENVIRON["PATH_INFO"]
SERVER_NAME = ENVIRON["HTTP_HOST"]
SCHEMA = ENVIRON["wsgi.url_scheme"]
HOSTNAME = socket.gethostname()

# Each row is a PHP closure running its work $n times; the driver reads
# "ROW N" lines and answers with the nanoseconds taken (and, for "bytes ROW",
# with the size of what getData() returned, when the row returns data).
PHP_DRIVER = r"""<?php
const GROUPS = ['db', 'cache', 'http', 'queue', 'render'];
const FLUSH = PINBA_FLUSH_RESET_DATA;
const SCRIPT = '%(script)s';
pinba_server_name_set('%(server)s');
pinba_schema_set('%(schema)s');

function tags3() {
    pinba_tag_set('app', 'shop');
    pinba_tag_set('country', 'fr');
    pinba_tag_set('version', '2.14');
}

$rows = [
    'empty' => function ($n) {
        for ($i = 0; $i < $n; $i++) {}
    },
    'bare' => function ($n) {
        for ($i = 0; $i < $n; $i++) { pinba_flush(SCRIPT, FLUSH); }
    },
    'tags3' => function ($n) {
        for ($i = 0; $i < $n; $i++) { tags3(); pinba_flush(SCRIPT, FLUSH); }
    },
    'loop10' => function ($n) {
        for ($i = 0; $i < $n; $i++) {
            for ($j = 0; $j < 10; $j++) { $group = GROUPS[$j %% 5]; $op = "op$j"; }
        }
    },
    'timers10' => function ($n) {
        for ($i = 0; $i < $n; $i++) {
            tags3();
            for ($j = 0; $j < 10; $j++) {
                $group = GROUPS[$j %% 5]; $op = "op$j";
                pinba_timer_stop(pinba_timer_start(['group' => $group, 'op' => $op]));
            }
            pinba_flush(SCRIPT, FLUSH);
        }
    },
    'add10' => function ($n) {
        for ($i = 0; $i < $n; $i++) {
            for ($j = 0; $j < 10; $j++) {
                $group = GROUPS[$j %% 5]; $op = "op$j";
                pinba_timer_add(['group' => $group, 'op' => $op], 0.001);
            }
            pinba_flush(SCRIPT, FLUSH);
        }
    },
    'build10' => function ($n) {
        $data = null;
        for ($i = 0; $i < $n; $i++) {
            $client = new PinbaClient(['%(sink)s']);
            $client->setHostname('%(hostname)s');
            $client->setServername('%(server)s');
            $client->setScriptname(SCRIPT);
            $client->setRequestCount(1);
            $client->setDocumentSize(11);
            $client->setMemoryPeak(25165824);
            $client->setRequestTime(0.001);
            $client->setRusage([0.001, 0.0]);
            $client->setStatus(200);
            $client->setSchema('%(schema)s');
            for ($j = 0; $j < 10; $j++) {
                $group = GROUPS[$j %% 5]; $op = "op$j";
                $client->setTimer(['group' => $group, 'op' => $op], 0.0001);
            }
            $data = $client->getData();
        }
        return $data;
    },
];

while (($line = fgets(STDIN)) !== false) {
    [$command, $argument] = explode(' ', trim($line));
    if ($command === 'bytes') {
        $data = $rows[$argument](1);
        echo $data === null ? -1 : strlen($data), "\n";
        continue;
    }
    $start = hrtime(true);
    $rows[$command]((int)$argument);
    echo hrtime(true) - $start, "\n";
}
"""


class PHPDriver:
    """The PHP side: a php-cli process running PHP_DRIVER, one row per request line."""

    def __init__(self, php: str, server: tuple[str, int], cpu: int | None) -> None:
        source = PHP_DRIVER % {
            "script": SCRIPT_NAME,
            "server": SERVER_NAME,
            "schema": SCHEMA,
            "hostname": HOSTNAME,
            "sink": f"{server[0]}:{server[1]}",
        }
        self.file = tempfile.NamedTemporaryFile("w", suffix=".php", delete=False)
        self.file.write(source)
        self.file.close()
        settings = ["-d", "pinba.enabled=1", "-d", f"pinba.server={server[0]}:{server[1]}"]
        self.process = subprocess.Popen(
            [php, *settings, self.file.name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if cpu is not None:
            os.sched_setaffinity(self.process.pid, {cpu})

    def ask(self, line: str) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise RuntimeError(f"the PHP driver stopped at {line!r}")
        return int(answer)

    def per_call(self, row: str, number: int) -> float:
        """µs per iteration of ``row``."""
        return self.ask(f"{row} {number}") / number / 1e3

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        os.unlink(self.file.name)


def set_request_tags() -> None:
    pynba.set_tag("app", "shop")
    pynba.set_tag("country", "fr")
    pynba.set_tag("version", "2.14")


def bare_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return BODY


def app_tags3(environ, start_response):
    set_request_tags()
    return bare_app(environ, start_response)


def app_loop10(environ, start_response):
    for j in range(10):
        group, op = GROUPS[j % 5], f"op{j}"  # noqa: F841
    return bare_app(environ, start_response)


def app_timers10(environ, start_response):
    set_request_tags()
    timer = pynba.timer
    for j in range(10):
        group, op = GROUPS[j % 5], f"op{j}"
        with timer(group=group, op=op):
            pass
    return bare_app(environ, start_response)


def app_add10(environ, start_response):
    timer = pynba.timer
    for j in range(10):
        group, op = GROUPS[j % 5], f"op{j}"
        timer(group=group, op=op).add(0.001)
    return bare_app(environ, start_response)


def loop10() -> None:
    for j in range(10):
        group, op = GROUPS[j % 5], f"op{j}"  # noqa: F841


def build10() -> bytes:
    timers = []
    for j in range(10):
        group, op = GROUPS[j % 5], f"op{j}"
        timers.append(((("group", group), ("op", op)), 0.0001, 1, 0.0, 0.0))
    return encode(
        HOSTNAME, SERVER_NAME, SCRIPT_NAME, 1, 11, 24 << 20, 0.001, 0.001, 0.0,
        200, 0, SCHEMA, (), timers,
    )  # fmt: skip


class Row:
    """One row of the table: a PHP row and the pynba work, each with its empty loop."""

    def __init__(
        self,
        label: str,
        php: tuple[str, str],
        pynba_work: Callable[[], object],
        pynba_empty: Callable[[], object],
        capture: Callable[[], int],
    ) -> None:
        self.label = label
        self.php_row, self.php_empty = php
        self.pynba_work = pynba_work
        self.pynba_empty = pynba_empty
        self.capture = capture
        self.runs: dict[str, list[float]] = {
            side: [] for side in ("php", "php_empty", "pynba", "pynba_empty")
        }

    def keep(self, side: str, value: float) -> None:
        self.runs[side].append(value)

    def best_cost(self, side: str) -> float:
        """The side's best round of the work less its best round of the empty loop."""
        return min(self.runs[side]) - min(self.runs[f"{side}_empty"])

    def paired_cost(self, side: str) -> float:
        """The median over rounds of the work less the empty loop run just after it.

        Steadier than ``best_cost`` for a small cost on top of a large
        one (3 request tags on a bare request): both runs of a pair share
        what the machine was doing then.
        """
        return statistics.median(
            work - empty
            for work, empty in zip(self.runs[side], self.runs[f"{side}_empty"], strict=True)
        )


def per_call(func: Callable[[], object], number: int) -> float:
    return timeit.timeit(func, number=number) / number * 1e6


def in_fresh_context(func: Callable[[], float]) -> float:
    return contextvars.copy_context().run(func)


class Capture:
    """A UDP socket that keeps the last datagram sent to it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5.0)
        self.address = self.sock.getsockname()

    def receive(self) -> int:
        return len(self.sock.recv(70000))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=20000, help="iterations per round")
    parser.add_argument("--php", default=shutil.which("php"))
    options = parser.parse_args()
    if options.php is None:
        print("php is not installed (apt-get install php-cli php-pinba)", file=sys.stderr)
        return 1

    sink = DrainedSocket()  # also pins this process to one CPU, the drain to the others
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    php = PHPDriver(options.php, sink.address, cpus[0] if cpus else None)
    capture = Capture()
    php_bytes = PHPDriver(options.php, capture.address, None)

    reporter = Reporter(sink.address)
    capture_reporter = Reporter(capture.address)

    def middleware(app, reporter=reporter, **options) -> PynbaMiddleware:
        return PynbaMiddleware(app, reporter, **options)

    def served(app) -> Callable[[], None]:
        return lambda: serve(app)

    def pynba_bytes(app, **options) -> Callable[[], int]:
        def one() -> int:
            contextvars.copy_context().run(serve, middleware(app, capture_reporter, **options))
            return capture.receive()

        return one

    def php_datagram(row: str) -> Callable[[], int]:
        def one() -> int:
            php_bytes.ask(f"{row} 1")
            return capture.receive()

        return one

    def php_data(row: str) -> Callable[[], int]:
        return lambda: php_bytes.ask(f"bytes {row}")

    rows = [
        Row(
            "bare request: middleware vs pinba_flush()",
            ("bare", "empty"),
            served(middleware(bare_app)),
            served(bare_app),
            pynba_bytes(bare_app),
        ),
        Row(
            "3 request tags: set_tag vs pinba_tag_set (added cost)",
            ("tags3", "bare"),
            served(middleware(app_tags3)),
            served(middleware(bare_app)),
            pynba_bytes(app_tags3),
        ),
        Row(
            "3 tags + 10 timers start/stop, per-timer CPU",
            ("timers10", "loop10"),
            served(middleware(app_timers10, timer_rusage=True)),
            served(app_loop10),
            pynba_bytes(app_timers10, timer_rusage=True),
        ),
        Row(
            "10 timers added: timer.add vs pinba_timer_add",
            ("add10", "loop10"),
            served(middleware(app_add10)),
            served(app_loop10),
            pynba_bytes(app_add10),
        ),
        Row(
            "build a 10-timer datagram: encode vs PinbaClient",
            ("build10", "loop10"),
            build10,
            loop10,
            lambda: len(build10()),
        ),
    ]
    php_sizes = [
        php_datagram("bare"),
        php_datagram("tags3"),
        php_datagram("timers10"),
        php_datagram("add10"),
        php_data("build10"),
    ]

    number = options.number
    for _ in range(options.rounds):
        for row in rows:
            row.keep("php", php.per_call(row.php_row, number))
            row.keep("php_empty", php.per_call(row.php_empty, number))
            for side, work in (("pynba", row.pynba_work), ("pynba_empty", row.pynba_empty)):
                row.keep(side, in_fresh_context(lambda work=work: per_call(work, number)))
    sizes = [(row.capture(), php_size()) for row, php_size in zip(rows, php_sizes, strict=True)]
    php.close()
    php_bytes.close()

    version = subprocess.run(
        [options.php, "-r", 'echo PHP_VERSION, " pinba ", phpversion("pinba");'],
        capture_output=True,
        text=True,
    ).stdout
    build = ", ".join(compiled_modules()) or "pure Python"
    print(f"PHP {version}; pynba ({build})")
    print(f"{options.rounds} interleaved rounds of {number}; µs per request")
    print("best: best round of the work less best round of the empty loop;")
    print("paired: median over rounds of the work less the empty loop run just after it")
    print()
    header = (
        f"{'row':<55} {'best: pynba':>11} {'PHP':>6} {'ratio':>5}"
        f" {'paired: pynba':>13} {'PHP':>6} {'ratio':>5}  {'bytes pynba/PHP':>15}"
    )
    print(header)
    print("-" * len(header))
    for row, (pynba_size, php_size) in zip(rows, sizes, strict=True):
        best = row.best_cost("pynba"), row.best_cost("php")
        paired = row.paired_cost("pynba"), row.paired_cost("php")
        print(
            f"{row.label:<55} {best[0]:>11.2f} {best[1]:>6.2f} {best[0] / best[1]:>5.2f}"
            f" {paired[0]:>13.2f} {paired[1]:>6.2f} {paired[0] / paired[1]:>5.2f}"
            f"  {pynba_size:>7}/{php_size}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""benchmarks/bench_instrumentation.py in a short run: a row for each integration, the summaries.

Its figures are not asserted (timings belong to the script's output): only
that each case ran, or said why not, and printed numbers.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pynba
from conftest import IN_CI
from packets import make_collector
from pynba.context import activate, deactivate

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_instrumentation.py"


def the_script():
    """The script, imported as a module."""
    spec = importlib.util.spec_from_file_location("pynba_bench_instrumentation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def cases():
    """The names of the script's cases."""
    return [make.__name__ for make in the_script().CASES]


@pytest.mark.parametrize(
    ("case_name", "library", "owner"),
    [("httpx_in_process", "httpx", "Client"), ("requests_in_process", "requests", "Session")],
)
def test_a_switched_case_times_its_hand_written_and_automatic_ways_only(
    udp_listener, case_name, library, owner
):
    # Its three ways go through one switch: a way that timed nothing, or the
    # wrong thing, would still print figures.
    hooked = getattr(pytest.importorskip(library), owner)
    original = hooked.send
    case = getattr(the_script(), case_name)()
    tags = {"group": "http", "op": "get", "host": "127.0.0.1:8080", "status": "2xx"}
    timers = {}
    try:
        assert hooked.send is not original  # the switch
        ways = {"bare": case.bare, "hand": case.hand_written, "auto": case.automatic}
        for way, call in ways.items():
            collector = make_collector(udp_listener)
            token = activate(collector)
            try:
                call()
                call()
            finally:
                deactivate(token)
            timers[way] = [(dict(timer.tags), timer.hit_count) for timer in collector.timers]
            collector.finish()
    finally:
        case.close()
    assert hooked.send is original
    assert timers == {"bare": [], "hand": [(tags, 1), (tags, 1)], "auto": [(tags, 1), (tags, 1)]}


def test_a_switched_case_leaves_its_integration_as_it_found_it():
    httpx = pytest.importorskip("httpx")
    from pynba.instrumentation import httpx as integration

    original = httpx.Client.send, httpx.AsyncClient.send
    integration.instrument()
    try:
        hooked = httpx.Client.send, httpx.AsyncClient.send
        assert hooked[0] is not original[0]
        the_script().httpx_in_process().close()
        assert (httpx.Client.send, httpx.AsyncClient.send) != original  # on again
        assert httpx.Client.send.__wrapped__ is original[0]
    finally:
        integration.uninstrument()
    assert (httpx.Client.send, httpx.AsyncClient.send) == original


def one_round(script: Path, *options: str) -> tuple[list[str], int]:
    """The lines ``script --seconds 0`` prints, and where its table's header is."""
    tested = str(Path(pynba.__file__).resolve().parent.parent)  # this pynba, not another
    done = subprocess.run(
        [sys.executable, str(script), "--seconds", "0", *options],
        env={**os.environ, "PYTHONPATH": tested},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    return lines, next(n for n, line in enumerate(lines) if line.startswith("case "))


def test_every_case_prints_its_row():
    lines, header = one_round(SCRIPT)
    footer = next(n for n, line in enumerate(lines) if line.startswith("auto-hand:"))
    rows = lines[header + 1 : footer]
    assert len(rows) == len(cases()) == 13, lines
    for row in rows:
        if " skipped: " in row:
            # Under CI every library and server is installed: no case may be left out.
            assert not IN_CI, row
            continue
        words = row.split()
        assert words[-1] in ("yes", "NO"), row
        # bare, hand, auto, auto-hand, outside
        [float(word) for word in words[-8:-4] + words[-3:-2]]
        assert words[-4] == "-", row  # ±: none of one round
        assert int(words[-2]) == 1  # rounds: one in a smoke run
    assert any(line.startswith("next to a") for line in lines), lines
    assert any(line.startswith("a monitored request making 10") for line in lines), lines


def test_only_and_two_cpus_measure_the_cases_asked_for_unpinned():
    # The measuring processes take --two-cpus too: one that refused it would fail its row.
    lines, header = one_round(SCRIPT, "--only", "dbapi", "--two-cpus", "--in-turn")
    assert lines[0].endswith("on two CPUs (--two-cpus)"), lines
    footer = next(n for n, line in enumerate(lines) if line.startswith("auto-hand:"))
    rows = lines[header + 1 : footer]
    assert [row.split(":")[0] for row in rows] == ["dbapi"], lines
    assert rows[0].split()[-1] in ("yes", "NO"), rows


def hooks_script_rows(*options: str) -> tuple[list[str], int, list[list[str]]]:
    """bench_hooks_speed.py's lines, its header's place, and the words of each measured row."""
    lines, header = one_round(ROOT / "benchmarks" / "bench_hooks_speed.py", *options)
    rows = lines[header + 1 : header + 7]
    assert len(rows) == 6, lines
    measured = []
    for row in rows:
        if "(not installed)" in row:
            assert not IN_CI, row
            continue
        words = row.split()
        assert words[-1] in ("yes", "NO"), row
        measured.append(words)
    return lines, header, measured


def test_the_hooks_script_prints_a_row_for_each_case():
    """benchmarks/bench_hooks_speed.py: the HTTP client and OpenTelemetry hooks, no network."""
    lines, header, rows = hooks_script_rows()
    for words in rows:
        figures = words[-8:-4] + words[-3:-1]  # bare, hand, auto, auto-hand, outside, A/A
        assert all(float(figure) == float(figure) for figure in figures), words
        assert words[-4] == "-", words  # ±: none of one round
    assert lines[header + 7].startswith("A/A: "), lines


def test_the_hooks_script_times_calls_in_turn_when_asked():
    lines, header, rows = hooks_script_rows("--in-turn")
    assert "medians of calls timed one at a time" in lines[header - 1], lines
    assert len(lines) == header + 7, lines  # no A/A line: not measured
    for words in rows:
        bare, hand, auto, over = (float(word) for word in words[-8:-4])
        assert min(bare, hand, auto) > 0, words
        assert over == pytest.approx(auto - hand, abs=0.011), words  # the medians' difference
        assert words[-4:-1] == ["-", "-", "-"], words  # ±, outside, A/A: none


def test_in_turn_the_script_times_the_switched_cases_only():
    lines, header = one_round(SCRIPT, "--in-turn")
    footer = next(n for n, line in enumerate(lines) if line.startswith("auto-hand:"))
    rows = lines[header + 1 : footer]
    assert len(rows) == len(cases()), lines
    in_pairs = [row for row in rows if " not timed in turn: measured in pairs" in row]
    timed = [row for row in rows if row.split()[-1] in ("yes", "NO")]
    assert len(in_pairs) + len(timed) + sum(" skipped: " in row for row in rows) == len(rows)
    for row in timed:
        assert row.split()[-3] == "-", row  # outside: not measured
    if not IN_CI:
        return
    # dbapi, sqlalchemy, django_db, redis, httpx twice, requests twice, urllib3, opentelemetry
    assert len(timed) == 10, rows
    assert not any(line.startswith("next to a") for line in lines), lines


def test_a_case_failing_as_it_is_made_fails_at_once_saying_why():
    pytest.importorskip("httpx")
    # Its server started, then instrument() failed: the child must end, not
    # leave its parent waiting on a pipe the server still holds.
    code = (
        "import runpy, sys\n"
        "import pynba.instrumentation.httpx as integration\n"
        "def refuse():\n"
        "    raise RuntimeError('instrument refused')\n"
        "integration.instrument = refuse\n"
        f"sys.argv = [{str(SCRIPT)!r}, '--case', 'httpx_get', '--side', 'all', '--seconds', '0']\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    tested = str(Path(pynba.__file__).resolve().parent.parent)
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": tested},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "instrument refused" in done.stderr


@pytest.mark.skipif(
    shutil.which("valgrind") is None and not IN_CI, reason="valgrind is not installed"
)
@pytest.mark.parametrize("case_name", ["dbapi", "sqlalchemy"])  # wrapped, and patched
def test_count_prints_each_way_s_instructions_and_the_automatic_timer_runs(case_name):
    tested = str(Path(pynba.__file__).resolve().parent.parent)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--count", "50", "--seeds", "1", "--only", case_name],
        env={**os.environ, "PYTHONPATH": tested},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(n for n, line in enumerate(lines) if line.startswith("case "))
    row = lines[header + 1]
    if " skipped: " in row:
        assert not IN_CI, row
        pytest.skip(row)
    assert row.startswith(case_name + ":"), lines
    bare, hand_over_bare, auto_over_bare, auto_over_hand, lowest, highest = (
        float(word.replace(",", "")) for word in row.split()[-6:]
    )
    assert bare > 0
    # A timer runs instructions: an automatic way that timed nothing (its
    # integration not on in its process) would cost as much as the bare call.
    assert hand_over_bare > 0 and auto_over_bare > 0, row
    assert auto_over_hand == lowest == highest  # one seed
    assert abs(auto_over_hand - (auto_over_bare - hand_over_bare)) <= 1  # each rounded

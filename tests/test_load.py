"""Load: a monitored hello-world app under gunicorn, driven from a second process.

PHP's C extension runs the same load on PHP's built-in server, to stand next to it.

Every monitored request's packet must reach a listener with a large receive
buffer. The request rates, monitored and bare in the same run, are printed,
never asserted (the goal, monitored >= 0.97 x the floor, is checked by reading the
output of the long run: ``python -m pytest -m slow -s tests/test_load.py``, or
``python benchmarks/load.py --seconds 30``). The default suite runs a short
load; ``PYNBA_LOAD_SECONDS`` sets the long run's seconds per app (default 30).
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from packets import Packet
from pynba import ENCODER

pytest.importorskip("gunicorn")
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gunicorn needs POSIX")

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
_spec = importlib.util.spec_from_file_location("pynba_load_benchmark", BENCHMARKS / "load.py")
load = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(load)

SHORT_SECONDS = 1.5  # per app: 3 s of load per worker class
LONG_SECONDS = float(os.environ.get("PYNBA_LOAD_SECONDS", "30"))


def long_runs_selected(config):
    """Whether ``-m`` asks for the slow tests (they are skipped otherwise)."""
    expression = config.getoption("markexpr") or ""
    return "slow" in expression and "not slow" not in expression


def check_run(figures, capsys):
    with capsys.disabled():
        print("\n" + load.describe(figures))
    assert figures["bare"]["errors"] == 0, figures["server_output"]
    assert figures["monitored"]["errors"] == 0, figures["server_output"]
    assert figures["bare"]["requests"] > 0
    assert figures["monitored"]["requests"] > 0
    assert figures["rounds_to_floor"] and all(r > 0 for r in figures["rounds_to_floor"])
    if sys.platform == "linux":  # the server's CPU is read from /proc
        assert all(figures[path]["cpu_per_request"] > 0 for path in ("bare", "floor", "monitored"))
        assert figures["cpu_floor_to_monitored"] > 0
    # Every request's packet arrived; the kernel's drops would say why one did not.
    assert figures["packets_received"] == figures["monitored_requests"], (
        f"kernel drops: {figures['kernel_drops']}"
    )
    assert figures["kernel_drops"] in (0, None)
    for datagram in figures["sample_packets"]:
        packet = Packet(datagram)
        assert packet.script_name == "/"
        assert packet.status == 200
        assert packet.document_size == len(b"Hello, world!\n")
        assert packet.timer_tags() == [(("group", "hello"), ("op", "render"))]
    assert "Traceback" not in figures["server_output"], figures["server_output"]
    if figures["client"] == "pynba":
        # The workers measured the app's part of every request they served, each
        # counted in its own path's phases (none of the warm-up's).
        app_cpu = figures["app_cpu"]
        assert app_cpu is not None, figures["server_output"]
        for path in ("bare", "floor", "monitored"):
            assert app_cpu["requests"][path] == figures[path]["requests"], path
            assert app_cpu["mean"][path] > 0, path
        assert len(app_cpu["monitored_over_floor_rounds"]) == len(figures["rounds_to_floor"])


# A parent whose child spends some CPU, exits and is waited for: as a gunicorn
# master and a worker it restarts.
CHILD = "import time\nwhile time.process_time() < 0.2: pass\nprint(flush=True)\ninput()"
PARENT = textwrap.dedent(
    f"""
    import subprocess, sys
    child = subprocess.Popen(
        [sys.executable, "-c", {CHILD!r}], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    child.stdout.readline()
    print("child busy", flush=True)
    sys.stdin.readline()
    child.communicate(b"\\n")
    print("child waited for", flush=True)
    sys.stdin.readline()
    """
)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="the CPU is read from /proc")
def test_the_server_cpu_keeps_a_worker_that_exited():
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout.readline() == "child busy\n"
        with_child = load.tree_cpu_seconds(parent.pid)
        parent.stdin.write("\n")
        parent.stdin.flush()
        assert parent.stdout.readline() == "child waited for\n"
        after_child = load.tree_cpu_seconds(parent.pid)
    finally:
        parent.stdin.close()
        parent.wait()
    assert with_child is not None
    assert after_child >= with_child


@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_short_load_loses_no_packet(worker_class, capsys):
    check_run(load.measure(worker_class, SHORT_SECONDS), capsys)


@pytest.mark.slow
@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_long_load_loses_no_packet(worker_class, capsys, request):
    if not long_runs_selected(request.config):
        pytest.skip("a long run: select it with -m slow")
    check_run(load.measure(worker_class, LONG_SECONDS), capsys)


def test_compare_serves_each_side_from_its_own_sources(tmp_path, capsys):
    """Here the other side is this checkout's Python sources alone: pure Python."""
    other = tmp_path / "src"
    shutil.copytree(
        load.SOURCES / "pynba",
        other / "pynba",
        ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"),
    )
    figures = load.compare(other, "sync", seconds=8)  # one round
    with capsys.disabled():
        print("\n" + load.describe_comparison(figures))
    this, theirs = figures["sides"]["this"], figures["sides"]["other"]
    # as the workers found it
    assert this["pynba"] == str(load.SOURCES / "pynba" / "__init__.py")
    assert theirs["pynba"] == str(other.resolve() / "pynba" / "__init__.py")
    assert theirs["compiled"] == "-"
    assert (this["compiled"] == "-") == (ENCODER == "pure")
    for side in (this, theirs):
        assert side["served"]["errors"] == 0, side["server_output"]
        assert "Traceback" not in side["server_output"], side["server_output"]
        cpu = side["app_cpu"]
        assert cpu is not None, side["server_output"]
        # every request of each path measured once, in its own server's phases
        for path in ("floor", "monitored"):
            assert cpu["requests"][path] == side["served"][path] > 0, path
        assert cpu["requests"]["bare"] == 0  # only warmed up
        assert len(cpu["monitored_over_floor_rounds"]) == 1
    assert len(figures["this_less_other_rounds"]) == 1
    received, expected = figures["packets"]
    assert received == expected > 0


def test_compare_refuses_sources_without_pynba(tmp_path):
    # Else the workers would import whichever pynba comes next on the path.
    with pytest.raises(ValueError, match="has no pynba package"):
        load.compare(tmp_path / "missing")
    with pytest.raises(ValueError, match="has no pynba package"):
        load.compare(tmp_path)


def php_with_pinba():
    """PHP's C extension to measure next to pynba: the php binary, or the test skipped."""
    php = load.find_php()
    if php is None:
        reason = "php-cli with php-pinba is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run PHP's side of the load: {reason}", pytrace=False)
        pytest.skip(reason)
    return php


def test_short_php_load_loses_no_packet(capsys):
    check_run(load.measure_php(php_with_pinba(), SHORT_SECONDS), capsys)


@pytest.mark.slow
def test_long_php_load_loses_no_packet(capsys, request):
    if not long_runs_selected(request.config):
        pytest.skip("a long run: select it with -m slow")
    check_run(load.measure_php(php_with_pinba(), LONG_SECONDS), capsys)


def test_app_cpu_counts_each_request_in_the_phase_of_its_path_it_ended_in(tmp_path):
    from array import array

    # One round, its phases in load.py's order: bare, floor, monitored,
    # monitored, floor, bare (each phase's start, in ns).
    figures = {
        "bare": {"phase_starts": [100, 500]},
        "floor": {"phase_starts": [200, 400]},
        "monitored": {"phase_starts": [300, 350]},
    }

    def write(name, pid, pairs, extra=b""):
        values = array("q", [number for pair in pairs for number in pair])
        (tmp_path / f"{pid}.{name}").write_bytes(values.tobytes() + extra)

    write("bare", 1, [(50, 999_000), (150, 1_000), (550, 3_000)])  # 50: the warm-up's
    # 310: a floor request the worker recorded after its phase's end (300).
    write("floor", 1, [(250, 2_000), (310, 4_000), (450, 6_000)])
    write("monitored", 1, [(320, 10_000)])
    # A second worker, killed while writing its last pair: half of it is left.
    write("monitored", 2, [(380, 14_000)], extra=b"\x01" * 8)
    write("monitored", 3, [])  # the master's, empty (--preload)

    found = load.app_cpu(tmp_path, figures)

    assert found["requests"] == {"bare": 2, "floor": 3, "monitored": 2}
    assert found["mean"] == {"bare": 2.0, "floor": 4.0, "monitored": 12.0}
    assert found["monitored_over_floor_rounds"] == [8.0]
    for name in ("bare", "floor", "monitored"):
        (tmp_path / f"2.{name}").unlink(missing_ok=True)
        (tmp_path / f"1.{name}").unlink(missing_ok=True)
    assert load.app_cpu(tmp_path, figures) is None  # a path with no request at all

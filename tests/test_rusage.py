"""The compiled getrusage twin reads what Python's resource module reads."""

import os
import resource
import shutil
import subprocess
import sys
import threading

import pytest

from pynba import rusage

_rusage = pytest.importorskip("pynba._rusage") if rusage.usage is not rusage._usage else None


def burn():
    total = 0
    for i in range(200_000):
        total += i * i
    return total


@pytest.mark.parametrize("name", ["compiled", "pure"])
def test_usage_matches_the_resource_module(name):
    usage = rusage._usage if name == "pure" else getattr(_rusage, "usage", None)
    if usage is None:
        pytest.skip("the compiled twin is not built")
    burn()
    before = resource.getrusage(rusage.RUSAGE_WHO)
    utime, stime, maxrss = usage()
    after = resource.getrusage(rusage.RUSAGE_WHO)
    assert before.ru_utime <= utime <= after.ru_utime
    assert before.ru_stime <= stime <= after.ru_stime
    assert before.ru_maxrss <= maxrss <= after.ru_maxrss
    assert usage()[:2] == pytest.approx(cpu_times_of(name)(), abs=0.05)


def cpu_times_of(name):
    return rusage._cpu_times if name == "pure" else _rusage.cpu_times


def test_cpu_time_is_the_calling_threads_own():
    if rusage.RUSAGE_WHO == resource.RUSAGE_SELF:
        pytest.skip("this OS cannot tell threads' CPU time apart")
    start = rusage.cpu_times()
    worker = threading.Thread(target=lambda: [burn() for _ in range(10)])
    worker.start()
    worker.join()
    spent = sum(rusage.cpu_times()) - sum(start)
    # The other thread burned CPU; this one only waited.
    assert spent < 0.05


def test_a_thread_cpu_is_current_on_its_own_thread_only():
    mine = rusage.thread_cpu()
    seen = []

    def look():
        seen.append((mine.is_current(), rusage.thread_cpu().is_current()))

    for _ in range(3):  # thread states come and go; none is taken for another
        worker = threading.Thread(target=look)
        worker.start()
        worker.join()
    assert mine.is_current()
    assert seen == [(False, True)] * 3
    assert not rusage.ThreadCPU().is_current()  # not made by thread_cpu(): no thread's


PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(rusage.__file__)))


def getrusage_calls(code):
    """How many getrusage system calls ``code`` makes, counted by ``perf stat``, and its output."""
    perf = shutil.which("perf")
    if perf is None:
        pytest.skip("perf is not installed")
    run = subprocess.run(
        [perf, "stat", "-x,", "-e", "syscalls:sys_enter_getrusage", sys.executable, "-c", code],
        # The pynba under test, wherever it is installed from.
        env={**os.environ, "PYNBA_PURE_PYTHON": "", "PYTHONPATH": PACKAGE_ROOT},
        capture_output=True,
        text=True,
        timeout=60,
    )
    counted = [line for line in run.stderr.splitlines() if "sys_enter_getrusage" in line]
    count = counted[-1].split(",")[0] if counted else ""
    if not count.isdigit():  # no tracepoints for this user, kernel or container
        pytest.skip(f"perf cannot count system calls here: {run.stderr.strip()[-200:]}")
    assert run.returncode == 0, run.stderr
    return int(count), run.stdout


# Each pair of back-to-back readings is bracketed by two clock readings
# (perf_counter is CLOCK_MONOTONIC, the clock the compiled twin reads): a pair
# whose bracket is under a microsecond was asked for less than a microsecond
# apart, so it must share one system call. How many pairs that is depends on
# the machine (all of them on one, none on a slow one), so the child counts.
PAIRED_READINGS = """
count = 0
for _ in range(2000):
    before = time.perf_counter_ns()
    cpu_times(); cpu_times()
    count += time.perf_counter_ns() - before < 1000
print(count)
"""


def test_readings_less_than_a_microsecond_apart_share_one_system_call():
    if _rusage is None or rusage.RUSAGE_WHO == resource.RUSAGE_SELF:
        pytest.skip("only the compiled per-thread readings are shared")
    setup = "from pynba._rusage import cpu_times\nimport time\n"
    base, _ = getrusage_calls(setup)
    paired, output = getrusage_calls(setup + PAIRED_READINGS)
    close_pairs = int(output)
    # Never more than one call a reading, and none for a reading that must share.
    assert 0 < paired - base <= 4000 - close_pairs
    # A reading a millisecond after the last one makes its own call.
    spaced = "for _ in range(200):\n    time.sleep(0.001)\n    cpu_times()\n"
    assert getrusage_calls(setup + spaced)[0] - base == 200
    if close_pairs == 0:
        pytest.skip("no pair of readings was asked for within a microsecond on this machine")

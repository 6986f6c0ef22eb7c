"""The compiled getrusage twin reads what Python's resource module reads."""

import resource
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

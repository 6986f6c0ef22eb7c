"""CPU time and peak memory of this thread, where the OS can tell.

``RUSAGE_THREAD`` where the OS has it (a threaded server must not charge one
request with its neighbours' CPU), ``RUSAGE_SELF`` otherwise. The compiled
twin (``_rusage.pyx``) calls getrusage(2) directly, once for per-thread CPU
readings less than a microsecond apart; ``PYNBA_PURE_PYTHON=1`` forces these
pure-Python versions.
"""

import resource

from ._implementation import pure_python_forced

__all__ = ["RUSAGE_WHO", "cpu_times", "usage"]

RUSAGE_WHO = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
_getrusage = resource.getrusage


def _usage() -> tuple[float, float, int]:
    """(user CPU seconds, system CPU seconds, ru_maxrss) of this thread."""
    result = _getrusage(RUSAGE_WHO)
    return result.ru_utime, result.ru_stime, result.ru_maxrss


def _cpu_times() -> tuple[float, float]:
    """(user CPU seconds, system CPU seconds) of this thread."""
    result = _getrusage(RUSAGE_WHO)
    return result.ru_utime, result.ru_stime


usage = _usage
cpu_times = _cpu_times
if not pure_python_forced():
    try:
        from ._rusage import cpu_times, usage
    except ImportError:
        pass

"""CPU time and peak memory of this thread, where the OS can tell.

``RUSAGE_THREAD`` where the OS has it (a threaded server must not charge one
request with its neighbours' CPU), ``RUSAGE_SELF`` otherwise. The compiled
twin (``_rusage.pyx``) calls getrusage(2) directly, once for per-thread CPU
readings less than a microsecond apart; ``PYNBA_PURE_PYTHON=1`` forces these
pure-Python versions.

Requests that run at the same time on one thread (asyncio tasks, gevent
greenlets) share its CPU: ``ThreadCPU`` splits what the thread uses between
the requests running on it, evenly over each stretch of time between two
readings, so that the CPU reported by all requests adds up to what the
thread used while serving them (and a request that has the thread to
itself gets all of it, as before).
"""

import os
import resource
import sys
import threading

from ._implementation import pure_python_forced

__all__ = [
    "RUSAGE_WHO",
    "ThreadCPU",
    "cpu_times",
    "resident_set_size",
    "thread_cpu",
    "usage",
]

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


class ThreadCPU:
    """One thread's CPU, shared out between the requests running on it.

    ``user`` and ``system`` are running sums of CPU seconds per request: each
    reading adds the CPU used since the last one divided by the number of
    requests then running. A request's CPU is how much they grew between its
    ``begin()`` and its ``end()``.
    """

    __slots__ = ("running", "user", "system", "last_user", "last_system", "thread_id")

    def __init__(self) -> None:
        self.running = 0
        self.user = self.system = 0.0
        self.last_user = self.last_system = 0.0
        # Compiled, the id of the thread state thread_cpu() made it for (see
        # is_current); from source, is_current() asks thread_cpu() itself.
        self.thread_id = 0

    def _advance(self, user: float, system: float) -> None:
        if self.running > 0:
            self.user += (user - self.last_user) / self.running
            self.system += (system - self.last_system) / self.running
        self.last_user = user
        self.last_system = system

    def begin(self) -> tuple[float, float]:
        """A request starts on this thread: the sums it will count from."""
        user, system = cpu_times()
        self._advance(user, system)
        self.running += 1
        return self.user, self.system

    def progress(self) -> tuple[float, float, int]:
        """(user sum, system sum, ru_maxrss) now, for a request that goes on."""
        user, system, maxrss = usage()
        self._advance(user, system)
        return self.user, self.system, maxrss

    def end(self) -> tuple[float, float, int]:
        """A request that began on this thread ends here: ``progress()``, then one less running."""
        user, system, maxrss = usage()
        self._advance(user, system)
        if self.running > 0:
            self.running -= 1
        return self.user, self.system, maxrss

    def leave(self) -> None:
        """A request that began on this thread ends elsewhere, or never: one less running."""
        if self.running > 0:
            self.running -= 1

    def is_current(self) -> bool:
        """Whether this is the calling thread's ``ThreadCPU`` (the one ``thread_cpu()`` gives)."""
        return thread_cpu() is self


def _os_thread_local() -> type:
    # gevent's monkey-patching makes threading.local per greenlet; the CPU
    # is the OS thread's, shared by its greenlets.
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        original: type = monkey.get_original("threading", "local")
        return original
    return threading.local


_threads = _os_thread_local()()


def _thread_cpu() -> ThreadCPU:
    """This thread's ``ThreadCPU``."""
    try:
        return _threads.cpu
    except AttributeError:
        cpu = _threads.cpu = ThreadCPU()
        return cpu


usage = _usage
cpu_times = _cpu_times
thread_cpu = _thread_cpu
if not pure_python_forced():
    try:
        from ._rusage import ThreadCPU, cpu_times, thread_cpu, usage
    except ImportError:
        pass


_STATM = "/proc/self/statm"


def resident_set_size() -> int:
    """The process's resident set size in bytes now (Linux); 0 where it cannot be read."""
    try:
        with open(_STATM, "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0

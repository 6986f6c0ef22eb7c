# cython: language_level=3
"""CPU time and peak memory of the calling thread, from getrusage(2) directly.

The compiled twin of the pure-Python functions in ``rusage.py``: the same
numbers (computed as Python's ``resource`` module computes them) without
building a ``struct_rusage`` of sixteen fields on every call. Compiled
modules that ``cimport`` it (see ``_rusage.pxd``) call these as C functions.
"""

from cpython.object cimport PyObject
from libc.errno cimport errno
from libc.stdint cimport uint64_t
from posix.resource cimport getrusage, rusage
from posix.time cimport timeval


cdef extern from *:
    """
    #include <sys/resource.h>
    #include <time.h>
    #ifdef RUSAGE_THREAD
    #define PYNBA_RUSAGE_WHO RUSAGE_THREAD
    #define PYNBA_SHARE_READINGS 1
    #else
    #define PYNBA_RUSAGE_WHO RUSAGE_SELF
    #define PYNBA_SHARE_READINGS 0
    #endif

    /* This thread's last CPU reading, and when it was asked for (CLOCK_MONOTONIC ns). */
    static __thread long long pynba_reading_ns = -1000000000LL;
    static __thread double pynba_reading_user, pynba_reading_system;

    static long long pynba_monotonic_ns(void) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        return (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
    }
    """
    int PYNBA_RUSAGE_WHO
    bint PYNBA_SHARE_READINGS
    long long pynba_reading_ns
    double pynba_reading_user, pynba_reading_system
    long long pynba_monotonic_ns() noexcept nogil

# ru_utime and ru_stime count microseconds, and a thread cannot use more CPU
# than the time that passes: a reading asked for less than a microsecond after
# the last one could differ from it by one tick at most, so it reuses it
# instead of making a system call. Back-to-back and nested timers make
# such pairs (one stops, the next starts). Only for per-thread readings: a
# process's threads together can use more CPU than the time that passes.
cdef long long SHARED_READING_NS = 1000


cdef inline double seconds(timeval t) noexcept:
    return <double>t.tv_sec + t.tv_usec * 0.000001  # as Python's resource module


cdef inline int read_usage(rusage* usage) except -1:
    if getrusage(PYNBA_RUSAGE_WHO, usage) != 0:
        raise OSError(errno, "getrusage failed")
    return 0


cpdef (double, double, long) usage() except *:
    """(user CPU seconds, system CPU seconds, ru_maxrss) of this thread."""
    cdef rusage ru
    read_usage(&ru)
    return seconds(ru.ru_utime), seconds(ru.ru_stime), ru.ru_maxrss


cpdef (double, double) cpu_times() except *:
    """(user CPU seconds, system CPU seconds) of this thread."""
    global pynba_reading_ns, pynba_reading_user, pynba_reading_system
    cdef rusage ru
    cdef long long asked = 0
    if PYNBA_SHARE_READINGS:
        asked = pynba_monotonic_ns()
        if asked - pynba_reading_ns < SHARED_READING_NS:
            return pynba_reading_user, pynba_reading_system
    read_usage(&ru)
    if PYNBA_SHARE_READINGS:
        pynba_reading_ns = asked
        pynba_reading_user = seconds(ru.ru_utime)
        pynba_reading_system = seconds(ru.ru_stime)
    return seconds(ru.ru_utime), seconds(ru.ru_stime)


cdef class ThreadCPU:
    """One thread's CPU, shared out between the requests running on it (see ``rusage.py``)."""

    def __init__(self):
        self.running = 0
        self.user = self.system = 0.0
        self.last_user = self.last_system = 0.0

    cdef void _advance(self, double user, double system) noexcept:
        if self.running > 0:
            self.user += (user - self.last_user) / self.running
            self.system += (system - self.last_system) / self.running
        self.last_user = user
        self.last_system = system

    cpdef (double, double) begin(self) except *:
        """A request starts on this thread: the sums it will count from."""
        cdef double user, system
        user, system = cpu_times()
        self._advance(user, system)
        self.running += 1
        return self.user, self.system

    cpdef (double, double, long) progress(self) except *:
        """(user sum, system sum, ru_maxrss) now, for a request that goes on."""
        cdef rusage ru
        read_usage(&ru)
        self._advance(seconds(ru.ru_utime), seconds(ru.ru_stime))
        return self.user, self.system, ru.ru_maxrss

    cpdef (double, double, long) end(self) except *:
        """A request that began on this thread ends here: ``progress()``, then one less running."""
        cdef rusage ru
        read_usage(&ru)
        self._advance(seconds(ru.ru_utime), seconds(ru.ru_stime))
        if self.running > 0:
            self.running -= 1
        return self.user, self.system, ru.ru_maxrss

    cpdef leave(self):
        """A request that began on this thread ends elsewhere, or never: one less running."""
        if self.running > 0:
            self.running -= 1

    cpdef bint is_current(self) except -1:
        """Whether this is the calling thread's ``ThreadCPU`` (the one ``thread_cpu()`` gives).

        Compared by the id of the thread state that ``thread_cpu()`` made it
        for, never reused in the interpreter (the only one whose threads
        can hold this object): no lookup in the thread state's dict.
        """
        return self.thread_id != 0 and self.thread_id == PyThreadState_GetID(PyThreadState_Get())


cdef extern from "Python.h":
    ctypedef struct PyThreadState
    PyObject* PyThreadState_GetDict()
    PyObject* PyDict_GetItemWithError(object, object) except? NULL
    PyThreadState* PyThreadState_Get()
    uint64_t PyThreadState_GetID(PyThreadState*)  # unique for the life of the interpreter

# Kept in the thread state's own dict: it goes with its thread.
cdef str THREAD_KEY = "pynba.rusage.ThreadCPU"


cpdef ThreadCPU thread_cpu():
    """This thread's ``ThreadCPU``."""
    cdef PyObject* state = PyThreadState_GetDict()
    cdef PyObject* found
    cdef ThreadCPU cpu
    if state == NULL:  # cannot happen with the GIL held; stay correct anyway
        return ThreadCPU()
    found = PyDict_GetItemWithError(<object>state, THREAD_KEY)
    if found != NULL:
        return <ThreadCPU><object>found
    cpu = ThreadCPU()
    (<dict>state)[THREAD_KEY] = cpu
    cpu.thread_id = PyThreadState_GetID(PyThreadState_Get())
    return cpu


from pynba._implementation import check_self_types

check_self_types(ThreadCPU)

# cython: language_level=3
"""CPU time and peak memory of the calling thread, from getrusage(2) directly.

The compiled twin of the pure-Python functions in ``rusage.py``: the same
numbers (computed as Python's ``resource`` module computes them) without
building a ``struct_rusage`` of sixteen fields on every call. Compiled
modules that ``cimport`` it (see ``_rusage.pxd``) call these as C functions.
"""

from libc.errno cimport errno
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

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
    #ifdef RUSAGE_THREAD
    #define PYNBA_RUSAGE_WHO RUSAGE_THREAD
    #else
    #define PYNBA_RUSAGE_WHO RUSAGE_SELF
    #endif
    """
    int PYNBA_RUSAGE_WHO


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
    cdef rusage ru
    read_usage(&ru)
    return seconds(ru.ru_utime), seconds(ru.ru_stime)

# C-level access to the compiled getrusage functions: a module compiled from
# Python source that does ``from . import rusage`` and declares
# ``cimport pynba._rusage as rusage`` in its .pxd calls them without a Python
# call or a tuple (run from source, it calls the ones ``rusage.py`` chose).

cpdef (double, double, long) usage() except *
cpdef (double, double) cpu_times() except *

from libc.stdint cimport uint64_t

cdef class ThreadCPU:
    cdef public long running
    cdef public double user, system, last_user, last_system
    cdef uint64_t thread_id  # of the thread state thread_cpu() made it for (0: made otherwise)

    cdef void _advance(self, double user, double system) noexcept
    cpdef (double, double) begin(self) except *
    cpdef (double, double, long) progress(self) except *
    cpdef (double, double, long) end(self) except *
    cpdef leave(self)
    cpdef bint is_current(self) except -1

cpdef ThreadCPU thread_cpu()

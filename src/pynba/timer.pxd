# Declarations for compiling timer.py with Cython: Timer becomes an extension
# type with C-level attributes. timer.py stays the pure-Python source. Each
# class declares exactly the attributes its __slots__ names (and no __dict__),
# so that the compiled class accepts what the pure one accepts, no more.
cimport cython
cimport cpython.time as time  # compiled, time.perf_counter() is a C call
cimport pynba._rusage as rusage  # and rusage.cpu_times() (see _rusage.pxd)

from pynba.collector cimport RequestCollector
from pynba.tags cimport timer_tags


cdef class Timer:
    cdef public RequestCollector _collector
    cdef public tuple _names
    cdef public tuple _values
    cdef public bint _running
    cdef public double _start
    cdef public double _value
    cdef public object _hits
    cdef public bint _rusage
    cdef public double _utime
    cdef public double _stime
    cdef public double _utime_start
    cdef public double _stime_start
    cdef public bint _detached
    cdef public object data

    @staticmethod
    @cython.locals(timer=Timer)
    cdef Timer of_request(collector, tuple names, tuple values, bint cpu)
    @staticmethod
    @cython.locals(timer=Timer)
    cdef Timer of_call(collector, tuple names, tuple values, bint cpu, double seconds)
    cpdef _setup(self, tuple names, tuple values, bint cpu, data)
    cpdef _join(self, RequestCollector collector)
    cpdef _begin(self)
    cpdef _end(self, double now)
    cpdef _rejoin(self)
    cpdef _add_cpu(self)
    cpdef tuple hand_over(self)
    cpdef tuple hand_over_measures(self)
    cpdef take_measures(self, bint ending, bint keep_running=*)

cdef double _INFINITY
@cython.locals(seconds=double)
cpdef double check_seconds(name, value) except? -1.0

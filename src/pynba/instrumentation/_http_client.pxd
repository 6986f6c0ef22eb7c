# Declarations for compiling _http_client.py with Cython (see ../timer.pxd):
# the part of a call's timer the HTTP hooks share is C code.
cimport cython

from pynba.collector cimport RequestCollector

cdef class CallTimers:
    cdef dict _values
    cdef object _values_of

    cpdef add(self, collector, double seconds, key)
    @cython.locals(text=str, end=Py_ssize_t)
    cpdef add_origin(self, collector, double seconds, method, url, status)
    @cython.locals(values=tuple)
    cdef _add(self, RequestCollector collector, double seconds, key)

# Declarations for compiling reporter.py with Cython (see timer.pxd).
cimport cython
cimport cpython.time as time  # compiled, time.monotonic() is a C call

cdef class _Server:
    cdef public object address
    cdef public object resolved
    cdef public double next_lookup
    cdef public object lookup_error
    cdef public object lookup_lock
    cdef public tuple route

cdef class Reporter:
    cdef dict __dict__  # attributes not declared here still work, more slowly
    cdef object __weakref__  # weakref.finalize and the after-fork registry
    cdef public tuple _servers
    cdef public tuple _wires
    cdef public object compress_above
    cdef public object raise_on_fail
    cdef public object resolve_interval
    cdef public object log_interval
    cdef public dict stats
    cdef public dict _sockets
    cdef public object _socket_lock
    cdef public bint _closed
    cdef public object _last_logged
    cdef public object _suppressed

    cpdef count(self, kind, n=*)
    cpdef report_request(self, request)
    cpdef _encode(self, request, wire)
    @cython.locals(server=_Server, route=tuple, now=double, sent=Py_ssize_t)
    cpdef _send_to(self, tuple servers, datagram)

# Declarations for compiling reporter.py with Cython (see timer.pxd).
cdef class _Server:
    cdef public object address
    cdef public object resolved
    cdef public object next_lookup
    cdef public object lookup_error
    cdef public object lookup_lock
    cdef public object route

cdef class Reporter:
    cdef dict __dict__  # attributes not declared here still work, more slowly
    cdef object __weakref__  # weakref.finalize and the after-fork registry
    cdef public object _servers
    cdef public object _wires
    cdef public object compress_above
    cdef public object raise_on_fail
    cdef public object resolve_interval
    cdef public object log_interval
    cdef public object stats
    cdef public object _sockets
    cdef public object _socket_lock
    cdef public bint _closed
    cdef public object _last_logged
    cdef public object _suppressed

    cpdef report_request(self, request)
    cpdef _encode(self, request, wire)
    cpdef _send_to(self, servers, datagram)

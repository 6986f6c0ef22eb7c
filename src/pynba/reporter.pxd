# Declarations for compiling reporter.py with Cython (see timer.pxd).
cimport cython
cimport cpython.time as time  # compiled, time.monotonic() is a C call
cimport pynba._posix as os  # and os.fstat(), os.write() (see _posix.pxd)

cdef bint _COUNTS_NEED_A_LOCK
cdef Py_ssize_t MAX_DATAGRAM  # compared with a length in C (about 90 instructions a request)

cdef class _Route:
    cdef public object sock
    cdef public object sockaddr
    cdef public int fd
    cdef public unsigned long long device
    cdef public unsigned long long inode

    cpdef bint intact(self) except -1
    cpdef send(self, datagram)
    cpdef lost(self)
    cpdef release(self)

cdef class _Server:
    cdef public object address
    cdef public bint is_literal
    cdef public object resolved
    cdef public object lookup_error
    cdef public int failures
    cdef public double next_lookup
    cdef public _Route route

cdef class Reporter:
    cdef dict __dict__  # attributes not declared here still work, more slowly
    cdef object __weakref__  # weakref.finalize, the after-fork registry, the lookup thread
    cdef public tuple _servers
    cdef public tuple _wires
    cdef public object compress_above
    cdef public object raise_on_fail
    cdef public object resolve_interval
    cdef public object log_interval
    cdef public dict stats
    cdef public object _count_lock
    cdef public dict _sockets
    cdef public object _socket_lock
    cdef public bint _closed
    cdef public object _refresher
    cdef public object _limiter

    cpdef count(self, kind, n=*)
    cdef _add(self, kind, n)
    cpdef report_request(self, request)
    # C methods, no Python-level override looked for (about 50 instructions a request)
    cdef _encode(self, request, wire)
    cdef tuple _datagram(self, request, wire)
    @cython.locals(server=_Server, route=_Route, sent=Py_ssize_t)
    cdef _send_to(self, tuple servers, datagram)

# Declarations for compiling wsgi.py with Cython (see timer.pxd).
cimport cython

from pynba.collector cimport CollectorSettings, RequestCollector
from pynba.context cimport activate, current_collector, deactivate
from pynba.reporter cimport Reporter

cdef dict _STATUS_CODES
cdef Py_ssize_t _STATUS_CODES_MAX
cdef tuple _PLAIN_BODIES

@cython.locals(plain=dict)
cdef _lookup(environ, key, default=*)
cpdef request_path(environ)
cpdef int _parse_status(status) except? -1
cdef Py_ssize_t _byte_count(chunk) except? -2

cdef class PynbaMiddleware:
    cdef dict __dict__  # monitor() copies the application's name and docstring
    cdef object __weakref__
    cdef public object app
    cdef public object reporter
    cdef public bint enabled
    cdef public object prefix
    cdef public object script_name
    cdef public object server_name
    cdef public object unmatched_name
    cdef public object host_names
    cdef public object path_names
    cdef dict _known_hosts
    cdef dict _known_paths
    cdef public CollectorSettings settings

    cpdef default_script_name(self, environ)
    cpdef default_server_name(self, environ)

cdef class _Response:
    cdef public PynbaMiddleware _middleware
    cdef public object _environ
    cdef public object _start_response
    cdef public object _write
    cdef public RequestCollector _collector
    cdef public object _status
    cdef public object _headers
    cdef public object _result
    cdef public Py_ssize_t _size
    cdef public bint _failed
    cdef public bint _complete
    cdef public bint _closed
    cdef public object _file_close

    cpdef wrap(self, result)
    cpdef close(self)
    cpdef close_stream(self, body)
    cpdef _close_body(self, close, bint from_file)
    cpdef _finish(self, bint from_file=*, bint closed=*)

cdef class _StreamBody:
    cdef public _Response _response
    cdef public object _result
    cdef public object _iterator

# Declarations for compiling wsgi.py with Cython (see timer.pxd).
cimport cython

from pynba.collector cimport CollectorSettings, Namer, RequestCollector
from pynba.context cimport activate, current_collector, deactivate
from pynba.reporter cimport Reporter
cimport pynba._pytypes as types  # compiled, types.MethodType() is a C call

cdef object _BOUND_START_RESPONSE
cdef object _BOUND_COUNTED_WRITE

cdef dict _STATUS_CODES
cdef Py_ssize_t _STATUS_CODES_MAX

@cython.locals(plain=dict)
cdef inline _lookup(environ, key, default=*)  # inlined: 5 calls a request (about 70 instructions)
cpdef request_path(environ)
cdef bint _is_ascii(str text) except -1
cpdef int _parse_status(status) except? -1
cdef Py_ssize_t _byte_count(chunk) except? -2

cdef class PynbaMiddleware:
    cdef dict __dict__  # monitor() copies the application's name and docstring
    cdef object __weakref__
    cdef public object app
    cdef public object monitoring
    cdef public object reporter
    cdef public bint enabled
    cdef public CollectorSettings settings
    cdef dict _known_hosts
    cdef readonly _ScriptNamer script_namer

    cpdef default_script_name(self, environ)
    cpdef default_server_name(self, environ)

cdef class _ScriptNamer(Namer):
    cdef object _monitoring
    cdef object _script_name
    cdef object _prefix
    cdef dict _known_paths

    cpdef name(self, environ)

cdef class _MonitoredRequest:
    cdef readonly RequestCollector collector
    cdef PynbaMiddleware _middleware
    cdef object _environ
    cdef object _start_response
    cdef object _write
    cdef object _status
    cdef object _headers
    cdef object _result
    cdef Py_ssize_t _size
    cdef bint _failed
    cdef bint _complete
    cdef bint _closed
    cdef object _file_close

    @staticmethod
    @cython.locals(request=_MonitoredRequest)
    cdef _MonitoredRequest begin(PynbaMiddleware middleware, environ, start_response)
    cdef _start(self, PynbaMiddleware middleware, environ, start_response)
    cpdef wrap(self, result)
    @cython.locals(size=Py_ssize_t)  # no int made per chunk (about 100 instructions a request)
    cpdef count(self, chunk)
    cpdef mark_complete(self)
    cpdef mark_failed(self)
    cpdef end(self, error)
    cpdef close(self)
    cpdef close_stream(self, body)
    cpdef _close_body(self, close, bint from_file)
    cpdef _report(self, bint from_file=*, bint closed=*)

cdef class _StreamBody:
    cdef _MonitoredRequest _request
    cdef object _result
    cdef object _iterator

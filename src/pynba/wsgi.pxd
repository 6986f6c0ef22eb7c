# Declarations for compiling wsgi.py with Cython (see timer.pxd).
cdef class PynbaMiddleware:
    cdef dict __dict__  # monitor() copies the application's name and docstring
    cdef object __weakref__
    cdef public object app
    cdef public object reporter
    cdef public bint enabled
    cdef public object prefix
    cdef public object script_name
    cdef public object server_name
    cdef public object settings

    cpdef default_script_name(self, environ)
    cpdef default_server_name(self, environ)

cdef class _Response:
    cdef public object _middleware
    cdef public object _environ
    cdef public object _start_response
    cdef public object _write
    cdef public object _collector
    cdef public object _status
    cdef public object _headers
    cdef public object _result
    cdef public object _iterator
    cdef public object _size
    cdef public bint _failed
    cdef public bint _closed
    cdef public object _file_close

    cpdef wrap(self, result)
    cpdef close(self)
    cpdef _finish(self, from_file=*)

cdef class _StreamBody:
    cdef public object _response
    cdef public object _iterator

cdef class _ListBody:
    cdef public object _response
    cdef public object _result

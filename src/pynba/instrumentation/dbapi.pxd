# Declarations for compiling dbapi.py with Cython (see ../timer.pxd): a
# statement's timer is made with C calls.
cimport pynba._recursion as _recursion  # the forwarding slots count recursion
from pynba.context cimport current_collector
from pynba.instrumentation._hooks cimport add_checked_call, start_checked_timer, stop_timer

# Read as C by each wrapper made (a cursor a statement, for connection.execute()).
cdef bint _COMPILED

# The proxies are extension types: their own attributes are C fields, read
# without the detour of a class with __getattr__ (about 850 instructions a
# statement). Untyped: an instance made without __init__ holds None. Not
# public: only __init__ sets them (a wrapper of a wrapper would recurse in C).
cdef class _Proxy:
    cdef object _wrapped
    cdef object _tags

cdef class _Cursor(_Proxy):
    pass

cdef class _Connection(_Proxy):
    cdef bint _commits_on_exit

cdef bint _is_wrapper(value)

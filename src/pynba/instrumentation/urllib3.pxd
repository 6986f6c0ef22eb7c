# Declarations for compiling urllib3.py with Cython (see ../timer.pxd):
# the check each call makes of its URL is a C call.
cimport cython

@cython.locals(text=str)
cdef bint _absolute(object url)

cdef _add(collector, double seconds, pool, method, url, response)

cdef dict _pool_tags  # its get() is a C call
@cython.locals(key=object, entry=tuple)
cdef _pool_tag(pool)

# The timers' tags: their add() and add_origin() are C calls.
from pynba.instrumentation._http_client cimport CallTimers
cdef CallTimers _pool_timers
cdef CallTimers _url_timers

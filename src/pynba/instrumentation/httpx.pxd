# Declarations for compiling httpx.py with Cython (see ../timer.pxd):
# the timers' tags are C calls.
from pynba.instrumentation._http_client cimport CallTimers

cdef CallTimers _timers

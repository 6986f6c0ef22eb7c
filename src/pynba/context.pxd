# Declarations for compiling context.py with Cython (see timer.pxd).
cimport cython

from pynba.collector cimport RequestCollector

@cython.locals(request=RequestCollector)
cdef _timer_of(collector, tags)

cpdef activate(collector)
cpdef deactivate(token)

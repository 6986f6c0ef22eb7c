# Declarations for compiling opentelemetry.py with Cython (see ../timer.pxd):
# a span's timer is added by a C call of its request's collector, and its
# attributes are read from a typed dict.
cimport cython

from pynba.collector cimport RequestCollector
from pynba.context cimport current_collector

cdef _add_checked_timer(RequestCollector collector, tuple tags, double seconds)

@cython.locals(plain=dict)
cdef _span_tags(span)

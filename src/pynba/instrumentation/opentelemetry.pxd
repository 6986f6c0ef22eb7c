# Declarations for compiling opentelemetry.py with Cython (see ../timer.pxd):
# a span's timer is added by a C call of its request's collector.
from pynba.collector cimport RequestCollector

cdef _add_checked_timer(RequestCollector collector, tuple tags, double seconds)

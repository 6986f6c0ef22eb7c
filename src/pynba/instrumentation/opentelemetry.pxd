# Declarations for compiling opentelemetry.py with Cython (see ../timer.pxd):
# a span's timer is made by a C call of its request's collector.
from pynba.collector cimport RequestCollector

cdef _timer_of(RequestCollector collector, tuple tags)

# Declarations for compiling sqlalchemy.py with Cython (see ../timer.pxd):
# a statement's timer is made with C calls.
cimport cython

from pynba.collector cimport RequestCollector
from pynba.context cimport current_collector
from pynba.instrumentation._hooks cimport stop_timer
from pynba.tags cimport check_split_tags

cdef class _Engine:
    cdef public object db
    cdef public dict tags

    cpdef tuple tags_of(self, statement)

@cython.locals(request=RequestCollector)
cdef _start(collector, dialect, context, statement)

# Declarations for compiling sqlalchemy.py with Cython (see ../timer.pxd):
# a statement's timer is started and stopped with C calls.
from pynba.context cimport current_collector
from pynba.instrumentation._hooks cimport start_checked_timer, stop_timer
from pynba.tags cimport check_split_tags

cdef _start(collector, dialect, context, statement)

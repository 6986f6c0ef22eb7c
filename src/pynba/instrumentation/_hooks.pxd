# Declarations for compiling _hooks.py with Cython (see ../timer.pxd): a
# compiled hook (sqlalchemy.py) starts and stops its timer with C calls,
# and the others reach these functions without a Python frame.
cimport cython

from pynba.collector cimport RequestCollector
from pynba.context cimport current_collector
from pynba.tags cimport check_split_tags

cpdef start_timer(names, values, collector=*)
@cython.locals(request=RequestCollector)
cpdef start_checked_timer(collector, tuple names, tuple values)
cpdef stop_timer(timer, hit_count=*)
cpdef sql_verb(statement)
@cython.locals(request=RequestCollector)
cpdef add_checked_call(collector, names, values, seconds)

# Declarations for compiling _hooks.py with Cython (see ../timer.pxd): a
# compiled hook (sqlalchemy.py) stops its timer with a C call, and the
# others reach these two without a Python frame.
from pynba.context cimport current_collector

cpdef start_timer(names, values, collector=*)
cpdef stop_timer(timer, hit_count=*)

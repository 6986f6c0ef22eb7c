# Declarations for compiling dbapi.py with Cython (see ../timer.pxd): a
# statement's timer is made with C calls.
from pynba.context cimport current_collector
from pynba.instrumentation._hooks cimport add_checked_call, start_checked_timer, stop_timer

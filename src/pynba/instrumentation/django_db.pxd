# Declarations for compiling django_db.py with Cython (see ../timer.pxd): each
# query's hook runs as C, its timer started and stopped with C calls.
from pynba.context cimport current_collector
from pynba.instrumentation._hooks cimport sql_verb, start_timer, stop_timer

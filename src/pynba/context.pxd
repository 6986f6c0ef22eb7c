# Declarations for compiling context.py with Cython (see timer.pxd): the
# middleware makes its request current with direct C calls.
cimport cython

cimport pynba._contextvar as ContextVar  # ContextVar.get(), .set() and .reset() are C calls
from pynba.collector cimport RequestCollector

cpdef current_collector()
cpdef activate(collector)
cpdef deactivate(token)
@cython.locals(request=RequestCollector)
cpdef set_tag(name, value)
cpdef delete_tag(name)

# Declarations for compiling _templates.py with Cython (see ../timer.pxd): a
# render's hook starts and stops its timer with C calls.
cimport pynba._contextvar as ContextVar  # ContextVar.get(), .set() and .reset() are C calls
from pynba.context cimport current_collector
from pynba.instrumentation._hooks cimport start_checked_timer, stop_timer

cpdef str template_tag(name)
cdef tuple _template_values(name)
cpdef tuple _begin(collector, template)  # cpdef: the C hook calls them as objects
cpdef _end(tuple state)

# Declarations for compiling _templates.py with Cython (see ../timer.pxd): a
# render's hook starts and stops its timer with C calls.
cimport pynba._contextvar as ContextVar  # ContextVar.get(), .set() and .reset() are C calls
from pynba.context cimport current_collector
from pynba.instrumentation._hooks cimport start_checked_timer, stop_timer

cpdef str template_tag(name)
cdef tuple _template_values(name)
cdef _start(template)
cdef _stop(timer, token)

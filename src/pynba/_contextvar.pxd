# C twins of the ``ContextVar`` methods the middleware calls on every
# request. A module compiled from Python source that does ``from contextvars
# import ContextVar``, calls ``ContextVar.get(var)``, ``ContextVar.set(var,
# value)`` and ``ContextVar.reset(var, token)``, and declares ``cimport pynba._contextvar as
# ContextVar`` in its .pxd calls these as C functions (run from source, it
# calls the methods). It then makes its ContextVar objects through
# ``contextvars.ContextVar``. No module is built from this file: it is only
# read when compiling.
from cpython.contextvars cimport PyContextVar_Reset, PyContextVar_Set, get_value


cdef inline get(var):
    """``var.get()`` of a variable made with a default: no method call."""
    return get_value(var)


cdef inline set(var, value):
    """``var.set(value)``: no method call (about 60 instructions each)."""
    return PyContextVar_Set(var, value)


cdef inline reset(var, token):
    """``var.reset(token)``: no method call (about 60 instructions each)."""
    PyContextVar_Reset(var, token)

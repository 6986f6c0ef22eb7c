# C twins of the ``types`` names the middleware uses on every request. A
# module compiled from Python source that does ``import types`` and declares
# ``cimport pynba._pytypes as types`` in its .pxd calls these as C functions
# (run from source, it calls ``types``'s own). No module is built from this
# file: it is only read when compiling.
cdef extern from "Python.h":
    object PyMethod_New(object function, object instance)  # (cpython.method's has 3 arguments)


cdef inline MethodType(function, instance):
    """``types.MethodType(function, instance)``: the bound method ``instance.<name>`` gives.

    Made from a function object kept at module level, it spares the
    attribute lookup through the type (about 130 instructions a method).
    """
    return PyMethod_New(function, instance)

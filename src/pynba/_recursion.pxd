# The C twins of _recursion.py's enter() and leave(). Compiled, a tag value
# that sets a tag holding itself while it is flattened (a callable, __str__,
# a container's own iteration) recurses through C functions (set_tag,
# flatten_tags, _flatten) that the recursion limit counted too little of: a
# 1 MiB thread stack ran out before RecursionError. Each level of flattening
# counts as _WEIGHT levels, so that RecursionError comes first on a 256 KiB
# thread stack, as for CPython's own recursion through __str__. No module is
# built from this file: it is only read when compiling.
cdef extern from "Python.h":
    int Py_EnterRecursiveCall(const char *where) except -1
    void Py_LeaveRecursiveCall()


# Levels of the limit a level of flattening counts for: measured, 4 still let
# a 256 KiB stack run out (a level takes well over 1 KiB of C stack).
DEF _WEIGHT = 8


cdef inline int enter() except -1:
    cdef int counted = 0
    while counted < _WEIGHT:
        if Py_EnterRecursiveCall(" while flattening a tag"):
            while counted:
                Py_LeaveRecursiveCall()
                counted -= 1
            return -1
        counted += 1
    return 0


cdef inline void leave():
    cdef int counted = 0
    while counted < _WEIGHT:
        Py_LeaveRecursiveCall()
        counted += 1

# The C twins of _recursion.py's functions. Compiled, C functions calling C
# functions recurse with no frame that the recursion limit counts, and a
# thread's stack can run out before RecursionError. Each level of such a
# recursion counts as several levels of the limit, so that RecursionError
# comes first on a 256 KiB thread stack, as for CPython's own recursion
# through __str__. No module is built from this file: it is only read when
# compiling.
cdef extern from "Python.h":
    # Nonzero, with RecursionError set, past the limit (1, not -1: no except clause).
    int Py_EnterRecursiveCall(const char *where)
    void Py_LeaveRecursiveCall()


cdef inline int _enter(int weight, const char *where) except -1:
    cdef int counted = 0
    while counted < weight:
        if Py_EnterRecursiveCall(where):
            while counted:
                Py_LeaveRecursiveCall()
                counted -= 1
            return -1
        counted += 1
    return 0


cdef inline void _leave(int weight):
    cdef int counted = 0
    while counted < weight:
        Py_LeaveRecursiveCall()
        counted += 1


# A tag value that sets a tag holding itself while it is flattened (a
# callable, __str__, a container's own iteration) recurses through set_tag,
# flatten_tags and _flatten. Measured: a level takes well over 1 KiB of C
# stack; counted as 4, a 256 KiB stack still ran out.
DEF _FLATTEN_WEIGHT = 8


cdef inline int enter() except -1:
    return _enter(_FLATTEN_WEIGHT, " while flattening a tag")


cdef inline void leave():
    _leave(_FLATTEN_WEIGHT)


# A proxy handing an attribute or an iteration on to the object it wraps. A
# foreign proxy (wrapt's ObjectProxy) made to wrap pynba's proxy of itself
# recurses from one to the other. Measured with wrapt 2.1: a level of
# attribute look-up takes about 350 bytes of C stack; counted as 1, a
# 256 KiB stack ran out (wrapt 2.5 takes more: see tests/scripts.py).
DEF _FORWARD_WEIGHT = 2


cdef inline int enter_forward() except -1:
    return _enter(_FORWARD_WEIGHT, " while handing on to a wrapped object")


cdef inline void leave_forward():
    _leave(_FORWARD_WEIGHT)

# The C twins of _recursion.py's enter() and leave(). Compiled, a tag callable
# that sets a tag holding itself recurses through C functions (set_tag,
# flatten_tags, _flatten) that the recursion limit counts too little of:
# about 1.3 KiB of C stack a level, and a 1 MiB thread stack ran out before
# RecursionError. Counting each level of flattening raises RecursionError
# first, as CPython's own repr() does. No module is built from this file:
# it is only read when compiling.
cdef extern from "Python.h":
    int Py_EnterRecursiveCall(const char *where) except -1
    void Py_LeaveRecursiveCall()


cdef inline int enter() except -1:
    return Py_EnterRecursiveCall(" while flattening a tag")


cdef inline void leave():
    Py_LeaveRecursiveCall()

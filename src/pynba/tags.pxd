# Declarations for compiling tags.py with Cython (see timer.pxd): the
# recursive walk is a C function, called without Python's call machinery.
cimport cython
cimport pynba._recursion as _recursion  # and _recursion.call() (see _recursion.pxd)

cdef _flatten(name, value, list out, set seen, bint called, Py_ssize_t depth)
cdef _flatten_value(name, value, list out, set seen, bint called, Py_ssize_t depth)

cpdef tuple timer_tags(tags)
@cython.locals(i=Py_ssize_t)
cpdef check_split_tags(names, values)
cdef _split_dict(dict tags)

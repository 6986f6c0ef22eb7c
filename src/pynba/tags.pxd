# Declarations for compiling tags.py with Cython (see timer.pxd): the
# recursive walk is a C function, called without Python's call machinery.
cdef _flatten(name, value, list out, set seen, bint called, Py_ssize_t depth)

cpdef tuple timer_tags(tags)
cdef _split_dict(dict tags)

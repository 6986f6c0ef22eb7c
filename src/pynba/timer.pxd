# Declarations for compiling timer.py with Cython: Timer becomes an extension
# type with C-level attributes. timer.py stays the pure-Python source.
cdef class Timer:
    cdef dict __dict__  # attributes not declared here still work, more slowly
    cdef public object _collector
    cdef public object _tags
    cdef public object _start
    cdef public double _value
    cdef public object _hits
    cdef public object _cpu
    cdef public bint _detached
    cdef public object data

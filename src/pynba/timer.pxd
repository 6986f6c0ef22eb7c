# Declarations for compiling timer.py with Cython: Timer becomes an extension
# type with C-level attributes. timer.py stays the pure-Python source. Each
# class declares exactly the attributes its __slots__ names (and no __dict__),
# so that the compiled class accepts what the pure one accepts, no more.
cdef class Timer:
    cdef public object _collector
    cdef public object _tags
    cdef public object _start
    cdef public double _value
    cdef public object _hits
    cdef public object _cpu
    cdef public bint _detached
    cdef public object data

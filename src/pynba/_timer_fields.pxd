# What the encoder reads of a compiled Timer, through the function that
# ``_timer_fields.pyx`` hands out in a capsule (the encoder does not cimport
# the timer module, so that it builds and imports without it).
from cpython.object cimport PyObject


cdef struct TimerFields:
    # Borrowed from the timer, as are values and hits: Python code may replace
    # the timer's attributes and free them, so the caller takes references of
    # its own before it does anything that can run Python code.
    PyObject* names  # a tuple of str, as many as values
    PyObject* values  # a tuple
    PyObject* hits
    double value
    double utime
    double stime

# 1 and ``fields`` filled when ``timer`` is a compiled Timer, else 0.
ctypedef int (*ReadTimerFields)(object timer, TimerFields* fields) except -1

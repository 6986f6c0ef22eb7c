# cython: language_level=3
"""A compiled Timer's measurements, read in C by the compiled encoder.

At the end of a request the collector hands the encoder its Timer objects
themselves, not a tuple and floats made for each. The encoder cannot cimport
the timer module (it must build and import on its own), so this module gives
it ``READ_TIMER_FIELDS``: a capsule holding the C function that reads a
Timer's fields. Without it, the encoder reads a Timer's public attributes,
as the pure-Python encoder does.
"""

from cpython.object cimport PyObject
from cpython.pycapsule cimport PyCapsule_New

cimport cpython.time as time
from pynba._timer_fields cimport TimerFields
from pynba.timer cimport Timer


cdef int read_timer_fields(object timer, TimerFields* fields) except -1:
    cdef Timer t
    if type(timer) is not Timer:
        return 0
    t = <Timer>timer
    fields.names = <PyObject*>t._names
    fields.values = <PyObject*>t._values
    fields.hits = <PyObject*>t._hits
    fields.value = t._value
    if t._running:  # as Timer.elapsed: the current run counts
        fields.value += time.perf_counter() - t._start
    fields.utime = t._utime
    fields.stime = t._stime
    return 1


#: The capsule the encoder looks for (its name is the one it checks).
READ_TIMER_FIELDS = PyCapsule_New(
    <void*>read_timer_fields, b"pynba._timer_fields.READ_TIMER_FIELDS", NULL
)

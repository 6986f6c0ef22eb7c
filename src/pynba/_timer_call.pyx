# cython: language_level=3
"""``pynba.timer(**tags)`` as a C function that makes the timer's tags straight from the call.

A Python function that takes ``**tags`` builds a dict on every call, and
reaches the current request through two Python-level calls. This one is
called the vectorcall way: it gets the values, and a tuple of the names that
is usually a constant of the calling code, and gives both to the request
directly (``new_checked_timer`` less its check): a timer keeps its tags as names and values
(see ``tags.timer_tags``). Measured on ``with pynba.timer(group=...,
op=...)``: about 0.3 us a timer less than the compiled ``context.timer``. It does so only in the common case, keyword tags with
non-empty str names and str values inside a request; every other call goes on,
unchanged, to the function it stands in for (``context.timer``), so results
and errors are that function's.
"""

from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE, PyTuple_New, PyTuple_SET_ITEM
from cpython.unicode cimport PyUnicode_CheckExact, PyUnicode_GET_LENGTH

from pynba.collector cimport RequestCollector


cdef extern from "Python.h":
    ctypedef struct PyMethodDef:
        const char* ml_name
        void* ml_meth
        int ml_flags
        const char* ml_doc
    int METH_FASTCALL
    int METH_KEYWORDS
    object PyCFunction_NewEx(PyMethodDef* method, object self, object module)
    object PyObject_Vectorcall(object callable, PyObject** args, size_t nargsf, PyObject* kwnames)
    int PyContextVar_Get(object var, PyObject* default_value, PyObject** value) except -1


cdef class _Call:
    """What the C function needs: the context variable and the function it stands in for."""

    cdef object var
    cdef object fallback

    def __init__(self, var, fallback):
        self.var = var
        self.fallback = fallback


cdef object call_timer(_Call call, PyObject** args, Py_ssize_t nargs, PyObject* kwnames):
    cdef Py_ssize_t n, i
    cdef PyObject* current
    cdef RequestCollector request
    cdef tuple names, values
    cdef object value, collector, name
    if nargs == 0 and kwnames is not NULL and PyTuple_GET_SIZE(<tuple>kwnames) > 0:
        names = <tuple>kwnames
        n = PyTuple_GET_SIZE(names)
        for i in range(n):  # str values and non-empty str names: else, the Python function
            if not PyUnicode_CheckExact(<object>args[i]):
                break
            name = <object>PyTuple_GET_ITEM(names, i)  # a str subclass, when given by **mapping
            if not PyUnicode_CheckExact(name) or PyUnicode_GET_LENGTH(name) == 0:
                break
        else:
            PyContextVar_Get(call.var, NULL, &current)
            if current is not NULL:
                collector = <object>current
                Py_DECREF(collector)  # the reference PyContextVar_Get gave: `collector` has one
                if type(collector) is RequestCollector:
                    request = <RequestCollector>collector
                    # PyTuple_New may collect garbage, running finalizers: the
                    # borrowed args stay alive (the caller holds them), and
                    # the names and the collector are references of our own.
                    values = PyTuple_New(n)
                    for i in range(n):
                        value = <object>args[i]
                        Py_INCREF(value)  # PyTuple_SET_ITEM takes a reference
                        PyTuple_SET_ITEM(values, i, value)
                    return request._new_split_timer(names, values)  # checked above
    return PyObject_Vectorcall(call.fallback, args, nargs, kwnames)


cdef PyMethodDef TIMER_METHOD
TIMER_METHOD.ml_name = b"timer"
TIMER_METHOD.ml_meth = <void*>call_timer
TIMER_METHOD.ml_flags = METH_FASTCALL | METH_KEYWORDS
TIMER_METHOD.ml_doc = (
    b"timer(**tags)\n--\n\nA new timer of the current request, not started (see ``Timer``)."
)


def keyword_timer(var, fallback):
    """``fallback`` (a function of ``**tags``) as a C function, for the collector in ``var``."""
    return PyCFunction_NewEx(&TIMER_METHOD, _Call(var, fallback), fallback.__module__)


from pynba._implementation import check_self_types

check_self_types(_Call)

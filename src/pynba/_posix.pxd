# C twins of the ``os`` functions the reporter calls on every send. A module
# compiled from Python source that does ``import os`` and declares
# ``cimport pynba._posix as os`` in its .pxd calls these as C functions;
# names not declared here are still ``os``'s own (run from source, every one
# is). No module is built from this file: it is only read when compiling.
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.exc cimport PyErr_CheckSignals, PyErr_SetFromErrno
from libc.errno cimport EINTR, errno
from posix.stat cimport fstat as c_fstat, struct_stat
from posix.unistd cimport write as c_write


cdef inline struct_stat fstat(int fd) except *:
    """``os.fstat(fd)`` without building a stat_result: ``st_dev``, ``st_ino``, ... read the same."""
    cdef struct_stat status
    if c_fstat(fd, &status) != 0:
        PyErr_SetFromErrno(OSError)
    return status


cdef inline Py_ssize_t write(int fd, data) except -1:
    """``os.write(fd, data)``, keeping the GIL: only for descriptors that never block.

    A non-blocking send returns at once; releasing the GIL around it costs
    more than the call, and under a busy thread getting the GIL back can
    take a whole switch interval.
    """
    cdef Py_buffer view
    cdef Py_ssize_t written
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        while True:
            written = c_write(fd, view.buf, view.len)
            if written >= 0:
                return written
            if errno != EINTR:
                PyErr_SetFromErrno(OSError)
                return -1
            PyErr_CheckSignals()
    finally:
        PyBuffer_Release(&view)

# C twins of the ``os`` functions the reporter calls on every send. A module
# compiled from Python source that does ``import os`` and declares
# ``cimport pynba._posix as os`` in its .pxd calls these as C functions;
# names not declared here are still ``os``'s own (run from source, every one
# is). No module is built from this file: it is only read when compiling.
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_GET_SIZE
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


cdef inline Py_ssize_t _write_all(int fd, const char* buf, Py_ssize_t size) except -1:
    """write(2) of ``size`` bytes at ``buf``, again when a signal interrupts it."""
    cdef Py_ssize_t written
    while True:
        written = c_write(fd, buf, size)
        if written >= 0:
            return written
        if errno != EINTR:
            PyErr_SetFromErrno(OSError)
            return -1
        PyErr_CheckSignals()  # may run Python code: the caller holds the bytes


cdef inline Py_ssize_t write(int fd, data) except -1:
    """``os.write(fd, data)``, keeping the GIL: only for descriptors that never block.

    A non-blocking send returns at once; releasing the GIL around it costs
    more than the call, and under a busy thread getting the GIL back can
    take a whole switch interval.
    """
    cdef Py_buffer view
    if PyBytes_CheckExact(data):
        # A datagram, as every send makes: its bytes, which cannot change,
        # read in place (a buffer taken and released costs about 70 instructions).
        return _write_all(fd, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        return _write_all(fd, <const char*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)

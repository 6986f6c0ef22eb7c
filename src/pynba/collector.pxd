# Declarations for compiling collector.py with Cython (see timer.pxd).
cimport cython
cimport cpython.time as time  # compiled, time.perf_counter() is a C call
cimport pynba._rusage as rusage  # and rusage.cpu_times() (see _rusage.pxd)

from pynba.reporter cimport Reporter
from pynba.tags cimport check_split_tags, timer_tags
from pynba.timer cimport Timer

# maxrss * _MAXRSS_UNIT in _send is a C product: one int made, not two (about 180 instructions).
cdef long _MAXRSS_UNIT
# A C truth value: _request_tags reads it on every request.
cdef bint _INTERPRETED

cdef class Namer:
    cpdef name(self, source)

@cython.locals(known=Namer)
cdef _default_name(namer, source)

cdef class CollectorSettings:
    cdef public Reporter reporter
    cdef public object hostname
    cdef public object tags
    cdef public dict tag_entries
    cdef public object tag_pairs
    cdef public bint timer_rusage
    cdef public bint memory_footprint
    cdef public bint pinboard

cdef class RequestCollector:
    cdef public CollectorSettings _settings
    cdef public object _hostname
    cdef public object _server_name
    cdef public object _script_name
    cdef public object _schema
    cdef public object _status
    cdef public object _document_size
    cdef public object _memory_peak
    cdef public object _memory_footprint
    cdef public object _request_time
    cdef public object _ru_utime
    cdef public object _ru_stime
    cdef public object _tags
    cdef public bint _tags_sent
    cdef public list _timers
    cdef public object _merged
    cdef public Py_ssize_t _merge_at
    cdef public double _start  # a C double: about 190 instructions a request less than a float
    cdef public rusage.ThreadCPU _cpu
    cdef public double _utime_start
    cdef public double _stime_start
    cdef public bint _finished
    cdef public bint _skipped
    cdef public object _namer
    cdef public object _source

    @staticmethod
    @cython.locals(collector=RequestCollector)
    cdef RequestCollector of_request(settings, server_name, schema, namer, source)
    cdef _setup(self, settings, script_name, server_name, schema, namer, source)
    @cython.locals(entries=dict)
    cpdef set_tag(self, name, value)
    @cython.locals(entries=dict)
    cdef dict _own_tags(self)
    cpdef new_timer(self, tags)
    cpdef new_checked_timer(self, names, values)
    cdef _new_split_timer(self, tuple names, tuple values)
    cdef _add_call_timer(self, tuple names, tuple values, double seconds)
    cpdef add_timer(self, timer)
    cpdef remove_timer(self, timer)
    @cython.locals(timer=Timer, kept=list, dropped=Py_ssize_t, merge_at=Py_ssize_t)
    cpdef _merge_timers(self)
    cpdef list _merged_timers(self)
    cpdef _resolved_script_name(self)
    cpdef end_response(self)
    cpdef finish(self, status=*, document_size=*)
    cpdef next_job(self, script_name=*, server_name=*)
    @cython.locals(timer=Timer, kept=list, out=list, ending=bint)
    cpdef _measure_timers(self, bint keep_running, end)
    @cython.locals(maxrss=long, request_end=double)
    cpdef _send(self, timers, end=*)
    cpdef _request_tags(self, dict entries)
    @cython.locals(out=list, alone=bint, pairs=tuple)
    cpdef tuple _request_pairs(self, dict entries)
    @cython.locals(cpu=rusage.ThreadCPU)
    cpdef (double, double, long) _cpu_reading(self, bint ending) except *
    cpdef _stop_running(self)
    cpdef suspend(self)

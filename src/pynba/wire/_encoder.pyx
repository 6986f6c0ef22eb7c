# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Pinba datagram encoder, compiled.

The twin of ``fallback.py``: same signature, same bytes. Everything
that is not a plain str, bytes, float, int, bool or None takes the pure
module's conversion functions, so both agree on the rare cases by
construction; this module only makes the common cases fast.

Memory safety: Python code can run in the middle of an encode (a tag's
``__str__``, a value's ``__float__`` or ``__index__``, a Timer's attributes,
a finalizer run by a garbage collection, another thread at the switch that
any of these allows), and it may change or empty the caller's containers.
So no borrowed reference outlives a step that can run Python code: the
items of the timers list and the keys and values of every dict are first
copied (with no Python code in the loop) into ``State.held``, strong
references released when the call ends; every object whose bytes the
dictionary borrows, or whose address the identity cache holds, is held
there or by the caller's arguments (tuples, which cannot change) until the
datagram is written.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_CheckExact, PyDict_Next
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.list cimport PyList_CheckExact
from cpython.long cimport PyLong_CheckExact
from cpython.object cimport PyObject
from cpython.pycapsule cimport PyCapsule_GetPointer
from cpython.tuple cimport PyTuple_CheckExact, PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_Check
from libc.stdint cimport int32_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, qsort
from libc.string cimport memchr, memcmp, memcpy, memset

from pynba._timer_fields cimport ReadTimerFields, TimerFields

from pynba.wire.fallback import to_bytes as _py_to_bytes
from pynba.wire.fallback import to_seconds as _py_to_seconds
from pynba.wire.fallback import to_uint32 as _py_to_uint32
from pynba.wire.fallback import _pairs as _py_pairs
from pynba.wire.fallback import MAX_TEXT_BYTES as _MAX_TEXT_BYTES
from pynba.wire.fallback import timer_tuple as _py_timer_tuple
from pynba.wire.fallback import encode as _py_encode

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*)
    bint PyUnicode_IS_COMPACT_ASCII(object)
    void* PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)
    void PyErr_Clear()
    long long PyLong_AsLongLongAndOverflow(object, int*) except? -1
    # On pointers: no reference counting by Cython around them.
    void Py_INCREF_PTR "Py_INCREF"(PyObject*)
    void Py_DECREF_PTR "Py_DECREF"(PyObject*)
    Py_ssize_t PyList_GET_SIZE(object)
    Py_ssize_t PyDict_GET_SIZE(object)
    PyObject* PyList_GET_ITEM_PTR "PyList_GET_ITEM"(object, Py_ssize_t)

cdef double FLT_MIN = 1.1754943508222875e-38
cdef double FLT_MAX = 3.4028234663852886e38
cdef double INF = float("inf")
cdef uint64_t UINT32_MAX = 0xFFFFFFFF
cdef object ONE = 1  # CPython keeps one object for each small int
cdef uint64_t STATUS_MAX = 0xFFFFFFFE
# The most bytes sent of each string (see the pure module).
cdef Py_ssize_t MAX_HOSTNAME = _MAX_TEXT_BYTES["hostname"]
cdef Py_ssize_t MAX_SERVER_NAME = _MAX_TEXT_BYTES["server_name"]
cdef Py_ssize_t MAX_SCRIPT_NAME = _MAX_TEXT_BYTES["script_name"]
cdef Py_ssize_t MAX_SCHEMA = _MAX_TEXT_BYTES["schema"]
cdef Py_ssize_t MAX_TAG = _MAX_TEXT_BYTES["tag"]

cdef enum:
    CACHE = 64  # identity cache slots (power of two)

# ---------------------------------------------------------------- scalars

cdef inline double sanitize(double x) noexcept nogil:
    if not x >= FLT_MIN:
        return 0.0
    if x > FLT_MAX:
        return 0.0 if x == INF else FLT_MAX
    return x


cdef inline double to_seconds(object value) except? -1.0:
    if PyFloat_CheckExact(value):
        return sanitize(PyFloat_AS_DOUBLE(value))
    if value is None:
        return 0.0
    return _py_to_seconds(value)


cdef inline uint64_t to_uint32(object value, uint64_t top) except? 0xFFFFFFFFFFFFFFFF:
    cdef int overflow = 0
    cdef long long n
    if PyLong_CheckExact(value):
        n = PyLong_AsLongLongAndOverflow(value, &overflow)
        if overflow > 0:
            return top
        if overflow < 0 or n < 0:
            return 0
        return <uint64_t>n if <uint64_t>n < top else top
    if value is None:
        return 0
    return _py_to_uint32(value, top)

# ---------------------------------------------------------------- buffers

cdef struct Text:
    const char* ptr
    Py_ssize_t size

cdef struct Word:
    const char* ptr
    Py_ssize_t size
    uint64_t hash

cdef struct TagRef:
    Text name
    Text value
    int32_t name_id
    int32_t value_id
    PyObject* name_obj
    PyObject* value_obj

cdef struct MergedTimer:  # one tag set: the timers with these tags, added up
    Py_ssize_t first  # offset into State.pairs (2 entries per tag)
    Py_ssize_t count  # tags
    uint64_t hash
    uint64_t hits
    double value
    double utime
    double stime

cdef struct State:
    Word* words
    Py_ssize_t nwords
    Py_ssize_t cap_words
    int32_t* wslots  # open addressing: word id or -1
    Py_ssize_t wmask
    uint32_t* pairs
    Py_ssize_t npairs
    Py_ssize_t cap_pairs
    MergedTimer* timers
    Py_ssize_t ntimers
    Py_ssize_t cap_timers
    int32_t* tslots  # open addressing: timer id or -1
    Py_ssize_t tmask
    TagRef* refs
    Py_ssize_t cap_refs
    uint32_t* rtags  # request tags: name id, value id
    Py_ssize_t nrtags
    Py_ssize_t cap_rtags
    unsigned char* out
    Py_ssize_t olen
    Py_ssize_t ocap
    PyObject* cache_obj[CACHE]
    int32_t cache_id[CACHE]
    PyObject** held  # strong references, released by state_free
    Py_ssize_t nheld
    Py_ssize_t cap_held
    # initial storage, so that a typical request allocates nothing
    Word s_words[64]
    int32_t s_wslots[128]
    uint32_t s_pairs[256]
    MergedTimer s_timers[32]
    int32_t s_tslots[64]
    TagRef s_refs[16]
    uint32_t s_rtags[32]
    unsigned char s_out[2048]
    PyObject* s_held[64]


cdef void state_init(State* s) noexcept:
    s.words = s.s_words
    s.nwords = 0
    s.cap_words = 64
    s.wslots = s.s_wslots
    s.wmask = 127
    memset(s.wslots, 0xFF, sizeof(int32_t) * 128)
    s.pairs = s.s_pairs
    s.npairs = 0
    s.cap_pairs = 256
    s.timers = s.s_timers
    s.ntimers = 0
    s.cap_timers = 32
    s.tslots = s.s_tslots
    s.tmask = 63
    memset(s.tslots, 0xFF, sizeof(int32_t) * 64)
    s.refs = s.s_refs
    s.cap_refs = 16
    s.rtags = s.s_rtags
    s.nrtags = 0
    s.cap_rtags = 32
    s.out = s.s_out
    s.olen = 0
    s.ocap = 2048
    memset(s.cache_obj, 0, sizeof(s.cache_obj))
    s.held = s.s_held
    s.nheld = 0
    s.cap_held = 64


cdef void state_free(State* s) noexcept:
    if s.words != s.s_words:
        free(s.words)
    if s.wslots != s.s_wslots:
        free(s.wslots)
    if s.pairs != s.s_pairs:
        free(s.pairs)
    if s.timers != s.s_timers:
        free(s.timers)
    if s.tslots != s.s_tslots:
        free(s.tslots)
    if s.refs != s.s_refs:
        free(s.refs)
    if s.rtags != s.s_rtags:
        free(s.rtags)
    if s.out != s.s_out:
        free(s.out)
    cdef Py_ssize_t i
    for i in range(s.nheld):  # may run finalizers: the datagram is made by now
        Py_DECREF_PTR(s.held[i])
    if s.held != s.s_held:
        free(s.held)


cdef void* grow(void* data, void* initial, Py_ssize_t used, Py_ssize_t* cap,
                Py_ssize_t need, size_t item) except NULL:
    """Storage for at least ``need`` items, keeping the first ``used``."""
    cdef Py_ssize_t new_cap = cap[0]
    while new_cap < need:
        new_cap *= 2
    cdef void* fresh = malloc(new_cap * item)
    if fresh == NULL:
        raise MemoryError()
    memcpy(fresh, data, used * item)
    if data != initial:
        free(data)
    cap[0] = new_cap
    return fresh


cdef inline int reserve_held(State* s, Py_ssize_t extra) except -1:
    """Room for ``extra`` more references in ``s.held`` (no Python code runs)."""
    if s.nheld + extra > s.cap_held:
        s.held = <PyObject**>grow(s.held, s.s_held, s.nheld, &s.cap_held, s.nheld + extra,
                                  sizeof(PyObject*))
    return 0


cdef inline int hold(State* s, object value) except -1:
    """Keeps ``value`` alive until the call ends."""
    if s.nheld == s.cap_held:
        reserve_held(s, 1)
    Py_INCREF_PTR(<PyObject*>value)
    s.held[s.nheld] = <PyObject*>value
    s.nheld += 1
    return 0


cdef Py_ssize_t hold_list(State* s, object items) except -1:
    """Holds the items of the list ``items`` in ``s.held``; returns the index of the first."""
    cdef Py_ssize_t n = PyList_GET_SIZE(items), i, first
    reserve_held(s, n)
    first = s.nheld
    for i in range(n):  # no Python code runs in this loop
        s.held[first + i] = PyList_GET_ITEM_PTR(items, i)
        Py_INCREF_PTR(s.held[first + i])
    s.nheld += n
    return first


cdef inline Py_ssize_t hold_dict(State* s, object d) except -1:
    """Holds the keys and values of the dict ``d`` in ``s.held``, key then value.

    Returns the index of the first key; the last value is at ``s.nheld - 1``.
    """
    cdef Py_ssize_t pos = 0, first
    cdef PyObject* key
    cdef PyObject* value
    reserve_held(s, 2 * PyDict_GET_SIZE(d))
    first = s.nheld
    while PyDict_Next(d, &pos, &key, &value):  # no Python code runs in this loop
        Py_INCREF_PTR(key)
        Py_INCREF_PTR(value)
        s.held[s.nheld] = key
        s.held[s.nheld + 1] = value
        s.nheld += 2
    return first

# ---------------------------------------------------------------- dictionary

cdef inline uint64_t hash_bytes(const char* p, Py_ssize_t n) noexcept nogil:
    # FNV-1a: tag strings are short, so a simple byte loop is the fastest.
    cdef uint64_t h = 14695981039346656037ULL
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ <unsigned char>p[i]) * 1099511628211ULL
    return h


cdef inline Py_ssize_t cut(const char* p, Py_ssize_t size, Py_ssize_t limit) noexcept nogil:
    """How many of the ``size`` bytes at ``p`` are sent: as the pure module's ``cut``."""
    if size <= limit:
        return size
    cdef Py_ssize_t end = limit
    while end > limit - 3 and (<unsigned char>p[end] & 0xC0) == 0x80:
        end -= 1
    return end


cdef int text_of(State* s, object value, Text* text, Py_ssize_t limit) except -1:
    """The bytes sent for a string (at most ``limit``), borrowed from ``value`` or ``s.held``.

    ``value`` must stay alive until the datagram is written.
    """
    cdef Py_ssize_t size
    cdef const char* ptr
    cdef object data
    if PyUnicode_Check(value):
        if PyUnicode_IS_COMPACT_ASCII(value):
            ptr = <const char*>PyUnicode_DATA(value)
            size = PyUnicode_GET_LENGTH(value)
        else:
            ptr = PyUnicode_AsUTF8AndSize(value, &size)
            if ptr == NULL:  # lone surrogates: the pure module replaces them
                PyErr_Clear()
                return slow_text(s, value, text, limit)
    elif PyBytes_Check(value):
        ptr = PyBytes_AS_STRING(value)
        size = PyBytes_GET_SIZE(value)
    else:
        return slow_text(s, value, text, limit)
    if size and memchr(ptr, 0, size) != NULL:
        return slow_text(s, value, text, limit)
    text.ptr = ptr
    text.size = cut(ptr, size, limit)
    return 0


cdef int slow_text(State* s, object value, Text* text, Py_ssize_t limit) except -1:
    data = _py_to_bytes(value)
    hold(s, data)
    text.ptr = PyBytes_AS_STRING(data)
    text.size = cut(text.ptr, PyBytes_GET_SIZE(data), limit)
    return 0


cdef inline int32_t cached_id(State* s, object value) noexcept:
    """The dictionary id of an object already seen in this call, else -1.

    Only str and bytes (immutable) are cached, and every cached object is
    kept alive by the caller's arguments or by ``s.held`` for the whole call:
    no other object can take its address.
    """
    cdef size_t slot = (<size_t><PyObject*>value >> 4) & (CACHE - 1)
    if s.cache_obj[slot] == <PyObject*>value:
        return s.cache_id[slot]
    return -1


cdef inline void remember(State* s, object value, int32_t word_id) noexcept:
    cdef size_t slot
    if PyUnicode_Check(value) or PyBytes_Check(value):
        slot = (<size_t><PyObject*>value >> 4) & (CACHE - 1)
        s.cache_obj[slot] = <PyObject*>value
        s.cache_id[slot] = word_id


cdef int32_t* empty_slots(Py_ssize_t size) except NULL:
    """A hash table of ``size`` slots, every one empty (-1)."""
    cdef int32_t* slots = <int32_t*>malloc(size * sizeof(int32_t))
    if slots == NULL:
        raise MemoryError()
    memset(slots, 0xFF, size * sizeof(int32_t))
    return slots


cdef inline void place(int32_t* slots, Py_ssize_t mask, uint64_t hash, int32_t i) noexcept nogil:
    """Puts entry ``i`` in the first free slot from its hash on (linear probing)."""
    cdef Py_ssize_t j = hash & mask
    while slots[j] >= 0:
        j = (j + 1) & mask
    slots[j] = i


cdef int rehash_words(State* s) except -1:
    cdef Py_ssize_t size = (s.wmask + 1) * 2, i
    cdef int32_t* slots = empty_slots(size)
    for i in range(s.nwords):
        place(slots, size - 1, s.words[i].hash, <int32_t>i)
    if s.wslots != s.s_wslots:
        free(s.wslots)
    s.wslots = slots
    s.wmask = size - 1
    return 0


cdef inline bint same_bytes(const char* a, const char* b, Py_ssize_t n) noexcept nogil:
    # Tag strings are short: a loop beats a call to memcmp.
    cdef Py_ssize_t i
    if n > 16:
        return memcmp(a, b, n) == 0
    for i in range(n):
        if a[i] != b[i]:
            return False
    return True


cdef int32_t word_id(State* s, Text* text) except -1:
    """The dictionary id of these bytes, adding them when new."""
    cdef uint64_t h = hash_bytes(text.ptr, text.size)
    cdef Py_ssize_t j = h & s.wmask
    cdef int32_t found
    cdef Word* w
    while True:
        found = s.wslots[j]
        if found < 0:
            break
        w = &s.words[found]
        if w.hash == h and w.size == text.size and same_bytes(w.ptr, text.ptr, text.size):
            return found
        j = (j + 1) & s.wmask
    if s.nwords == s.cap_words:
        s.words = <Word*>grow(s.words, s.s_words, s.nwords, &s.cap_words,
                              s.nwords + 1, sizeof(Word))
    found = <int32_t>s.nwords
    w = &s.words[found]
    w.ptr = text.ptr
    w.size = text.size
    w.hash = h
    s.nwords += 1
    s.wslots[j] = found
    if s.nwords * 2 > s.wmask:
        rehash_words(s)
    return found


cdef int32_t object_id(State* s, object value) except -1:
    cdef int32_t found = cached_id(s, value)
    cdef Text text
    if found >= 0:
        return found
    text_of(s, value, &text, MAX_TAG)
    found = word_id(s, &text)
    remember(s, value, found)
    return found

# ---------------------------------------------------------------- timers

cdef inline int compare_text(const char* a, Py_ssize_t na, const char* b, Py_ssize_t nb) noexcept nogil:
    cdef int c = memcmp(a, b, na if na < nb else nb)
    if c:
        return c
    return (na > nb) - (na < nb)


cdef int compare_refs(const void* x, const void* y) noexcept nogil:
    cdef const TagRef* a = <const TagRef*>x
    cdef const TagRef* b = <const TagRef*>y
    cdef int c = 0
    if a.name_id < 0 or a.name_id != b.name_id:
        c = compare_text(a.name.ptr, a.name.size, b.name.ptr, b.name.size)
    if c == 0 and (a.value_id < 0 or a.value_id != b.value_id):
        c = compare_text(a.value.ptr, a.value.size, b.value.ptr, b.value.size)
    return c


cdef int ref_text(State* s, TagRef* ref, object value, bint is_name) except -1:
    cdef int32_t found = cached_id(s, value)
    cdef Text* text = &ref.name if is_name else &ref.value
    if found >= 0:
        text.ptr = s.words[found].ptr
        text.size = s.words[found].size
    else:
        text_of(s, value, text, MAX_TAG)
    if is_name:
        ref.name_id = found
        ref.name_obj = <PyObject*>value
    else:
        ref.value_id = found
        ref.value_obj = <PyObject*>value
    return 0


cdef int add_ref(State* s, Py_ssize_t n, object name, object value) except -1:
    """Reads one tag into ``s.refs[n]``; ``name`` and ``value`` must stay alive."""
    if n == s.cap_refs:
        s.refs = <TagRef*>grow(s.refs, s.s_refs, n, &s.cap_refs, n + 1, sizeof(TagRef))
    ref_text(s, &s.refs[n], name, True)
    ref_text(s, &s.refs[n], value, False)
    return 0


cdef Py_ssize_t collect_tags(State* s, object tags) except -1:
    """Reads one timer's tags into ``s.refs``; returns how many.

    ``tags`` must stay alive until the datagram is written.
    """
    cdef Py_ssize_t n = 0, i, first, last
    cdef object pair
    if PyDict_CheckExact(tags):
        first = hold_dict(s, tags)
        last = s.nheld
        # s.held may move as it grows: read by index
        for i in range(first, last, 2):
            add_ref(s, n, <object>s.held[i], <object>s.held[i + 1])
            n += 1
        return n
    if not PyTuple_CheckExact(tags):
        tags = _py_pairs(tags)  # a tuple
        hold(s, tags)
    for i in range(PyTuple_GET_SIZE(tags)):
        pair = <object>PyTuple_GET_ITEM(tags, i)
        if PyTuple_CheckExact(pair) and PyTuple_GET_SIZE(pair) == 2:
            add_ref(s, n, <object>PyTuple_GET_ITEM(pair, 0), <object>PyTuple_GET_ITEM(pair, 1))
        else:
            name, value = pair
            hold(s, name)
            hold(s, value)
            add_ref(s, n, name, value)
        n += 1
    return n


cdef Py_ssize_t collect_split_tags(State* s, object names, object values) except -1:
    """Reads the tags of a compiled Timer, its names and values, into ``s.refs``; returns how many.

    ``names`` and ``values`` must stay alive until the datagram is written.
    """
    cdef Py_ssize_t n, i
    if not (PyTuple_CheckExact(names) and PyTuple_CheckExact(values)):
        # Copies: a list could change while str() runs.
        names = tuple(names)
        values = tuple(values)
        hold(s, names)
        hold(s, values)
    n = PyTuple_GET_SIZE(names)
    if PyTuple_GET_SIZE(values) != n:
        raise ValueError("a timer's tag names and values differ in number")
    for i in range(n):
        add_ref(s, i, <object>PyTuple_GET_ITEM(names, i), <object>PyTuple_GET_ITEM(values, i))
    return n


cdef void sort_refs(TagRef* refs, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef TagRef tmp
    if n == 2:  # the common case: one comparison, rarely a swap
        if compare_refs(&refs[0], &refs[1]) > 0:
            tmp = refs[0]
            refs[0] = refs[1]
            refs[1] = tmp
        return
    if n > 16:
        qsort(refs, n, sizeof(TagRef), compare_refs)
        return
    for i in range(1, n):
        j = i
        while j > 0 and compare_refs(&refs[j - 1], &refs[j]) > 0:
            tmp = refs[j]
            refs[j] = refs[j - 1]
            refs[j - 1] = tmp
            j -= 1


cdef ReadTimerFields read_timer_fields = NULL
cdef bint timer_fields_sought = False


cdef int seek_timer_fields() except -1:
    """Finds the compiled timer module's field reader, if it is there to use."""
    global read_timer_fields, timer_fields_sought
    timer_fields_sought = True
    try:
        from pynba._timer_fields import READ_TIMER_FIELDS
        read_timer_fields = <ReadTimerFields>PyCapsule_GetPointer(
            READ_TIMER_FIELDS, b"pynba._timer_fields.READ_TIMER_FIELDS"
        )
    except Exception:  # not built, or the timer module runs from source
        read_timer_fields = NULL
    return 0


cdef int add_timer(State* s, object timer) except -1:
    """Adds one timer; ``timer`` must stay alive until the datagram is written.

    Its parts are read in the pure twin's order, tags, hit count, value, CPU
    times: Python code that converting them runs sees what it sees there.
    """
    cdef object tags, value, hit_count, utime, stime, names
    cdef TimerFields fields
    cdef Py_ssize_t i
    cdef double t_value, t_utime, t_stime
    cdef MergedTimer* t
    cdef Py_ssize_t size = PyTuple_GET_SIZE(timer) if PyTuple_CheckExact(timer) else -1
    if size == 5:
        tags = <object>PyTuple_GET_ITEM(timer, 0)
        value = <object>PyTuple_GET_ITEM(timer, 1)
        hit_count = <object>PyTuple_GET_ITEM(timer, 2)
        utime = <object>PyTuple_GET_ITEM(timer, 3)
        stime = <object>PyTuple_GET_ITEM(timer, 4)
    else:
        if not timer_fields_sought:
            seek_timer_fields()
        if read_timer_fields != NULL and read_timer_fields(timer, &fields):
            # A compiled Timer: its fields as they are, no objects made. They
            # are borrowed from the timer, whose attributes Python code (a
            # tag's str()) may replace: references of our own come first,
            # and the tags stay held until the datagram is written (the
            # dictionary borrows their bytes).
            names = <object>fields.names
            tags = <object>fields.values
            hit_count = <object>fields.hits
            hold(s, names)
            hold(s, tags)
            i = add_timer_fields(s, tags, names, True, hit_count)
            if i >= 0:
                t = &s.timers[i]
                t.value += sanitize(fields.value)
                t.utime += sanitize(fields.utime)
                t.stime += sanitize(fields.stime)
            return 0
        timer = _py_timer_tuple(timer)  # 5 items
        hold(s, timer)
        tags, value, hit_count, utime, stime = timer
    i = add_timer_fields(s, tags, None, False, hit_count)
    if i < 0:
        return 0
    t_value = to_seconds(value)
    t_utime = to_seconds(utime)
    t_stime = to_seconds(stime)
    t = &s.timers[i]
    t.value += t_value
    t.utime += t_utime
    t.stime += t_stime
    return 0


cdef Py_ssize_t add_timer_fields(State* s, object tags, object names, bint split,
                                 object hit_count) except -2:
    """Adds one timer's tags and hits, merged with an earlier timer of the same tag set.

    ``split``: ``tags`` are the values of ``names`` (a compiled Timer's), else pairs.
    Returns that timer's index in ``s.timers`` (the caller adds its measures),
    or -1 when it has no tags: it is dropped.
    """
    cdef Py_ssize_t n
    if not split:
        n = collect_tags(s, tags)
    else:  # a compiled Timer's: ``tags`` are the values of these names (None: TypeError)
        n = collect_split_tags(s, names, tags)
    if n == 0:
        return -1
    cdef Py_ssize_t i
    cdef TagRef* ref
    sort_refs(s.refs, n)
    if s.npairs + 2 * n > s.cap_pairs:
        s.pairs = <uint32_t*>grow(s.pairs, s.s_pairs, s.npairs, &s.cap_pairs,
                                  s.npairs + 2 * n, sizeof(uint32_t))
    cdef uint32_t* pairs = s.pairs + s.npairs
    cdef uint64_t h = 14695981039346656037ULL
    for i in range(n):
        ref = &s.refs[i]
        if ref.name_id < 0:
            ref.name_id = word_id(s, &ref.name)
            remember(s, <object>ref.name_obj, ref.name_id)
        if ref.value_id < 0:
            ref.value_id = word_id(s, &ref.value)
            remember(s, <object>ref.value_obj, ref.value_id)
        pairs[2 * i] = ref.name_id
        pairs[2 * i + 1] = ref.value_id
        h = (h ^ <uint64_t>ref.name_id) * 1099511628211ULL
        h = (h ^ <uint64_t>ref.value_id) * 1099511628211ULL
    h ^= <uint64_t>n

    cdef uint64_t hits = 1
    if <PyObject*>hit_count != <PyObject*>ONE:  # the common case, without a call
        hits = to_uint32(hit_count, UINT32_MAX)
        if hits == 0:
            hits = 1

    cdef Py_ssize_t j = h & s.tmask
    cdef int32_t found
    cdef MergedTimer* t
    while True:
        found = s.tslots[j]
        if found < 0:
            break
        t = &s.timers[found]
        if t.hash == h and t.count == n and memcmp(
            s.pairs + t.first, pairs, 2 * n * sizeof(uint32_t)
        ) == 0:
            t.hits = t.hits + hits if t.hits + hits < UINT32_MAX else UINT32_MAX
            return found
        j = (j + 1) & s.tmask

    if s.ntimers == s.cap_timers:
        s.timers = <MergedTimer*>grow(s.timers, s.s_timers, s.ntimers, &s.cap_timers,
                                s.ntimers + 1, sizeof(MergedTimer))
    found = <int32_t>s.ntimers
    t = &s.timers[found]
    t.first = s.npairs
    t.count = n
    t.hash = h
    t.hits = hits
    t.value = 0.0
    t.utime = 0.0
    t.stime = 0.0
    s.npairs += 2 * n
    s.ntimers += 1
    s.tslots[j] = found
    if s.ntimers * 2 > s.tmask:
        rehash_timers(s)
    return found


cdef int rehash_timers(State* s) except -1:
    cdef Py_ssize_t size = (s.tmask + 1) * 2, i
    cdef int32_t* slots = empty_slots(size)
    for i in range(s.ntimers):
        place(slots, size - 1, s.timers[i].hash, <int32_t>i)
    if s.tslots != s.s_tslots:
        free(s.tslots)
    s.tslots = slots
    s.tmask = size - 1
    return 0


cdef int add_request_tag(State* s, object name, object value) except -1:
    if s.nrtags + 2 > s.cap_rtags:
        s.rtags = <uint32_t*>grow(s.rtags, s.s_rtags, s.nrtags, &s.cap_rtags,
                                  s.nrtags + 2, sizeof(uint32_t))
    s.rtags[s.nrtags] = object_id(s, name)
    s.rtags[s.nrtags + 1] = object_id(s, value)
    s.nrtags += 2
    return 0


cdef int collect_request_tags(State* s, object tags) except -1:
    """Reads the request tags; ``tags`` is held by the caller for the whole call."""
    cdef Py_ssize_t i, first, last
    cdef object pair
    if tags is None:
        return 0
    if PyDict_CheckExact(tags):
        first = hold_dict(s, tags)
        last = s.nheld
        for i in range(first, last, 2):  # by index: s.held may move as it grows
            add_request_tag(s, <object>s.held[i], <object>s.held[i + 1])
        return 0
    if not PyTuple_CheckExact(tags):
        tags = _py_pairs(tags)  # a tuple
        hold(s, tags)
    for i in range(PyTuple_GET_SIZE(tags)):
        pair = <object>PyTuple_GET_ITEM(tags, i)
        if PyTuple_CheckExact(pair) and PyTuple_GET_SIZE(pair) == 2:
            add_request_tag(s, <object>PyTuple_GET_ITEM(pair, 0), <object>PyTuple_GET_ITEM(pair, 1))
        else:
            name, value = pair
            hold(s, name)
            hold(s, value)
            add_request_tag(s, name, value)
    return 0

# ---------------------------------------------------------------- writing

cdef inline unsigned char* put_varint(unsigned char* o, uint64_t n) noexcept nogil:
    while n >= 0x80:
        o[0] = <unsigned char>((n & 0x7F) | 0x80)
        o += 1
        n >>= 7
    o[0] = <unsigned char>n
    return o + 1


cdef inline unsigned char* put_float(unsigned char* o, double x) noexcept nogil:
    cdef float f = <float>x
    memcpy(o, &f, 4)  # little-endian hosts only: checked at import
    return o + 4


cdef inline unsigned char* put_key(unsigned char* o, unsigned int key) noexcept nogil:
    # keys of fields 16-23 take two bytes
    if key >= 0x80:
        o[0] = <unsigned char>((key & 0x7F) | 0x80)
        o[1] = <unsigned char>(key >> 7)
        return o + 2
    o[0] = <unsigned char>key
    return o + 1


cdef unsigned char* reserve(State* s, unsigned char* o, Py_ssize_t extra) except NULL:
    """The cursor ``o``, after making room for ``extra`` more bytes."""
    s.olen = o - s.out
    if s.olen + extra > s.ocap:
        s.out = <unsigned char*>grow(s.out, s.s_out, s.olen, &s.ocap, s.olen + extra, 1)
    return s.out + s.olen


cdef unsigned char* put_text(State* s, unsigned char* o, unsigned int key,
                             const char* ptr, Py_ssize_t size) except NULL:
    o = reserve(s, o, size + 12)
    o = put_key(o, key)
    o = put_varint(o, <uint64_t>size)
    memcpy(o, ptr, size)
    return o + size


cdef inline Py_ssize_t varint_size(uint64_t n) noexcept nogil:
    cdef Py_ssize_t size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


cdef inline unsigned char* put_packed_key(unsigned char* o, unsigned int key,
                                          Py_ssize_t size) noexcept nogil:
    o = put_key(o, key)
    return put_varint(o, <uint64_t>size)


cdef unsigned char* put_packed_timers(State* s, unsigned char* o) noexcept nogil:
    """Fields 10-14 in packed form (room reserved by the caller)."""
    cdef Py_ssize_t i, j, k, last, size
    cdef MergedTimer* t
    if s.ntimers == 0:
        return o
    size = 0
    for i in range(s.ntimers):
        size += varint_size(s.timers[i].hits)
    o = put_packed_key(o, 0x52, size)
    for i in range(s.ntimers):
        o = put_varint(o, s.timers[i].hits)
    o = put_packed_key(o, 0x5A, 4 * s.ntimers)
    for i in range(s.ntimers):
        o = put_float(o, sanitize(s.timers[i].value))
    size = 0
    for i in range(s.ntimers):
        size += varint_size(<uint64_t>s.timers[i].count)
    o = put_packed_key(o, 0x62, size)
    for i in range(s.ntimers):
        o = put_varint(o, <uint64_t>s.timers[i].count)
    for k in range(2):  # 13: tag names (even slots), 14: tag values (odd slots)
        size = 0
        for i in range(s.ntimers):
            t = &s.timers[i]
            last = t.first + 2 * t.count
            for j in range(t.first + k, last, 2):
                size += varint_size(s.pairs[j])
        o = put_packed_key(o, 0x6A if k == 0 else 0x72, size)
        for i in range(s.ntimers):
            t = &s.timers[i]
            last = t.first + 2 * t.count
            for j in range(t.first + k, last, 2):
                o = put_varint(o, s.pairs[j])
    return o


cdef bint timer_cpu(State* s) noexcept nogil:
    """Whether a timer has CPU times to send: without, fields 22 and 23 are left out."""
    cdef Py_ssize_t i
    for i in range(s.ntimers):
        if sanitize(s.timers[i].utime) != 0.0 or sanitize(s.timers[i].stime) != 0.0:
            return True
    return False


cdef unsigned char* put_packed_tail(State* s, unsigned char* o) noexcept nogil:
    """Fields 20-23 in packed form (room reserved by the caller)."""
    cdef Py_ssize_t i, k, size
    if s.nrtags:
        for k in range(2):  # 20: tag names (even slots), 21: tag values (odd slots)
            size = 0
            for i in range(k, s.nrtags, 2):
                size += varint_size(s.rtags[i])
            o = put_packed_key(o, 0xA2 if k == 0 else 0xAA, size)
            for i in range(k, s.nrtags, 2):
                o = put_varint(o, s.rtags[i])
    if timer_cpu(s):
        o = put_packed_key(o, 0xB2, 4 * s.ntimers)
        for i in range(s.ntimers):
            o = put_float(o, sanitize(s.timers[i].utime))
        o = put_packed_key(o, 0xBA, 4 * s.ntimers)
        for i in range(s.ntimers):
            o = put_float(o, sanitize(s.timers[i].stime))
    return o


cdef int write_request(State* s, hostname, server_name, script_name, request_count,
                       document_size, memory_peak, request_time, ru_utime, ru_stime,
                       status, memory_footprint, schema, bint packed) except -1:
    cdef Py_ssize_t i, k, last
    cdef MergedTimer* t
    cdef Text text
    cdef unsigned char* o = s.out
    text_of(s, hostname, &text, MAX_HOSTNAME)
    o = put_text(s, o, 0x0A, text.ptr, text.size)
    text_of(s, server_name, &text, MAX_SERVER_NAME)
    o = put_text(s, o, 0x12, text.ptr, text.size)
    text_of(s, script_name, &text, MAX_SCRIPT_NAME)
    o = put_text(s, o, 0x1A, text.ptr, text.size)
    cdef uint64_t count = to_uint32(request_count, UINT32_MAX)
    cdef uint64_t size = to_uint32(document_size, UINT32_MAX)
    cdef uint64_t peak = to_uint32(memory_peak, UINT32_MAX)
    cdef double wall = to_seconds(request_time)
    cdef double utime = to_seconds(ru_utime)
    cdef double stime = to_seconds(ru_stime)
    cdef uint64_t code = to_uint32(status, STATUS_MAX)
    cdef uint64_t footprint = to_uint32(memory_footprint, UINT32_MAX)
    # Every fixed-size part at once: 6 bytes a varint field, 5 a float field.
    # (the extra 32 bytes hold the keys and lengths of packed fields)
    o = reserve(s, o, 96 + s.ntimers * 28 + s.npairs * 6 + s.nrtags * 7)
    o[0] = 0x20
    o = put_varint(o + 1, count)
    o[0] = 0x28
    o = put_varint(o + 1, size)
    o[0] = 0x30
    o = put_varint(o + 1, peak)
    o[0] = 0x3D
    o = put_float(o + 1, wall)
    o[0] = 0x45
    o = put_float(o + 1, utime)
    o[0] = 0x4D
    o = put_float(o + 1, stime)
    if packed:
        o = put_packed_timers(s, o)
    for i in range(0 if packed else s.ntimers):
        o[0] = 0x50
        o = put_varint(o + 1, s.timers[i].hits)
    for i in range(0 if packed else s.ntimers):
        o[0] = 0x5D
        o = put_float(o + 1, sanitize(s.timers[i].value))
    for i in range(0 if packed else s.ntimers):
        o[0] = 0x60
        o = put_varint(o + 1, <uint64_t>s.timers[i].count)
    for i in range(0 if packed else s.ntimers):
        t = &s.timers[i]
        last = t.first + 2 * t.count
        for k in range(t.first, last, 2):
            o[0] = 0x68
            o = put_varint(o + 1, s.pairs[k])
    for i in range(0 if packed else s.ntimers):
        t = &s.timers[i]
        last = t.first + 2 * t.count
        for k in range(t.first + 1, last, 2):
            o[0] = 0x70
            o = put_varint(o + 1, s.pairs[k])
    for i in range(s.nwords):
        o = put_text(s, o, 0x7A, s.words[i].ptr, s.words[i].size)
    o = reserve(s, o, 64 + s.nrtags * 7 + s.ntimers * 14)
    o = put_key(o, 0x80)
    o = put_varint(o, code)
    o = put_key(o, 0x88)
    o = put_varint(o, footprint)
    if schema is not None:
        text_of(s, schema, &text, MAX_SCHEMA)
        if text.size:
            o = put_text(s, o, 0x9A, text.ptr, text.size)
            o = reserve(s, o, 32 + s.nrtags * 7 + s.ntimers * 14)
    if packed:
        s.olen = put_packed_tail(s, o) - s.out
        return 0
    for i in range(0, s.nrtags, 2):
        o = put_key(o, 0xA0)
        o = put_varint(o, s.rtags[i])
    for i in range(1, s.nrtags, 2):
        o = put_key(o, 0xA8)
        o = put_varint(o, s.rtags[i])
    if not timer_cpu(s):
        s.olen = o - s.out
        return 0
    for i in range(s.ntimers):
        o = put_key(o, 0xB5)
        o = put_float(o, sanitize(s.timers[i].utime))
    for i in range(s.ntimers):
        o = put_key(o, 0xBD)
        o = put_float(o, sanitize(s.timers[i].stime))
    s.olen = o - s.out
    return 0


import sys as _sys

if _sys.byteorder != "little":
    raise ImportError("the compiled Pinba encoder supports little-endian hosts only")


def encode(hostname, server_name, script_name, request_count, document_size,
           memory_peak, request_time, ru_utime, ru_stime, status,
           memory_footprint, schema, tags, timers, packed=False):
    # The docstring is the pure twin's: see the end of this module.
    cdef State s
    cdef Py_ssize_t i, first, last
    state_init(&s)
    try:
        collect_request_tags(&s, tags)
        if PyList_CheckExact(timers):
            # The timers the list holds now, held in turn: the list may
            # change while Python code runs.
            first = hold_list(&s, timers)
            last = s.nheld
            for i in range(first, last):  # by index: s.held may move as it grows
                add_timer(&s, <object>s.held[i])
        else:
            if not PyTuple_CheckExact(timers):
                timers = tuple(timers)  # a copy, which this local holds
            for i in range(PyTuple_GET_SIZE(timers)):
                add_timer(&s, <object>PyTuple_GET_ITEM(timers, i))
        write_request(&s, hostname, server_name, script_name, request_count,
                      document_size, memory_peak, request_time, ru_utime, ru_stime,
                      status, memory_footprint, schema, packed)
        return PyBytes_FromStringAndSize(<char*>s.out, s.olen)
    finally:
        state_free(&s)


encode.__doc__ = _py_encode.__doc__  # the twins share a signature, and one text

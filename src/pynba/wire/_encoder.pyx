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
datagram is written. Items of an exact tuple are read as borrowed pointers:
the tuple is held, and a tuple's items cannot change.

The storage of an encode (its dictionary, merged timers, datagram) is kept
for the next call: growing it afresh for each large request costs more than
encoding it (the memory goes back to the system and comes back page by
page). An encode that starts while another is under way (called from a
tag's ``__str__``, or from another thread while the first runs Python code)
takes storage of its own.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_CheckExact, PyDict_Next
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.list cimport PyList_CheckExact
from cpython.long cimport PyLong_CheckExact
from cpython.object cimport PyObject
from cpython.pycapsule cimport PyCapsule_GetPointer
from cpython.unicode cimport PyUnicode_Check
from libc.stdint cimport int32_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, qsort, realloc
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
    bint Tuple_CheckExact "PyTuple_CheckExact"(PyObject*)
    Py_ssize_t Tuple_GET_SIZE "PyTuple_GET_SIZE"(PyObject*)
    PyObject* Tuple_GET_ITEM "PyTuple_GET_ITEM"(PyObject*, Py_ssize_t)
    bint Float_CheckExact "PyFloat_CheckExact"(PyObject*)
    double Float_AS_DOUBLE "PyFloat_AS_DOUBLE"(PyObject*)

cdef extern from *:
    """
    #define PYNBA_FLT_MIN 1.1754943508222875e-38
    #define PYNBA_FLT_MAX 3.4028234663852886e38
    #define PYNBA_FNV_BASIS 14695981039346656037ULL
    #define PYNBA_FNV_PRIME 1099511628211ULL
    """
    # Constants the C compiler sees as such (module-level cdef values are variables).
    const double FLT_MIN "PYNBA_FLT_MIN"  # smallest normal float32
    const double FLT_MAX "PYNBA_FLT_MAX"
    const uint64_t FNV_BASIS "PYNBA_FNV_BASIS"
    const uint64_t FNV_PRIME "PYNBA_FNV_PRIME"

from libc.math cimport INFINITY as INF

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
    CACHE = 256  # identity cache slots (power of two)
    WORD_SLOTS = 128  # the dictionary's hash table to begin with (power of two)
    TIMER_SLOTS = 64  # the merged timers' hash table, at least (power of two)
    # Storage kept for the next call, at most, each buffer: a request whose
    # datagram fits in UDP (65,507 bytes) needs less.
    KEPT_BYTES = 256 * 1024

# ---------------------------------------------------------------- scalars

cdef inline double sanitize(double x) noexcept nogil:
    if not x >= FLT_MIN:
        return 0.0
    if x > FLT_MAX:
        return 0.0 if x == INF else FLT_MAX
    return x


cdef inline double to_seconds(PyObject* value) except? -1.0:
    if Float_CheckExact(value):
        return sanitize(Float_AS_DOUBLE(value))
    if value == <PyObject*>None:
        return 0.0
    return _py_to_seconds(<object>value)


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

# ---------------------------------------------------------------- storage

cdef struct Text:
    const char* ptr
    Py_ssize_t size

cdef struct Word:
    const char* ptr
    Py_ssize_t size
    uint64_t hash

cdef struct Tag:  # a timer's tag name or value, as read
    const char* ptr  # the bytes sent
    Py_ssize_t size
    uint64_t hash  # of those bytes, when id < 0
    int32_t id  # its dictionary id; -1 until its timer's tags are sorted, when new
    PyObject* obj  # held by the caller's arguments or State.held

cdef struct TagRef:
    Tag name
    Tag value

cdef struct MergedTimer:  # one tag set: the timers with these tags, added up
    Py_ssize_t first  # offset into State.pairs (2 entries per tag)
    Py_ssize_t count  # tags
    uint64_t hash
    uint64_t hits
    double value
    double utime
    double stime

cdef struct State:
    # buffers, kept from call to call (see take_state), with their capacities
    Word* words
    Py_ssize_t cap_words
    int32_t* wslots  # open addressing: word id or -1
    Py_ssize_t cap_wslots
    uint32_t* pairs
    Py_ssize_t cap_pairs
    MergedTimer* timers
    Py_ssize_t cap_timers
    int32_t* tslots  # open addressing: timer id or -1
    Py_ssize_t cap_tslots
    TagRef* refs
    Py_ssize_t cap_refs
    uint32_t* rtags  # request tags: name id, value id
    Py_ssize_t cap_rtags
    unsigned char* out
    Py_ssize_t cap_out
    PyObject** held  # strong references, released by release_state
    Py_ssize_t cap_held
    # this call's
    Py_ssize_t nwords
    Py_ssize_t wmask
    Py_ssize_t npairs
    Py_ssize_t ntimers
    Py_ssize_t tmask
    Py_ssize_t nrtags
    Py_ssize_t olen
    Py_ssize_t nheld
    # The identity cache: an entry counts when its call is this one (cache_call
    # equals call), so that a call need not clear the cache first.
    uint32_t call
    PyObject* cache_obj[CACHE]
    int32_t cache_id[CACHE]
    uint32_t cache_call[CACHE]


cdef State* spare = NULL  # the storage kept for the next call
cdef bint spare_in_use = False
# Whether some storage grew past KEPT_BYTES since the spare's was last
# trimmed: a release with none (most calls) skips checking nine buffers
# (about 60 instructions).
cdef bint grew_past_kept = False


cdef void* grow(void* data, Py_ssize_t* cap, Py_ssize_t need, size_t item) except NULL:
    """``data`` moved to storage for at least ``need`` items (its capacity in ``cap``)."""
    cdef Py_ssize_t new_cap = cap[0] if cap[0] else 16
    while new_cap < need:
        new_cap *= 2
    global grew_past_kept
    cdef void* fresh = realloc(data, new_cap * item)
    if fresh == NULL:  # data is still the caller's, freed with the state
        raise MemoryError()
    cap[0] = new_cap
    if new_cap * <Py_ssize_t>item > KEPT_BYTES:
        grew_past_kept = True
    return fresh


cdef int empty_slots(int32_t** slots, Py_ssize_t* cap, Py_ssize_t size,
                     bint used=True) except -1:
    """Makes ``slots[0]`` a hash table of ``size`` slots, every one empty (-1).

    ``used``: whether entries may have been put in its first ``size`` slots
    since they were last emptied (False: they are empty still).
    """
    global grew_past_kept
    cdef int32_t* fresh
    if size > cap[0]:
        fresh = <int32_t*>malloc(size * sizeof(int32_t))
        if fresh == NULL:
            raise MemoryError()
        free(slots[0])
        slots[0] = fresh
        cap[0] = size
        if size * <Py_ssize_t>sizeof(int32_t) > KEPT_BYTES:
            grew_past_kept = True
    elif not used:
        return 0
    memset(slots[0], 0xFF, size * sizeof(int32_t))
    return 0


cdef State* take_state() except NULL:
    """The spare storage, when no other encode is using it; else storage of its own."""
    global spare, spare_in_use
    cdef State* s
    if not spare_in_use and spare != NULL:
        s = spare
        spare_in_use = True
    else:
        s = <State*>calloc(1, sizeof(State))
        if s == NULL:
            raise MemoryError()
        if not spare_in_use:
            spare = s
            spare_in_use = True
    # Entries go in the tables only with a word or a merged timer counted:
    # the last call's counts tell whether their first slots need emptying
    # (a request with no tags nor timers puts none, and spares two memsets:
    # about 90 instructions). A fresh state's tables are made, empty.
    cdef bint words_used = s.nwords != 0
    cdef bint timers_used = s.ntimers != 0
    s.nwords = s.npairs = s.ntimers = s.nrtags = s.olen = s.nheld = 0
    s.call += 1
    if s.call == 0:  # after 2**32 calls: no entry may count by chance
        memset(s.cache_call, 0, sizeof(s.cache_call))
        s.call = 1
    try:
        s.wmask = WORD_SLOTS - 1
        empty_slots(&s.wslots, &s.cap_wslots, WORD_SLOTS, words_used)
        s.tmask = TIMER_SLOTS - 1
        empty_slots(&s.tslots, &s.cap_tslots, TIMER_SLOTS, timers_used)
    except MemoryError:
        release_state(s)
        raise
    return s


cdef inline void* trim(void* data, Py_ssize_t* cap, size_t item) noexcept:
    if cap[0] * <Py_ssize_t>item <= KEPT_BYTES:
        return data
    free(data)
    cap[0] = 0
    return NULL


cdef void release_state(State* s) noexcept:
    """Releases the references ``s`` holds, then gives its storage back or frees it."""
    global spare_in_use, grew_past_kept
    cdef Py_ssize_t i
    # Finalizers may run here (the datagram is made by now), and start an
    # encode: it takes storage of its own, the spare is still in use.
    for i in range(s.nheld):
        Py_DECREF_PTR(s.held[i])
    s.nheld = 0
    if s == spare and not grew_past_kept:
        spare_in_use = False
        return
    if s == spare:
        grew_past_kept = False
        s.words = <Word*>trim(s.words, &s.cap_words, sizeof(Word))
        s.wslots = <int32_t*>trim(s.wslots, &s.cap_wslots, sizeof(int32_t))
        s.pairs = <uint32_t*>trim(s.pairs, &s.cap_pairs, sizeof(uint32_t))
        s.timers = <MergedTimer*>trim(s.timers, &s.cap_timers, sizeof(MergedTimer))
        s.tslots = <int32_t*>trim(s.tslots, &s.cap_tslots, sizeof(int32_t))
        s.refs = <TagRef*>trim(s.refs, &s.cap_refs, sizeof(TagRef))
        s.rtags = <uint32_t*>trim(s.rtags, &s.cap_rtags, sizeof(uint32_t))
        s.out = <unsigned char*>trim(s.out, &s.cap_out, 1)
        s.held = <PyObject**>trim(s.held, &s.cap_held, sizeof(PyObject*))
        spare_in_use = False
        return
    free(s.words)
    free(s.wslots)
    free(s.pairs)
    free(s.timers)
    free(s.tslots)
    free(s.refs)
    free(s.rtags)
    free(s.out)
    free(s.held)
    free(s)


cdef int expect_timers(State* s, Py_ssize_t count) except -1:
    """Room for ``count`` timers of two tags, made at once rather than as they come."""
    cdef Py_ssize_t size = TIMER_SLOTS
    if count > s.cap_timers:
        s.timers = <MergedTimer*>grow(s.timers, &s.cap_timers, count, sizeof(MergedTimer))
    if 4 * count > s.cap_pairs:
        s.pairs = <uint32_t*>grow(s.pairs, &s.cap_pairs, 4 * count, sizeof(uint32_t))
    while size < 2 * count + 2:
        size *= 2
    if size > s.tmask + 1:
        empty_slots(&s.tslots, &s.cap_tslots, size)
        s.tmask = size - 1
    return 0


cdef inline int reserve_held(State* s, Py_ssize_t extra) except -1:
    """Room for ``extra`` more references in ``s.held`` (no Python code runs)."""
    if s.nheld + extra > s.cap_held:
        s.held = <PyObject**>grow(s.held, &s.cap_held, s.nheld + extra, sizeof(PyObject*))
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

cdef inline Py_ssize_t cut(const char* p, Py_ssize_t size, Py_ssize_t limit) noexcept nogil:
    """How many of the ``size`` bytes at ``p`` are sent: as the pure module's ``cut``."""
    if size <= limit:
        return size
    cdef Py_ssize_t end = limit
    while end > limit - 3 and (<unsigned char>p[end] & 0xC0) == 0x80:
        end -= 1
    return end


cdef inline bint hash_text(const char* p, Py_ssize_t n, uint64_t* hash) noexcept nogil:
    """FNV-1a of the ``n`` bytes at ``p`` into ``hash``; False if one of them is NUL.

    Tag strings are short: a byte loop is the fastest, and it finds a NUL too.
    """
    cdef uint64_t h = FNV_BASIS
    cdef unsigned char c
    cdef Py_ssize_t i
    for i in range(n):
        c = <unsigned char>p[i]
        if c == 0:
            return False
        h = (h ^ c) * FNV_PRIME
    hash[0] = h
    return True


cdef inline int plain_text(object value, const char** ptr, Py_ssize_t* size) noexcept:
    """The UTF-8 of a str or the bytes of a bytes object, in place: 1, else 0 (no error set)."""
    if PyUnicode_Check(value):
        if PyUnicode_IS_COMPACT_ASCII(value):
            ptr[0] = <const char*>PyUnicode_DATA(value)
            size[0] = PyUnicode_GET_LENGTH(value)
            return 1
        ptr[0] = PyUnicode_AsUTF8AndSize(value, size)
        if ptr[0] == NULL:  # lone surrogates: the pure module replaces them
            PyErr_Clear()
            return 0
        return 1
    if PyBytes_Check(value):
        ptr[0] = PyBytes_AS_STRING(value)
        size[0] = PyBytes_GET_SIZE(value)
        return 1
    return 0


cdef int converted_text(State* s, object value, const char** ptr, Py_ssize_t* size,
                        Py_ssize_t limit) except -1:
    """The bytes the pure module makes of ``value``, held, at most ``limit`` of them."""
    data = _py_to_bytes(value)
    if not PyBytes_Check(data):  # its memory is read as a bytes object's
        raise TypeError(f"to_bytes gave {type(data).__name__}, not bytes")
    hold(s, data)
    ptr[0] = PyBytes_AS_STRING(data)
    size[0] = cut(ptr[0], PyBytes_GET_SIZE(data), limit)
    return 0


cdef int text_of(State* s, object value, Text* text, Py_ssize_t limit) except -1:
    """The bytes sent for a string (at most ``limit``), borrowed from ``value`` or ``s.held``.

    ``value`` must stay alive until the datagram is written.
    """
    if plain_text(value, &text.ptr, &text.size) and not (
        text.size and memchr(text.ptr, 0, text.size) != NULL
    ):
        text.size = cut(text.ptr, text.size, limit)
        return 0
    return converted_text(s, value, &text.ptr, &text.size, limit)


cdef int tag_text(State* s, object value, Tag* tag) except -1:
    """A tag's bytes (as ``text_of``) and their hash, into ``tag``."""
    if plain_text(value, &tag.ptr, &tag.size):
        if tag.size <= MAX_TAG:
            if hash_text(tag.ptr, tag.size, &tag.hash):
                return 0
        elif memchr(tag.ptr, 0, tag.size) == NULL:  # a NUL past the cut counts too
            tag.size = cut(tag.ptr, tag.size, MAX_TAG)
            hash_text(tag.ptr, tag.size, &tag.hash)
            return 0
    converted_text(s, value, &tag.ptr, &tag.size, MAX_TAG)
    hash_text(tag.ptr, tag.size, &tag.hash)  # the pure module replaced every NUL
    return 0


cdef inline int32_t cached_id(State* s, PyObject* value) noexcept nogil:
    """The dictionary id of an object already seen in this call, else -1.

    Only str and bytes (immutable) are cached, and every cached object is
    kept alive by the caller's arguments or by ``s.held`` for the whole call:
    no other object can take its address.
    """
    cdef size_t slot = (<size_t>value >> 4) & (CACHE - 1)
    if s.cache_obj[slot] == value and s.cache_call[slot] == s.call:
        return s.cache_id[slot]
    return -1


cdef inline void remember(State* s, PyObject* value, int32_t word_id) noexcept:
    cdef size_t slot
    if PyUnicode_Check(<object>value) or PyBytes_Check(<object>value):
        slot = (<size_t>value >> 4) & (CACHE - 1)
        s.cache_obj[slot] = value
        s.cache_id[slot] = word_id
        s.cache_call[slot] = s.call


cdef inline void place(int32_t* slots, Py_ssize_t mask, uint64_t hash, int32_t i) noexcept nogil:
    """Puts entry ``i`` in the first free slot from its hash on (linear probing)."""
    cdef Py_ssize_t j = hash & mask
    while slots[j] >= 0:
        j = (j + 1) & mask
    slots[j] = i


cdef int rehash(int32_t** slots, Py_ssize_t* cap, Py_ssize_t* mask, const char* hashes,
                Py_ssize_t count, size_t stride) except -1:
    """Doubles a hash table and places its ``count`` entries again.

    ``hashes`` points at the first entry's hash, the next ones ``stride`` bytes apart
    (the words' or the merged timers').
    """
    cdef Py_ssize_t size = (mask[0] + 1) * 2, i
    empty_slots(slots, cap, size)
    mask[0] = size - 1
    for i in range(count):
        place(slots[0], mask[0], (<const uint64_t*>(hashes + i * stride))[0], <int32_t>i)
    return 0


cdef inline int32_t occupy(int32_t** slots, Py_ssize_t* cap, Py_ssize_t* mask, Py_ssize_t j,
                           int32_t entry, const char* hashes, size_t stride) except -1:
    """Puts the new last ``entry`` in the free slot ``j``; the table doubles when half full.

    Returns ``entry``. ``hashes`` and ``stride`` are as for ``rehash``.
    """
    slots[0][j] = entry
    if (entry + 1) * 2 > mask[0]:
        rehash(slots, cap, mask, hashes, entry + 1, stride)
    return entry


cdef inline bint same_bytes(const char* a, const char* b, Py_ssize_t n) noexcept nogil:
    # Tag strings are short: a loop beats a call to memcmp.
    cdef Py_ssize_t i
    if n > 16:
        return memcmp(a, b, n) == 0
    for i in range(n):
        if a[i] != b[i]:
            return False
    return True


cdef int32_t word_id(State* s, const char* ptr, Py_ssize_t size, uint64_t h) except -1:
    """The dictionary id of these bytes (of hash ``h``), adding them when new."""
    cdef Py_ssize_t j = h & s.wmask
    cdef int32_t found
    cdef Word* w
    while True:
        found = s.wslots[j]
        if found < 0:
            break
        w = &s.words[found]
        if w.hash == h and w.size == size and same_bytes(w.ptr, ptr, size):
            return found
        j = (j + 1) & s.wmask
    if s.nwords == s.cap_words:
        s.words = <Word*>grow(s.words, &s.cap_words, s.nwords + 1, sizeof(Word))
    found = <int32_t>s.nwords
    w = &s.words[found]
    w.ptr = ptr
    w.size = size
    w.hash = h
    s.nwords += 1
    return occupy(&s.wslots, &s.cap_wslots, &s.wmask, j, found,
                  <const char*>&s.words[0].hash, sizeof(Word))


cdef int32_t object_id(State* s, object value) except -1:
    """The dictionary id of a request tag's name or value."""
    cdef int32_t found = cached_id(s, <PyObject*>value)
    cdef Tag tag
    if found >= 0:
        return found
    tag_text(s, value, &tag)
    found = word_id(s, tag.ptr, tag.size, tag.hash)
    remember(s, <PyObject*>value, found)
    return found

# ---------------------------------------------------------------- timers

cdef inline int compare_tags(const Tag* a, const Tag* b) noexcept nogil:
    if a.id >= 0 and a.id == b.id:
        return 0
    cdef Py_ssize_t n = a.size if a.size < b.size else b.size
    cdef int c
    if n and a.ptr[0] != b.ptr[0]:  # most tags differ at once: no call
        return <int>(<unsigned char>a.ptr[0]) - <int>(<unsigned char>b.ptr[0])
    c = memcmp(a.ptr, b.ptr, n)
    if c:
        return c
    return (a.size > b.size) - (a.size < b.size)


cdef inline int compare_refs(const void* x, const void* y) noexcept nogil:
    cdef const TagRef* a = <const TagRef*>x
    cdef const TagRef* b = <const TagRef*>y
    cdef int c = compare_tags(&a.name, &b.name)
    if c == 0:
        c = compare_tags(&a.value, &b.value)
    return c


cdef void sort_refs(TagRef* refs, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef TagRef tmp
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


cdef inline int read_tag(State* s, Tag* tag, PyObject* value) except -1:
    """Reads one tag name or value into ``tag``; ``value`` must stay alive."""
    cdef int32_t found = cached_id(s, value)
    tag.obj = value
    tag.id = found
    if found >= 0:
        tag.ptr = s.words[found].ptr
        tag.size = s.words[found].size
        return 0
    return tag_text(s, <object>value, tag)


cdef inline int reserve_refs(State* s, Py_ssize_t n) except -1:
    if n > s.cap_refs:
        s.refs = <TagRef*>grow(s.refs, &s.cap_refs, n, sizeof(TagRef))
    return 0


cdef Py_ssize_t collect_tags(State* s, object tags) except -1:
    """Reads one timer's tags into ``s.refs``; returns how many.

    ``tags`` must stay alive until the datagram is written.
    """
    cdef Py_ssize_t n, i, first
    cdef PyObject* pairs = <PyObject*>tags
    cdef PyObject* pair
    cdef TagRef* ref
    if PyDict_CheckExact(tags):
        first = hold_dict(s, tags)
        n = (s.nheld - first) // 2
        reserve_refs(s, n)
        for i in range(n):  # s.held may move as it grows: read by index
            read_tag(s, &s.refs[i].name, s.held[first + 2 * i])
            read_tag(s, &s.refs[i].value, s.held[first + 2 * i + 1])
        return n
    if not Tuple_CheckExact(pairs):
        converted = _py_pairs(tags)  # a tuple
        hold(s, converted)
        pairs = <PyObject*>converted
    n = Tuple_GET_SIZE(pairs)
    reserve_refs(s, n)
    for i in range(n):
        pair = Tuple_GET_ITEM(pairs, i)
        ref = &s.refs[i]  # s.refs does not move: room is made
        if Tuple_CheckExact(pair) and Tuple_GET_SIZE(pair) == 2:
            read_tag(s, &ref.name, Tuple_GET_ITEM(pair, 0))
            read_tag(s, &ref.value, Tuple_GET_ITEM(pair, 1))
        else:
            name, value = <object>pair
            hold(s, name)
            hold(s, value)
            read_tag(s, &ref.name, <PyObject*>name)
            read_tag(s, &ref.value, <PyObject*>value)
    return n


cdef Py_ssize_t collect_split_tags(State* s, object names, object values) except -1:
    """Reads the tags of a compiled Timer, its names and values, into ``s.refs``; returns how many.

    ``names`` and ``values`` must stay alive until the datagram is written.
    """
    cdef Py_ssize_t n, i
    cdef PyObject* name_tuple = <PyObject*>names
    cdef PyObject* value_tuple = <PyObject*>values
    if not (Tuple_CheckExact(name_tuple) and Tuple_CheckExact(value_tuple)):
        # Copies: a list could change while str() runs.
        names_copy = tuple(names)
        values_copy = tuple(values)
        hold(s, names_copy)
        hold(s, values_copy)
        name_tuple = <PyObject*>names_copy
        value_tuple = <PyObject*>values_copy
    n = Tuple_GET_SIZE(name_tuple)
    if Tuple_GET_SIZE(value_tuple) != n:
        raise ValueError("a timer's tag names and values differ in number")
    reserve_refs(s, n)
    for i in range(n):
        read_tag(s, &s.refs[i].name, Tuple_GET_ITEM(name_tuple, i))
        read_tag(s, &s.refs[i].value, Tuple_GET_ITEM(value_tuple, i))
    return n


cdef inline int32_t tag_id(State* s, Tag* tag) except -1:
    if tag.id < 0:
        tag.id = word_id(s, tag.ptr, tag.size, tag.hash)
        remember(s, tag.obj, tag.id)
    return tag.id


cdef inline bint same_pairs(const uint32_t* a, const uint32_t* b, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if a[i] != b[i]:
            return False
    return True


cdef Py_ssize_t merge_timer(State* s, Py_ssize_t n, PyObject* hit_count) except -2:
    """Adds a timer of the ``n`` tags in ``s.refs`` and ``hit_count`` hits.

    Merged with an earlier timer of the same tag set. Returns that timer's
    index in ``s.timers`` (the caller adds its measures), or -1 when it has no
    tags: it is dropped.
    """
    if n == 0:
        return -1
    cdef Py_ssize_t i
    cdef TagRef* ref
    cdef TagRef swap
    if n == 2:  # the common case: one comparison, rarely a swap
        if compare_refs(&s.refs[0], &s.refs[1]) > 0:
            swap = s.refs[0]
            s.refs[0] = s.refs[1]
            s.refs[1] = swap
    elif n > 2:
        sort_refs(s.refs, n)
    if s.npairs + 2 * n > s.cap_pairs:
        s.pairs = <uint32_t*>grow(s.pairs, &s.cap_pairs, s.npairs + 2 * n, sizeof(uint32_t))
    cdef uint32_t* pairs = s.pairs + s.npairs
    cdef uint64_t h = FNV_BASIS
    for i in range(n):  # in sorted order: new words enter the dictionary as in the pure twin
        ref = &s.refs[i]
        pairs[2 * i] = tag_id(s, &ref.name)
        pairs[2 * i + 1] = tag_id(s, &ref.value)
        h = (h ^ pairs[2 * i]) * FNV_PRIME
        h = (h ^ pairs[2 * i + 1]) * FNV_PRIME
    h ^= <uint64_t>n

    cdef uint64_t hits = 1
    if hit_count != <PyObject*>ONE:  # the common case, without a call
        hits = to_uint32(<object>hit_count, UINT32_MAX)
        if hits == 0:
            hits = 1

    cdef Py_ssize_t j = h & s.tmask
    cdef int32_t found = s.tslots[j]
    cdef MergedTimer* t
    while found >= 0:  # linear probing, as for words
        t = &s.timers[found]
        if t.hash == h and t.count == n and same_pairs(s.pairs + t.first, pairs, 2 * n):
            t.hits = t.hits + hits if t.hits + hits < UINT32_MAX else UINT32_MAX
            return found
        j = (j + 1) & s.tmask
        found = s.tslots[j]

    if s.ntimers == s.cap_timers:
        s.timers = <MergedTimer*>grow(s.timers, &s.cap_timers, s.ntimers + 1,
                                      sizeof(MergedTimer))
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
    return occupy(&s.tslots, &s.cap_tslots, &s.tmask, j, found,
                  <const char*>&s.timers[0].hash, sizeof(MergedTimer))


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


cdef int add_timer(State* s, PyObject* timer) except -1:
    """Adds one timer; ``timer`` must stay alive until the datagram is written.

    Its parts are read in the pure twin's order, tags, hit count, value, CPU
    times: Python code that converting them runs sees what it sees there.
    """
    cdef Py_ssize_t i
    cdef MergedTimer* t
    cdef double value, utime, stime
    if Tuple_CheckExact(timer) and Tuple_GET_SIZE(timer) == 5:
        # Borrowed: the tuple is held, and its items cannot change.
        i = merge_timer(s, collect_tags(s, <object>Tuple_GET_ITEM(timer, 0)),
                        Tuple_GET_ITEM(timer, 2))
        if i < 0:
            return 0
        value = to_seconds(Tuple_GET_ITEM(timer, 1))
        utime = to_seconds(Tuple_GET_ITEM(timer, 3))
        stime = to_seconds(Tuple_GET_ITEM(timer, 4))
        t = &s.timers[i]  # after the conversions: s.timers does not move, but read late
        t.value += value
        t.utime += utime
        t.stime += stime
        return 0
    return add_other_timer(s, <object>timer)


cdef int add_other_timer(State* s, object timer) except -1:
    """Adds a compiled Timer, or a timer in a form the pure twin takes (see add_timer)."""
    cdef TimerFields fields
    cdef Py_ssize_t i
    cdef MergedTimer* t
    cdef double value, utime, stime
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
        i = merge_timer(s, collect_split_tags(s, names, tags), <PyObject*>hit_count)
        if i >= 0:
            t = &s.timers[i]
            t.value += sanitize(fields.value)
            t.utime += sanitize(fields.utime)
            t.stime += sanitize(fields.stime)
        return 0
    timer = _py_timer_tuple(timer)  # 5 items
    hold(s, timer)
    tags, value_obj, hit_count, utime_obj, stime_obj = timer
    i = merge_timer(s, collect_tags(s, tags), <PyObject*>hit_count)
    if i < 0:
        return 0
    value = to_seconds(<PyObject*>value_obj)
    utime = to_seconds(<PyObject*>utime_obj)
    stime = to_seconds(<PyObject*>stime_obj)
    t = &s.timers[i]
    t.value += value
    t.utime += utime
    t.stime += stime
    return 0


cdef int add_request_tag(State* s, object name, object value) except -1:
    if s.nrtags + 2 > s.cap_rtags:
        s.rtags = <uint32_t*>grow(s.rtags, &s.cap_rtags, s.nrtags + 2, sizeof(uint32_t))
    s.rtags[s.nrtags] = object_id(s, name)
    s.rtags[s.nrtags + 1] = object_id(s, value)
    s.nrtags += 2
    return 0


cdef int collect_request_tags(State* s, object tags) except -1:
    """Reads the request tags; ``tags`` is held by the caller for the whole call."""
    cdef Py_ssize_t i, first, last
    cdef PyObject* pairs = <PyObject*>tags
    cdef PyObject* pair
    if tags is None:
        return 0
    if PyDict_CheckExact(tags):
        first = hold_dict(s, tags)
        last = s.nheld
        for i in range(first, last, 2):  # by index: s.held may move as it grows
            add_request_tag(s, <object>s.held[i], <object>s.held[i + 1])
        return 0
    if not Tuple_CheckExact(pairs):
        converted = _py_pairs(tags)  # a tuple
        hold(s, converted)
        pairs = <PyObject*>converted
    for i in range(Tuple_GET_SIZE(pairs)):
        pair = Tuple_GET_ITEM(pairs, i)
        if Tuple_CheckExact(pair) and Tuple_GET_SIZE(pair) == 2:
            add_request_tag(s, <object>Tuple_GET_ITEM(pair, 0), <object>Tuple_GET_ITEM(pair, 1))
        else:
            name, value = <object>pair
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


cdef inline unsigned char* put_varint_field(unsigned char* o, unsigned char key,
                                            uint64_t n) noexcept nogil:
    o[0] = key  # fields 1-15: a one-byte key
    return put_varint(o + 1, n)


cdef inline unsigned char* put_float_field(unsigned char* o, unsigned char key,
                                           double x) noexcept nogil:
    o[0] = key
    return put_float(o + 1, x)


cdef inline unsigned char* put_key(unsigned char* o, unsigned int key) noexcept nogil:
    # keys of fields 16-23 take two bytes
    if key >= 0x80:
        o[0] = <unsigned char>((key & 0x7F) | 0x80)
        o[1] = <unsigned char>(key >> 7)
        return o + 2
    o[0] = <unsigned char>key
    return o + 1


cdef inline unsigned char* reserve(State* s, unsigned char* o, Py_ssize_t extra) except NULL:
    """The cursor ``o``, after making room for ``extra`` more bytes."""
    s.olen = o - s.out
    if s.olen + extra > s.cap_out:
        s.out = <unsigned char*>grow(s.out, &s.cap_out, s.olen + extra, 1)
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


cdef unsigned char* put_packed_pairs(unsigned char* o, unsigned int names_key,
                                     unsigned int values_key, const uint32_t* pairs,
                                     Py_ssize_t count) noexcept nogil:
    """Tag pairs' dictionary ids (name, value by turns) as two packed fields: names, values."""
    cdef Py_ssize_t k, j, size
    for k in range(2):  # names in the even slots, values in the odd ones
        size = 0
        for j in range(k, count, 2):
            size += varint_size(pairs[j])
        o = put_packed_key(o, names_key if k == 0 else values_key, size)
        for j in range(k, count, 2):
            o = put_varint(o, pairs[j])
    return o


cdef unsigned char* put_packed_timers(State* s, unsigned char* o) noexcept nogil:
    """Fields 10-14 in packed form (room reserved by the caller)."""
    cdef Py_ssize_t i, size
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
    return put_packed_pairs(o, 0x6A, 0x72, s.pairs, s.npairs)  # 13, 14


cdef bint timer_cpu(State* s) noexcept nogil:
    """Whether a timer has CPU times to send: without, fields 22 and 23 are left out."""
    cdef Py_ssize_t i
    for i in range(s.ntimers):
        if s.timers[i].utime != 0.0 or s.timers[i].stime != 0.0:  # as the pure twin
            return True
    return False


cdef unsigned char* put_packed_tail(State* s, unsigned char* o) noexcept nogil:
    """Fields 20-23 in packed form (room reserved by the caller)."""
    cdef Py_ssize_t i
    if s.nrtags:
        o = put_packed_pairs(o, 0xA2, 0xAA, s.rtags, s.nrtags)  # 20, 21
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
    cdef Py_ssize_t i, k
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
    cdef double wall = to_seconds(<PyObject*>request_time)
    cdef double utime = to_seconds(<PyObject*>ru_utime)
    cdef double stime = to_seconds(<PyObject*>ru_stime)
    cdef uint64_t code = to_uint32(status, STATUS_MAX)
    cdef uint64_t footprint = to_uint32(memory_footprint, UINT32_MAX)
    # Every fixed-size part at once: 6 bytes a varint field, 5 a float field.
    # (the extra 32 bytes hold the keys and lengths of packed fields)
    o = reserve(s, o, 96 + s.ntimers * 28 + s.npairs * 6 + s.nrtags * 7)
    o = put_varint_field(o, 0x20, count)
    o = put_varint_field(o, 0x28, size)
    o = put_varint_field(o, 0x30, peak)
    o = put_float_field(o, 0x3D, wall)
    o = put_float_field(o, 0x45, utime)
    o = put_float_field(o, 0x4D, stime)
    if packed:
        o = put_packed_timers(s, o)
    for i in range(0 if packed else s.ntimers):
        o = put_varint_field(o, 0x50, s.timers[i].hits)
    for i in range(0 if packed else s.ntimers):
        o = put_float_field(o, 0x5D, sanitize(s.timers[i].value))
    for i in range(0 if packed else s.ntimers):
        o = put_varint_field(o, 0x60, <uint64_t>s.timers[i].count)
    # The merged timers' tags lie in s.pairs in the timers' order, name and
    # value by turns: 13 takes every name, 14 every value.
    for k in range(0, 0 if packed else s.npairs, 2):
        o = put_varint_field(o, 0x68, s.pairs[k])
    for k in range(1, 0 if packed else s.npairs, 2):
        o = put_varint_field(o, 0x70, s.pairs[k])
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
    cdef State* s = take_state()
    cdef Py_ssize_t i, first, last
    try:
        collect_request_tags(s, tags)
        if PyList_CheckExact(timers):
            # The timers the list holds now, held in turn: the list may
            # change while Python code runs.
            first = hold_list(s, timers)
            last = s.nheld
            expect_timers(s, last - first)
            for i in range(first, last):  # by index: s.held may move as it grows
                add_timer(s, s.held[i])
        else:
            if not Tuple_CheckExact(<PyObject*>timers):
                timers = tuple(timers)  # a copy, which this local holds
            expect_timers(s, Tuple_GET_SIZE(<PyObject*>timers))
            for i in range(Tuple_GET_SIZE(<PyObject*>timers)):
                add_timer(s, Tuple_GET_ITEM(<PyObject*>timers, i))
        write_request(s, hostname, server_name, script_name, request_count,
                      document_size, memory_peak, request_time, ru_utime, ru_stime,
                      status, memory_footprint, schema, packed)
        return PyBytes_FromStringAndSize(<char*>s.out, s.olen)
    finally:
        release_state(s)


encode.__doc__ = _py_encode.__doc__  # the twins share a signature, and one text

# The C twins of _recursion.py's functions. Compiled, C functions calling C
# functions recurse with no frame that the recursion limit counts, and a
# thread's stack can run out before RecursionError. Each level of such a
# recursion counts as several levels of the limit, so that RecursionError
# comes first on a 256 KiB thread stack, as for CPython's own recursion
# through __str__. No module is built from this file: it is only read when
# compiling. The C hooks and methods (_call_hook.pyx, _self_types.pyx) count
# with pynba_enter_recursion() too.
cdef extern from *:
    """
    /* CPython 3.10 and 3.11 count Py_EnterRecursiveCall() against the
       recursion limit (1000 by default). 3.12 and 3.13 count it against a
       limit of C recursion of their own, larger (C_RECURSION_LIMIT, 1500;
       Py_C_RECURSION_LIMIT, 10000 on Linux): a weight is scaled to it, so
       that a recursion through pynba ends after as many levels as on 3.11.
       Counted as on 3.11, a tag that set itself while flattened ran out of
       a 256 KiB stack on 3.12, where CPython's own __str__ recursion does
       not. From 3.14 the limit is the stack itself. */
    #if PY_VERSION_HEX >= 0x030C0000 && PY_VERSION_HEX < 0x030E0000
    #  if defined(Py_C_RECURSION_LIMIT)
    #    define PYNBA_RECURSION_SCALE Py_C_RECURSION_LIMIT
    #  elif defined(C_RECURSION_LIMIT)
    #    define PYNBA_RECURSION_SCALE C_RECURSION_LIMIT
    #  endif
    #endif
    #ifndef PYNBA_RECURSION_SCALE
    #  define PYNBA_RECURSION_SCALE 1000
    #endif
    /* Rounded up: a smaller limit (a debug build's) still counts each weight. */
    #define PYNBA_LEVELS(weight) (((weight) * PYNBA_RECURSION_SCALE + 999) / 1000)

    /* weight levels of recursion more (scaled, see above): 0, or -1 with
       RecursionError set and none counted. */
    static inline int pynba_enter_recursion(int weight, const char *where) {
        int levels = PYNBA_LEVELS(weight), counted = 0;
        while (counted < levels) {
            if (Py_EnterRecursiveCall(where)) {
                while (counted--) Py_LeaveRecursiveCall();
                return -1;
            }
            counted++;
        }
        return 0;
    }

    static inline void pynba_leave_recursion(int weight) {
        int levels = PYNBA_LEVELS(weight);
        while (levels--) Py_LeaveRecursiveCall();
    }
    """
    int pynba_enter_recursion(int weight, const char *where) except -1
    void pynba_leave_recursion(int weight)


cdef inline int _enter(int weight, const char *where) except -1:
    return pynba_enter_recursion(weight, where)


cdef inline void _leave(int weight):
    pynba_leave_recursion(weight)


# A tag value that sets a tag holding itself while it is flattened (a
# callable, __str__, a container's own iteration) recurses through set_tag,
# flatten_tags and _flatten. Measured: a level takes well over 1 KiB of C
# stack; counted as 4, a 256 KiB stack still ran out.
DEF _FLATTEN_WEIGHT = 8


cdef inline int enter() except -1:
    return _enter(_FLATTEN_WEIGHT, " while flattening a tag")


cdef inline void leave():
    _leave(_FLATTEN_WEIGHT)


# A proxy handing an attribute or an iteration on to the object it wraps. A
# foreign proxy (wrapt's ObjectProxy) made to wrap pynba's proxy of itself
# recurses from one to the other. Measured with wrapt 2.1: a level of
# attribute look-up takes about 350 bytes of C stack; counted as 1, a
# 256 KiB stack ran out (wrapt 2.5 takes more: see tests/scripts.py).
DEF _FORWARD_WEIGHT = 2


cdef inline int enter_forward() except -1:
    return _enter(_FORWARD_WEIGHT, " while handing on to a wrapped object")


cdef inline void leave_forward():
    _leave(_FORWARD_WEIGHT)

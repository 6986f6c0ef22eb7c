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
    #if PY_VERSION_HEX >= 0x030C0000 && PY_VERSION_HEX < 0x030E0000
    /* CPython 3.12 and 3.13 count Py_EnterRecursiveCall() against a limit
       of C recursion of their own, not the recursion limit (1000 by
       default, as 3.10 and 3.11 do): a weight is scaled to it, so that a
       recursion through pynba ends after as many levels as on 3.11.
       Counted as on 3.11, a tag that set itself while flattened ran out of
       a 256 KiB stack on 3.12, where CPython's own __str__ recursion does
       not. The limit is the running interpreter's, read once: it changed
       within 3.12 (1,500 in 3.12.1, more from the backport of 3.13's), and
       depends on the build (3.13: 10,000 on Linux, 4,000 under
       AddressSanitizer, 500 in a debug build), so the one in the headers
       a module was built with may not be it. */
    #  if defined(Py_C_RECURSION_LIMIT)
    #    define PYNBA_HEADERS_C_RECURSION_LIMIT Py_C_RECURSION_LIMIT
    #  elif defined(C_RECURSION_LIMIT)
    #    define PYNBA_HEADERS_C_RECURSION_LIMIT C_RECURSION_LIMIT
    #  else
    #    define PYNBA_HEADERS_C_RECURSION_LIMIT 1500
    #  endif
    static int pynba_c_recursion_limit = 0;

    /* A thread state starts with all of the limit to count down from. */
    static int pynba_read_c_recursion_limit(void) {
        PyThreadState *fresh = PyThreadState_New(PyInterpreterState_Get());
        int limit = 0;
        if (fresh != NULL) {
            limit = fresh->c_recursion_remaining;
            PyThreadState_Clear(fresh);
            PyThreadState_Delete(fresh);
        }
        return limit > 0 ? limit : PYNBA_HEADERS_C_RECURSION_LIMIT;
    }

    /* Levels that weight stands for, rounded up (a debug build's small
       limit still counts each weight). */
    static inline int pynba_recursion_levels(int weight) {
        if (pynba_c_recursion_limit == 0) pynba_c_recursion_limit = pynba_read_c_recursion_limit();
        return (weight * pynba_c_recursion_limit + 999) / 1000;
    }

    /* The levels are taken from the thread's count of C recursion at once,
       as Py_LeaveRecursiveCall() gives one back, while the count holds
       more. Near its end, one Py_EnterRecursiveCall() at a time: it raises
       RecursionError at the level it should, with the count where CPython
       expects it while it makes the error (below 50 levels past the end,
       making it aborts the process). 32-bit Windows builds check the stack
       every 64 levels of the count (USE_STACKCHECK): one at a time there. */
    static inline int pynba_enter_recursion(int weight, const char *where) {
        int levels = pynba_recursion_levels(weight), counted;
        PyThreadState *tstate = PyThreadState_Get();
    #ifndef USE_STACKCHECK
        if (tstate->c_recursion_remaining > levels) {
            tstate->c_recursion_remaining -= levels;
            return 0;
        }
    #endif
        for (counted = 0; counted < levels; counted++) {
            if (Py_EnterRecursiveCall(where)) {
                tstate->c_recursion_remaining += counted;
                return -1;
            }
        }
        return 0;
    }

    static inline void pynba_leave_recursion(int weight) {
        PyThreadState_Get()->c_recursion_remaining += pynba_recursion_levels(weight);
    }
    #else
    /* 3.10 and 3.11: a weight counts that many levels of the recursion
       limit. From 3.14, Py_EnterRecursiveCall() measures the stack itself:
       one call does. */
    #  if PY_VERSION_HEX >= 0x030E0000
    #    define PYNBA_RECURSION_LEVELS(weight) 1
    #  else
    #    define PYNBA_RECURSION_LEVELS(weight) (weight)
    #  endif
    /* 0, or -1 with RecursionError set and none counted. */
    static inline int pynba_enter_recursion(int weight, const char *where) {
        int levels = PYNBA_RECURSION_LEVELS(weight), counted = 0;
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
        int levels = PYNBA_RECURSION_LEVELS(weight);
        while (levels--) Py_LeaveRecursiveCall();
    }
    #endif
    """
    int pynba_enter_recursion(int weight, const char *where) except -1
    void pynba_leave_recursion(int weight)


# A tag value that sets a tag holding itself while it is flattened (a
# callable, __str__, a container's own iteration) recurses through set_tag,
# flatten_tags and _flatten. Measured: a level takes well over 1 KiB of C
# stack; counted as 4, a 256 KiB stack still ran out.
DEF _FLATTEN_WEIGHT = 8


cdef inline int enter() except -1:
    return pynba_enter_recursion(_FLATTEN_WEIGHT, " while flattening a tag")


cdef inline void leave():
    pynba_leave_recursion(_FLATTEN_WEIGHT)


# A proxy handing an attribute or an iteration on to the object it wraps. A
# foreign proxy (wrapt's ObjectProxy) made to wrap pynba's proxy of itself
# recurses from one to the other. Measured with wrapt 2.1: a level of
# attribute look-up takes about 350 bytes of C stack; counted as 1, a
# 256 KiB stack ran out (wrapt 2.5 takes more: see tests/scripts.py).
DEF _FORWARD_WEIGHT = 2


cdef inline int enter_forward() except -1:
    return pynba_enter_recursion(_FORWARD_WEIGHT, " while handing on to a wrapped object")


cdef inline void leave_forward():
    pynba_leave_recursion(_FORWARD_WEIGHT)

# cython: language_level=3
"""``_hooks.timed_calls`` and ``around_calls`` as C objects: hooks that pass calls on as they came.

A hook written in Python takes the arguments of the call it wraps and
passes them on again: for urllib3's ``urlopen``, called with keywords by a
``PoolManager``, binding its 15 parameters twice cost about 1.2 us a call,
inside a request or out. This hook is a method descriptor with a vectorcall
slot: a call reaches it with its arguments as the caller laid them out
(``pool.urlopen(...)`` makes no bound method), and it hands them on
untouched to the function it wraps. Outside a monitored request that is all
it does, after one read of the context variable. Inside one it holds the
arguments (references of its own, laid out as they came), then
does what ``_hooks.timed_calls``' (or ``around_calls``') Python function
does, in the same order, with the same callbacks: the two give the same
timers and raise the same errors.
"""

from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
cimport cpython.time as time

cimport pynba._recursion  # pynba_enter_recursion(), for the C code below


cdef extern from *:
    """
    typedef struct {
        PyObject_HEAD
        vectorcallfunc vectorcall;
        PyObject *wrapped;   /* the function the hook stands in for */
        PyObject *var;       /* the context variable of the current request */
        PyObject *enter;     /* enter(collector): whether to time this call; around: begin */
        PyObject *done;      /* done(collector, seconds, *picked, result); around: end */
        PyObject *failed;    /* failed(collector, seconds, *picked); around: None */
        PyObject *calling;   /* a set of the threads in a call, or None (see call_hook) */
        PyObject *picks;     /* a tuple of (position, keyword) pairs, read into: */
        Py_ssize_t npicks;
        Py_ssize_t positions[3];
        PyObject *keywords[3];  /* borrowed from picks */
        PyObject *dict;      /* __dict__: functools.wraps sets __wrapped__, __name__... */
        PyObject *weakrefs;
    } pynba_CallHook;

    /* The hook's call, written in Cython below; set when the module starts. */
    static PyObject *(*pynba_hook_call)(
        pynba_CallHook *, PyObject *const *, size_t, PyObject *) = NULL;

    static void pynba_set_hook_call(void *call) {
        pynba_hook_call =
            (PyObject *(*)(pynba_CallHook *, PyObject *const *, size_t, PyObject *))call;
    }

    typedef PyObject *(*pynba_hook_callfunc)(
        pynba_CallHook *, PyObject *const *, size_t, PyObject *);

    /* Counted as two levels of recursion (see pynba/_recursion.pxd): hooks
       calling one another, or a foreign proxy that wraps the hook wrapping
       it, with no Python frame between them, end in RecursionError at the
       default limit, not in a C stack overflow, on a 512 KiB thread stack
       too, on CPython 3.10 and 3.11 (counted once, a call with keywords
       through wrapt's proxy ran out of 256 KiB). Inside a request a hook
       takes two C frames, its arguments held in the first: a chain of
       hooks then needs about 375 KiB to reach the limit on 3.11 (about
       410 KiB where the compiler does not inline _holding_arguments, as
       at -O2). From 3.12, C recursion counts against a limit of its own,
       and needs more stack (see docs/instrumentation.md). */
    static PyObject *pynba_counted_call(
        pynba_hook_callfunc call, PyObject *self, PyObject *const *args, size_t nargsf,
        PyObject *kwnames
    ) {
        PyObject *result;
        if (pynba_enter_recursion(2, " while calling a pynba hook")) return NULL;
        /* A reference of its own through the call: a caller may not hold
           one (functools.partial), and Python code the hook runs could drop
           the last while its fields are still to be read. */
        Py_INCREF(self);
        result = call((pynba_CallHook *)self, args, nargsf, kwnames);
        Py_DECREF(self);
        pynba_leave_recursion(2);
        return result;
    }

    static PyObject *pynba_hook_vectorcall(
        PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames
    ) {
        return pynba_counted_call(pynba_hook_call, self, args, nargsf, kwnames);
    }

    /* An around hook (around_hook below): the same object, another call. */
    static pynba_hook_callfunc pynba_around_call = NULL;

    static void pynba_set_around_call(void *call) {
        pynba_around_call = (pynba_hook_callfunc)call;
    }

    static PyObject *pynba_around_vectorcall(
        PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames
    ) {
        return pynba_counted_call(pynba_around_call, self, args, nargsf, kwnames);
    }

    /* How many arguments a call has: positional, then keyword values. */
    static Py_ssize_t pynba_count(size_t nargsf, PyObject *kwnames) {
        Py_ssize_t count = PyVectorcall_NARGS(nargsf);
        if (kwnames != NULL) count += PyTuple_GET_SIZE(kwnames);
        return count;
    }

    /* A call's arguments held in an array of the hook's own (references
       it owns; pynba_release() gives them back). The caller's array is
       borrowed: Python code that the hook runs before it hands the call on
       (its callbacks, a keyword's __eq__) could free what it points to (a
       functools.partial's arguments, when __setstate__ replaces them). */
    static void pynba_hold(PyObject **held, PyObject *const *args, Py_ssize_t count) {
        Py_ssize_t i;
        for (i = 0; i < count; i++) {
            Py_INCREF(args[i]);
            held[i] = args[i];
        }
    }

    static void pynba_release(PyObject **held, Py_ssize_t count) {
        Py_ssize_t i;
        for (i = 0; i < count; i++) Py_DECREF(held[i]);
    }

    /* The arguments of a call with more than fit on the C stack, held in
       a tuple of references of the hook's own. */
    static PyObject *pynba_held_tuple(PyObject *const *args, Py_ssize_t count) {
        PyObject *held = PyTuple_New(count);
        if (held != NULL) pynba_hold(((PyTupleObject *)held)->ob_item, args, count);
        return held;
    }

    /* The items of a tuple pynba_held_tuple() made, laid out as a vectorcall takes them. */
    static PyObject **pynba_items(PyObject *held) {
        return ((PyTupleObject *)held)->ob_item;
    }

    static void pynba_make_around(PyObject *hook) {
        ((pynba_CallHook *)hook)->vectorcall = pynba_around_vectorcall;
    }

    static int pynba_hook_traverse(PyObject *self, visitproc visit, void *arg) {
        pynba_CallHook *hook = (pynba_CallHook *)self;
        Py_VISIT(hook->wrapped);
        Py_VISIT(hook->var);
        Py_VISIT(hook->enter);
        Py_VISIT(hook->done);
        Py_VISIT(hook->failed);
        Py_VISIT(hook->calling);
        Py_VISIT(hook->picks);
        Py_VISIT(hook->dict);
        return 0;
    }

    static int pynba_hook_clear(PyObject *self) {
        pynba_CallHook *hook = (pynba_CallHook *)self;
        Py_CLEAR(hook->wrapped);
        Py_CLEAR(hook->var);
        Py_CLEAR(hook->enter);
        Py_CLEAR(hook->done);
        Py_CLEAR(hook->failed);
        Py_CLEAR(hook->calling);
        Py_CLEAR(hook->picks);
        Py_CLEAR(hook->dict);
        return 0;
    }

    /* In the trashcan: freeing a long chain of hooks (each wrapping the
       next) does not recurse once a hook. */
    static void pynba_hook_dealloc(PyObject *self) {
        PyObject_GC_UnTrack(self);
        Py_TRASHCAN_BEGIN(self, pynba_hook_dealloc)
        if (((pynba_CallHook *)self)->weakrefs != NULL) PyObject_ClearWeakRefs(self);
        pynba_hook_clear(self);
        PyObject_GC_Del(self);
        Py_TRASHCAN_END
    }

    /* As a function's: bound to an instance, a method; from its class, itself. */
    static PyObject *pynba_hook_get(PyObject *self, PyObject *instance, PyObject *owner) {
        if (instance == NULL || instance == Py_None) {
            Py_INCREF(self);
            return self;
        }
        return PyMethod_New(self, instance);
    }

    static PyObject *pynba_hook_repr(PyObject *self) {
        PyObject *wrapped = ((pynba_CallHook *)self)->wrapped;
        if (wrapped == NULL) return PyUnicode_FromString("<pynba hook, cleared>");
        return PyUnicode_FromFormat("<pynba hook of %R>", wrapped);
    }

    /* It stands for a function on another library's class, and says so, as
       wrapt's proxies do: code that asks isinstance(x, FunctionType)
       (unittest.mock's autospec, inspect.isfunction and getfullargspec)
       treats it as the function it wraps, and binds self as for one. */
    static PyObject *pynba_hook_class(PyObject *self, void *closure) {
        Py_INCREF((PyObject *)&PyFunction_Type);
        return (PyObject *)&PyFunction_Type;
    }

    static PyGetSetDef pynba_hook_getset[] = {
        {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
        {"__class__", pynba_hook_class, NULL, NULL, NULL},
        {NULL, NULL, NULL, NULL, NULL}
    };

    /* A function's attributes that functools.wraps does not copy: the
       wrapped function's, unless set on the hook. */
    static const char *const pynba_hook_told[] = {
        "__code__", "__defaults__", "__kwdefaults__", "__globals__", "__closure__",
        "__builtins__", "__type_params__", NULL};

    static PyObject *pynba_hook_getattr(PyObject *self, PyObject *name) {
        const char *const *told;
        PyObject *wrapped = ((pynba_CallHook *)self)->wrapped;
        PyObject *found = PyObject_GenericGetAttr(self, name);
        if (found != NULL || wrapped == NULL || !PyUnicode_Check(name)
                || !PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return found;
        }
        for (told = pynba_hook_told; *told != NULL; told++) {
            if (PyUnicode_CompareWithASCIIString(name, *told) == 0) {
                PyErr_Clear();
                return PyObject_GetAttr(wrapped, name);
            }
        }
        return NULL;
    }

    /* Pickled and copied as a function is: by its module and qualified name. */
    static PyObject *pynba_hook_reduce(PyObject *self, PyObject *unused) {
        return PyObject_GetAttrString(self, "__qualname__");
    }

    static PyMethodDef pynba_hook_methods[] = {
        {"__reduce__", pynba_hook_reduce, METH_NOARGS, NULL},
        {NULL, NULL, 0, NULL}
    };

    static PyTypeObject pynba_CallHookType = {
        PyVarObject_HEAD_INIT(NULL, 0)
        .tp_name = "pynba.call_hook",
        .tp_doc = "A pynba hook: the function it wraps, timed inside a monitored request.",
        .tp_basicsize = sizeof(pynba_CallHook),
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
                    | Py_TPFLAGS_METHOD_DESCRIPTOR,
        .tp_vectorcall_offset = offsetof(pynba_CallHook, vectorcall),
        .tp_dictoffset = offsetof(pynba_CallHook, dict),
        .tp_weaklistoffset = offsetof(pynba_CallHook, weakrefs),
        .tp_dealloc = pynba_hook_dealloc,
        .tp_traverse = pynba_hook_traverse,
        .tp_clear = pynba_hook_clear,
        .tp_call = PyVectorcall_Call,
        .tp_descr_get = pynba_hook_get,
        .tp_repr = pynba_hook_repr,
        .tp_getattro = pynba_hook_getattr,
        .tp_getset = pynba_hook_getset,
        .tp_methods = pynba_hook_methods,
    };

    /* A new hook (the references are its own), or NULL with an exception set. */
    static PyObject *pynba_new_hook(
        PyObject *wrapped, PyObject *var, PyObject *enter, PyObject *done, PyObject *failed,
        PyObject *calling, PyObject *picks
    ) {
        pynba_CallHook *hook;
        if (PyType_Ready(&pynba_CallHookType) < 0) return NULL;
        hook = PyObject_GC_New(pynba_CallHook, &pynba_CallHookType);
        if (hook == NULL) return NULL;
        hook->vectorcall = pynba_hook_vectorcall;
        Py_INCREF(wrapped);
        hook->wrapped = wrapped;
        Py_INCREF(var);
        hook->var = var;
        Py_INCREF(enter);
        hook->enter = enter;
        Py_INCREF(done);
        hook->done = done;
        Py_INCREF(failed);
        hook->failed = failed;
        Py_INCREF(calling);
        hook->calling = calling;
        Py_INCREF(picks);
        hook->picks = picks;
        hook->npicks = 0;
        hook->dict = NULL;
        hook->weakrefs = NULL;
        PyObject_GC_Track((PyObject *)hook);
        return (PyObject *)hook;
    }
    """
    ctypedef struct pynba_CallHook:
        PyObject* wrapped
        PyObject* var
        PyObject* enter
        PyObject* done
        PyObject* failed
        PyObject* calling
        PyObject* picks
        Py_ssize_t npicks
        Py_ssize_t positions[3]
        PyObject* keywords[3]
    void pynba_set_hook_call(void* call)
    void pynba_set_around_call(void* call)
    void pynba_make_around(object hook)
    Py_ssize_t pynba_count(size_t nargsf, PyObject* kwnames)
    void pynba_hold(PyObject** held, PyObject** args, Py_ssize_t count)
    void pynba_release(PyObject** held, Py_ssize_t count)
    tuple pynba_held_tuple(PyObject** args, Py_ssize_t count)
    PyObject** pynba_items(tuple held)
    object pynba_new_hook(
        object wrapped, object var, object enter, object done, object failed, object calling,
        object picks
    )


cdef extern from "Python.h":
    Py_ssize_t PyVectorcall_NARGS(size_t nargsf)
    size_t PY_VECTORCALL_ARGUMENTS_OFFSET
    object PyObject_Vectorcall(object callable, PyObject** args, size_t nargsf, PyObject* kwnames)
    int PyContextVar_Get(object var, PyObject* default_value, PyObject** value) except -1


import _thread
from contextvars import ContextVar

from pynba.errors import internal_error

#: The largest position a pick may name.
MAX_POSITION = 255
#: The most picks a hook may have.
MAX_PICKS = 3
#: _thread's attributes: its get_ident, which gevent may replace.
cdef dict _THREAD_GLOBALS = vars(_thread)
cdef object _MISSING = object()

cdef enum:
    # The most arguments a hook holds on the C stack (see _holding_arguments).
    HELD_ON_STACK = 8


cdef object _argument(
    PyObject** args, Py_ssize_t nargs, PyObject* kwnames, Py_ssize_t position, PyObject* keyword
):
    """The argument of a call at ``position``, else of ``keyword``; None when it has none."""
    cdef Py_ssize_t i, count
    if position < nargs:
        return <object>args[position]
    if kwnames is not NULL:
        count = PyTuple_GET_SIZE(<object>kwnames)
        for i in range(count):
            # The same string object: the caller's constant, mostly.
            if PyTuple_GET_ITEM(<object>kwnames, i) == keyword:
                return <object>args[nargs + i]
        for i in range(count):
            if <object>PyTuple_GET_ITEM(<object>kwnames, i) == <object>keyword:
                return <object>args[nargs + i]
    return None


cdef inline object _wrapped(pynba_CallHook* hook):
    """The function the hook stands in for, as a reference the caller keeps through the call."""
    if hook.wrapped is NULL:  # cleared by the garbage collector, and yet called
        raise ReferenceError("this pynba hook was cleared")
    return <object>hook.wrapped


cdef inline object _collector(pynba_CallHook* hook):
    """The current request's collector, None outside one."""
    cdef PyObject* current = NULL
    PyContextVar_Get(<object>hook.var, NULL, &current)
    if current is NULL:
        return None
    collector = <object>current
    Py_DECREF(collector)  # the reference PyContextVar_Get gave: `collector` has one
    return collector


ctypedef object (*_held_call)(
    pynba_CallHook* hook, object wrapped, object collector, PyObject** items, size_t nargsf,
    PyObject* kwnames,
)


cdef inline object _holding_arguments(
    _held_call call, pynba_CallHook* hook, object wrapped, object collector, PyObject** args,
    size_t nargsf, PyObject* kwnames,
):
    """``call(hook, wrapped, collector, items, ...)`` with the call's arguments held (``items``).

    Held before any Python code runs (see pynba_hold), in an array on the C
    stack when they fit: one slot before them is free, and the call is
    handed on with PY_VECTORCALL_ARGUMENTS_OFFSET, as it may have come. More
    of them are held in a tuple, the slot before which is the tuple's: the
    call is handed on with their count alone.
    """
    cdef PyObject* held[1 + HELD_ON_STACK]
    cdef Py_ssize_t count = pynba_count(nargsf, kwnames)
    cdef Py_ssize_t nargs = PyVectorcall_NARGS(nargsf)
    names = <object>kwnames if kwnames is not NULL else None  # held too
    if count > HELD_ON_STACK:
        in_tuple = pynba_held_tuple(args, count)
        return call(hook, wrapped, collector, pynba_items(in_tuple), <size_t>nargs, kwnames)
    held[0] = NULL
    pynba_hold(&held[1], args, count)
    try:
        return call(
            hook, wrapped, collector, &held[1], <size_t>nargs | PY_VECTORCALL_ARGUMENTS_OFFSET,
            kwnames,
        )
    finally:
        pynba_release(&held[1], count)


cdef object _call(pynba_CallHook* hook, PyObject** args, size_t nargsf, PyObject* kwnames):
    wrapped = _wrapped(hook)
    collector = _collector(hook)
    if collector is None:
        return PyObject_Vectorcall(wrapped, args, nargsf, kwnames)
    return _holding_arguments(_timed, hook, wrapped, collector, args, nargsf, kwnames)


cdef object _timed(
    pynba_CallHook* hook, object wrapped, object collector, PyObject** items, size_t nargsf,
    PyObject* kwnames,
):
    """``_call`` inside a request, the call's arguments held (``items``)."""
    cdef PyObject* stack[6]
    cdef Py_ssize_t nargs = PyVectorcall_NARGS(nargsf)
    cdef Py_ssize_t npicks
    cdef double start
    cdef object enter, done, failed, picks, calling, thread, seconds
    # References of our own to what the hook holds, before any Python code
    # runs (picks holds the keywords read below).
    enter = <object>hook.enter
    done = <object>hook.done
    failed = <object>hook.failed
    picks = <object>hook.picks
    calling = <object>hook.calling
    # The arguments the callbacks read, read before the thread is marked:
    # nothing can fail between the mark and the line that takes it off.
    npicks = hook.npicks
    first = second = third = thread = None
    try:
        if npicks > 0:
            first = _argument(items, nargs, kwnames, hook.positions[0], hook.keywords[0])
        if npicks > 1:
            second = _argument(items, nargs, kwnames, hook.positions[1], hook.keywords[1])
        if npicks > 2:
            third = _argument(items, nargs, kwnames, hook.positions[2], hook.keywords[2])
        timed = enter(collector)
        if timed and calling is not None:
            # Looked up each time, gevent may patch it; in the module's
            # dict, as the attribute is (the type's attributes are not
            # looked for first: that took 250 to 600 instructions a call).
            get_ident = _THREAD_GLOBALS.get("get_ident", _MISSING)
            if get_ident is _MISSING:  # as the Python hook's _thread.get_ident raises
                raise AttributeError("module '_thread' has no attribute 'get_ident'")
            thread = get_ident()
            if type(thread) is not int:  # hashed as it was when put in: an int's hash is
                raise TypeError(f"_thread.get_ident() gave {type(thread).__name__}, not int")
            if thread in <set>calling:
                timed = False
            else:
                (<set>calling).add(thread)
    except Exception:  # a keyword's own __eq__ raising, or enter()
        internal_error("cannot start an automatic timer", False)
        timed = False
    if not timed:
        return PyObject_Vectorcall(wrapped, items, nargsf, kwnames)
    start = time.perf_counter()
    try:
        result = PyObject_Vectorcall(wrapped, items, nargsf, kwnames)
    except BaseException:
        seconds = time.perf_counter() - start
        if calling is not None:
            (<set>calling).discard(thread)
        stack[0] = <PyObject*>collector
        stack[1] = <PyObject*>seconds
        stack[2] = <PyObject*>first
        stack[3] = <PyObject*>second
        stack[4] = <PyObject*>third
        try:
            PyObject_Vectorcall(failed, stack, 2 + npicks, NULL)
        except Exception:
            internal_error("cannot record an automatic timer", False)
        raise
    seconds = time.perf_counter() - start
    if calling is not None:
        (<set>calling).discard(thread)
    # done(collector, seconds, *picked, result), its arguments laid out as a
    # vectorcall takes them: held by the locals above through the call.
    stack[0] = <PyObject*>collector
    stack[1] = <PyObject*>seconds
    stack[2] = <PyObject*>first
    stack[3] = <PyObject*>second
    stack[4] = <PyObject*>third
    stack[2 + npicks] = <PyObject*>result
    try:
        PyObject_Vectorcall(done, stack, 3 + npicks, NULL)
    except Exception:
        internal_error("cannot record an automatic timer", False)
    return result


pynba_set_hook_call(<void*>_call)


def call_hook(wrapped, var, enter, done, failed, tuple picks not None, calling=None):
    """``_hooks.timed_calls``' hook, for the requests in the context variable ``var``.

    ``calling``: ``timed_calls``' ``outermost``, a set, or None.
    """
    cdef Py_ssize_t i
    cdef pynba_CallHook* fields
    if type(var) is not ContextVar:
        raise TypeError(f"var must be a contextvars.ContextVar, not {var!r}")
    if calling is not None and type(calling) is not set:
        raise TypeError(f"calling must be a set or None, not {calling!r}")
    if len(picks) > MAX_PICKS:
        raise TypeError(f"at most {MAX_PICKS} picks, not {len(picks)}")
    for pick in picks:  # checked here too: _call reads them unchecked
        if not (
            type(pick) is tuple and len(pick) == 2 and type(pick[0]) is int
            and 0 <= pick[0] <= MAX_POSITION and type(pick[1]) is str
        ):
            raise TypeError(f"each of picks must be a (position, keyword) tuple, not {pick!r}")
    hook = pynba_new_hook(wrapped, var, enter, done, failed, calling, picks)
    fields = <pynba_CallHook*>hook
    for i in range(len(picks)):
        fields.positions[i] = picks[i][0]
        fields.keywords[i] = <PyObject*>picks[i][1]  # held by picks, which the hook holds
    fields.npicks = len(picks)
    return hook


cdef object _around(pynba_CallHook* hook, PyObject** args, size_t nargsf, PyObject* kwnames):
    wrapped = _wrapped(hook)
    collector = _collector(hook)
    if collector is None:
        return PyObject_Vectorcall(wrapped, args, nargsf, kwnames)
    return _holding_arguments(_begun, hook, wrapped, collector, args, nargsf, kwnames)


cdef object _begun(
    pynba_CallHook* hook, object wrapped, object collector, PyObject** items, size_t nargsf,
    PyObject* kwnames,
):
    """``_around`` inside a request, the call's arguments held (``items``)."""
    cdef object begin = <object>hook.enter
    cdef object end = <object>hook.done
    cdef object first = <object>items[0] if PyVectorcall_NARGS(nargsf) > 0 else None
    cdef object state
    try:
        state = begin(collector, first)
    except Exception:
        internal_error("cannot start an automatic timer", False)
        state = None
    if state is None:
        return PyObject_Vectorcall(wrapped, items, nargsf, kwnames)
    try:
        return PyObject_Vectorcall(wrapped, items, nargsf, kwnames)
    finally:
        try:
            end(state)
        except Exception:
            internal_error("cannot record an automatic timer", False)


pynba_set_around_call(<void*>_around)


def around_hook(wrapped, var, begin, end):
    """``_hooks.around_calls``' hook, for the requests in the context variable ``var``."""
    if type(var) is not ContextVar:
        raise TypeError(f"var must be a contextvars.ContextVar, not {var!r}")
    hook = pynba_new_hook(wrapped, var, begin, end, None, None, ())
    pynba_make_around(hook)
    return hook

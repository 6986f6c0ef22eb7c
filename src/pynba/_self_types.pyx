# cython: language_level=3
"""Methods of pynba's compiled classes that check the type of ``self``.

Compiled with ``binding=True`` (so that the functions pynba installs on
other classes bind as methods), a method of an extension type is a Cython
function that trusts its first argument: ``Timer.stop(object())`` reads
a Timer's fields from an ``object`` and can crash the interpreter. Each
such method is replaced, in its class's ``__dict__``, by a descriptor that
checks ``self``, as CPython's own method descriptors do, and then calls
the method. Bound calls (``timer.stop()``) stay vectorcalls that skip the
bound method; attributes such as ``__name__`` and ``__doc__`` are the
method's, but nothing that hands the method itself out (it is not even in
the garbage collector's lists). The pure-Python classes need none of this.
"""

from cpython.object cimport PyTypeObject

cimport pynba._recursion  # pynba_enter_recursion(), for the C code below


cdef extern from *:
    """
    typedef struct {
        PyObject_HEAD
        PyObject *method;         /* the Cython function, which trusts its self */
        PyObject *name;           /* its __name__ */
        PyTypeObject *owner;      /* the class whose instances it takes */
        vectorcallfunc vectorcall;
        vectorcallfunc call;      /* the method's own vectorcall, if it has one */
        PyObject *weakrefs;       /* weakref.WeakMethod of a bound one takes a weak reference */
    } pynba_CheckedMethod;

    static void pynba_checked_dealloc(PyObject *self) {
        pynba_CheckedMethod *checked = (pynba_CheckedMethod *)self;
        if (checked->weakrefs != NULL) PyObject_ClearWeakRefs(self);
        Py_XDECREF(checked->method);
        Py_XDECREF(checked->name);
        Py_XDECREF((PyObject *)checked->owner);
        PyObject_Free(self);
    }

    static PyObject *pynba_checked_call(
        PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames
    ) {
        pynba_CheckedMethod *checked = (pynba_CheckedMethod *)self;
        Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
        PyObject *method, *result;
        if (nargs < 1 || !PyObject_TypeCheck(args[0], checked->owner)) {
            PyErr_Format(
                PyExc_TypeError, "%s.%S() needs a %s object as self, its first argument, got %s",
                checked->owner->tp_name, checked->name, checked->owner->tp_name,
                nargs < 1 ? "none" : Py_TYPE(args[0])->tp_name);
            return NULL;
        }
        /* Counted as two levels of recursion (see _recursion.pxd): a method
           handing a call on to a foreign proxy of its own object (wrapt's)
           recurses with no frame, about 280 bytes of C stack a level. */
        if (pynba_enter_recursion(2, " while calling a pynba method")) return NULL;
        /* The method held through its call: a caller may not hold this
           descriptor (functools.partial), whose last reference the method's
           own code could drop. */
        method = checked->method;
        Py_INCREF(method);
        result = checked->call != NULL
            ? checked->call(method, args, nargsf, kwnames)
            : PyObject_Vectorcall(method, args, nargsf, kwnames);
        Py_DECREF(method);
        pynba_leave_recursion(2);
        return result;
    }

    static PyObject *pynba_checked_get(PyObject *self, PyObject *instance, PyObject *owner) {
        if (instance == NULL || instance == Py_None) {
            Py_INCREF(self);
            return self;
        }
        return PyMethod_New(self, instance);
    }

    /* What tells about the method (its name, signature, docstring...) is the
       method's; nothing that would hand the method itself out (a method-wrapper
       of it, such as its __repr__, has it as __self__). */
    static const char *const pynba_told[] = {
        "__name__", "__qualname__", "__doc__", "__module__", "__code__", "__defaults__",
        "__kwdefaults__", "__annotations__", "__text_signature__", "__signature__",
        "__wrapped__", "__globals__", "__type_params__", NULL};

    static PyObject *pynba_checked_getattr(PyObject *self, PyObject *name) {
        const char *const *told;
        PyObject *found;
        if (PyUnicode_Check(name)) {
            for (told = pynba_told; *told != NULL; told++) {
                if (PyUnicode_CompareWithASCIIString(name, *told) == 0) {
                    found = PyObject_GetAttr(((pynba_CheckedMethod *)self)->method, name);
                    if (found != NULL || !PyErr_ExceptionMatches(PyExc_AttributeError)) {
                        return found;
                    }
                    PyErr_Clear();  /* said below, of this object */
                    break;
                }
            }
        }
        return PyObject_GenericGetAttr(self, name);
    }

    /* Pickled and copied as what it is: the attribute of its class. */
    static PyObject *pynba_checked_reduce(PyObject *self, PyObject *unused) {
        pynba_CheckedMethod *checked = (pynba_CheckedMethod *)self;
        PyObject *getattr_function = PyDict_GetItemString(PyEval_GetBuiltins(), "getattr");
        if (getattr_function == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "no builtin getattr");
            return NULL;
        }
        return Py_BuildValue("(O(OO))", getattr_function, (PyObject *)checked->owner,
                             checked->name);
    }

    static PyMethodDef pynba_checked_methods[] = {
        {"__reduce__", pynba_checked_reduce, METH_NOARGS, NULL},
        {NULL, NULL, 0, NULL}
    };

    static PyObject *pynba_checked_repr(PyObject *self) {
        pynba_CheckedMethod *checked = (pynba_CheckedMethod *)self;
        return PyUnicode_FromFormat("<method %R of %s objects>", checked->name,
                                    checked->owner->tp_name);
    }

    static PyTypeObject pynba_CheckedMethodType = {
        PyVarObject_HEAD_INIT(NULL, 0)
        .tp_name = "pynba.checked_method",
        .tp_basicsize = sizeof(pynba_CheckedMethod),
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
        .tp_vectorcall_offset = offsetof(pynba_CheckedMethod, vectorcall),
        .tp_weaklistoffset = offsetof(pynba_CheckedMethod, weakrefs),
        .tp_dealloc = pynba_checked_dealloc,
        .tp_call = PyVectorcall_Call,
        .tp_descr_get = pynba_checked_get,
        .tp_getattro = pynba_checked_getattr,
        .tp_repr = pynba_checked_repr,
        .tp_methods = pynba_checked_methods,
    };

    /* A new reference to a checked method of ``owner``, or NULL with an exception set. */
    static PyObject *pynba_checked_method(PyObject *method, PyTypeObject *owner) {
        pynba_CheckedMethod *checked;
        PyObject *name;
        vectorcallfunc call = PyVectorcall_Function(method);
        if (PyType_Ready(&pynba_CheckedMethodType) < 0) return NULL;

        name = PyObject_GetAttrString(method, "__name__");
        if (name == NULL) return NULL;
        if (!PyUnicode_Check(name)) {
            Py_DECREF(name);
            PyErr_SetString(PyExc_TypeError, "a method's __name__ must be a str");
            return NULL;
        }
        checked = PyObject_New(pynba_CheckedMethod, &pynba_CheckedMethodType);
        if (checked == NULL) {
            Py_DECREF(name);
            return NULL;
        }
        checked->name = name;
        /* Out of the garbage collector's lists, where gc.get_objects() would
           hand it out: this object holds it for the life of the process. */
        if (PyObject_IS_GC(method) && PyObject_GC_IsTracked(method)) {
            PyObject_GC_UnTrack(method);
        }
        Py_INCREF(method);
        checked->method = method;
        Py_INCREF((PyObject *)owner);
        checked->owner = owner;
        checked->vectorcall = pynba_checked_call;
        checked->call = call;
        checked->weakrefs = NULL;
        return (PyObject *)checked;
    }

    /* Replace ``owner.__dict__[name]``; the class is an extension type, whose
       attributes Python code cannot set. */
    static int pynba_replace_attribute(PyTypeObject *owner, PyObject *name, PyObject *value) {
        if (PyDict_SetItem(owner->tp_dict, name, value) < 0) return -1;
        PyType_Modified(owner);
        return 0;
    }
    """
    object pynba_checked_method(object method, PyTypeObject* owner)
    int pynba_replace_attribute(PyTypeObject* owner, object name, object value) except -1


def check_self_types(cls, self_checking=()):
    """Make each method of the extension type ``cls`` check its ``self`` (idempotent).

    The methods named in ``self_checking`` are left as they are (see
    ``_implementation.check_self_types``).
    """
    if not isinstance(cls, type) or cls.__flags__ & (1 << 9):  # Py_TPFLAGS_HEAPTYPE
        raise TypeError(f"check_self_types() takes a compiled class, not {cls!r}")
    cdef PyTypeObject* owner = <PyTypeObject*>cls
    for name, value in list(vars(cls).items()):
        if name in self_checking:
            continue
        if type(value).__name__ == "cython_function_or_method":
            pynba_replace_attribute(owner, name, pynba_checked_method(value, owner))
        elif type(value) is property and _has_cython_accessor(value):
            pynba_replace_attribute(
                owner,
                name,
                property(
                    _checked(value.fget, owner),
                    _checked(value.fset, owner),
                    _checked(value.fdel, owner),
                    value.__doc__,
                ),
            )


cdef bint _has_cython_accessor(prop):
    return any(
        type(accessor).__name__ == "cython_function_or_method"
        for accessor in (prop.fget, prop.fset, prop.fdel)
    )


cdef object _checked(accessor, PyTypeObject* owner):
    if type(accessor).__name__ == "cython_function_or_method":
        return pynba_checked_method(accessor, owner)
    return accessor

# cython: language_level=3
"""Methods of pynba's compiled classes that check the type of ``self``.

Compiled with ``binding=True`` (so that the functions pynba installs on
other classes bind as methods), a method of an extension type is a Cython
function that trusts its first argument: ``Timer.stop(object())`` reads
a Timer's fields from an ``object`` and can crash the interpreter. Each
such method is replaced, in its class's ``__dict__``, by a descriptor that
checks ``self``, as CPython's own method descriptors do, and then calls
the method. Bound calls (``timer.stop()``) stay vectorcalls that skip the
bound method; attributes such as ``__name__`` and ``__wrapped__`` are the
method's. The pure-Python classes need none of this.
"""

from cpython.object cimport PyTypeObject


cdef extern from *:
    """
    typedef struct {
        PyObject_HEAD
        PyObject *method;         /* the Cython function, which trusts its self */
        PyObject *name;           /* its __name__ */
        PyTypeObject *owner;      /* the class whose instances it takes */
        vectorcallfunc vectorcall;
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
        if (nargs < 1 || !PyObject_TypeCheck(args[0], checked->owner)) {
            PyErr_Format(
                PyExc_TypeError, "%s.%S() needs a %s object as self, got %s",
                checked->owner->tp_name, checked->name, checked->owner->tp_name,
                nargs < 1 ? "none" : Py_TYPE(args[0])->tp_name);
            return NULL;
        }
        return PyObject_Vectorcall(checked->method, args, nargsf, kwnames);
    }

    static PyObject *pynba_checked_get(PyObject *self, PyObject *instance, PyObject *owner) {
        if (instance == NULL || instance == Py_None) {
            Py_INCREF(self);
            return self;
        }
        return PyMethod_New(self, instance);
    }

    /* What tells about the method (its name, signature, docstring...) is the method's. */
    static PyObject *pynba_checked_getattr(PyObject *self, PyObject *name) {
        if (PyUnicode_Check(name) && (
                PyUnicode_CompareWithASCIIString(name, "__get__") == 0
                || PyUnicode_CompareWithASCIIString(name, "__call__") == 0
                || PyUnicode_CompareWithASCIIString(name, "__class__") == 0
                || PyUnicode_CompareWithASCIIString(name, "__reduce__") == 0
                || PyUnicode_CompareWithASCIIString(name, "__reduce_ex__") == 0)) {
            return PyObject_GenericGetAttr(self, name);
        }
        return PyObject_GetAttr(((pynba_CheckedMethod *)self)->method, name);
    }

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
    };

    /* A new reference to a checked method of ``owner``, or NULL with an exception set. */
    static PyObject *pynba_checked_method(PyObject *method, PyTypeObject *owner) {
        pynba_CheckedMethod *checked;
        PyObject *name;
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
        Py_INCREF(method);
        checked->method = method;
        Py_INCREF((PyObject *)owner);
        checked->owner = owner;
        checked->vectorcall = pynba_checked_call;
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


def check_self_types(cls):
    """Make each method of the extension type ``cls`` check its ``self`` (idempotent)."""
    if not isinstance(cls, type) or cls.__flags__ & (1 << 9):  # Py_TPFLAGS_HEAPTYPE
        raise TypeError(f"check_self_types() takes a compiled class, not {cls!r}")
    cdef PyTypeObject* owner = <PyTypeObject*>cls
    for name, value in list(vars(cls).items()):
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

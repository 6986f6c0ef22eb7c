"""Which implementation runs: compiled modules, or their pure-Python sources.

The encoder and the per-request modules (timer, collector, wsgi, ...) are
compiled with Cython when pynba is installed on CPython with a C compiler;
their Python sources are the fallback. ``PYNBA_PURE_PYTHON=1`` in the
environment makes every one of them run from its Python source.
"""

import importlib.machinery
import importlib.util
import os
import sys

#: Every compiled module, in build order. One with a Python source of the
#: same name is compiled from it (typed by the .pxd beside it), and runs from
#: that source under ``PYNBA_PURE_PYTHON=1``. The others exist only compiled
#: (.pyx): the encoder (its pure twin is ``wire.fallback``), getrusage (twin:
#: ``rusage``), the encoder's reader of compiled Timers, ``pynba.timer``'s
#: C fast path, the methods of compiled classes that check their ``self``
#: (``_self_types``), and the hook that hands a call on as it came
#: (``instrumentation._call_hook``, twin: ``_hooks.timed_calls``); see their
#: docstrings.
COMPILED_MODULES = (
    "wire._encoder",
    "_rusage",
    "tags",
    "timer",
    "collector",
    "context",
    "wsgi",
    "reporter",
    "_timer_fields",
    "_timer_call",
    "_self_types",
    "instrumentation._call_hook",
    "instrumentation._hooks",
    "instrumentation._templates",
    "instrumentation._http_client",
    "instrumentation.urllib3",
    "instrumentation.requests",
    "instrumentation.dbapi",
    "instrumentation.django_db",
    "instrumentation.sqlalchemy",
    "instrumentation.opentelemetry",
)


def pure_python_forced() -> bool:
    """Whether the environment asks for pure Python (``PYNBA_PURE_PYTHON``)."""
    value = os.environ.get("PYNBA_PURE_PYTHON", "").strip().lower()
    return value not in ("", "0", "false", "no")


class _SourceFinder:
    """Finds pynba's compiled modules in their Python sources instead."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        prefix = __package__ + "."
        name = fullname[len(prefix) :] if fullname.startswith(prefix) else None
        if name not in COMPILED_MODULES:
            return None
        source = os.path.join(os.path.dirname(__file__), *name.split(".")) + ".py"
        if not os.path.exists(source):
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def use_pure_python_sources() -> None:
    """Import the compiled modules from their sources from now on."""
    if not any(isinstance(finder, _SourceFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder())


def runs_compiled(module_file: str) -> bool:
    """Whether the module at ``module_file`` (its ``__file__``) is a compiled extension."""
    return module_file.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def compiled_modules() -> list[str]:
    """The pynba modules running compiled code (of those imported so far)."""
    names = []
    for name in COMPILED_MODULES:
        module = sys.modules.get(f"{__package__}.{name}")
        if module is not None and not str(module.__file__).endswith(".py"):
            names.append(name)
    return names


def check_self_types(*classes: type, self_checking: tuple[str, ...] = ()) -> None:
    """Make the methods of these classes, where compiled, check the type of ``self``.

    A compiled class's method would otherwise read another object as one of
    its instances, and may crash the interpreter (see ``_self_types``). A
    Python class (the pure-Python build) is left as it is.

    ``self_checking``: methods left as they are, which check their ``self``
    in their own code:
    - the methods a subclass may override (``cpdef``) of a class whose
      instances have a ``__dict__``: Cython calls them after looking them
      up on the instance, to find an override, and takes any other object
      found for one (1,600 instructions a request, for the four methods of
      ``PynbaMiddleware`` and ``Reporter``);
    - ``Timer.__enter__`` and ``__exit__``, which each ``with`` block calls
      (about 40 instructions a call less).
    """
    compiled = [cls for cls in classes if not cls.__flags__ & _HEAP_TYPE]
    if compiled:
        from ._self_types import check_self_types as check

        for cls in compiled:
            check(cls, self_checking)


def wrong_self(cls: type, method: str, found: object) -> TypeError:
    """The error of ``cls.method`` called with ``found``, not a ``cls``, as ``self``.

    Worded as ``_self_types``' checked methods word it.
    """
    name = f"{cls.__module__}.{cls.__qualname__}"
    return TypeError(
        f"{name}.{method}() needs a {name} object as self, its first argument,"
        f" got {type(found).__name__}"
    )


# A class made by a class statement in Python code (type.__flags__); not one compiled.
_HEAP_TYPE = 1 << 9

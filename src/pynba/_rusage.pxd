# C-level access to the compiled getrusage functions: a module compiled from
# Python source that does ``from . import rusage`` and declares
# ``cimport pynba._rusage as rusage`` in its .pxd calls them without a Python
# call or a tuple (run from source, it calls the ones ``rusage.py`` chose).

cpdef (double, double, long) usage() except *
cpdef (double, double) cpu_times() except *

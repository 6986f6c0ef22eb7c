"""Levels of recursion that C code would not count.

Run from source, ``enter()`` and ``leave()`` do nothing: the interpreter's
own frames count the recursion. Compiled modules that declare ``cimport
pynba._recursion as _recursion`` call the C twins in ``_recursion.pxd``.
"""


def enter() -> None:
    """One more level (compiled: RecursionError past the limit)."""


def leave() -> None:
    """One level less."""

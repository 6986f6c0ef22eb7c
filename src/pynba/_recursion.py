"""Levels of recursion that C code would not count.

Run from source, these functions do nothing: the interpreter's own frames
count the recursion. Compiled modules that declare ``cimport
pynba._recursion as _recursion`` call the C twins in ``_recursion.pxd``.
"""


def enter() -> None:
    """One more level of flattening a tag (compiled: RecursionError past the limit)."""


def leave() -> None:
    """One level of flattening less."""


def enter_forward() -> None:
    """One more level of a proxy handing on to what it wraps (compiled: counted)."""


def leave_forward() -> None:
    """One level of handing on less."""

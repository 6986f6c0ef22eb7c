"""The Pinba datagram encoder: the compiled one when it is built, else pure Python.

Set ``PYNBA_PURE_PYTHON=1`` in the environment to force the pure-Python
encoder. ``IMPLEMENTATION`` tells which one was chosen: ``"compiled"`` or
``"pure"``.
"""

from .._implementation import pure_python_forced
from ..record import RequestRecord
from .fallback import FLT_MAX, FLT_MIN, MAX_TEXT_BYTES, STATUS_MAX, UINT32_MAX

__all__ = [
    "ARGUMENTS",
    "FLT_MAX",
    "FLT_MIN",
    "IMPLEMENTATION",
    "MAX_DATAGRAM",
    "MAX_TEXT_BYTES",
    "STATUS_MAX",
    "UINT32_MAX",
    "encode",
]

#: The names of ``encode``'s arguments, in order: a request's fields.
ARGUMENTS = RequestRecord._fields

#: The largest UDP payload over IPv4.
MAX_DATAGRAM = 65507

if not pure_python_forced():
    try:
        from ._encoder import encode
    except ImportError:
        from .fallback import encode

        IMPLEMENTATION = "pure"
    else:
        IMPLEMENTATION = "compiled"
else:
    from .fallback import encode

    IMPLEMENTATION = "pure"

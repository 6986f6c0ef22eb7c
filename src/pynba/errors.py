"""What pynba does with an error of its own: log it and carry on, or raise it.

pynba never raises into the application it watches: an exception inside
pynba at a request's end is logged to the ``pynba`` logger (at most once a
minute per kind, see ``pynba.ratelimit``) and the packet is dropped. It is
raised instead when the reporter's ``raise_on_fail`` is set, or in strict
mode (``PYNBA_STRICT=1``, see ``pynba.strict``).
"""

from __future__ import annotations

import logging
import sys

from .ratelimit import LogLimiter
from .strict import is_strict

__all__ = ["internal_error"]

_internal_errors = LogLimiter()


def internal_error(message: str, raise_on_fail: bool, kind: str | None = None) -> None:
    """Handle the exception being handled, raised inside pynba: log it and carry on.

    Re-raised when ``raise_on_fail`` is set, or in strict mode; otherwise
    logged with its traceback, at most once a minute per ``kind`` (by
    default the message itself: give a fixed kind when the message names
    something that varies). Call it from an ``except`` block.
    """
    if raise_on_fail or is_strict():
        raise  # noqa: PLE0704 - called from an except block, as documented
    error = sys.exc_info()[1]
    _internal_errors.log(logging.ERROR, kind or message, "pynba: %s", message, exc_info=error)

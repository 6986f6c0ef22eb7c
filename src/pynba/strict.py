"""Strict mode: ``PYNBA_STRICT=1`` makes pynba's quiet ways loud.

By default pynba never raises into the application it watches: outside a
monitored request its API does nothing (``pynba.active`` tells), and an
error inside pynba at a request's end is logged to the ``pynba`` logger.
With ``PYNBA_STRICT=1`` in the environment (meant for development and for
pynba's own tests) both raise instead. The variable is read at each use.
"""

import os

__all__ = ["is_strict"]


def is_strict() -> bool:
    """Whether ``PYNBA_STRICT=1`` is set in the environment."""
    return os.environ.get("PYNBA_STRICT") == "1"

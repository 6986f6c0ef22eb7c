"""The old home of ``ScriptMonitor`` (``from pynba.util import ScriptMonitor``)."""

from .script import ScriptMonitor

__all__ = ["ScriptMonitor"]

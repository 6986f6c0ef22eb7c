"""pynba: a Pinba client for Python applications."""

from .collector import RequestCollector
from .context import pynba
from .encoder import IMPLEMENTATION as ENCODER
from .encoder import encode
from .reporter import Reporter
from .script import ScriptMonitor
from .timer import Timer
from .wsgi import PynbaMiddleware, monitor

__all__ = [
    "ENCODER",
    "PynbaMiddleware",
    "Reporter",
    "RequestCollector",
    "ScriptMonitor",
    "Timer",
    "encode",
    "monitor",
    "pynba",
]
__version__ = "0.6.0.dev0"

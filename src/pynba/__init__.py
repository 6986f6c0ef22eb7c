"""pynba: a Pinba client for Python applications."""

from ._implementation import pure_python_forced, use_pure_python_sources

if pure_python_forced():
    use_pure_python_sources()

from .collector import RequestCollector
from .context import pynba
from .reporter import Reporter
from .script import ScriptMonitor
from .timer import Timer
from .wire.encoder import IMPLEMENTATION as ENCODER
from .wire.encoder import encode
from .wsgi import PynbaMiddleware, monitor

__all__ = [
    "ENCODER",
    "compiled_modules",
    "PynbaASGIMiddleware",
    "PynbaMiddleware",
    "Reporter",
    "RequestCollector",
    "ScriptMonitor",
    "Timer",
    "encode",
    "instrument",
    "monitor",
    "pynba",
]
__version__ = "0.6.0.dev0"


def compiled_modules() -> list[str]:
    """The pynba modules running compiled code (empty under ``PYNBA_PURE_PYTHON=1``)."""
    from ._implementation import compiled_modules

    return compiled_modules()


def instrument(*names: str) -> tuple[str, ...]:
    """Time the libraries a request uses, with no code: see ``pynba.instrumentation``."""
    from .instrumentation import instrument

    return instrument(*names)


def __getattr__(name: str) -> object:
    # Imported on first use only: the framework integrations (pynba.asgi,
    # pynba.django, pynba.flask, pynba.pyramid) stay out of ``import pynba``.
    if name == "PynbaASGIMiddleware":
        from .asgi import PynbaASGIMiddleware

        return PynbaASGIMiddleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

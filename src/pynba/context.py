"""The current request, and the ``pynba`` proxy that reaches it.

The current collector lives in a ``contextvars.ContextVar``: each thread,
asyncio task and gevent greenlet sees its own request. ``from pynba import
pynba`` gives a proxy to it: ``pynba.timer(...)``, ``pynba.script_name =
...``, ``pynba.document_size = ...`` act on the request being served.

Outside a monitored request (a cron script sharing the web application's
code, a thread the request did not hand its context to, an application
deployed without the middleware) the proxy does nothing: timers measure
nothing, writes are ignored, reads give None, and ``pynba.active`` is False.
A timer made there still works as a decorator: ``@pynba.timer(...)``
applied at import time times each call made during a request. With
``PYNBA_STRICT=1`` (see ``pynba.strict``) using the proxy outside a request
raises ``RuntimeError`` instead.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from types import MappingProxyType
from typing import Any, TypeVar, Union

from ._implementation import pure_python_forced
from .collector import RequestCollector
from .errors import internal_error
from .strict import is_strict
from .tags import check_tag_name, flatten_tags
from .timer import NOOP_TIMER, NoopTimer, Timer, decorate

__all__ = [
    "DISABLED",
    "DisabledCollector",
    "PynbaProxy",
    "UnboundTimer",
    "activate",
    "collector_variable",
    "current_collector",
    "deactivate",
    "pynba",
]

logger = logging.getLogger("pynba")
F = TypeVar("F", bound=Callable[..., Any])

Collector = Union[RequestCollector, "DisabledCollector"]

_current: ContextVar[Collector | None] = contextvars.ContextVar("pynba_collector", default=None)


def current_collector() -> Collector | None:
    """The collector of the request running in this context, or None."""
    return ContextVar.get(_current)


def collector_variable() -> ContextVar[Collector | None]:
    """The context variable ``current_collector()`` reads, for C code that reads it itself."""
    return _current


def activate(collector: Collector) -> Token[Collector | None]:
    """Make ``collector`` the current one; give the token to deactivate()."""
    # Compiled, a C call (see context.pxd), as below.
    return ContextVar.set(_current, collector)


def deactivate(token: Token[Collector | None]) -> None:
    """Restore the collector that was current before activate() returned ``token``."""
    try:
        ContextVar.reset(_current, token)
    except (ValueError, RuntimeError):
        # Reset from another context (a server that closes the response
        # elsewhere) or twice: the other context keeps its own value.
        logger.debug("pynba: request context not restored", exc_info=True)


_OUTSIDE = (
    "pynba: no monitored request in this context. Wrap the WSGI application in "
    "PynbaMiddleware (or @monitor), or run the code inside a ScriptMonitor job."
)


def _current_or_outside(use: str) -> Collector:
    """The current collector; outside a request, the one that does nothing (strict: raises)."""
    collector = ContextVar.get(_current)
    if collector is None:
        if is_strict():
            raise RuntimeError(_OUTSIDE)
        logger.debug("pynba: %s outside a monitored request: ignored", use)
        return OUTSIDE
    return collector


def timer(**tags: Any) -> Timer | NoopTimer | UnboundTimer:
    """A new timer of the current request, not started (see ``Timer``)."""
    collector = ContextVar.get(_current)
    if collector is None:
        return UnboundTimer(tags)
    return collector.new_timer(tags)


def set_tag(name: str, value: Any) -> None:
    """Set a tag of the current request (see ``RequestCollector.set_tag``)."""
    collector = ContextVar.get(_current)
    if type(collector) is RequestCollector:
        request: RequestCollector = collector  # compiled: set_tag is then a C call
        request.set_tag(name, value)
        return
    if collector is None:
        collector = _current_or_outside("set_tag")
    collector.set_tag(name, value)


def delete_tag(name: str) -> None:
    """Remove a tag of the current request (see ``RequestCollector.delete_tag``)."""
    collector = ContextVar.get(_current)
    if collector is None:
        collector = _current_or_outside("delete_tag")
    collector.delete_tag(name)


_timer = timer
if not pure_python_forced():
    try:
        from ._timer_call import keyword_timer
    except ImportError:  # not built: the Python function serves
        pass
    else:
        _timer = keyword_timer(_current, timer)


class _Forwarded:
    """A ``PynbaProxy`` attribute: the current collector's attribute of the same name."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, proxy: object, owner: type | None = None) -> Any:
        if proxy is None:
            return self
        return getattr(_current_or_outside(self.name), self.name)

    def __set__(self, proxy: object, value: Any) -> None:
        setattr(_current_or_outside(self.name), self.name, value)

    def __delete__(self, proxy: object) -> None:
        delattr(_current_or_outside(self.name), self.name)


class PynbaProxy:
    """Reaches the current request's collector (see ``RequestCollector``)."""

    # The calls requests make most are instance slots holding the functions:
    # ``pynba.set_tag`` is then a specialized slot read, where a method (a
    # bound method made per call) or a __getattr__ fallback costs about 200
    # instructions more. The other attributes are forwarded by descriptors
    # (see the end of the class), not by __getattr__, which would deny
    # Python's own attribute lookup its specializations.
    __slots__ = ("timer", "set_tag", "delete_tag")

    def __init__(self) -> None:
        self.timer = _timer
        self.set_tag = set_tag
        self.delete_tag = delete_tag

    @property
    def collector(self) -> Collector | None:
        """The current collector, or None outside a request (never raises)."""
        return ContextVar.get(_current)

    @property
    def active(self) -> bool:
        """Whether a monitored (and enabled) request is running in this context."""
        collector = ContextVar.get(_current)
        return collector is not None and collector.enabled

    def __reduce__(self) -> tuple[type, tuple[()]]:
        # Made afresh: its slots hold the functions, which a compiled
        # ``timer`` (holding the ContextVar) cannot be pickled as.
        return (type(self), ())

    def __repr__(self) -> str:
        return f"<pynba proxy to {ContextVar.get(_current)!r}>"


for _name in dir(RequestCollector):
    if not _name.startswith("_") and not hasattr(PynbaProxy, _name):
        setattr(PynbaProxy, _name, _Forwarded(_name))
del _name


class UnboundTimer:
    """A timer made outside any request: it times the calls of what it decorates.

    Each call of the decorated function is timed by a new timer of the
    request current at call time; outside a request the call is not timed.
    Used any other way (``with``, ``start()``...) it does nothing, as every
    timer outside a request (strict mode: ``RuntimeError``).
    """

    __slots__ = ("_tags", "data")

    def __init__(self, tags: dict[str, Any]) -> None:
        for name in tags:
            check_tag_name(name)
        # Callables are called per timed call, so only check the rest now.
        flatten_tags({name: value for name, value in tags.items() if not callable(value)})
        if not tags:
            raise ValueError("a timer needs at least one tag, e.g. timer(group='db')")
        self._tags = tags
        self.data = None

    def __call__(self, func: F) -> F:
        return decorate(func, self._new_timer)

    def _new_timer(self) -> Timer | NoopTimer:
        collector = ContextVar.get(_current)
        if collector is None:
            return NOOP_TIMER
        try:
            timer = collector.new_timer(self._tags)
        except Exception:  # a callable tag failed: the call it times must not
            timer = self._timer_without_failing_tags(collector)
        if self.data is not None:
            timer.data = self.data
        return timer

    def _outside(self, use: str) -> None:
        if is_strict():
            raise RuntimeError(
                _OUTSIDE + " A timer made outside a request can only decorate a function."
            )
        logger.debug("pynba: timer %s() outside a monitored request: ignored", use)

    def start(self) -> UnboundTimer:
        self._outside("start")
        return self

    def stop(self) -> UnboundTimer:
        self._outside("stop")
        return self

    def add(self, value: float, hit_count: int = 1) -> UnboundTimer:
        self._outside("add")
        return self

    def clone(self) -> UnboundTimer:
        self._outside("clone")
        return self

    def delete(self) -> None:
        self._outside("delete")

    def __enter__(self) -> UnboundTimer:
        self._outside("__enter__")
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        pass

    started = False
    elapsed = 0.0
    hit_count = 0
    ru_utime = 0.0
    ru_stime = 0.0

    def _timer_without_failing_tags(self, collector: Collector) -> Timer | NoopTimer:
        """A timer with the tags that can be made: each failing one is left out and counted."""
        pairs: list = []
        for name, value in self._tags.items():
            try:
                pairs.extend(flatten_tags({name: value}))
            except Exception:
                reporter = collector.reporter
                if reporter is not None:
                    reporter.count("tag_failed")
                internal_error(
                    f"timer tag {name!r} failed; timed without it",
                    reporter is not None and reporter.raise_on_fail,
                    "timer tag failed",
                )
        if not pairs:
            return NOOP_TIMER
        return collector.new_timer(tuple(pairs))

    @property
    def tags(self) -> tuple:
        return flatten_tags(self._tags)

    def __repr__(self) -> str:
        return f"<UnboundTimer {self._tags!r}>"


class DisabledCollector:
    """What the proxy reaches when monitoring is off, or outside a request: it does nothing.

    Every field reads None and every write of one is ignored; its timers
    are the ``NOOP_TIMER``.
    """

    __slots__ = ()

    enabled = False
    finished = False
    timer_rusage = False
    reporter = None
    hostname = server_name = script_name = scriptname = servername = schema = None
    status = document_size = memory_peak = memory_footprint = None
    request_time = ru_utime = ru_stime = None
    timers: tuple = ()
    timers_ran = False
    tags: Mapping[str, Any] = MappingProxyType({})

    _FIELDS = frozenset(
        "hostname server_name script_name scriptname servername schema status document_size"
        " memory_peak memory_footprint request_time ru_utime ru_stime tags enabled".split()
    )

    def timer(self, /, **tags: Any) -> NoopTimer:
        return NOOP_TIMER

    def new_timer(self, tags: Any) -> NoopTimer:
        return NOOP_TIMER

    def add_timer(self, timer: Any) -> NoopTimer:
        return NOOP_TIMER

    def set_tag(self, name: str, value: Any) -> None:
        pass

    def delete_tag(self, name: str) -> None:
        pass

    def stop_timers(self) -> None:
        pass

    def flush(self, only_stopped: bool = False) -> None:
        pass

    def end_response(self) -> None:
        pass

    def finish(self, status: int | None = None, document_size: int | None = None) -> None:
        pass

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._FIELDS:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        return "<DisabledCollector>"


#: The collector of every request while monitoring is disabled.
DISABLED = DisabledCollector()
#: What the proxy acts on outside any request.
OUTSIDE = DisabledCollector()

#: The proxy to the current request: ``from pynba import pynba``.
pynba = PynbaProxy()

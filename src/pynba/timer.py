"""Timers: tagged durations measured inside a request.

A timer is used with ``start()``/``stop()``, as a context manager or as a
decorator. Starting it again after a stop adds to what it measured (one more
hit), as the PHP extension does. Durations come from ``time.perf_counter``.
"""

from __future__ import annotations

import functools
import inspect
import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from . import rusage
from .rusage import cpu_times  # re-exported, as before
from .tags import TagPairs, flatten_tags

if TYPE_CHECKING:
    from .collector import RequestCollector

__all__ = ["NOOP_TIMER", "NoopTimer", "Timer", "cpu_times"]

F = TypeVar("F", bound=Callable[..., Any])


class Timer:
    """A tagged duration: ``with timer:``, ``timer.start()``/``timer.stop()`` or ``@timer``.

    ``data`` is yours: attached to the timer, never sent. A timer created by
    a request (``pynba.timer(...)``) is sent with it; when the request ends
    while the timer runs, it is stopped first.
    """

    __slots__ = (
        "_collector",
        "_tags",
        "_names",
        "_running",
        "_start",
        "_value",
        "_hits",
        "_rusage",
        "_utime",
        "_stime",
        "_utime_start",
        "_stime_start",
        "_detached",
        "data",
    )

    def __init__(
        self,
        tags: Mapping[str, Any],
        collector: RequestCollector | None = None,
        cpu: bool = False,
        data: Any = None,
    ) -> None:
        # A dict of the caller's is copied: changed later, it must not change the timer.
        _init_timer(
            self, _timer_tags(dict(tags) if type(tags) is dict else tags), None, cpu, collector
        )
        self.data = data
        if collector is not None and collector.add_timer(self) is not self:
            self._collector = None  # its request has ended: measured here, never sent

    # -- measuring ---------------------------------------------------------

    def start(self) -> Timer:
        """Start measuring; RuntimeError if the timer is already running."""
        if self._running:
            raise RuntimeError(f"{self!r} is already started")
        self._begin()
        return self

    def stop(self) -> Timer:
        """Stop measuring and add the time since start(); RuntimeError if not running.

        A timer that its request's end already stopped (and sent) may be
        stopped again: code that runs on after the response, such as an ASGI
        application after its last body message, must not fail.
        """
        if not self._running:
            collector = self._collector
            if collector is not None and collector.finished:
                return self
            raise RuntimeError(f"{self!r} is not started")
        self._end(time.perf_counter())
        return self

    def __enter__(self) -> Timer:
        if not self._running:
            self._begin()
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if self._running:
            self._end(time.perf_counter())

    def _begin(self) -> None:
        if self._detached:
            self._rejoin()
        if self._rusage:
            self._utime_start, self._stime_start = rusage.cpu_times()
        self._running = True
        self._start = time.perf_counter()

    def _end(self, now: float) -> None:
        """Add the run that ends at ``now`` (a perf_counter() reading)."""
        self._value += now - self._start
        self._hits += 1
        self._running = False
        if self._rusage:
            self._add_cpu()

    def _rejoin(self) -> None:
        self._detached = False
        collector = self._collector
        if collector is not None and collector.add_timer(self) is not self:
            self._collector = None  # its request has ended: measured here, never sent

    def _add_cpu(self) -> None:
        utime, stime = rusage.cpu_times()
        self._utime += utime - self._utime_start
        self._stime += stime - self._stime_start

    def hand_over(self) -> tuple:
        """What the timer measured so far, as the encoder takes a timer; it starts afresh.

        A stopped timer also leaves its request (its request sends what was
        handed over): started again, it rejoins it. A running one goes on
        from now. Its request calls this to flush it or merge it with others.
        """
        if self._running:
            now = time.perf_counter()
            self._end(now)
            self._running = True
            self._start = now
            if self._rusage:
                self._utime_start, self._stime_start = rusage.cpu_times()
        else:
            self._detached = True
        measured: tuple = (self._tags, self._value, self._hits, self._utime, self._stime)
        if self._names is not None:  # keyword tags: the encoder pairs names and values
            measured += (self._names,)
        self._value = self._utime = self._stime = 0.0
        self._hits = 0
        return measured

    def add(self, value: float, hit_count: int = 1) -> Timer:
        """Add a duration measured elsewhere (seconds) and ``hit_count`` hits."""
        if isinstance(hit_count, bool) or not isinstance(hit_count, int):
            raise TypeError(f"hit_count must be an int, not {type(hit_count).__name__}")
        if hit_count < 1:
            raise ValueError(f"hit_count must be >= 1, got {hit_count}")
        value = check_seconds("value", value)
        if self._detached:
            self._rejoin()
        self._value += value
        self._hits += hit_count
        return self

    def __call__(self, func: F) -> F:
        """Decorate ``func``: each call is timed by a fresh clone of this timer.

        On an ``async def`` function the awaited call is timed; on a
        generator or async generator function, the whole iteration.
        """
        return _decorate(func, self.clone)

    # -- managing ----------------------------------------------------------

    def clone(self) -> Timer | NoopTimer:
        """A new, stopped timer with the same tags and data, in the same request.

        Once the request has ended, the ``NOOP_TIMER``: nothing more is sent for it.
        """
        collector = self._collector
        twin = _init_timer(Timer.__new__(Timer), self._tags, self._names, self._rusage, collector)
        twin.data = self.data
        if collector is not None:
            return collector.add_timer(twin)
        return twin

    def delete(self) -> None:
        """Forget the timer: it will not be sent."""
        collector = self._collector
        if collector is not None:
            self._collector = None
            self._detached = False
            try:
                collector._timers.remove(self)
            except ValueError:
                pass

    # -- reading -----------------------------------------------------------

    @property
    def tags(self) -> TagPairs:
        """The flattened (name, value) pairs sent with the timer.

        Assign a mapping to replace them (checked and flattened at once).
        """
        tags = self._tags
        if self._names is not None:
            return tuple(zip(self._names, tags, strict=True))
        return tuple(tags.items()) if isinstance(tags, dict) else tags

    @tags.setter
    def tags(self, tags: Mapping[str, Any]) -> None:
        self._tags = _timer_tags(dict(tags) if type(tags) is dict else tags)
        self._names = None

    @property
    def started(self) -> bool:
        """Whether the timer is running."""
        return self._running

    @property
    def elapsed(self) -> float:
        """Seconds measured so far, including the current run."""
        if not self._running:
            return self._value
        return self._value + (time.perf_counter() - self._start)

    @property
    def hit_count(self) -> int:
        """Completed runs plus the hits given to add()."""
        return self._hits

    @property
    def ru_utime(self) -> float:
        """User CPU seconds measured (0.0 unless per-timer CPU is on)."""
        return self._utime

    @property
    def ru_stime(self) -> float:
        """System CPU seconds measured (0.0 unless per-timer CPU is on)."""
        return self._stime

    def __repr__(self) -> str:
        state = "started" if self._running else "stopped"
        return f"<Timer {dict(self.tags)!r} {state} elapsed={self.elapsed:.6f}s>"


def check_seconds(name: str, value: Any) -> float:
    """``value`` as a float of seconds: finite and >= 0; else TypeError/ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    try:
        seconds = float.__float__(value) if isinstance(value, float) else int.__float__(value)
    except OverflowError:
        seconds = math.inf
    if not 0 <= seconds < math.inf:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return seconds


def _timer_tags(tags: Mapping[str, Any]) -> dict | TagPairs:
    """The tags as stored: the dict itself when it needs no flattening, else pairs."""
    if type(tags) is dict:
        plain = tags
        if plain:
            for name, value in plain.items():
                if type(value) is not str or type(name) is not str or not name:
                    break
            else:
                return plain
    pairs = flatten_tags(tags)
    if not pairs:
        raise ValueError("a timer needs at least one tag, e.g. timer(group='db')")
    return pairs


def _init_timer(
    timer: Timer,
    tags: dict | TagPairs | tuple[str, ...],
    names: tuple[str, ...] | None,
    cpu: bool,
    collector: RequestCollector | None = None,
) -> Timer:
    """``timer`` (new, not initialised) set up stopped and empty, with ``tags`` as stored.

    With ``names``, ``tags`` are the values of these names (non-empty names,
    str values): the keywords of a ``pynba.timer(...)`` call as they came,
    with no dict made (see ``_timer_call.pyx``).
    """
    timer._tags = tags
    timer._names = names
    timer._collector = collector
    timer._running = False
    timer._start = 0.0
    timer._value = 0.0
    timer._hits = 0
    timer._rusage = cpu
    timer._utime = timer._stime = timer._utime_start = timer._stime_start = 0.0
    timer._detached = False  # sent by a flush(): rejoins the request when started
    timer.data = None
    return timer


def new_timer(
    tags: Any, collector: RequestCollector, cpu: bool, names: tuple[str, ...] | None = None
) -> Timer:
    """A timer for ``collector`` with ``tags`` (checked), as ``pynba.timer(...)`` makes it.

    With ``names``, ``tags`` are their values, already checked (see
    ``_init_timer``). The caller adds the timer to the collector's timers.
    """
    if names is None:
        tags = _timer_tags(tags)
    return _init_timer(Timer.__new__(Timer), tags, names, cpu, collector)


def _decorate(func: F, new_timer: Callable[[], Any]) -> F:
    """``func`` wrapped so that each call runs inside ``new_timer()``.

    What is timed is the work the call stands for: the awaited call of a
    coroutine function (or of an object whose ``__call__`` is one), the
    whole iteration of what a generator or async generator function returns.
    """
    if not callable(func):
        raise TypeError(f"a timer decorates a function, not {type(func).__name__}")
    if inspect.isgeneratorfunction(func):

        def timed_generator(*args: Any, **kwargs: Any) -> Any:
            with new_timer():
                return (yield from func(*args, **kwargs))

        return functools.wraps(func)(timed_generator)  # type: ignore[return-value]
    if inspect.isasyncgenfunction(func):

        async def timed_async_generator(*args: Any, **kwargs: Any) -> Any:
            with new_timer():
                iterator = func(*args, **kwargs)
                try:
                    async for item in iterator:
                        yield item
                finally:
                    await iterator.aclose()

        return functools.wraps(func)(timed_async_generator)  # type: ignore[return-value]
    if inspect.iscoroutinefunction(func) or (
        not inspect.isroutine(func) and inspect.iscoroutinefunction(type(func).__call__)
    ):

        async def timed_coroutine(*args: Any, **kwargs: Any) -> Any:
            with new_timer():
                return await func(*args, **kwargs)

        return functools.wraps(func)(timed_coroutine)  # type: ignore[return-value]

    def timed(*args: Any, **kwargs: Any) -> Any:
        with new_timer():
            return func(*args, **kwargs)

    return functools.wraps(func)(timed)  # type: ignore[return-value]


class NoopTimer:
    """The timer of a disabled request: every operation does nothing."""

    __slots__ = ()

    data = None
    tags: TagPairs = ()
    started = False
    elapsed = 0.0
    hit_count = 0
    ru_utime = 0.0
    ru_stime = 0.0

    def start(self) -> NoopTimer:
        return self

    def stop(self) -> NoopTimer:
        return self

    def __enter__(self) -> NoopTimer:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        pass

    def add(self, value: float, hit_count: int = 1) -> NoopTimer:
        return self

    def clone(self) -> NoopTimer:
        return self

    def delete(self) -> None:
        pass

    def __call__(self, func: F) -> F:
        return func

    def __setattr__(self, name: str, value: object) -> None:
        pass  # timer.data = ... is accepted and dropped

    def __repr__(self) -> str:
        return "<NoopTimer>"


#: The one timer every disabled request hands out.
NOOP_TIMER = NoopTimer()

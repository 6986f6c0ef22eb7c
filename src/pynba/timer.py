"""Timers: tagged durations measured inside a request.

A timer is used with ``start()``/``stop()``, as a context manager or as a
decorator. Starting it again after a stop adds to what it measured (one more
hit), as the PHP extension does. Durations come from ``time.perf_counter``.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar

from .rusage import cpu_times
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

    __slots__ = ("_collector", "_tags", "_start", "_value", "_hits", "_cpu", "_detached", "data")

    def __init__(
        self,
        tags: Mapping[str, Any],
        collector: RequestCollector | None = None,
        cpu: bool = False,
        data: Any = None,
    ) -> None:
        for name, value in tags.items():
            if type(value) is not str or type(name) is not str or not name:
                self._tags = _timer_tags(tags)
                break
        else:
            self._tags = tags if type(tags) is dict and tags else _timer_tags(tags)
        self._collector = collector
        self._start = None
        self._value = 0.0
        self._hits = 0
        self._cpu = [0.0, 0.0, 0.0, 0.0] if cpu else None
        self._detached = False  # sent by a flush(): rejoins the request when started
        self.data = data
        if collector is not None:
            collector._timers.append(self)

    # -- measuring ---------------------------------------------------------

    def start(self) -> Timer:
        """Start measuring; RuntimeError if the timer is already running."""
        if self._start is not None:
            raise RuntimeError(f"{self!r} is already started")
        if self._detached:
            self._rejoin()
        if self._cpu is not None:
            self._cpu[2:] = cpu_times()
        self._start = perf_counter()
        return self

    def stop(self) -> Timer:
        """Stop measuring and add the time since start(); RuntimeError if not running.

        A timer that its request's end already stopped (and sent) may be
        stopped again: code that runs on after the response, such as an ASGI
        application after its last body message, must not fail.
        """
        start = self._start
        if start is None:
            collector = self._collector
            if collector is not None and collector._finished:
                return self
            raise RuntimeError(f"{self!r} is not started")
        self._value += perf_counter() - start
        self._hits += 1
        self._start = None
        if self._cpu is not None:
            self._add_cpu()
        return self

    def __enter__(self) -> Timer:
        if self._start is None:
            if self._detached:
                self._rejoin()
            if self._cpu is not None:
                self._cpu[2:] = cpu_times()
            self._start = perf_counter()
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        start = self._start
        if start is not None:
            self._value += perf_counter() - start
            self._hits += 1
            self._start = None
            if self._cpu is not None:
                self._add_cpu()

    def _rejoin(self) -> None:
        self._detached = False
        collector = self._collector
        if collector is not None:
            collector._timers.append(self)

    def _add_cpu(self) -> None:
        cpu = self._cpu
        utime, stime = cpu_times()
        cpu[0] += utime - cpu[2]
        cpu[1] += stime - cpu[3]

    def add(self, value: float, hit_count: int = 1) -> Timer:
        """Add a duration measured elsewhere (seconds) and ``hit_count`` hits."""
        if isinstance(hit_count, bool) or not isinstance(hit_count, int):
            raise TypeError(f"hit_count must be an int, not {type(hit_count).__name__}")
        if hit_count < 1:
            raise ValueError(f"hit_count must be >= 1, got {hit_count}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"value must be a number of seconds, not {type(value).__name__}")
        if not 0 <= value < math.inf:
            raise ValueError(f"value must be a finite number of seconds >= 0, got {value!r}")
        if self._detached:
            self._rejoin()
        self._value += value
        self._hits += hit_count
        return self

    def __call__(self, func: F) -> F:
        """Decorate ``func``: each call is timed by a fresh clone of this timer.

        On an ``async def`` function the awaited call is timed.
        """
        return _decorate(func, self.clone)

    # -- managing ----------------------------------------------------------

    def clone(self) -> Timer:
        """A new, stopped timer with the same tags and data, in the same request."""
        twin = Timer.__new__(Timer)
        twin._tags = self._tags
        twin._collector = collector = self._collector
        twin._start = None
        twin._value = 0.0
        twin._hits = 0
        twin._cpu = None if self._cpu is None else [0.0, 0.0, 0.0, 0.0]
        twin._detached = False
        twin.data = self.data
        if collector is not None:
            collector._timers.append(twin)
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
        return tuple(tags.items()) if isinstance(tags, dict) else tags

    @tags.setter
    def tags(self, tags: Mapping[str, Any]) -> None:
        self._tags = _timer_tags(tags)

    @property
    def started(self) -> bool:
        """Whether the timer is running."""
        return self._start is not None

    @property
    def elapsed(self) -> float:
        """Seconds measured so far, including the current run."""
        start = self._start
        if start is None:
            return self._value
        return self._value + (perf_counter() - start)

    @property
    def hit_count(self) -> int:
        """Completed runs plus the hits given to add()."""
        return self._hits

    @property
    def ru_utime(self) -> float:
        """User CPU seconds measured (0.0 unless per-timer CPU is on)."""
        return 0.0 if self._cpu is None else self._cpu[0]

    @property
    def ru_stime(self) -> float:
        """System CPU seconds measured (0.0 unless per-timer CPU is on)."""
        return 0.0 if self._cpu is None else self._cpu[1]

    def __repr__(self) -> str:
        state = "started" if self._start is not None else "stopped"
        return f"<Timer {dict(self.tags)!r} {state} elapsed={self.elapsed:.6f}s>"


def _timer_tags(tags: Mapping[str, Any]) -> dict | TagPairs:
    """The tags as stored: the dict itself when it needs no flattening, else pairs."""
    if type(tags) is dict:
        for name, value in tags.items():
            if type(value) is not str or type(name) is not str or not name:
                break
        else:
            if tags:
                return tags
    pairs = flatten_tags(tags)
    if not pairs:
        raise ValueError("a timer needs at least one tag, e.g. timer(group='db')")
    return pairs


def _decorate(func: F, new_timer: Callable[[], Any]) -> F:
    """``func`` wrapped so that each call runs inside ``new_timer()``."""
    if not callable(func):
        raise TypeError(f"a timer decorates a function, not {type(func).__name__}")
    if inspect.iscoroutinefunction(func):

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

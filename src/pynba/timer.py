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
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from . import rusage
from ._implementation import check_self_types, wrong_self
from .rusage import cpu_times  # re-exported, as before
from .tags import TagPairs, TagValue, timer_tags

if TYPE_CHECKING:
    from .collector import RequestCollector

__all__ = ["NOOP_TIMER", "NoopTimer", "Timer", "TimerRecord", "cpu_times", "decorate"]

F = TypeVar("F", bound=Callable[..., Any])

#: A timer as the encoder takes it: (tags, seconds, hit count, user CPU, system CPU).
TimerRecord = tuple[TagPairs, float, int, float, float]


class Timer:
    """A tagged duration: ``with timer:``, ``timer.start()``/``timer.stop()`` or ``@timer``.

    ``data`` is yours: attached to the timer, never sent. A timer given a
    ``collector`` (as ``pynba.timer(...)`` makes it) is sent with that
    request; when the request ends while the timer runs, it is stopped first.
    """

    __slots__ = (
        "_collector",
        "_names",
        "_values",
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
        tags: Mapping[str, Any] | Iterable[tuple[str, Any]],
        collector: RequestCollector | None = None,
        cpu: bool = False,
        data: Any = None,
    ) -> None:
        names, values = timer_tags(tags)
        self._setup(names, values, cpu, data)
        if collector is not None:
            self._join(collector)

    @staticmethod
    def of_request(
        collector: RequestCollector, names: tuple[str, ...], values: tuple[TagValue, ...], cpu: bool
    ) -> Timer:
        """A timer of ``collector`` with tags checked and split already (see ``timer_tags``).

        The request adds it to its timers (see ``RequestCollector.new_timer``).
        Compiled, this spares ``Timer(...)``'s generic call and second check
        of the tags: about 0.05 us a timer.
        """
        timer: Timer = Timer.__new__(Timer)
        timer._setup(names, values, cpu, None)
        timer._collector = collector
        return timer

    @staticmethod
    def of_call(
        collector: RequestCollector,
        names: tuple[str, ...],
        values: tuple[TagValue, ...],
        cpu: bool,
        seconds: float,
    ) -> Timer:
        """``of_request()``, stopped, with one hit of ``seconds`` (a call timed by a hook).

        Compiled, a C function: a hook's timer made and measured without a
        Python-level call of ``add()``.
        """
        if not 0 <= seconds < _INFINITY:  # NaN is neither
            raise ValueError(f"seconds must be a finite number of seconds >= 0, got {seconds!r}")
        timer: Timer = Timer.of_request(collector, names, values, cpu)
        timer._value = seconds
        timer._hits = 1
        return timer

    def _setup(
        self, names: tuple[str, ...], values: tuple[TagValue, ...], cpu: bool, data: Any
    ) -> None:
        self._names = names
        self._values = values
        self._collector: RequestCollector | None = None
        self._running = False
        self._start = 0.0
        self._value = 0.0
        self._hits = 0
        self._rusage = bool(cpu)
        self._utime = self._stime = self._utime_start = self._stime_start = 0.0
        self._detached = False  # handed over by a flush: rejoins its request when started
        self.data = data

    def _join(self, collector: RequestCollector) -> None:
        # A request that has ended takes no more timers: this one measures, never sent.
        if collector.add_timer(self) is self:
            self._collector = collector

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
        if not isinstance(self, Timer):  # see _implementation.check_self_types
            raise wrong_self(Timer, "__enter__", self)
        if not self._running:
            self._begin()
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if not isinstance(self, Timer):  # see _implementation.check_self_types
            raise wrong_self(Timer, "__exit__", self)
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
        self._collector = None
        if collector is not None:
            self._join(collector)

    def _add_cpu(self) -> None:
        utime, stime = rusage.cpu_times()
        self._utime += utime - self._utime_start
        self._stime += stime - self._stime_start

    def add(self, value: float, hit_count: int = 1) -> Timer:
        """Add a duration measured elsewhere (seconds) and ``hit_count`` hits."""
        if type(hit_count) is not int and (
            isinstance(hit_count, bool) or not isinstance(hit_count, int)
        ):
            raise TypeError(f"hit_count must be an int, not {type(hit_count).__name__}")
        if hit_count < 1:
            raise ValueError(f"hit_count must be >= 1, got {hit_count}")
        seconds: float = check_seconds("value", value)  # compiled, a C double: no float made
        if self._detached:
            self._rejoin()
        self._value += seconds
        self._hits += hit_count
        return self

    def __call__(self, func: F) -> F:
        """Decorate ``func``: each call is timed by a fresh clone of this timer.

        On an ``async def`` function the awaited call is timed; on a
        generator or async generator function, the whole iteration.
        """
        return decorate(func, self.clone)

    # -- what its request sends ----------------------------------------------

    def hand_over(self) -> TimerRecord:
        """What the timer measured so far, as the encoder takes a timer; it starts afresh.

        A stopped timer also leaves its request (its request sends what was
        handed over): started again, it rejoins it. A running one goes on
        from now. Its request calls this to flush it.
        """
        value, hits, utime, stime = self.hand_over_measures()
        return (self.tags, value, hits, utime, stime)

    def hand_over_measures(self) -> tuple[float, int, float, float]:
        """``hand_over()`` without the tags: (seconds, hits, user CPU, system CPU).

        Its request merges timers by ``tag_set`` with this, making the
        pairs of each tag set once, not once a timer.
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
        measured = (self._value, self._hits, self._utime, self._stime)
        self._value = self._utime = self._stime = 0.0
        self._hits = 0
        return measured

    def take_measures(self, ending: bool, keep_running: bool = False) -> Timer | TimerRecord | None:
        """What its request sends of this timer now, or None; called by the request.

        At the request's end (``ending``) a running timer stops, and the timer
        itself goes: the encoder reads it as it stands. A flush takes what it
        measured so far (see ``hand_over``), but leaves a running timer out
        when ``keep_running`` is set. A timer never run gives None.
        """
        if self._running:
            if ending:
                self._end(time.perf_counter())
                return self
            return None if keep_running else self.hand_over()
        if not self._hits:
            return None
        return self if ending else self.hand_over()

    # -- managing ----------------------------------------------------------

    def clone(self) -> Timer | NoopTimer:
        """A new, stopped timer with the same tags and data, in the same request.

        Once the request has ended, the ``NOOP_TIMER``: nothing more is sent for it.
        """
        collector = self._collector
        if collector is None:
            return Timer(self.tags, None, self._rusage, self.data)
        twin = collector.add_timer(
            Timer.of_request(collector, self._names, self._values, self._rusage)
        )
        twin.data = self.data
        return twin

    def delete(self) -> None:
        """Forget the timer: it will not be sent."""
        collector = self._collector
        if collector is not None:
            self._collector = None
            self._detached = False
            collector.remove_timer(self)

    # -- reading -----------------------------------------------------------

    @property
    def tags(self) -> TagPairs:
        """The flattened (name, value) pairs sent with the timer.

        Assign a mapping to replace them (checked and flattened at once).
        """
        names = self._names
        values = self._values
        if len(names) != len(values):  # as the compiled encoder reads a Timer
            raise ValueError("a timer's tag names and values differ in number")
        # Indexed rather than zip(): compiled, this is about 10 times quicker.
        return tuple([(names[i], values[i]) for i in range(len(names))])

    @tags.setter
    def tags(self, tags: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> None:
        self._names, self._values = timer_tags(tags)

    @property
    def tag_set(self) -> tuple[Any, ...]:
        """The tags as (names, values): timers with equal tag sets are one row in a report."""
        values = self._values
        for value in values:
            if type(value) is not str:
                # 1 and 1.0 are equal, but sent as other text: types are part of the key.
                return (self._names, values, tuple([type(v) for v in values]))
        return (self._names, values)

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


_INFINITY = math.inf  # compiled, a C double (see timer.pxd)


def check_seconds(name: str, value: Any) -> float:
    """``value`` as a float of seconds: finite and >= 0; else TypeError/ValueError naming it."""
    if type(value) is float:
        seconds = value  # compiled, a C read of the float (see timer.pxd)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    else:
        try:
            seconds = float.__float__(value) if isinstance(value, float) else int.__float__(value)
        except OverflowError:
            seconds = _INFINITY
    if not 0 <= seconds < _INFINITY:  # NaN is neither
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return seconds


def decorate(func: F, new_timer: Callable[[], Any]) -> F:
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


check_self_types(Timer, self_checking=("__enter__", "__exit__"))

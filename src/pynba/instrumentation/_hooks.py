"""What the integrations share: their timers, started and stopped without ever failing the call.

An integration wraps a library call like this::

    timer = start_timer(("group", "op"), ("db", sql_verb(statement)))
    try:
        return call(...)
    finally:
        stop_timer(timer)

``start_timer`` gives None outside a monitored request (or when monitoring
is disabled there), and ``stop_timer(None)`` does nothing: outside a
request a hook costs a context variable read. A failure inside either is
pynba's own: logged (re-raised in strict mode, as in the test suite), never
passed to the application, and the call goes on untimed.
"""

from __future__ import annotations

import _thread
import functools
import inspect
from collections.abc import Callable
from time import perf_counter
from types import FunctionType
from typing import Any

from .._implementation import pure_python_forced
from ..collector import RequestCollector
from ..context import collector_variable, current_collector
from ..errors import internal_error
from ..tags import TagValue, check_split_tags
from ..timer import NoopTimer, Timer

__all__ = [
    "SQL_VERBS",
    "Patches",
    "add_checked_call",
    "around_calls",
    "bounded",
    "row_count",
    "sql_verb",
    "start_checked_timer",
    "start_timer",
    "stop_timer",
    "takes_exactly",
    "timed_calls",
]

#: The ``op`` tag of a database timer: a statement's verb, or ``other``.
SQL_VERBS = frozenset(["select", "insert", "update", "delete", "begin", "commit", "rollback"])
# Each verb as one string object: a timer's tags then compare by identity.
_VERBS = {verb: verb for verb in SQL_VERBS}

# Statements repeat (an application has few distinct ones): each is read
# once. Bounded, as anything keyed by what the application sends must be.
_VERB_CACHE: dict[Any, str] = {}
_VERB_CACHE_MAX = 1024


def start_timer(
    names: tuple[str, ...], values: tuple[TagValue, ...], collector: Any = None
) -> Timer | NoopTimer | None:
    """A started timer of the current request with these tags; None outside a request.

    ``collector``: the current request's, when the hook has looked it up already.
    """
    if collector is None:
        collector = current_collector()
    if collector is None or not collector.enabled:
        return None
    try:
        check_split_tags(names, values)
    except Exception:
        internal_error("cannot start an automatic timer", False)
        return None
    return start_checked_timer(collector, names, values)


def start_checked_timer(
    collector: Any, names: tuple[str, ...], values: tuple[TagValue, ...]
) -> Timer | NoopTimer | None:
    """``start_timer`` in the enabled request ``collector``, for tags ``check_split_tags`` passed.

    For a hook that makes each set of tags once, and checks it then: not
    again at every call. None once the request has ended: a call made then
    (by a task that outlived its request) is not timed, and is no error of
    the application's, even in strict mode.
    """
    try:
        request: RequestCollector = collector
        if request.finished:
            return None
        timer = request._new_split_timer(names, values)
        timer.start()
    except Exception:
        internal_error("cannot start an automatic timer", False)
        return None
    return timer


def stop_timer(timer: Timer | NoopTimer | None, hit_count: int = 1) -> None:
    """Stop a timer ``start_timer`` gave, counting ``hit_count`` hits (rows of an executemany)."""
    if timer is None:
        return
    try:
        timer.stop()
        if hit_count > 1:
            timer.add(0.0, hit_count - 1)
    except Exception:
        internal_error("cannot stop an automatic timer", False)


def add_checked_call(
    collector: Any, names: tuple[str, ...], values: tuple[TagValue, ...], seconds: float
) -> None:
    """Add a call of ``seconds`` that a hook timed itself to the request ``collector``.

    As one timer with one hit, its tags ones ``check_split_tags`` passed;
    nothing once the request has ended. Cheaper than a started timer: the
    timer is made once, measured. It has no CPU time of its own: where the
    request's timers measure theirs (``timer_rusage``), a hook uses a
    started timer (``start_checked_timer``).
    """
    if collector is None:
        return
    try:
        if type(names) is not tuple or type(values) is not tuple or len(names) != len(values):
            raise TypeError("names and values must be tuples of the same length")
        request: RequestCollector = collector
        request._add_call_timer(names, values, seconds)
    except Exception:
        internal_error("cannot record an automatic timer", False)


#: Where ``timed_calls``' callbacks find an argument of the call: its position, else its keyword.
Pick = tuple[int, str]
_MAX_POSITION = 255  # as _call_hook's
_MAX_PICKS = 3


def timed_calls(
    wrapped: Callable[..., Any],
    enter: Callable[[Any], object],
    done: Callable[..., object],
    failed: Callable[..., object],
    picks: tuple[Pick, ...],
    outermost: set[int] | None = None,
) -> Callable[..., Any]:
    """A hook of ``wrapped`` that times its calls made inside a monitored request.

    Each call is passed on to ``wrapped`` as it came. Inside a request, when
    ``enter(collector)`` says to time it, the arguments at ``picks`` are
    read first (None where the call has none), then the call is timed:
    ``done(collector, seconds, *picked, result)`` gets it when it returns,
    ``failed(collector, seconds, *picked)`` when it raises (the exception
    goes on). An error in a callback is pynba's own (``internal_error``).

    ``outermost``: a set that the hooks of calls that nest share (a
    redirect, a retry, a library's call under another's). A timed call
    holds its thread's ident (``_thread.get_ident()``: a greenlet's, where
    gevent patched it) in the set, and a call made in that thread meanwhile
    is passed on untimed: part of the outer call's timer.

    Compiled, the hook is a C object that hands the call on without
    binding its arguments (``_call_hook``); this function is its twin.
    """
    if type(picks) is not tuple:
        raise TypeError(f"picks must be a tuple of (position, keyword) tuples, not {picks!r}")
    if len(picks) > _MAX_PICKS:
        raise TypeError(f"at most {_MAX_PICKS} picks, not {len(picks)}")
    for pick in picks:
        if not (
            type(pick) is tuple
            and len(pick) == 2
            and type(pick[0]) is int
            and 0 <= pick[0] <= _MAX_POSITION
            and type(pick[1]) is str
        ):
            raise TypeError(f"each of picks must be a (position, keyword) tuple, not {pick!r}")
    for name, callback in (
        ("wrapped", wrapped),
        ("enter", enter),
        ("done", done),
        ("failed", failed),
    ):
        if not callable(callback):
            raise TypeError(f"{name} must be callable, not {callback!r}")
    if outermost is not None and type(outermost) is not set:
        raise TypeError(f"outermost must be a set or None, not {outermost!r}")
    if _c_call_hook is not None:
        return _c_call_hook(wrapped, collector_variable(), enter, done, failed, picks, outermost)

    def hook(*args: Any, **kwargs: Any) -> Any:
        collector = current_collector()
        if collector is None:
            return wrapped(*args, **kwargs)
        try:  # the arguments first, as the C hook reads them (see _call_hook)
            picked = [_argument(args, kwargs, pick) for pick in picks]
            timed = enter(collector)
            thread = 0  # an ident, when outermost is a set
            if timed and outermost is not None:
                thread = _thread.get_ident()  # looked up each time: gevent may patch it
                if type(thread) is not int:  # hashed as it was when put in: an int's hash is
                    raise TypeError(f"_thread.get_ident() gave {type(thread).__name__}, not int")
                timed = thread not in outermost
        except Exception:
            internal_error("cannot start an automatic timer", False)
            timed = False
        if not timed:
            return wrapped(*args, **kwargs)
        start = perf_counter()
        try:
            # Marked and unmarked inside the try: an exception raised by a
            # signal handler between two lines leaves no mark behind (the C
            # hook runs no Python code between its mark and the call).
            try:
                if outermost is not None:
                    outermost.add(thread)
                result = wrapped(*args, **kwargs)
            finally:
                if outermost is not None:
                    outermost.discard(thread)
        except BaseException:
            seconds = perf_counter() - start
            try:
                failed(collector, seconds, *picked)
            except Exception:
                internal_error("cannot record an automatic timer", False)
            raise
        seconds = perf_counter() - start
        try:
            done(collector, seconds, *picked, result)
        except Exception:
            internal_error("cannot record an automatic timer", False)
        return result

    return hook


def around_calls(
    wrapped: Callable[..., Any],
    begin: Callable[[Any, Any], object],
    end: Callable[[Any], object],
) -> Callable[..., Any]:
    """A hook of ``wrapped`` that brackets its calls made inside a monitored request.

    Each call is passed on to ``wrapped`` as it came. Inside a request,
    ``state = begin(collector, first)`` comes before it (``first``: the
    call's first positional argument, None when it has none); unless
    ``state`` is None, ``end(state)`` comes after it, whether it returns or
    raises. For a timer that must run while the call does (one that calls
    made inside it see). An error in ``begin`` or ``end`` is pynba's own
    (``internal_error``): the call goes on, untimed.

    Compiled, the hook is a C object that hands the call on without
    binding its arguments (``_call_hook``); this function is its twin.
    """
    for name, callback in (("wrapped", wrapped), ("begin", begin), ("end", end)):
        if not callable(callback):
            raise TypeError(f"{name} must be callable, not {callback!r}")
    if _c_around_hook is not None:
        return _c_around_hook(wrapped, collector_variable(), begin, end)

    def hook(*args: Any, **kwargs: Any) -> Any:
        collector = current_collector()
        if collector is None:
            return wrapped(*args, **kwargs)
        try:
            state = begin(collector, args[0] if args else None)
        except Exception:
            internal_error("cannot start an automatic timer", False)
            state = None
        if state is None:
            return wrapped(*args, **kwargs)
        try:
            return wrapped(*args, **kwargs)
        finally:
            try:
                end(state)
            except Exception:
                internal_error("cannot record an automatic timer", False)

    return hook


def _argument(args: tuple[Any, ...], kwargs: dict[str, Any], pick: Pick) -> Any:
    # As the C hook reads a call's keywords: the same string, else an equal one.
    position, keyword = pick
    if position < len(args):
        return args[position]
    for name, value in kwargs.items():
        if name is keyword:
            return value
    for name, value in kwargs.items():
        if name == keyword:
            return value
    return None


_c_call_hook: Callable[..., Any] | None = None
_c_around_hook: Callable[..., Any] | None = None
if not pure_python_forced():
    try:
        from ._call_hook import around_hook as _c_around_hook
        from ._call_hook import call_hook as _c_call_hook
    except ImportError:  # not built: the Python functions serve
        pass


def sql_verb(statement: Any) -> str:
    """The ``op`` tag of ``statement``: its first keyword when in SQL_VERBS, else ``other``.

    Never the statement's text: it carries values and would make every
    query a timer of its own.
    """
    verb = _VERB_CACHE.get(statement) if type(statement) in (str, bytes) else None
    if verb is not None:
        return verb
    try:
        verb = _first_keyword(statement)
    except Exception:  # a composed statement whose str() fails: still timed
        verb = "other"
    if type(statement) in (str, bytes):
        if len(_VERB_CACHE) >= _VERB_CACHE_MAX:
            _VERB_CACHE.clear()
        _VERB_CACHE[statement] = verb
    return verb


def _first_keyword(statement: Any) -> str:
    if isinstance(statement, bytes):
        statement = statement[:200].decode("ascii", "replace")
    elif not isinstance(statement, str):
        statement = str(statement)  # a composed statement (psycopg.sql, SQLAlchemy's text())
    text = statement[:200]
    position = 0
    length = len(text)
    while position < length:
        char = text[position]
        if char.isspace() or char == "(" or char == ";":
            position += 1
        elif text.startswith("--", position):
            end = text.find("\n", position)
            position = length if end < 0 else end + 1
        elif text.startswith("/*", position):
            end = text.find("*/", position + 2)
            position = length if end < 0 else end + 2
        else:
            break
    end = position
    while end < length and text[end].isalpha():
        end += 1
    word = text[position:end].lower()
    if word == "start":  # START TRANSACTION
        return "begin"
    if word == "end":  # END [TRANSACTION], PostgreSQL's COMMIT
        return "commit"
    return _VERBS.get(word, "other")


def bounded(value: str, seen: set[str], limit: int, other: str = "other") -> str:
    """``value`` while ``seen`` holds fewer than ``limit`` distinct values, then ``other``.

    For tags whose values come from outside (remote hosts, template names):
    a Pinba report keeps one row per distinct value.
    """
    if value in seen:
        return value
    if len(seen) >= limit:
        return other
    seen.add(value)
    return value


def row_count(rows: Any) -> int:
    """The hits of an ``executemany(statement, rows)``: its rows, at least 1.

    An iterator is counted 1: its rows are the driver's to take, and so
    is a sequence whose ``len()`` fails.
    """
    try:
        return max(len(rows), 1)
    except Exception:  # the application's object: its fault is the driver's to report
        return 1


# -- replacing a library's functions, and putting them back -------------------


def takes_exactly(
    function: Any,
    positional: tuple[str, ...],
    keyword_only: tuple[str, ...] = (),
    var_keyword: bool = False,
) -> bool:
    """Whether ``function`` is a Python function of exactly these parameters.

    Only then may a hook take them by name and pass them on so. A wrapper
    of another kind may show the ``__code__`` of the function it wraps
    (wrapt's do) yet take ``(*args, **kwargs)`` and read its keywords.
    """
    if type(function) is not FunctionType:
        return False
    code = function.__code__
    count = code.co_argcount
    return (
        code.co_varnames[:count] == positional
        and code.co_varnames[count : count + code.co_kwonlyargcount] == keyword_only
        and not code.co_flags & inspect.CO_VARARGS
        and bool(code.co_flags & inspect.CO_VARKEYWORDS) == var_keyword
    )


_ABSENT = object()


class Patches:
    """The functions of a library an integration replaced with hooks.

    ``replace(owner, name, hook_of)`` sets ``owner.name`` to
    ``hook_of(current)``; ``undo()`` puts back exactly what was there (an
    attribute ``owner`` inherited is deleted again). ``applied`` tells
    whether anything is replaced, for an idempotent ``instrument()``.
    """

    __slots__ = ("_replaced",)

    def __init__(self) -> None:
        self._replaced: list[tuple[Any, str, Any]] = []

    @property
    def applied(self) -> bool:
        return bool(self._replaced)

    def replace(self, owner: Any, name: str, hook_of: Callable[[Any], Any]) -> None:
        current = getattr(owner, name)
        hook = hook_of(current)
        if not isinstance(hook, classmethod):  # whose __wrapped__ cannot be set
            hook = functools.wraps(current)(hook)
        self._replaced.append((owner, name, vars(owner).get(name, _ABSENT)))
        setattr(owner, name, hook)

    def undo(self) -> None:
        while self._replaced:
            owner, name, saved = self._replaced.pop()
            if saved is _ABSENT:
                delattr(owner, name)
            else:
                setattr(owner, name, saved)

"""SQLAlchemy: each statement an engine sends a timer, ``group=db``, ``op=`` its verb, ``db=``.

The dialect's methods that make the DB-API cursor's calls are hooked:
``do_execute``, ``do_executemany`` and ``do_execute_no_params``.
``instrument()`` hooks them in every dialect class (those defined later
too), ``instrument_engine(engine, name)`` in one engine's dialect (the
engines ``execution_options()`` derives from it share it). ``db=`` is the
name given to ``instrument_engine``, else the database of the engine's
URL, else its dialect (``sqlite`` in memory).

Why not SQLAlchemy's events: an engine or dialect with listeners takes a
slower path through every statement, even where a listener has nothing to
do (``before_cursor_execute``: a third more time for a ``SELECT 1`` on
sqlite3; the dialect's own events: 0.2 to 0.5 us a statement, more than
the timer). A dialect event listener of the application's that makes the
call itself (returns True) leaves that statement untimed.

An ``executemany`` counts a hit per parameter set; a batch of SQLAlchemy
2's "insertmanyvalues" (one ``INSERT ... VALUES (...), (...)`` for many
rows) a hit per row inserted, where the driver's ``rowcount`` tells it
(psycopg, psycopg2; sqlite3 counts the rows of a ``RETURNING`` only as
they are fetched: one hit).
"""

from __future__ import annotations

import inspect
import threading
import weakref
from collections.abc import Callable
from types import FunctionType, MethodType
from typing import Any

from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.engine.interfaces import ExecuteStyle

from ..context import current_collector
from ..errors import internal_error
from ..tags import check_split_tags
from ._hooks import Patches, bounded, row_count, sql_verb, start_checked_timer, stop_timer

__all__ = ["instrument", "instrument_engine", "uninstrument", "uninstrument_engine"]

_NAMES = ("group", "op", "db")
#: The dialect methods hooked: the calls of the DB-API cursor.
_METHODS = ("do_execute", "do_executemany", "do_execute_no_params")

#: The database names a timer can carry; beyond, ``db=other``.
DB_NAME_LIMIT = 100
_seen_db_names: set[str] = set()

# Statements an engine sends repeat: the tags of each are made once.
_STATEMENTS_KEPT = 1024
_INSERTMANYVALUES = ExecuteStyle.INSERTMANYVALUES

# The classes' hooks (instrument()), put back by uninstrument().
_patches = Patches()
# Every hook made, a dialect's or a class's, and the method it calls (a
# function of the dialect and the method's arguments): what is pynba's is
# not hooked again, and a hook is not called through another.
_originals: weakref.WeakKeyDictionary[Any, Callable[..., Any]] = weakref.WeakKeyDictionary()
# instrument() and uninstrument(), and the classes defined meanwhile, one at a time.
_lock = threading.RLock()
# The statements a hook is timing, by id() of their execution context: a
# dialect method that calls another hooked one (its base class's, through
# super() or a mixin; with the cursor wrapped, even) adds no second timer.
# By statement, not by thread: the statements of an asyncio engine's
# connections run in one thread, interleaved.
_timing: set[int] = set()
# SQLAlchemy's own methods, as imported (before any hook).
_CURSOR_CALLS = frozenset(vars(DefaultDialect)[method] for method in _METHODS)


class _Engine:
    """An engine's timers: their ``db=`` and each statement's tags."""

    __slots__ = ("db", "tags")

    def __init__(self, db: str) -> None:
        self.db = db
        self.tags: dict[Any, tuple[str, str, str]] = {}

    def tags_of(self, statement: Any) -> tuple[str, str, str]:
        """The tags of a timer of ``statement``, made and checked (then kept)."""
        tags = ("db", sql_verb(statement), self.db)
        check_split_tags(_NAMES, tags)
        if len(self.tags) >= _STATEMENTS_KEPT:
            self.tags.clear()
        self.tags[statement] = tags
        return tags


# Each engine's, by id() of its dialect (an engine's own, shared with the
# engines execution_options() derives from it), forgotten with it.
_engines: dict[int, _Engine] = {}


def _name_engine(engine: Any, name: str | None) -> _Engine:
    dialect = engine.dialect
    if name is None:
        found = engine.url.database or dialect.name
        name = bounded(str(found), _seen_db_names, DB_NAME_LIMIT)
    key = id(dialect)
    if key not in _engines:
        weakref.finalize(dialect, _engines.pop, key, None)
    named = _engines[key] = _Engine(name)
    return named


def _hook(method: str, original: Callable[..., Any]) -> Callable[..., Any]:
    """The dialect method ``method``, timing a request's statements: ``original(dialect, ...)``.

    (The timer is started and stopped in the hook itself: through a shared
    helper taking ``*args``, a statement cost 0.5 to 1 us more. This module
    is compiled in the compiled build: where the hook's code is out of the
    caches between two statements, it then costs about half what it does
    in Python.)
    """
    hook: Callable[..., Any]
    # SQLAlchemy's own methods call the cursor, no other hook: the statement
    # need not be marked as timed (two set operations less a statement).
    leaf = original in _CURSOR_CALLS
    if method == "do_execute_no_params":

        def hook_no_params(self: Any, cursor: Any, statement: Any, context: Any = None) -> Any:
            collector = current_collector()
            if context is None or collector is None or (_timing and id(context) in _timing):
                return original(self, cursor, statement, context)
            timer = key = None
            try:  # all of it: an exception a signal raises must leave no mark
                timer = _start(collector, self, context, statement)
                if not leaf:
                    key = id(context)
                    _timing.add(key)
                return original(self, cursor, statement, context)
            finally:
                if key is not None:
                    _timing.discard(key)
                stop_timer(timer)

        hook = hook_no_params
    else:
        many = method == "do_executemany"

        def hook_execute(
            self: Any, cursor: Any, statement: Any, parameters: Any, context: Any = None
        ) -> Any:
            collector = current_collector()
            if context is None or collector is None or (_timing and id(context) in _timing):
                return original(self, cursor, statement, parameters, context)
            hits = row_count(parameters) if many else 1
            timer = key = None
            try:  # all of it: an exception a signal raises must leave no mark
                timer = _start(collector, self, context, statement)
                if not leaf:
                    key = id(context)
                    _timing.add(key)
                result = original(self, cursor, statement, parameters, context)
                if getattr(context, "execute_style", None) is _INSERTMANYVALUES:
                    hits = _rows_inserted(cursor)
            finally:
                if key is not None:
                    _timing.discard(key)
                stop_timer(timer, hits)
            return result

        hook = hook_execute
    _originals[hook] = original
    return hook


def _start(collector: Any, dialect: Any, context: Any, statement: Any) -> Any:
    """The started timer of ``statement`` in ``collector``'s request; None if it has no tags."""
    if not collector.enabled:
        return None
    try:
        engine = _engines.get(id(dialect)) or _name_engine(context.engine, None)
        tags = engine.tags.get(statement) or engine.tags_of(statement)
    except Exception:  # an engine or a statement pynba cannot read: the call goes on untimed
        internal_error("cannot tag a SQLAlchemy statement's timer", False)
        return None
    return start_checked_timer(collector, _NAMES, tags)  # checked when made


def _rows_inserted(cursor: Any) -> int:
    """The rows of one statement of a batched insert ("insertmanyvalues"), at least 1."""
    try:
        rows = cursor.rowcount
    except Exception:  # the driver's; the statement ran
        return 1
    return rows if type(rows) is int and rows > 1 else 1


def _original_of(attribute: Any) -> Callable[..., Any] | None:
    """What the hook ``attribute`` calls; None when it is not pynba's."""
    try:
        return _originals.get(getattr(attribute, "__func__", attribute))
    except TypeError:  # not weakly referable: not a hook
        return None


def _of_dialect(attribute: Any) -> Callable[..., Any]:
    """A dialect class's ``attribute`` (a method, a staticmethod...) as a function of a dialect."""
    found = _original_of(attribute)
    if found is not None:
        return found
    if type(attribute) is FunctionType:
        return attribute

    def call(self: Any, *args: Any) -> Any:
        return attribute.__get__(self, type(self))(*args)

    return call


def _hook_class(cls: type) -> None:
    """Hook the methods ``cls`` defines itself, while ``instrument()`` is on."""
    with _lock:
        if not _patches.applied:  # turned off since the class's definition began
            return
        try:
            for method in _METHODS:
                if method not in vars(cls):
                    continue
                defined = vars(cls)[method]
                original = _of_dialect(defined)
                if _original_of(defined) is not None:
                    # Another class's hook, copied (do_execute = Base.do_execute):
                    # what it calls is what uninstrument() leaves there.
                    setattr(cls, method, original)

                def hook_of(current: Any, method: str = method, original: Any = original) -> Any:
                    return _hook(method, original)

                _patches.replace(cls, method, hook_of)
        except Exception:  # never in the way of the application, nor of a class's definition
            internal_error(f"cannot time the statements of SQLAlchemy's {cls.__name__}", False)


def _subclass_hook(current: Callable[..., Any]) -> classmethod[Any, Any, None]:
    """``DefaultDialect.__init_subclass__``: a dialect class defined later is hooked too."""
    own = vars(DefaultDialect).get("__init_subclass__")  # SQLAlchemy's, should it have one

    def __init_subclass__(cls: Any, **kwargs: Any) -> None:
        if own is None:
            super(DefaultDialect, cls).__init_subclass__(**kwargs)
        else:
            own.__get__(cls, cls)(**kwargs)
        _hook_class(cls)

    return classmethod(__init_subclass__)


def instrument() -> None:
    """Time the statements of every engine (idempotent)."""
    with _lock:
        if _patches.applied:
            return
        _patches.replace(DefaultDialect, "__init_subclass__", _subclass_hook)
        pending: list[type] = [DefaultDialect]
        seen: set[type] = set()
        while pending:  # the dialect classes, each once
            cls = pending.pop()
            if cls not in seen:
                seen.add(cls)
                _hook_class(cls)
                pending.extend(cls.__subclasses__())


def uninstrument() -> None:
    """Stop timing every engine (those given to ``instrument_engine`` stay timed; idempotent)."""
    with _lock:
        _patches.undo()


def instrument_engine(engine: Any, name: str | None = None) -> None:
    """Time the statements of ``engine`` (an ``AsyncEngine`` too), as ``db=name`` when given."""
    engine = getattr(engine, "sync_engine", engine)
    _name_engine(engine, name)
    dialect = engine.dialect
    for method in _METHODS:
        if _original_of(vars(dialect).get(method)) is None:
            original = _of_dialect(inspect.getattr_static(type(dialect), method))
            setattr(dialect, method, MethodType(_hook(method, original), dialect))


def uninstrument_engine(engine: Any) -> None:
    """Stop timing ``engine`` (unless ``instrument()`` times every engine)."""
    dialect = getattr(engine, "sync_engine", engine).dialect
    for method in _METHODS:
        if _original_of(vars(dialect).get(method)) is not None:
            delattr(dialect, method)

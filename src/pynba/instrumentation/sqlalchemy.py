"""SQLAlchemy: each statement an engine sends a timer, ``group=db``, ``op=`` its verb, ``db=``.

``instrument()`` listens to every engine's dialect events (``do_execute``,
``do_executemany``, ``do_execute_no_params``: the calls of the DB-API
cursor); ``instrument_engine(engine, name)`` to one engine's. ``db=`` is
the name given to ``instrument_engine``, else the database of the engine's
URL, else its dialect (``sqlite`` in memory).

Why not ``before_cursor_execute`` and ``after_cursor_execute``: an engine
with a listener of those takes a slower path through every execution (a
third more time for a ``SELECT 1`` on sqlite3); with the dialect's events
it does not. Inside a monitored request the handler makes the dialect's
call itself, in the timer; outside one, or when another listener of the
same event is there (SQLAlchemy would call only the first that makes the
call), it leaves the call to SQLAlchemy, untimed.

An ``executemany`` counts a hit per parameter set; a batch of SQLAlchemy
2's "insertmanyvalues" (one ``INSERT ... VALUES (...), (...)`` for many
rows) a hit per row inserted.
"""

from __future__ import annotations

import weakref
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.engine.interfaces import ExecuteStyle

from ..context import current_collector
from ._hooks import bounded, row_count, sql_verb, start_timer, stop_timer

__all__ = ["instrument", "instrument_engine", "uninstrument", "uninstrument_engine"]

_NAMES = ("group", "op", "db")

#: The database names a timer can carry; beyond, ``db=other``.
DB_NAME_LIMIT = 100
_seen_db_names: set[str] = set()

# Statements an engine sends repeat: the tags of each are made once.
_STATEMENTS_KEPT = 1024
_INSERTMANYVALUES = ExecuteStyle.INSERTMANYVALUES


class _Engine:
    """An engine's timers: their ``db=``, each statement's tags, the events pynba handles."""

    __slots__ = ("db", "tags", "handled")

    def __init__(self, db: str) -> None:
        self.db = db
        self.tags: dict[Any, tuple[str, str, str]] = {}
        #: The events whose calls pynba makes; None until the engine's first
        #: statement in a request (see ``_first_statement``).
        self.handled: frozenset[str] | None = None

    def tags_of(self, statement: Any) -> tuple[str, str, str]:
        """The tags of a timer of ``statement`` (made once, then kept)."""
        tags = ("db", sql_verb(statement), self.db)
        if len(self.tags) >= _STATEMENTS_KEPT:
            self.tags.clear()
        try:
            self.tags[statement] = tags
        except TypeError:  # a statement that cannot be a key: its tags are made each time
            pass
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


def _first_statement(context: Any) -> _Engine:
    """The engine of ``context``, the events pynba handles for it decided.

    pynba makes an event's call (and SQLAlchemy skips the listeners after
    its own) only where its listener is the event's only one. Decided at the
    engine's first statement in a request (again after each ``instrument``
    call): a listener of another registered later is not seen.
    """
    dialect = context.dialect
    engine = _engines.get(id(dialect))
    if engine is None:
        engine = _name_engine(context.engine, None)
    engine.handled = frozenset(
        name for name, handler in _LISTENERS if _alone(getattr(dialect.dispatch, name), handler)
    )
    return engine


def _alone(listeners: Any, handler: Any) -> bool:
    return all(listener is handler for listener in listeners)


# Each handler makes the dialect's own call inside the timer and tells
# SQLAlchemy it did (True), or leaves the call to SQLAlchemy (False):
# outside a request, and where pynba does not handle the event.


def _do_execute(cursor: Any, statement: Any, parameters: Any, context: Any) -> bool:
    if context is None or current_collector() is None:
        return False
    engine = _engines.get(id(context.dialect))
    if engine is None or engine.handled is None:
        engine = _first_statement(context)
    if "do_execute" not in engine.handled:  # type: ignore[operator]
        return False
    timer = start_timer(_NAMES, engine.tags.get(statement) or engine.tags_of(statement))
    hits = 1
    try:
        context.dialect.do_execute(cursor, statement, parameters, context)
        if context.execute_style is _INSERTMANYVALUES:
            hits = _rows_inserted(cursor)
    finally:
        stop_timer(timer, hits)
    return True


def _do_executemany(cursor: Any, statement: Any, parameters: Any, context: Any) -> bool:
    timer = _start(context, statement, "do_executemany")
    if timer is None:
        return False
    call = context.dialect.do_executemany
    return _timed(timer, row_count(parameters), call, cursor, statement, parameters, context)


def _do_execute_no_params(cursor: Any, statement: Any, context: Any) -> bool:
    timer = _start(context, statement, "do_execute_no_params")
    if timer is None:
        return False
    return _timed(timer, 1, context.dialect.do_execute_no_params, cursor, statement, context)


def _start(context: Any, statement: Any, event_name: str) -> Any:
    """The started timer of ``statement``; None to leave the call to SQLAlchemy."""
    if context is None or current_collector() is None:
        return None
    engine = _engines.get(id(context.dialect))
    if engine is None or engine.handled is None:
        engine = _first_statement(context)
    if event_name not in engine.handled:  # type: ignore[operator]
        return None
    return start_timer(_NAMES, engine.tags.get(statement) or engine.tags_of(statement))


def _timed(timer: Any, hits: int, call: Any, *args: Any) -> bool:
    try:
        call(*args)
    finally:
        stop_timer(timer, hits)
    return True


def _rows_inserted(cursor: Any) -> int:
    """The rows of one statement of a batched insert ("insertmanyvalues"), at least 1."""
    try:
        rows = cursor.rowcount
    except Exception:  # the driver's; the statement ran
        return 1
    return rows if type(rows) is int and rows > 1 else 1


_LISTENERS = (
    ("do_execute", _do_execute),
    ("do_executemany", _do_executemany),
    ("do_execute_no_params", _do_execute_no_params),
)


def instrument() -> None:
    """Time the statements of every engine."""
    for name, listener in _LISTENERS:
        if not event.contains(Engine, name, listener):
            event.listen(Engine, name, listener)
    _decide_again()


def uninstrument() -> None:
    """Stop timing every engine (those given to ``instrument_engine`` stay timed)."""
    for name, listener in _LISTENERS:
        if event.contains(Engine, name, listener):
            event.remove(Engine, name, listener)


def instrument_engine(engine: Any, name: str | None = None) -> None:
    """Time the statements of ``engine`` (an ``AsyncEngine`` too), as ``db=name`` when given."""
    engine = getattr(engine, "sync_engine", engine)
    _name_engine(engine, name)
    for event_name, listener in _LISTENERS:
        if not event.contains(engine, event_name, listener):
            event.listen(engine, event_name, listener)
    _decide_again()


def _decide_again() -> None:
    # The events pynba handles, decided anew at each engine's next statement.
    for known in _engines.values():
        known.handled = None


def uninstrument_engine(engine: Any) -> None:
    """Stop timing ``engine`` (unless ``instrument()`` times every engine)."""
    engine = getattr(engine, "sync_engine", engine)
    for event_name, listener in _LISTENERS:
        if event.contains(engine, event_name, listener):
            event.remove(engine, event_name, listener)

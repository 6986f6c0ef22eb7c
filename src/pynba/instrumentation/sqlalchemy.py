"""SQLAlchemy: each statement an engine sends a timer, ``group=db``, ``op=`` its verb, ``db=``.

``instrument()`` listens to every engine's events (``before_cursor_execute``,
``after_cursor_execute``, and ``handle_error``, which stops the timer of a
statement that failed); ``instrument_engine(engine, name)`` to one
engine's. ``db=`` is the name given to ``instrument_engine``, else the
database of the engine's URL, else its dialect (``sqlite`` in memory).

An ``executemany`` counts a hit per parameter set; a batch of SQLAlchemy
2's "insertmanyvalues" (one ``INSERT ... VALUES (...), (...)`` for many
rows) a hit per row inserted.
"""

from __future__ import annotations

import weakref
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from ._hooks import bounded, sql_verb, start_timer, stop_timer

try:
    from sqlalchemy.engine.interfaces import ExecuteStyle

    _EXECUTEMANY: Any = ExecuteStyle.EXECUTEMANY
    _INSERTMANYVALUES: Any = ExecuteStyle.INSERTMANYVALUES
except ImportError:  # SQLAlchemy 1.4: executemany only
    _EXECUTEMANY = _INSERTMANYVALUES = None

__all__ = ["instrument", "instrument_engine", "uninstrument", "uninstrument_engine"]

_NAMES = ("group", "op", "db")

# Where a statement's timer waits for its end: the execution context's own
# attributes, as SQLAlchemy's recipes keep per-statement state (a context
# lives for one execution; its statements run one after another).
_TIMER = "_pynba_timer"

#: The database names a timer can carry; beyond, ``db=other``.
DB_NAME_LIMIT = 100
_seen_db_names: set[str] = set()

# db= of each engine, by id() of its dialect (an engine's own, shared with
# the engines execution_options() derives from it), forgotten with it.
_db_names: dict[int, str] = {}


def _db_name(connection: Any) -> str:
    dialect = connection.dialect
    name = _db_names.get(id(dialect))
    if name is None:
        name = _name_engine(connection.engine, None)
    return name


def _name_engine(engine: Any, name: str | None) -> str:
    dialect = engine.dialect
    if name is None:
        found = engine.url.database or dialect.name
        name = bounded(str(found), _seen_db_names, DB_NAME_LIMIT)
    key = id(dialect)
    if key not in _db_names:
        weakref.finalize(dialect, _db_names.pop, key, None)
    _db_names[key] = name
    return name


def _before_cursor_execute(
    connection: Any,
    cursor: Any,
    statement: Any,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> None:
    # Without a context there is nowhere to keep the timer: untimed.
    if context is None or _TIMER in context.__dict__:  # timed by another listener of ours
        return
    timer = start_timer(_NAMES, ("db", sql_verb(statement), _db_name(connection)))
    if timer is not None:
        context.__dict__[_TIMER] = timer


def _after_cursor_execute(
    connection: Any,
    cursor: Any,
    statement: Any,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> None:
    if context is None:
        return
    timer = context.__dict__.pop(_TIMER, None)
    if timer is None:
        return
    hits = 1
    if executemany:
        style = getattr(context, "execute_style", _EXECUTEMANY)
        if style is _EXECUTEMANY:
            hits = len(parameters)
        elif style is _INSERTMANYVALUES:
            hits = cursor.rowcount  # the rows of this batch's one INSERT
    stop_timer(timer, hits if type(hits) is int and hits > 1 else 1)


def _handle_error(exception_context: Any) -> None:
    context = exception_context.execution_context
    if context is not None:
        stop_timer(context.__dict__.pop(_TIMER, None))


_LISTENERS = (
    ("before_cursor_execute", _before_cursor_execute),
    ("after_cursor_execute", _after_cursor_execute),
    ("handle_error", _handle_error),
)


def instrument() -> None:
    """Time the statements of every engine."""
    for name, listener in _LISTENERS:
        if not event.contains(Engine, name, listener):
            event.listen(Engine, name, listener)


def uninstrument() -> None:
    """Stop timing every engine (those given to ``instrument_engine`` stay timed)."""
    for name, listener in _LISTENERS:
        if event.contains(Engine, name, listener):
            event.remove(Engine, name, listener)


def instrument_engine(engine: Any, name: str | None = None) -> None:
    """Time the statements of ``engine``, as ``db=name`` when given."""
    _name_engine(engine, name)
    for event_name, listener in _LISTENERS:
        if not event.contains(engine, event_name, listener):
            event.listen(engine, event_name, listener)


def uninstrument_engine(engine: Any) -> None:
    """Stop timing ``engine`` (unless ``instrument()`` times every engine)."""
    for event_name, listener in _LISTENERS:
        if event.contains(engine, event_name, listener):
            event.remove(engine, event_name, listener)

"""DB-API 2 drivers: each statement a timer, ``group=db``, ``op=`` its verb, ``db=`` the database.

``instrument()`` wraps the connections that ``sqlite3.connect``,
``psycopg.connect`` (and ``psycopg.Connection.connect``, which pools call),
``psycopg2.connect`` and ``pymysql.connect`` open from then on;
``uninstrument()`` restores those functions. ``wrap_connect(connect)``
does it for any other driver's ``connect``, ``wrap_connection(connection)``
for one connection.

A wrapped connection times ``commit()``, ``rollback()`` and the commit (or
rollback) of its ``with`` block (sqlite3, psycopg, psycopg2), and gives
wrapped cursors, which time ``execute()``, ``executemany()`` (one hit per
row) and ``callproc()``; psycopg's and sqlite3's ``connection.execute()``
too. Everything else goes to the driver's object unchanged, and the
wrappers pass for it (``isinstance(connection, sqlite3.Connection)``).

The connections Django and SQLAlchemy open are left unwrapped: their
integrations (``django_db``, ``sqlalchemy``) time those queries, and
their backends hand the connection to the driver's C functions, which
accept only the driver's own type.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from collections.abc import Callable
from time import perf_counter
from typing import Any

from .. import _recursion
from .._implementation import check_self_types, runs_compiled
from ..context import current_collector
from ._hooks import (
    add_checked_call,
    bounded,
    row_count,
    sql_verb,
    start_checked_timer,
    stop_timer,
)

__all__ = ["instrument", "uninstrument", "wrap_connect", "wrap_connection"]

_NAMES = ("group", "op", "db")

#: The database names a timer can carry; beyond, ``db=other``.
DB_NAME_LIMIT = 100
_seen_db_names: set[str] = set()

# Statements repeat: the tags of each are made once (per connection).
_STATEMENTS_KEPT = 256

# Drivers whose connection commits (rollbacks on an error) at the end of its
# ``with`` block. PyMySQL's closes instead.
_COMMITTING_EXIT = frozenset(["sqlite3", "psycopg", "psycopg2"])

# Callers whose connections other integrations time (see the module's docstring).
_FRAMEWORKS = ("django.db.", "sqlalchemy.")


class _Tags:
    """The tags of a connection's timers: ``db=`` its name, ``op=`` each statement's verb.

    Each a tuple of three str, as ``check_split_tags`` passes them: the
    hooks hand them on unchecked.
    """

    __slots__ = ("db", "commit", "rollback", "other", "_statements")

    def __init__(self, db: str) -> None:
        self.db = db
        self.commit = ("db", "commit", db)
        self.rollback = ("db", "rollback", db)
        self.other = ("db", "other", db)
        self._statements: dict[Any, tuple[str, str, str]] = {}

    def of(self, statement: Any) -> tuple[str, str, str]:
        """The tags of a timer of ``statement``."""
        statements = self._statements
        tags = statements.get(statement) if type(statement) is str else None
        if tags is None:
            tags = ("db", sql_verb(statement), self.db)
            if type(statement) is str:
                if len(statements) >= _STATEMENTS_KEPT:
                    statements.clear()
                statements[statement] = tags
        return tags


# Whether this module runs compiled: its proxies' fields are then C fields.
_COMPILED = runs_compiled(__file__)

# The proxies' own attributes (their slots).
_OWN = frozenset(["_wrapped", "_tags", "_commits_on_exit"])


class _Proxy:
    """A driver's object, that others take for it: what it does not do itself goes to it."""

    __slots__ = ("_wrapped", "_tags")

    def __init__(self, wrapped: Any, tags: _Tags) -> None:
        if _is_wrapper(wrapped):  # a chain of them would recurse in C
            raise TypeError("this object is a pynba wrapper already")
        if _COMPILED:  # C fields, which nothing else can set
            self._wrapped = wrapped
            self._tags = tags
        else:  # the slots: set on the proxy, an attribute is the driver's (__setattr__)
            object.__setattr__(self, "_wrapped", wrapped)
            object.__setattr__(self, "_tags", tags)

    # The forwarding slots count a level of recursion (see _recursion.pxd).
    def __getattr__(self, name: str) -> Any:
        if name in _OWN:  # not set (an instance copy.copy made): no endless recursion
            raise AttributeError(name)
        _recursion.enter_forward()
        try:
            return getattr(self._wrapped, name)
        finally:
            _recursion.leave_forward()

    def __setattr__(self, name: str, value: Any) -> None:
        _recursion.enter_forward()
        try:
            setattr(self._wrapped, name, value)
        finally:
            _recursion.leave_forward()

    def __delattr__(self, name: str) -> None:
        _recursion.enter_forward()
        try:
            delattr(self._wrapped, name)
        finally:
            _recursion.leave_forward()

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # isinstance() sees the driver's object
        return type(self._wrapped)

    def __repr__(self) -> str:
        return repr(self._wrapped)

    # Copied and pickled as the driver's object is (most refuse): a copy
    # is the driver's, untimed.
    def __reduce_ex__(self, protocol: Any) -> Any:
        return self._wrapped.__reduce_ex__(protocol)

    def __copy__(self) -> Any:
        return copy.copy(self._wrapped)

    def __deepcopy__(self, memo: Any) -> Any:
        return copy.deepcopy(self._wrapped, memo)

    def __enter__(self) -> Any:
        wrapped = self._wrapped
        enter = getattr(type(wrapped), "__enter__", None)
        if enter is None:  # as ``with`` says it of the driver's object
            raise TypeError(
                f"'{type(wrapped).__name__}' object does not support the context manager protocol"
            )
        entered = enter(wrapped)
        return self if entered is wrapped else entered


class _Cursor(_Proxy):
    """A DB-API cursor whose statements are timed."""

    __slots__ = ()

    def execute(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        # _timed(), inline: no arguments packed again, a call less a statement.
        cursor = self._wrapped
        collector = current_collector()
        if collector is None or not collector.enabled:
            result = cursor.execute(statement, *args, **kwargs)
        elif collector.timer_rusage:
            timer = start_checked_timer(collector, _NAMES, self._tags.of(statement))
            try:
                result = cursor.execute(statement, *args, **kwargs)
            finally:
                stop_timer(timer)
        else:
            tags = self._tags.of(statement)
            start = perf_counter()
            try:
                result = cursor.execute(statement, *args, **kwargs)
            finally:
                add_checked_call(collector, _NAMES, tags, perf_counter() - start)
        # psycopg and sqlite3 give the cursor back (for chaining): give its wrapper.
        return self if result is cursor else result

    def executemany(self, statement: Any, rows: Any, *args: Any, **kwargs: Any) -> Any:
        cursor = self._wrapped
        tags = self._tags.of(statement)
        result = _timed(tags, row_count(rows), cursor.executemany, statement, rows, *args, **kwargs)
        return self if result is cursor else result

    def callproc(self, *args: Any, **kwargs: Any) -> Any:
        cursor = self._wrapped
        result = _timed(self._tags.other, 1, cursor.callproc, *args, **kwargs)
        return self if result is cursor else result

    # What a cursor does most, besides executing, is spared __getattr__'s detour.
    def fetchone(self) -> Any:
        return self._wrapped.fetchone()

    def fetchmany(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrapped.fetchmany(*args, **kwargs)

    def fetchall(self) -> Any:
        return self._wrapped.fetchall()

    def __iter__(self) -> Any:
        _recursion.enter_forward()
        try:
            return iter(self._wrapped)
        finally:
            _recursion.leave_forward()

    def __next__(self) -> Any:
        _recursion.enter_forward()
        try:
            return next(self._wrapped)
        finally:
            _recursion.leave_forward()

    def __exit__(self, *exc_info: Any) -> Any:
        return type(self._wrapped).__exit__(self._wrapped, *exc_info)


class _Connection(_Proxy):
    """A DB-API connection whose cursors are timed, and its commits and rollbacks."""

    __slots__ = ("_commits_on_exit",)

    def __init__(self, connection: Any, db: str, commits_on_exit: bool) -> None:
        super().__init__(connection, _Tags(db))
        if _COMPILED:
            self._commits_on_exit = commits_on_exit
        else:
            object.__setattr__(self, "_commits_on_exit", commits_on_exit)

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrapped_cursor(self._wrapped.cursor(*args, **kwargs))

    def execute(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        call = self._wrapped.execute
        tags = self._tags.of(statement)
        return self._wrapped_cursor(_timed(tags, 1, call, statement, *args, **kwargs))

    def executemany(self, statement: Any, rows: Any, *args: Any, **kwargs: Any) -> Any:
        call = self._wrapped.executemany
        tags = self._tags.of(statement)
        hits = row_count(rows)
        return self._wrapped_cursor(_timed(tags, hits, call, statement, rows, *args, **kwargs))

    def _wrapped_cursor(self, cursor: Any) -> Any:
        # A cursor a wrapper gave already (a driver's object over a wrapped
        # connection) stays as it is: its statements are timed by that wrapper.
        return cursor if _is_wrapper(cursor) else _Cursor(cursor, self._tags)

    def commit(self) -> Any:
        return _timed(self._tags.commit, 1, self._wrapped.commit)

    def rollback(self) -> Any:
        return _timed(self._tags.rollback, 1, self._wrapped.rollback)

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> Any:
        connection = self._wrapped
        exit_ = type(connection).__exit__
        if not self._commits_on_exit:
            return exit_(connection, kind, error, traceback)
        tags = self._tags.commit if kind is None else self._tags.rollback
        return _timed(tags, 1, exit_, connection, kind, error, traceback)


def _is_wrapper(value: Any) -> bool:
    return issubclass(type(value), _Proxy)


def _timed(tags: tuple[str, str, str], hits: int, call: Any, *args: Any, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)`` timed with ``tags``, counting ``hits``.

    As a Redis command is: a timer made when the call has returned,
    measured (``add_checked_call``), where it is one hit and the request's
    timers do not measure their CPU time; else a timer started before it.
    """
    collector = current_collector()
    if collector is None or not collector.enabled:
        return call(*args, **kwargs)
    if hits != 1 or collector.timer_rusage:
        timer = start_checked_timer(collector, _NAMES, tags)
        try:
            return call(*args, **kwargs)
        finally:
            stop_timer(timer, hits)
    start = perf_counter()
    try:
        return call(*args, **kwargs)
    finally:
        add_checked_call(collector, _NAMES, tags, perf_counter() - start)


def wrap_connection(connection: Any, name: str | None = None) -> Any:
    """``connection`` (of any DB-API 2 driver), its statements timed; ``db=name``.

    Without ``name``, ``db=`` is the database's name where the driver tells
    it (psycopg, psycopg2, PyMySQL), else the driver's module (``sqlite3``).
    A connection wrapped already is returned as it is.
    """
    name = _checked_name(name)
    if issubclass(type(connection), _Connection):
        return connection
    if not _is_connection(connection):
        raise TypeError(f"connection must be a DB-API connection, not {type(connection).__name__}")
    driver = type(connection).__module__.partition(".")[0]
    if name is None:
        name = bounded(_db_name(connection, driver), _seen_db_names, DB_NAME_LIMIT)
    return _Connection(connection, name, driver in _COMMITTING_EXIT)


def _is_connection(connection: Any) -> bool:
    # A connection of DB-API 2: its cursor() called, not awaited.
    kind = type(connection)
    if hasattr(kind, "__aenter__") and not hasattr(kind, "__enter__"):
        return False  # an asyncio driver's (psycopg's AsyncConnection)
    try:
        return not isinstance(connection, type) and callable(connection.cursor)
    except Exception:  # its cursor cannot be read: not a connection to wrap
        return False


def _checked_name(name: Any) -> str | None:
    if name is None or type(name) is str:
        return name
    if isinstance(name, str):  # an enum's member, say: its value
        return str.__str__(name)
    raise TypeError(f"name must be a str or None, not {type(name).__name__}")


def _db_name(connection: Any, driver: str) -> str:
    try:
        if driver in ("psycopg", "psycopg2"):
            name = connection.info.dbname
        elif driver == "pymysql":
            name = connection.db
        else:
            name = None
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
    except Exception:  # a driver of another version: its module names it
        name = None
    return name if isinstance(name, str) and name else driver


def wrap_connect(connect: Callable[..., Any], name: str | None = None) -> Callable[..., Any]:
    """``connect`` (a driver's), whose connections are wrapped (see ``wrap_connection``)."""
    name = _checked_name(name)
    if not callable(connect):
        raise TypeError(f"connect must be callable, not {type(connect).__name__}")

    def timed_connect(*args: Any, **kwargs: Any) -> Any:
        connection = connect(*args, **kwargs)
        if _opened_by_framework() or not _is_connection(connection):
            return connection
        return wrap_connection(connection, name)

    timed_connect.__wrapped__ = connect  # type: ignore[attr-defined]
    timed_connect.__doc__ = connect.__doc__
    return timed_connect


def _opened_by_framework() -> bool:
    # The first frame not of this module opens the connection (compiled,
    # this module's functions have no frames of their own).
    frame = inspect.currentframe()
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back
    module = frame.f_globals.get("__name__", "") if frame is not None else ""
    return isinstance(module, str) and module.startswith(_FRAMEWORKS)


# Each module-level ``connect`` instrument() replaces (PyMySQL's is its Connection class).
_CONNECTS = (
    ("sqlite3", "connect"),
    ("sqlite3.dbapi2", "connect"),
    ("psycopg2", "connect"),
    ("pymysql", "connect"),
    ("pymysql", "Connect"),
)

# What instrument() replaced: (owner, attribute, the original as found in
# the owner's __dict__), restored by uninstrument().
_patched: list[tuple[Any, str, Any]] = []


def instrument() -> None:
    """Time the connections the installed drivers open from now on."""
    if _patched:
        return
    for module_name, attribute in _CONNECTS:
        module = _imported(module_name)
        if module is not None:
            _patch(module, attribute, wrap_connect(getattr(module, attribute)))
    psycopg = _imported("psycopg")
    if psycopg is not None:
        # psycopg.connect is Connection.connect, bound; pools call the classmethod.
        connect = vars(psycopg.Connection)["connect"]
        _patch(psycopg.Connection, "connect", classmethod(_wrap_classmethod(connect.__func__)))
        _patch(psycopg, "connect", psycopg.Connection.connect)


def uninstrument() -> None:
    """Restore the drivers' ``connect`` functions (connections wrapped stay so)."""
    while _patched:
        owner, attribute, original = _patched.pop()
        setattr(owner, attribute, original)


def _imported(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _patch(owner: Any, attribute: str, replacement: Any) -> None:
    _patched.append((owner, attribute, vars(owner)[attribute]))
    setattr(owner, attribute, replacement)


def _wrap_classmethod(function: Callable[..., Any]) -> Callable[..., Any]:
    def connect(cls: type, *args: Any, **kwargs: Any) -> Any:
        connection = function(cls, *args, **kwargs)
        if _opened_by_framework() or not _is_connection(connection):
            return connection
        return wrap_connection(connection)

    connect.__wrapped__ = function  # type: ignore[attr-defined]
    connect.__doc__ = function.__doc__
    return connect


check_self_types(_Proxy, _Cursor, _Connection)

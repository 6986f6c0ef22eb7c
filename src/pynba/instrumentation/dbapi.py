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

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from ._hooks import bounded, row_count, sql_verb, start_timer, stop_timer

__all__ = ["instrument", "uninstrument", "wrap_connect", "wrap_connection"]

_NAMES = ("group", "op", "db")

#: The database names a timer can carry; beyond, ``db=other``.
DB_NAME_LIMIT = 100
_seen_db_names: set[str] = set()

# Drivers whose connection commits (rollbacks on an error) at the end of its
# ``with`` block. PyMySQL's closes instead.
_COMMITTING_EXIT = frozenset(["sqlite3", "psycopg", "psycopg2"])

# Callers whose connections other integrations time (see the module's docstring).
_FRAMEWORKS = ("django.db.", "sqlalchemy.")


class _Cursor:
    """A DB-API cursor whose statements are timed."""

    __slots__ = ("_cursor", "_db")

    def __init__(self, cursor: Any, db: str) -> None:
        object.__setattr__(self, "_cursor", cursor)
        object.__setattr__(self, "_db", db)

    def execute(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        cursor = self._cursor
        timer = start_timer(_NAMES, ("db", sql_verb(statement), self._db))
        try:
            result = cursor.execute(statement, *args, **kwargs)
        finally:
            stop_timer(timer)
        # psycopg and sqlite3 give the cursor back (for chaining): give its wrapper.
        return self if result is cursor else result

    def executemany(self, statement: Any, rows: Any, *args: Any, **kwargs: Any) -> Any:
        cursor = self._cursor
        timer = start_timer(_NAMES, ("db", sql_verb(statement), self._db))
        try:
            result = cursor.executemany(statement, rows, *args, **kwargs)
        finally:
            stop_timer(timer, row_count(rows))
        return self if result is cursor else result

    def callproc(self, *args: Any, **kwargs: Any) -> Any:
        cursor = self._cursor
        timer = start_timer(_NAMES, ("db", "other", self._db))
        try:
            result = cursor.callproc(*args, **kwargs)
        finally:
            stop_timer(timer)
        return self if result is cursor else result

    # What a cursor does most, besides executing, is spared __getattr__'s detour.
    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchmany(self, *args: Any, **kwargs: Any) -> Any:
        return self._cursor.fetchmany(*args, **kwargs)

    def fetchall(self) -> Any:
        return self._cursor.fetchall()

    def __iter__(self) -> Any:
        return iter(self._cursor)

    def __next__(self) -> Any:
        return next(self._cursor)

    def __enter__(self) -> Any:
        entered = _enter(self._cursor)
        return self if entered is self._cursor else entered

    def __exit__(self, *exc_info: Any) -> Any:
        return type(self._cursor).__exit__(self._cursor, *exc_info)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._cursor, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._cursor, name)

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # isinstance() sees the driver's cursor
        return type(self._cursor)

    def __repr__(self) -> str:
        return repr(self._cursor)


class _Connection:
    """A DB-API connection whose cursors are timed, and its commits and rollbacks."""

    __slots__ = ("_connection", "_db", "_commits_on_exit")

    def __init__(self, connection: Any, db: str, commits_on_exit: bool) -> None:
        object.__setattr__(self, "_connection", connection)
        object.__setattr__(self, "_db", db)
        object.__setattr__(self, "_commits_on_exit", commits_on_exit)

    def cursor(self, *args: Any, **kwargs: Any) -> _Cursor:
        return _Cursor(self._connection.cursor(*args, **kwargs), self._db)

    def execute(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        timer = start_timer(_NAMES, ("db", sql_verb(statement), self._db))
        try:
            cursor = self._connection.execute(statement, *args, **kwargs)
        finally:
            stop_timer(timer)
        return _Cursor(cursor, self._db)

    def executemany(self, statement: Any, rows: Any, *args: Any, **kwargs: Any) -> Any:
        timer = start_timer(_NAMES, ("db", sql_verb(statement), self._db))
        try:
            cursor = self._connection.executemany(statement, rows, *args, **kwargs)
        finally:
            stop_timer(timer, row_count(rows))
        return _Cursor(cursor, self._db)

    def commit(self) -> Any:
        timer = start_timer(_NAMES, ("db", "commit", self._db))
        try:
            return self._connection.commit()
        finally:
            stop_timer(timer)

    def rollback(self) -> Any:
        timer = start_timer(_NAMES, ("db", "rollback", self._db))
        try:
            return self._connection.rollback()
        finally:
            stop_timer(timer)

    def __enter__(self) -> Any:
        entered = _enter(self._connection)
        return self if entered is self._connection else entered

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> Any:
        connection = self._connection
        exit_ = type(connection).__exit__
        if not self._commits_on_exit:
            return exit_(connection, kind, error, traceback)
        op = "commit" if kind is None else "rollback"
        timer = start_timer(_NAMES, ("db", op, self._db))
        try:
            return exit_(connection, kind, error, traceback)
        finally:
            stop_timer(timer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._connection, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._connection, name)

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # isinstance() sees the driver's connection
        return type(self._connection)

    def __repr__(self) -> str:
        return repr(self._connection)


def _enter(wrapped: Any) -> Any:
    enter = getattr(type(wrapped), "__enter__", None)
    if enter is None:  # as ``with`` says it of the driver's object
        raise TypeError(
            f"'{type(wrapped).__name__}' object does not support the context manager protocol"
        )
    return enter(wrapped)


def wrap_connection(connection: Any, name: str | None = None) -> Any:
    """``connection`` (of any DB-API 2 driver), its statements timed; ``db=name``.

    Without ``name``, ``db=`` is the database's name where the driver tells
    it (psycopg, psycopg2, PyMySQL), else the driver's module (``sqlite3``).
    A connection wrapped already is returned as it is.
    """
    if type(connection) is _Connection:
        return connection
    driver = type(connection).__module__.partition(".")[0]
    db = (
        name
        if name is not None
        else bounded(_db_name(connection, driver), _seen_db_names, DB_NAME_LIMIT)
    )
    return _Connection(connection, db, driver in _COMMITTING_EXIT)


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

    def timed_connect(*args: Any, **kwargs: Any) -> Any:
        connection = connect(*args, **kwargs)
        if _opened_by_framework():
            return connection
        return wrap_connection(connection, name)

    timed_connect.__wrapped__ = connect  # type: ignore[attr-defined]
    timed_connect.__doc__ = connect.__doc__
    return timed_connect


def _opened_by_framework() -> bool:
    frame = inspect.currentframe()
    # This function's caller is timed_connect; its caller opens the connection.
    caller = frame.f_back.f_back if frame is not None and frame.f_back is not None else None
    module = caller.f_globals.get("__name__", "") if caller is not None else ""
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
        if _opened_by_framework():
            return connection
        return wrap_connection(connection)

    connect.__wrapped__ = function  # type: ignore[attr-defined]
    connect.__doc__ = function.__doc__
    return connect

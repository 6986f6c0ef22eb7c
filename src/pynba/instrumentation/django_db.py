"""Django's ORM: each query a timer, ``group=db``, ``op=`` its verb, ``db=`` the database alias.

``instrument()`` turns it on; pynba's Django middleware calls it when the
``PINBA_INSTRUMENT`` setting names ``db`` or ``django_db`` (or ``all``).
From then on every database connection Django opens (each alias, in each
thread) carries a ``connection.execute_wrapper`` of pynba's, which times
the queries made inside a monitored request: a view's under the
middleware, under WSGI or ASGI, sync or async, and a ``ScriptMonitor``
job's. Elsewhere it only calls the query. An ``executemany`` counts a hit
per parameter set.

Why on the connections rather than around each view: Django's connections
are each thread's own, and under ASGI the ORM runs in a thread of the
request's (``sync_to_async``), not in the one the middleware runs in;
reaching it would cost a thread switch per request, and the wrapper of
each alias about 3 µs per request under WSGI. Installed as each connection
opens (Django's ``connection_created`` signal), it costs nothing per
request.

``uninstrument()`` stops the timing at once. It takes the wrapper off the
connections of the calling thread; those of other threads keep it, doing
nothing but calling the query, until their process ends.

Compiled (typed by ``django_db.pxd``), the wrapper starts and stops its
timer with C calls: about 1,500 instructions a query less than in Python.

Not timed: what does not go through ``execute_wrapper``, such as the
commit or rollback at the end of ``transaction.atomic`` (Django calls the
driver's for them).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings  # type: ignore[import-untyped]
from django.db import connections  # type: ignore[import-untyped]
from django.db.backends.signals import connection_created  # type: ignore[import-untyped]

from ..context import current_collector
from ..errors import internal_error
from ._hooks import row_count, sql_verb, start_timer, stop_timer

__all__ = ["instrument", "instrumented", "uninstrument"]

_NAMES = ("group", "op", "db")
_SIGNAL_UID = "pynba.instrumentation.django_db"

_instrumented = False


def instrument() -> None:
    """Time the queries of the connections Django opens from now on (and this thread's)."""
    global _instrumented
    _instrumented = True
    connection_created.connect(_connection_created, dispatch_uid=_SIGNAL_UID)
    for connection in _opened_here():
        _wrap(connection)


def uninstrument() -> None:
    """Stop timing queries (see the module's docstring)."""
    global _instrumented
    _instrumented = False
    connection_created.disconnect(dispatch_uid=_SIGNAL_UID)
    for connection in _opened_here():
        if _timed_query in connection.execute_wrappers:
            connection.execute_wrappers.remove(_timed_query)


def instrumented() -> bool:
    """Whether queries are timed."""
    return _instrumented


def _opened_here() -> list[Any]:
    """The connections this thread made already (none before Django is configured)."""
    if not settings.configured:
        return []
    return connections.all(initialized_only=True)


def _connection_created(sender: Any, connection: Any, **kwargs: Any) -> None:
    _wrap(connection)


def _wrap(connection: Any) -> None:
    wrappers = connection.execute_wrappers
    if _timed_query not in wrappers:
        # First, as the outermost: ``with connection.execute_wrapper(...)``
        # blocks take theirs off the end of the list.
        wrappers.insert(0, _timed_query)


def _timed_query(execute: Any, sql: Any, params: Any, many: bool, context: Any) -> Any:
    collector = current_collector()
    if not _instrumented or collector is None:
        return execute(sql, params, many, context)
    values = None
    try:
        values = ("db", sql_verb(sql), context["connection"].alias)
    except Exception:  # a context not as Django makes it: the query goes on untimed
        internal_error("cannot start an automatic timer", False)
    if values is None:  # made out of the except: its error is not the query's context
        return execute(sql, params, many, context)
    timer = start_timer(_NAMES, values, collector)
    try:
        return execute(sql, params, many, context)
    finally:
        stop_timer(timer, row_count(params) if many else 1)

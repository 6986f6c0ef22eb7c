"""Django's ORM: each query of a request a timer, ``group=db``, ``op=`` its verb, ``db=`` the alias.

``instrument()`` (or ``PINBA_INSTRUMENT = "db"`` in the settings, or
``"django_db"``) turns it on: from then on pynba's Django middleware
(``pynba.django.PynbaMiddleware``) installs a ``connection.execute_wrapper``
on every database alias for as long as the view runs, and removes it after
(under ASGI, on the connections of the thread running the request's
synchronous code, where Django makes the ORM's calls).
Queries outside those requests (management commands, tasks) are not timed
by it. An ``executemany`` counts a hit per parameter set.

What ``execute_wrapper`` does not see is not timed: the commit or rollback
at the end of ``transaction.atomic`` (Django calls the driver's for them).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import Any

from asgiref.sync import sync_to_async
from django.db import connections  # type: ignore[import-untyped]

from ..errors import internal_error
from ._hooks import row_count, sql_verb, start_timer, stop_timer

__all__ = [
    "instrument",
    "instrumented",
    "timing_queries",
    "timing_queries_async",
    "uninstrument",
]

_NAMES = ("group", "op", "db")
_UNTIMED: AbstractContextManager[None] = nullcontext()

_instrumented = False


def instrument() -> None:
    """Time the queries of the requests pynba's Django middleware monitors."""
    global _instrumented
    _instrumented = True


def uninstrument() -> None:
    """Stop timing queries (from the next request on)."""
    global _instrumented
    _instrumented = False


def instrumented() -> bool:
    """Whether the middleware times queries."""
    return _instrumented


def timing_queries() -> AbstractContextManager[Any]:
    """The middleware's: while in it, every alias's queries are timed (when instrumented)."""
    if not _instrumented:
        return _UNTIMED
    stack = ExitStack()
    try:
        for alias in connections:
            stack.enter_context(connections[alias].execute_wrapper(_timed_query))
    except Exception:
        stack.close()
        internal_error("cannot time the queries of the request", False)
        return _UNTIMED
    return stack


async def timing_queries_async() -> AbstractContextManager[Any]:
    """``timing_queries()`` for an ASGI request, whose ORM calls Django runs in a thread.

    Django's connections are each thread's own: the wrappers go on those of
    the thread where the request's synchronous code runs (the same one
    ``sync_to_async`` picks for the ORM's calls). Leaving the block removes
    them, from any thread: the request's is waiting then.
    """
    if not _instrumented:
        return _UNTIMED
    return await sync_to_async(timing_queries)()


def _timed_query(execute: Any, sql: Any, params: Any, many: bool, context: Any) -> Any:
    timer = start_timer(_NAMES, ("db", sql_verb(sql), context["connection"].alias))
    try:
        return execute(sql, params, many, context)
    finally:
        stop_timer(timer, row_count(params) if many else 1)

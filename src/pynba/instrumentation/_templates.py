"""What the template integrations share (Jinja2, Django): one timer per outermost render.

Tags: ``group=render`` and ``template``, the template's name (a template
made from a string: ``<string>``); at most ``TEMPLATE_LIMIT`` distinct names
per process, then ``<other>``. A template rendered while another renders
(a Django ``{% include %}``, a template a tag or a function renders) is
part of the outer template's timer (``IN_RENDER``): the ``render`` group
adds up the time spent rendering, each moment counted once.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextvars import ContextVar, Token
from typing import Any

from ..context import current_collector
from ..errors import internal_error
from ..names import DEFAULT_NAME_LIMIT, OTHER_NAME
from ..timer import NoopTimer, Timer
from ._hooks import bounded, stop_timer

__all__ = ["IN_RENDER", "STRING_NAME", "TEMPLATE_LIMIT", "async_hook", "sync_hook", "template_tag"]

NAMES = ("group", "template")
GROUP = "render"
#: The ``template`` tag of a template made from a string (it has no name).
STRING_NAME = "<string>"
#: Distinct ``template`` tags per process (as many as a middleware's script names).
TEMPLATE_LIMIT = DEFAULT_NAME_LIMIT

#: Set while a render is timed: the renders inside it are not timed again. A
#: context variable, as Jinja2's asynchronous renders interleave in one thread.
IN_RENDER: ContextVar[bool] = ContextVar("pynba_render", default=False)

_seen_names: set[str] = set()


def template_tag(name: Any) -> str:
    """The ``template`` tag of a template's name (None: made from a string)."""
    if type(name) is not str or not name:
        return STRING_NAME
    if name in _seen_names:
        return name
    return bounded(name, _seen_names, TEMPLATE_LIMIT, OTHER_NAME)


def _start(collector: Any, template: Any) -> Timer | NoopTimer | None:
    try:
        timer = collector.new_checked_timer(
            NAMES, (GROUP, template_tag(getattr(template, "name", None)))
        )
        timer.start()
    except Exception:
        internal_error("cannot start a render's timer", False)
        return None
    return timer


def _stop(timer: Timer | NoopTimer | None, token: Token[bool]) -> None:
    stop_timer(timer)
    try:
        IN_RENDER.reset(token)
    except (ValueError, RuntimeError):  # a coroutine resumed in another context
        internal_error("cannot leave a timed render", False)


def sync_hook(call: Callable[..., Any]) -> Callable[..., Any]:
    """A hook for a template's render method (its first argument: the template)."""

    def timed_render(template: Any, *args: Any, **kwargs: Any) -> Any:
        collector = current_collector()
        if collector is None or not collector.enabled or IN_RENDER.get():
            return call(template, *args, **kwargs)
        timer = _start(collector, template)
        token = IN_RENDER.set(True)
        try:
            return call(template, *args, **kwargs)
        finally:
            _stop(timer, token)

    return timed_render


def async_hook(call: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    """``sync_hook`` for a coroutine method."""

    async def timed_render(template: Any, *args: Any, **kwargs: Any) -> Any:
        collector = current_collector()
        if collector is None or not collector.enabled or IN_RENDER.get():
            return await call(template, *args, **kwargs)
        timer = _start(collector, template)
        token = IN_RENDER.set(True)
        try:
            return await call(template, *args, **kwargs)
        finally:
            _stop(timer, token)

    return timed_render

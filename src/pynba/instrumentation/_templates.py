"""What the template integrations share (Jinja2, Django): one timer per outermost render.

Tags: ``group=render`` and ``template``, the template's name (a template
made from a string: ``<string>``); at most ``TEMPLATE_LIMIT`` distinct names
per process, then ``<other>``. A template rendered while another renders
(a Django ``{% include %}``, a template a tag or a function renders) is
part of the outer template's timer (``IN_RENDER``): the ``render`` group
adds up the time spent rendering, each moment counted once.

Compiled (typed by ``_templates.pxd``), a render's timer is started and
stopped, and ``IN_RENDER`` set, with C calls: in Python, those five
function calls and two method calls cost about 2 us a render. A sync
render's hook is ``around_calls``' C object: it hands the call on as it
came, without taking its arguments into a tuple and a dict and out again.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextvars import ContextVar, Token
from typing import Any

from ..context import current_collector
from ..errors import internal_error
from ..names import DEFAULT_NAME_LIMIT, OTHER_NAME
from ..timer import NoopTimer, Timer
from ._hooks import around_calls, start_checked_timer, stop_timer

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

_STRING_VALUES = (GROUP, STRING_NAME)
_OTHER_VALUES = (GROUP, OTHER_NAME)
# The tag values of each template name's timers, made once: str, as
# check_split_tags passes them. At most TEMPLATE_LIMIT names.
_values_of: dict[str, tuple[str, str]] = {}


def template_tag(name: Any) -> str:
    """The ``template`` tag of a template's name (None: made from a string)."""
    return _template_values(name)[1]


def _template_values(name: Any) -> tuple[str, str]:
    if type(name) is not str or not name:
        return _STRING_VALUES
    values = _values_of.get(name)
    if values is not None:
        return values
    if len(_values_of) >= TEMPLATE_LIMIT:
        return _OTHER_VALUES
    values = (GROUP, name)
    _values_of[name] = values
    return values


def _begin(collector: Any, template: Any) -> tuple[Timer | NoopTimer, Token[bool]] | None:
    """A started timer of ``template``'s render, with ``IN_RENDER`` set; None in a render."""
    if template is None:  # a call without its template (it raises): no render to time
        return None
    try:
        if ContextVar.get(IN_RENDER) or not collector.enabled:
            return None
        values = _template_values(getattr(template, "name", None))
    except Exception:
        internal_error("cannot start a render's timer", False)
        return None
    timer = start_checked_timer(collector, NAMES, values)
    if timer is None:
        return None
    return timer, ContextVar.set(IN_RENDER, True)


def _end(state: tuple[Timer | NoopTimer, Token[bool]]) -> None:
    timer, token = state
    stop_timer(timer)
    try:
        ContextVar.reset(IN_RENDER, token)
    except (ValueError, RuntimeError):  # a coroutine resumed in another context
        internal_error("cannot leave a timed render", False)


def sync_hook(call: Callable[..., Any]) -> Callable[..., Any]:
    """A hook for a template's render method (its first argument: the template)."""
    return around_calls(call, _begin, _end)


def async_hook(call: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    """``sync_hook`` for a coroutine method."""

    async def timed_render(template: Any, *args: Any, **kwargs: Any) -> Any:
        collector = current_collector()
        state = None if collector is None else _begin(collector, template)
        if state is None:
            return await call(template, *args, **kwargs)
        try:
            return await call(template, *args, **kwargs)
        finally:
            _end(state)

    return timed_render

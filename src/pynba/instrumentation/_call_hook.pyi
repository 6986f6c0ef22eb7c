# Types of the compiled twins of _hooks.timed_calls and around_calls (_call_hook.pyx).
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

MAX_POSITION: int
MAX_PICKS: int

def call_hook(
    wrapped: Callable[..., Any],
    var: ContextVar[Any],
    enter: Callable[[Any], object],
    done: Callable[..., object],
    failed: Callable[..., object],
    picks: tuple[tuple[int, str], ...],
    calling: set[int] | None = None,
) -> Callable[..., Any]: ...
def around_hook(
    wrapped: Callable[..., Any],
    var: ContextVar[Any],
    begin: Callable[[Any, Any], object],
    end: Callable[[Any], object],
) -> Callable[..., Any]: ...

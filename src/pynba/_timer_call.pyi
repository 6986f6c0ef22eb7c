# Types of pynba.timer's compiled fast path (_timer_call.pyx).
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

def keyword_timer(var: ContextVar[Any], fallback: F) -> F: ...

"""Automatic timers: the libraries a request uses, timed with no code in the application.

``pynba.instrument()`` turns on every integration whose library is
installed; ``pynba.instrument("db", "http")`` turns on groups,
``pynba.instrument("redis")`` one integration. ``PINBA_INSTRUMENT``
(``all``, or a comma-separated list of the same names) does the same for
the middlewares and monitors, as their ``instrument`` option does.

Each integration lives in a module of its own (``pynba.instrumentation.redis``,
...) with ``instrument()`` and ``uninstrument()``; what they share is in
``_hooks``. A hook records a timer only inside a monitored request, costs
next to nothing outside one, and never affects the call it wraps: a failure
of its own is logged to the ``pynba`` logger and the call goes on untimed.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from types import ModuleType

__all__ = ["GROUPS", "INTEGRATIONS", "instrument", "parse_names", "uninstrument"]

logger = logging.getLogger("pynba")

#: Each integration: its name, the group of timers it makes, and the module
#: of the library it instruments (to tell whether it is installed).
INTEGRATIONS: dict[str, tuple[str, str]] = {
    "dbapi": ("db", "sqlite3"),
    "sqlalchemy": ("db", "sqlalchemy"),
    "django_db": ("db", "django"),
    "redis": ("cache", "redis"),
    "pymemcache": ("cache", "pymemcache"),
    "httpx": ("http", "httpx"),
    "requests": ("http", "requests"),
    "urllib3": ("http", "urllib3"),
    "jinja2": ("render", "jinja2"),
    "django_templates": ("render", "django"),
    "opentelemetry": ("otel", "opentelemetry.sdk"),
}

#: The groups, each naming the integrations that make its timers.
GROUPS: dict[str, tuple[str, ...]] = {}
for _name, (_group, _) in INTEGRATIONS.items():
    GROUPS[_group] = (*GROUPS.get(_group, ()), _name)


def parse_names(names: Iterable[str] | str | None) -> tuple[str, ...]:
    """The integrations named by ``names`` (integrations, groups, ``"all"``), in order.

    A string is a comma-separated list, as ``PINBA_INSTRUMENT`` gives it.
    An unknown name is a ValueError naming it.
    """
    if names is None:
        return ()
    if isinstance(names, str):
        names = [name.strip() for name in names.split(",") if name.strip()]
    chosen: list[str] = []
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"instrument: names must be str, not {type(name).__name__}")
        if name == "all":
            found: tuple[str, ...] = tuple(INTEGRATIONS)
        elif name in GROUPS:
            found = GROUPS[name]
        elif name in INTEGRATIONS:
            found = (name,)
        else:
            known = ", ".join(["all", *GROUPS, *INTEGRATIONS])
            raise ValueError(f"instrument: unknown integration or group {name!r} (known: {known})")
        chosen.extend(found_name for found_name in found if found_name not in chosen)
    return tuple(chosen)


def _integration(name: str) -> ModuleType | str:
    """The module of integration ``name``, or why it cannot be turned on."""
    library = INTEGRATIONS[name][1]
    try:
        importlib.import_module(library)
    except ImportError:
        return f"needs {library!r} installed"
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
        return "is not available yet"


def instrument(*names: str) -> tuple[str, ...]:
    """Turn on the integrations named (all of them when none is), those installed.

    Returns the names of the integrations turned on. Calling it again is
    harmless: an integration already on stays as it is. An integration
    named on its own (not through a group or ``"all"``) that cannot be
    turned on is an ImportError saying why.
    """
    done = []
    for name in parse_names(names or ["all"]):
        module = _integration(name)
        if isinstance(module, str):
            if name in names:
                raise ImportError(f"instrument: {name!r} {module}")
            continue
        module.instrument()
        done.append(name)
    return tuple(done)


def uninstrument(*names: str) -> None:
    """Turn off the integrations named (all of them when none is)."""
    for name in parse_names(names or ["all"]):
        module = _integration(name)
        if not isinstance(module, str):
            module.uninstrument()

"""Memcached timers: each command a pymemcache client sends, timed with no code in the application.

``pynba.instrument("pymemcache")`` patches the command methods of
``pymemcache.client.base.Client`` (``COMMANDS``); ``PooledClient``,
``HashClient`` and ``RetryingClient`` send their commands through it, so
they are timed too (a ``HashClient.get_many`` spanning two servers is a
timer per server). ``uninstrument()`` puts the library's own methods back.
Each call is a timer tagged ``group=cache``, ``op=`` the method's name
(``get_multi`` and the other aliases under the name they alias:
``get_many``...) and ``server=`` the ``host:port`` (or unix socket path) of
the client. Keys and values are never sent.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from ..context import UnboundTimer, current_collector, pynba
from ..errors import internal_error
from ..timer import NOOP_TIMER, NoopTimer, Timer
from ._hooks import Patches, bounded

__all__ = ["COMMANDS", "instrument", "uninstrument"]

#: The Client methods timed, each under its own name as ``op``.
COMMANDS = (
    "get",
    "get_many",
    "gets",
    "gets_many",
    "set",
    "set_many",
    "add",
    "replace",
    "append",
    "prepend",
    "cas",
    "delete",
    "delete_many",
    "incr",
    "decr",
    "touch",
    "stats",
    "cache_memlimit",
    "version",
    "flush_all",
    "raw_command",
    "quit",
    "shutdown",
)
# Other names of the same methods: timed under the name they alias.
_ALIASES = {"get_multi": "get_many", "set_multi": "set_many", "delete_multi": "delete_many"}

# Made as ``with pynba.timer(group=..., ...)`` makes it: the cheapest way (see redis.py).
_new_timer = pynba.timer

# The server tag of each server spec ((host, port) or a socket path), computed once.
_SERVERS: dict[Any, str] = {}
_SEEN_SERVERS: set[str] = set()
_MAX_SERVERS = 64

_patches = Patches()


def instrument() -> None:
    """Time the commands of pymemcache's Client (and of the clients built on it)."""
    if _patches.applied:
        return
    from pymemcache.client.base import Client  # type: ignore[import-untyped]

    hooks = {}
    for name in COMMANDS:
        original = Client.__dict__[name]
        hooks[name] = functools.wraps(original)(_hook(original, name))
    for alias, name in _ALIASES.items():
        hooks[alias] = hooks[name]  # one method under two names stays so
    for name, hook in hooks.items():
        _patches.replace(Client, name, _made_already(hook))


def _made_already(hook: Any) -> Callable[[Any], Any]:
    """What ``Patches.replace`` takes, for a hook made beforehand."""
    return lambda _original: hook


def uninstrument() -> None:
    """Put back pymemcache's own methods."""
    _patches.undo()


_HOOK = """\
def _pynba_hook({parameters}):
    if _pynba_current_collector() is None:  # no tags to work out: the call alone
        return _pynba_original({arguments})
    with _pynba_command_timer(_pynba_op, {client}.server):
        return _pynba_original({arguments})
"""

_ARGUMENT = {
    inspect.Parameter.POSITIONAL_ONLY: "{}",
    inspect.Parameter.POSITIONAL_OR_KEYWORD: "{}",
    inspect.Parameter.VAR_POSITIONAL: "*{}",
    inspect.Parameter.KEYWORD_ONLY: "{0}={0}",
    inspect.Parameter.VAR_KEYWORD: "**{}",
}


class _Source(str):
    """A default value written as the name that holds it."""

    def __repr__(self) -> str:
        return str(self)


def _hook(original: Any, op: str) -> Any:
    """``original``, timed as ``op``: a function of the same parameters.

    Written for those parameters (as ``dataclasses`` writes its methods), it
    passes a call's arguments on as they came: a ``(self, *args, **kwargs)``
    wrapper would pack and unpack them again, costing a command as much as
    the rest of the hook (see ``_generic_hook``, for signatures it cannot write).
    """
    signature = inspect.signature(original)
    namespace = {
        "_pynba_original": original,
        "_pynba_op": op,
        "_pynba_current_collector": current_collector,
        "_pynba_command_timer": _command_timer,
    }
    parameters, arguments = [], []
    for parameter in signature.parameters.values():
        if parameter.name.startswith("_pynba_"):
            return _generic_hook(original, op)
        if parameter.default is not parameter.empty:
            name = f"_pynba_default_{parameter.name}"
            namespace[name] = parameter.default
            parameter = parameter.replace(default=_Source(name))
        parameters.append(parameter.replace(annotation=parameter.empty))
        arguments.append(_ARGUMENT[parameter.kind].format(parameter.name))
    if not parameters or parameters[0].kind is parameters[0].VAR_POSITIONAL:
        return _generic_hook(original, op)
    written = signature.replace(parameters=parameters, return_annotation=signature.empty)
    source = _HOOK.format(
        parameters=str(written)[1:-1],
        arguments=", ".join(arguments),
        client=parameters[0].name,
    )
    exec(compile(source, f"<pynba hook of pymemcache {original.__qualname__}>", "exec"), namespace)
    return namespace["_pynba_hook"]


def _generic_hook(original: Any, op: str) -> Any:
    def command(self: Any, *args: Any, **kwargs: Any) -> Any:
        if current_collector() is None:
            return original(self, *args, **kwargs)
        with _command_timer(op, self.server):
            return original(self, *args, **kwargs)

    return command


def _command_timer(op: str, spec: Any) -> Timer | NoopTimer | UnboundTimer:
    """A timer, not started, of a command ``op`` sent to the server ``spec``."""
    try:
        server = _SERVERS.get(spec) or _remember_server(spec)
        return _new_timer(group="cache", op=op, server=server)
    except Exception:  # an unhashable spec
        internal_error("cannot make a pymemcache timer", False)
        return NOOP_TIMER


def _remember_server(spec: Any) -> str:
    """The server tag of a client's server spec, kept for its next commands."""
    try:
        server = bounded(_server(spec), _SEEN_SERVERS, _MAX_SERVERS)
        if len(_SERVERS) >= 1024:  # specs made up at run time: the cache stays bounded
            _SERVERS.clear()
        _SERVERS[spec] = server
    except Exception:  # a spec _server cannot read
        internal_error("cannot tell the server of a pymemcache client", False)
        return "other"
    return server


def _server(spec: Any) -> str:
    """``host:port`` (``[host]:port`` for IPv6) of a (host, port) spec, or the socket path."""
    if isinstance(spec, tuple):
        host, port = spec
        host = str(host)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(spec)

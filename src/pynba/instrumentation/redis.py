"""Redis timers: each command a redis-py client sends, timed with no code in the application.

``pynba.instrument("redis")`` patches the command methods of ``redis.Redis``
and ``redis.asyncio.Redis`` and of their pipelines; ``uninstrument()`` puts
the library's own methods back. Each command is a timer tagged
``group=cache``, ``op=`` the command lowercased when it is one of
``COMMANDS`` (``other`` when it is not) and ``server=`` the ``host:port``
(or unix socket path) of the client's connection pool. A pipeline's
``execute()`` is one timer, ``op=pipeline``, with one hit per command it
sends (transaction or not). Keys, values and arguments are never sent.
"""

from __future__ import annotations

import inspect
import weakref
from time import perf_counter
from typing import Any

from ..context import current_collector
from ..errors import internal_error
from ..tags import check_split_tags
from ._hooks import (
    Patches,
    add_checked_call,
    bounded,
    start_checked_timer,
    start_timer,
    stop_timer,
)

__all__ = ["COMMANDS", "instrument", "uninstrument"]

#: The commands timed under their own name (lowercased); any other is ``op=other``.
COMMANDS = frozenset(
    """
    get set mget mset setex setnx getset getdel getex append strlen incr incrby incrbyfloat
    decr decrby del unlink exists expire expireat pexpire ttl pttl persist type keys scan
    hget hset hsetnx hmget hmset hgetall hdel hexists hincrby hkeys hvals hlen
    lpush rpush lpop rpop lrange llen lrem ltrim lindex blpop brpop
    sadd srem smembers sismember scard spop
    zadd zrange zrangebyscore zrevrange zrem zscore zincrby zcard zcount
    publish eval evalsha watch unwatch ping flushdb
    """.split()
)

_NAMES = ("group", "op", "server")
# Every spelling redis-py and applications give a command name, read in one look-up.
_OPS: dict[Any, str] = {}
for _command in COMMANDS:
    for _spelling in (_command, _command.upper()):
        _OPS[_spelling] = _OPS[_spelling.encode()] = _command

# The server tag of each connection pool, computed once, by the pool's id: a weak
# reference to the pool takes its entry out when the pool goes, before its id can be
# another's (a WeakKeyDictionary look-up costs twice as much).
_SERVERS: dict[int, str] = {}
_POOL_REFERENCES: dict[int, weakref.ref[Any]] = {}
_SEEN_SERVERS: set[str] = set()
_MAX_SERVERS = 64
# The tag values of each command of a pool (kept as its server is), by the
# command's name as the call spells it (names of COMMANDS only): made and checked
# once. A command's timer is made when it has returned, measured (add_checked_call):
# 0.4 to 1 us cheaper than a timer started and stopped around the call.
_POOL_VALUES: dict[int, dict[Any, tuple[str, str, str]]] = {}

_patches = Patches()


def instrument() -> None:
    """Time the commands of redis-py's sync and asyncio clients and their pipelines."""
    if _patches.applied:
        return
    import redis.asyncio.client
    import redis.client

    for module, command_hook, pipeline_hook in (
        (redis.client, _command_hook, _pipeline_hook),
        (redis.asyncio.client, _async_command_hook, _async_pipeline_hook),
    ):
        _patches.replace(module.Redis, "execute_command", command_hook)
        # A pipeline queues its commands (its own execute_command, not timed)
        # and sends them in execute(); WATCH and the commands after it go at once.
        _patches.replace(module.Pipeline, "immediate_execute_command", command_hook)
        _patches.replace(module.Pipeline, "execute", pipeline_hook)


def uninstrument() -> None:
    """Put back redis-py's own methods."""
    _patches.undo()


def _command_hook(original: Any) -> Any:
    if _only_forwards(original):
        # redis-py 5.1 and later: Redis.execute_command only passes the call on
        # to _execute_command. The hook does so in its place, sparing a call
        # with all its arguments (as much as the rest of the hook costs).
        def forwarding_execute_command(self: Any, *args: Any, **options: Any) -> Any:
            collector = current_collector()
            if collector is None or not collector.enabled:  # the call alone
                return self._execute_command(*args, **options)
            if collector.timer_rusage:
                pool = self.connection_pool
                return _with_cpu(collector, pool, args, self._execute_command, args, options)
            start = perf_counter()
            try:
                return self._execute_command(*args, **options)
            finally:
                _add_command(collector, perf_counter() - start, self.connection_pool, args)

        return forwarding_execute_command

    def execute_command(self: Any, *args: Any, **options: Any) -> Any:
        collector = current_collector()
        if collector is None or not collector.enabled:
            return original(self, *args, **options)
        if collector.timer_rusage:
            pool = self.connection_pool
            return _with_cpu(collector, pool, args, original, (self, *args), options)
        start = perf_counter()
        try:
            return original(self, *args, **options)
        finally:
            _add_command(collector, perf_counter() - start, self.connection_pool, args)

    return execute_command


def _forwarding(self: Any, *args: Any, **options: Any) -> Any:
    return self._execute_command(*args, **options)


def _only_forwards(method: Any) -> bool:
    """Whether ``method`` does what ``_forwarding`` does (the same code), as redis-py 8's does."""
    code = getattr(method, "__code__", None)
    expected = _forwarding.__code__
    arguments = inspect.CO_VARARGS | inspect.CO_VARKEYWORDS
    return (
        code is not None
        and code.co_code == expected.co_code
        and code.co_names == expected.co_names
        and code.co_argcount == expected.co_argcount
        and code.co_flags & arguments == expected.co_flags & arguments
    )


def _async_command_hook(original: Any) -> Any:
    async def execute_command(self: Any, *args: Any, **options: Any) -> Any:
        collector = current_collector()  # when awaited, in its task
        if collector is None or not collector.enabled:
            return await original(self, *args, **options)
        if collector.timer_rusage:
            timer = _started_timer(collector, self.connection_pool, args)
            try:
                return await original(self, *args, **options)
            finally:
                stop_timer(timer)
        start = perf_counter()
        try:
            return await original(self, *args, **options)
        finally:
            _add_command(collector, perf_counter() - start, self.connection_pool, args)

    return execute_command


def _pipeline_hook(original: Any) -> Any:
    def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        count = len(self.command_stack)
        timer = _pipeline_timer(self, count)
        try:
            return original(self, *args, **kwargs)
        finally:
            stop_timer(timer, count)

    return execute


def _async_pipeline_hook(original: Any) -> Any:
    async def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        count = len(self.command_stack)
        timer = _pipeline_timer(self, count)
        try:
            return await original(self, *args, **kwargs)
        finally:
            stop_timer(timer, count)

    return execute


def _add_command(collector: Any, seconds: float, pool: Any, args: tuple[Any, ...]) -> None:
    values: tuple[str, str, str] | None
    try:  # _values_of(), its common case inline: a call less a command
        values = _POOL_VALUES[id(pool)][args[0]]
    except Exception:
        values = _values_of(pool, args)
        if values is None:
            return
    add_checked_call(collector, _NAMES, values, seconds)


def _with_cpu(
    collector: Any,
    pool: Any,
    args: tuple[Any, ...],
    call: Any,
    call_args: tuple[Any, ...],
    options: dict[str, Any],
) -> Any:
    """``call(*call_args, **options)`` timed by a started timer, with its CPU time.

    A timer made measured (``_add_command``) has no CPU time of its own.
    """
    timer = _started_timer(collector, pool, args)
    try:
        return call(*call_args, **options)
    finally:
        stop_timer(timer)


def _started_timer(collector: Any, pool: Any, args: tuple[Any, ...]) -> Any:
    values = _values_of(pool, args)
    return None if values is None else start_checked_timer(collector, _NAMES, values)


def _values_of(pool: Any, args: tuple[Any, ...]) -> tuple[str, str, str] | None:
    """The tag values of the command ``args`` sent through ``pool``; None when they cannot be made.

    (Logged then.)
    """
    try:
        return _POOL_VALUES[id(pool)][args[0]]
    except Exception:  # the first command of its spelling through pool (or a bad one)
        pass
    try:
        return _command_values(pool, args)
    except Exception:
        internal_error("cannot make a redis timer", False)
        return None


def _command_values(pool: Any, args: tuple[Any, ...]) -> tuple[str, str, str]:
    """The tag values of the command ``args`` sent through ``pool``, checked."""
    try:
        op = _OPS[args[0]]
    except Exception:  # not a known command as spelled (or no command at all)
        op = _op(args)
    server = _SERVERS.get(id(pool)) or _remember_server(pool)
    values = ("cache", op, server)
    check_split_tags(_NAMES, values)
    if op != "other" and id(pool) in _SERVERS:
        _POOL_VALUES.setdefault(id(pool), {})[args[0]] = values
    return values


def _pipeline_timer(pipeline: Any, count: int) -> Any:
    if not (count or pipeline.watching):
        return None  # an empty pipeline sends nothing
    pool = pipeline.connection_pool
    return start_timer(
        _NAMES, ("cache", "pipeline", _SERVERS.get(id(pool)) or _remember_server(pool))
    )


def _op(args: tuple[Any, ...]) -> str:
    """The ``op`` tag of a command: its name lowercased when in COMMANDS, else ``other``."""
    command = args[0] if args else None
    if type(command) is str or type(command) is bytes:
        return _OPS.get(command.lower(), "other")
    return "other"


def _remember_server(pool: Any) -> str:
    """The server tag of ``pool``, kept for its next commands (``other`` when unknown)."""
    try:
        server = bounded(_server(pool), _SEEN_SERVERS, _MAX_SERVERS)
    except Exception:
        internal_error("cannot tell the server of a redis connection pool", False)
        return "other"
    key = id(pool)
    try:
        _POOL_REFERENCES[key] = weakref.ref(pool, lambda _: _forget_server(key))
    except TypeError:  # a pool that cannot be referenced weakly: told again each time
        return server
    _SERVERS[key] = server
    return server


def _forget_server(key: int) -> None:
    _SERVERS.pop(key, None)
    _POOL_VALUES.pop(key, None)
    _POOL_REFERENCES.pop(key, None)


def _server(pool: Any) -> str:
    """``host:port`` (``[host]:port`` for IPv6) or the unix socket path of ``pool``."""
    settings = pool.connection_kwargs
    path = settings.get("path")
    if path:
        return str(path)
    host = settings.get("host")
    service = getattr(pool, "service_name", None)
    if host is None and service is not None:
        return f"sentinel:{service}"  # the master is found when connecting
    host = str(host or "localhost")
    port = settings.get("port", 6379)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

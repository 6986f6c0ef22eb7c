"""Automatic cache timers: redis-py (sync and asyncio) and pymemcache against real servers.

A private redis-server and memcached run on free loopback ports for this
module (tests/cache_servers.py); each test checks the packets pynba sent.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging

import pytest

import pynba
from cache_servers import free_port, start_memcached, start_redis, start_sentinel
from cpu import burn_cpu, check_timer_cpu
from packets import make_collector, monitored_request, receive
from pynba.context import DISABLED, activate, deactivate
from pynba.instrumentation import pymemcache as pymemcache_hooks
from pynba.instrumentation import redis as redis_hooks
from pynba.instrumentation._hooks import add_checked_call

pytest.importorskip("redis")
import redis  # noqa: E402 - after the importorskip that says what is missing
import redis.asyncio  # noqa: E402
import redis.asyncio.sentinel  # noqa: E402
import redis.sentinel  # noqa: E402

pytest.importorskip("pymemcache")
from pymemcache.client.base import Client, PooledClient  # noqa: E402
from pymemcache.client.hash import HashClient  # noqa: E402
from pymemcache.exceptions import MemcacheClientError  # noqa: E402

SLEEP = 0.05  # seconds a blocking command waits, to check what the timers measure


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = start_redis(str(tmp_path_factory.mktemp("redis")))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def memcached_server(tmp_path_factory):
    server = start_memcached(str(tmp_path_factory.mktemp("memcached")))
    yield server
    server.stop()


@pytest.fixture
def instrumented():
    assert pynba.instrument("cache") == ("redis", "pymemcache")
    yield
    pynba.instrumentation.uninstrument("cache")


@pytest.fixture
def client(redis_server, instrumented):
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def memcached(memcached_server, instrumented):
    client = Client((memcached_server.host, memcached_server.port), default_noreply=False)
    client.flush_all()
    yield client
    client.close()


def cache(op, server):
    """The tags of a cache timer, as Packet.timer_tags() lists them."""
    return (("group", "cache"), ("op", op), ("server", server))


# -- redis, sync ------------------------------------------------------------


def test_redis_commands_are_timed_with_command_and_server(udp_listener, redis_server, client):
    server = redis_server.address
    with monitored_request(udp_listener):
        assert client.set("user:42:name", "Ada") is True
        assert client.get("user:42:name") == b"Ada"
        assert client.get("user:43:name") is None
        assert client.blpop(["empty:list"], timeout=SLEEP) is None
    packet = receive(udp_listener)
    assert packet.timer_tags() == [cache(op, server) for op in ("blpop", "get", "set")]
    assert packet.timer(group="cache", op="get", server=server).hit_count == 2
    assert packet.timer(group="cache", op="set", server=server).hit_count == 1
    assert packet.timer(group="cache", op="blpop", server=server).value >= SLEEP
    assert b"user:4" not in packet.datagram and b"Ada" not in packet.datagram


def test_redis_commands_out_of_the_fixed_set_are_other(udp_listener, redis_server, client):
    server = redis_server.address
    client.set("k", "v")
    with monitored_request(udp_listener):
        assert client.execute_command("OBJECT", "ENCODING", "k") == b"embstr"
        assert client.execute_command("CONFIG GET", "maxmemory") is not None
        assert client.execute_command("get", "k") == b"v"  # any spelling of a known command
        assert client.execute_command(b"Get", "k") == b"v"
        with pytest.raises(TypeError, match="not iterable"):
            client.execute_command(42)  # the library's own error, as without pynba
        with pytest.raises(IndexError):
            client.execute_command()
        with pytest.raises(redis.DataError):
            client.execute_command(["GET"], "k")  # a name that cannot be a key
    packet = receive(udp_listener)
    assert packet.timer_tags() == [cache("get", server), cache("other", server)]
    assert packet.timer(group="cache", op="get", server=server).hit_count == 2
    assert packet.timer(group="cache", op="other", server=server).hit_count == 5
    assert set(redis_hooks.COMMANDS) >= {"get", "set", "mget", "del", "hgetall", "publish"}


def test_redis_pipeline_is_one_timer_counting_its_commands(udp_listener, redis_server, client):
    server = redis_server.address
    with monitored_request(udp_listener):
        with client.pipeline(transaction=False) as pipe:
            pipe.set("a", 1).incr("a").get("a").blpop(["empty:list"], timeout=SLEEP)
            assert pipe.execute() == [True, 2, b"2", None]
            assert pipe.execute() == []  # nothing queued: nothing sent, nothing timed
        with client.pipeline() as transaction:  # MULTI ... EXEC
            assert transaction.incr("a").execute() == [3]
    packet = receive(udp_listener)
    assert packet.timer_tags() == [cache("pipeline", server)]
    pipelines = packet.timer(group="cache", op="pipeline", server=server)
    assert pipelines.hit_count == 5
    assert pipelines.value >= SLEEP


def test_redis_watched_pipeline_times_the_commands_it_sends_at_once(
    udp_listener, redis_server, client
):
    server = redis_server.address
    client.set("balance", 10)
    with monitored_request(udp_listener):
        with client.pipeline() as pipe:
            pipe.watch("balance")  # WATCH and the reads after it go at once
            balance = int(pipe.get("balance"))
            pipe.multi()
            pipe.set("balance", balance - 1)
            assert pipe.execute() == [True]
    packet = receive(udp_listener)
    assert packet.timer_tags() == [cache(op, server) for op in ("get", "pipeline", "watch")]
    assert client.get("balance") == b"9"


def test_redis_error_propagates_unchanged_and_is_timed(udp_listener, redis_server, client):
    server = redis_server.address
    client.set("text", "not a list")
    with monitored_request(udp_listener):
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            client.lpush("text", "x")
        with client.pipeline(transaction=False) as pipe:
            pipe.lpush("text", "x").get("text")
            with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
                pipe.execute()
    packet = receive(udp_listener)
    assert packet.timer_tags() == [cache("lpush", server), cache("pipeline", server)]
    assert packet.timer(group="cache", op="pipeline", server=server).hit_count == 2


def test_redis_connection_error_propagates_and_is_timed(udp_listener, instrumented):
    no_retry = redis.retry.Retry(redis.backoff.NoBackoff(), 0)
    client = redis.Redis(host="127.0.0.1", port=free_port(), retry=no_retry)
    with monitored_request(udp_listener):
        with pytest.raises(redis.ConnectionError):
            client.get("k")
    packet = receive(udp_listener)
    assert [dict(tags)["op"] for tags in packet.timer_tags()] == ["get"]


def test_redis_over_a_unix_socket_is_tagged_with_its_path(udp_listener, redis_server, instrumented):
    client = redis.Redis(unix_socket_path=redis_server.unix_socket)
    with monitored_request(udp_listener):
        assert client.ping() is True
    client.close()
    packet = receive(udp_listener)
    assert packet.timer_tags() == [cache("ping", redis_server.unix_socket)]


def test_redis_through_sentinel_is_tagged_with_the_service(
    udp_listener, redis_server, instrumented, tmp_path
):
    sentinel_server = start_sentinel(str(tmp_path), redis_server, "cache-main")
    try:
        sentinel = redis.sentinel.Sentinel([(sentinel_server.host, sentinel_server.port)])
        client = sentinel.master_for("cache-main")
        with monitored_request(udp_listener):
            assert client.set("k", "v") is True  # the master is found when connecting

        async def main():
            sentinel = redis.asyncio.sentinel.Sentinel(
                [(sentinel_server.host, sentinel_server.port)]
            )
            client = sentinel.master_for("cache-main")
            with monitored_request(udp_listener):
                assert await client.get("k") == b"v"
            await client.aclose()

        asyncio.run(main())
    finally:
        sentinel_server.stop()
    # Asking the Sentinel where the master is: a command too, timed with the Sentinel's address.
    asking = cache("other", sentinel_server.address)
    assert receive(udp_listener).timer_tags() == [asking, cache("set", "sentinel:cache-main")]
    assert receive(udp_listener).timer_tags() == [cache("get", "sentinel:cache-main"), asking]


def test_redis_server_tags_are_forgotten_with_their_pools(udp_listener, redis_server, instrumented):
    gc.collect()  # the pools of earlier tests
    remembered = len(redis_hooks._SERVERS), len(redis_hooks._POOL_VALUES)
    for _ in range(3):
        client = redis.Redis(host=redis_server.host, port=redis_server.port)
        with monitored_request(udp_listener):
            assert client.ping() is True
        now = len(redis_hooks._SERVERS), len(redis_hooks._POOL_VALUES)
        assert now == (remembered[0] + 1, remembered[1] + 1)
        client.close()
        del client
        gc.collect()
        assert (len(redis_hooks._SERVERS), len(redis_hooks._POOL_VALUES)) == remembered
    for _ in range(3):
        assert receive(udp_listener).timer_tags() == [cache("ping", redis_server.address)]


def test_redis_a_command_after_its_request_ended_is_not_kept(udp_listener, redis_server, client):
    # As a task that outlives its request: the command runs, no timer is
    # kept (nor raised about, even in strict mode), nothing more is sent.
    collector = make_collector(udp_listener)
    token = activate(collector)
    try:
        assert client.set("k", "v") is True
        collector.finish()
        assert receive(udp_listener).timer_tags() == [cache("set", redis_server.address)]
        assert client.get("k") == b"v"
    finally:
        deactivate(token)
    assert collector.timers == ()
    assert udp_listener.pending() == []


@pytest.mark.parametrize("timer_rusage", [True, False])
def test_redis_commands_carry_their_cpu_time_where_timers_measure_it(
    udp_listener, redis_server, client, timer_rusage
):
    # Replies read with CPU work of their own: the commands' CPU time, as a
    # hand-written timer's, when the request measures it (timer_rusage);
    # without, each timer is made when its command has returned. Through
    # each hook: Redis' (it forwards), a pipeline's immediate command (after
    # WATCH), asyncio's.
    def slow_reply(reply, **options):
        burn_cpu(0.03)
        return reply

    async def asyncio_get():
        async_client = redis.asyncio.Redis(host=redis_server.host, port=redis_server.port)
        async_client.set_response_callback("GET", slow_reply)
        try:
            return await async_client.get("k")
        finally:
            await async_client.aclose()

    client.set_response_callback("GET", slow_reply)
    client.set("k", "v")
    collector = make_collector(udp_listener, timer_rusage=timer_rusage)
    token = activate(collector)
    try:
        assert collector.timer_rusage is timer_rusage
        assert client.get("k") == b"v"
        with client.pipeline() as pipe:
            pipe.watch("k")
            assert pipe.get("k") == b"v"
        assert asyncio.run(asyncio_get()) == b"v"
    finally:
        deactivate(token)
    collector.finish()
    timer = receive(udp_listener).timer(group="cache", op="get", server=redis_server.address)
    assert timer.hit_count == 3 and timer.value >= 0.09
    check_timer_cpu(timer, timer_rusage, 0.07)
    # After the request: not timed, and no error (the test suite's strict mode).
    token = activate(collector)
    try:
        assert client.get("k") == b"v"
        assert asyncio.run(asyncio_get()) == b"v"
    finally:
        deactivate(token)
    assert collector.timers == ()
    assert udp_listener.pending() == []


def test_redis_commands_are_not_timed_while_the_request_is_not_sent(
    udp_listener, redis_server, client
):
    # As with every integration: enabled = False skips the timers' work too.
    collector = make_collector(udp_listener)
    token = activate(collector)
    try:
        client.set("k", "v")
        collector.enabled = False
        client.get("k")
        collector.enabled = True
        client.get("k")
    finally:
        deactivate(token)
    collector.finish()
    packet = receive(udp_listener)
    assert packet.timer_tags() == [
        cache("get", redis_server.address),
        cache("set", redis_server.address),
    ]
    assert packet.timer(group="cache", op="get", server=redis_server.address).hit_count == 1


BAD_CALLS = [
    (None, ("cache",), 0.001),
    (("group",), None, 0.001),
    (["group"], ["cache"], 0.001),
    (("group", "op"), ("cache",), 0.001),
    (("group",), ("cache",), "soon"),
    (("group",), ("cache",), float("nan")),
]


def test_a_timed_call_given_no_request_or_bad_tags_is_logged_not_raised(
    udp_listener, monkeypatch, caplog
):
    collector = make_collector(udp_listener)
    for names, values, seconds in BAD_CALLS:  # strict mode (the test suite's): each raised
        with pytest.raises((TypeError, ValueError)):
            add_checked_call(collector, names, values, seconds)
    monkeypatch.delenv("PYNBA_STRICT", raising=False)
    with caplog.at_level(logging.ERROR, logger="pynba"):
        add_checked_call(None, ("group",), ("cache",), 0.001)  # outside a request: nothing
        assert caplog.records == []
        add_checked_call(object(), ("group",), ("cache",), 0.001)
        for names, values, seconds in BAD_CALLS:
            add_checked_call(collector, names, values, seconds)
    assert collector.timers == ()
    collector.finish()
    assert receive(udp_listener).timers == []  # the request's packet is sent all the same
    # (the same message again within a minute is not logged again)
    assert {record.getMessage() for record in caplog.records} == {
        "pynba: cannot record an automatic timer"
    }


def test_redis_outside_a_request_records_nothing(udp_listener, redis_server, client):
    assert client.set("k", "v") is True  # no request: the commands run untimed
    with client.pipeline() as pipe:
        assert pipe.get("k").execute() == [b"v"]
    token = activate(DISABLED)  # a request pynba does not report
    try:
        assert client.get("k") == b"v"
    finally:
        deactivate(token)
    assert udp_listener.pending() == []
    with monitored_request(udp_listener):
        assert client.get("k") == b"v"
    packet = receive(udp_listener)
    assert packet.timer_tags() == [cache("get", redis_server.address)]


# -- redis, asyncio ---------------------------------------------------------


def test_redis_asyncio_concurrent_requests_each_time_their_own_commands(
    udp_listener, redis_server, instrumented
):
    server = redis_server.address

    async def request(name, commands):
        client = redis.asyncio.Redis(host=redis_server.host, port=redis_server.port)
        collector = make_collector(udp_listener, script_name=name)
        activate(collector)  # each task runs in a copy of the context
        try:
            await commands(client)
        finally:
            collector.finish()
            await client.aclose()

    async def slow(client):
        assert await client.blpop(["empty:list"], timeout=SLEEP) is None
        async with client.pipeline() as pipe:
            pipe.set("slow", 1).get("slow")
            assert await pipe.execute() == [True, b"1"]

    async def quick(client):
        for _ in range(5):
            await client.set("quick", "v")
            assert await client.get("quick") == b"v"
            await asyncio.sleep(SLEEP / 10)  # well inside the other task's BLPOP

    async def both():
        await asyncio.gather(request("slow", slow), request("quick", quick))

    asyncio.run(both())
    packets = {p.script_name: p for p in (receive(udp_listener), receive(udp_listener))}
    slow_packet, quick_packet = packets["slow"], packets["quick"]
    assert slow_packet.timer_tags() == [cache("blpop", server), cache("pipeline", server)]
    assert slow_packet.timer(group="cache", op="blpop", server=server).value >= SLEEP
    assert slow_packet.timer(group="cache", op="pipeline", server=server).hit_count == 2
    assert quick_packet.timer_tags() == [cache("get", server), cache("set", server)]
    assert quick_packet.timer(group="cache", op="get", server=server).hit_count == 5
    assert quick_packet.timer(group="cache", op="set", server=server).hit_count == 5


def test_redis_asyncio_error_propagates_and_outside_requests_nothing_is_timed(
    udp_listener, redis_server, instrumented
):
    async def main():
        client = redis.asyncio.Redis(host=redis_server.host, port=redis_server.port)
        try:
            await client.set("text", "not a list")  # outside a request
            with monitored_request(udp_listener):
                with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
                    await client.lpush("text", "x")
                async with client.pipeline() as pipe:
                    await pipe.watch("text")
                    assert await pipe.get("text") == b"not a list"
        finally:
            await client.aclose()

    asyncio.run(main())
    packet = receive(udp_listener)
    server = redis_server.address
    assert packet.timer_tags() == [cache(op, server) for op in ("get", "lpush", "watch")]
    assert udp_listener.pending() == []


# -- pymemcache -------------------------------------------------------------


def test_memcached_commands_are_timed_with_method_and_server(
    udp_listener, memcached_server, memcached
):
    server = memcached_server.address
    with monitored_request(udp_listener):
        assert memcached.set("user:42", "Ada") is True
        assert memcached.get("user:42") == b"Ada"
        assert memcached.get_many(["user:42", "user:43"]) == {"user:42": b"Ada"}
        assert memcached.get_multi(["user:42"]) == {"user:42": b"Ada"}
        assert memcached.set_many({"a": "1", "b": "2"}) == []
        assert memcached.incr("a", 2) == 3
        assert memcached.delete("b") is True
        memcached["c"] = "3"
        assert memcached["c"] == b"3"
    packet = receive(udp_listener)
    ops = ("delete", "get", "get_many", "incr", "set", "set_many")
    assert packet.timer_tags() == [cache(op, server) for op in ops]
    assert packet.timer(group="cache", op="get_many", server=server).hit_count == 2
    assert packet.timer(group="cache", op="get", server=server).hit_count == 2
    assert packet.timer(group="cache", op="set", server=server).hit_count == 2
    assert b"user:4" not in packet.datagram and b"Ada" not in packet.datagram


def test_memcached_hooks_take_the_arguments_the_library_takes(
    udp_listener, memcached_server, memcached
):
    server = memcached_server.address
    with monitored_request(udp_listener):
        assert memcached.set(key="a", value="1", expire=60, noreply=False) is True
        assert memcached.get("absent", b"default") == b"default"
        assert memcached.get(key="absent", default=b"default") == b"default"
        assert memcached.gets("a")[0] == b"1"
        assert memcached.stats()[b"curr_items"] >= 1  # stats(self, *args)
        assert memcached.stats("settings")[b"tcpport"] == memcached_server.port
        with pytest.raises(TypeError, match="unexpected keyword argument 'keys'"):
            memcached.get(keys=["a"])  # refused as the library refuses it
    packet = receive(udp_listener)
    assert packet.timer_tags() == [cache(op, server) for op in ("get", "gets", "set", "stats")]
    assert packet.timer(group="cache", op="get", server=server).hit_count == 2
    for name in pymemcache_hooks.COMMANDS:
        hook, library = Client.__dict__[name], Client.__dict__[name].__wrapped__
        assert parameters(inspect.signature(hook, follow_wrapped=False)) == parameters(
            inspect.signature(library)
        )
        assert hook.__name__ == library.__name__ and hook.__doc__ == library.__doc__


def test_memcached_hooks_are_written_for_every_kind_of_parameter(udp_listener):
    class Client:
        server = ("127.0.0.1", 11211)

        def every_kind(self, key, /, value, *rest, flag=False, **options):
            return key, value, rest, flag, options

        def named_like_the_hook(self, _pynba_op="mine"):  # left to a (*args, **kwargs) hook
            return _pynba_op

    every_kind = pymemcache_hooks._hook(Client.every_kind, "every_kind")
    named = pymemcache_hooks._hook(Client.named_like_the_hook, "named")
    assert parameters(inspect.signature(every_kind)) == parameters(
        inspect.signature(Client.every_kind)
    )
    client = Client()
    with monitored_request(udp_listener):
        assert every_kind(client, "k", 1, 2, 3, flag=True, x=4) == ("k", 1, (2, 3), True, {"x": 4})
        assert every_kind(client, "k", value=1) == ("k", 1, (), False, {})
        with pytest.raises(TypeError):
            every_kind(client, key="k", value=1)  # positional only, as in the library
        assert named(client) == "mine" and named(client, _pynba_op="yours") == "yours"
    packet = receive(udp_listener)
    assert packet.timer_tags() == [
        cache("every_kind", "127.0.0.1:11211"),
        cache("named", "127.0.0.1:11211"),
    ]


def parameters(signature):
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


def test_memcached_error_propagates_unchanged_and_is_timed(
    udp_listener, memcached_server, memcached
):
    memcached.set("text", "not a number")
    with monitored_request(udp_listener):
        with pytest.raises(MemcacheClientError, match="non-numeric"):
            memcached.incr("text", 1)
        with pytest.raises(MemcacheClientError, match="whitespace"):
            memcached.get("a key")  # refused by the client before anything is sent
    packet = receive(udp_listener)
    server = memcached_server.address
    assert packet.timer_tags() == [cache("get", server), cache("incr", server)]


def test_memcached_pooled_and_hash_clients_are_timed_through_client(
    udp_listener, memcached_server, instrumented
):
    server = memcached_server.address
    spec = (memcached_server.host, memcached_server.port)
    pooled = PooledClient(spec, default_noreply=False)
    hashed = HashClient([spec], default_noreply=False)
    with monitored_request(udp_listener):
        assert pooled.set("k", "v") is True
        assert hashed.get("k") == b"v"
        assert hashed.get_many(["k", "absent"]) == {"k": b"v"}
    pooled.close()
    hashed.close()
    packet = receive(udp_listener)
    assert packet.timer_tags() == [cache(op, server) for op in ("get", "get_many", "set")]


def test_memcached_outside_a_request_records_nothing(udp_listener, memcached_server, memcached):
    assert memcached.set("k", "v") is True
    assert memcached.get("k") == b"v"
    assert udp_listener.pending() == []
    with monitored_request(udp_listener):
        assert memcached.get("k") == b"v"
    packet = receive(udp_listener)
    assert packet.timer_tags() == [cache("get", memcached_server.address)]


# -- a failure of the hooks' own ---------------------------------------------


def test_a_hook_that_cannot_tell_the_server_times_the_call_as_other(
    udp_listener, redis_server, memcached_server, instrumented, monkeypatch, caplog
):
    def unreadable(spec):
        raise RuntimeError("cannot read this server")

    monkeypatch.delenv("PYNBA_STRICT", raising=False)
    monkeypatch.setattr(redis_hooks, "_server", unreadable)
    monkeypatch.setattr(pymemcache_hooks, "_server", unreadable)
    monkeypatch.setattr(pymemcache_hooks, "_SERVERS", {})  # told afresh
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    memcached = Client((memcached_server.host, memcached_server.port), default_noreply=False)
    with caplog.at_level(logging.ERROR, logger="pynba"):
        with monitored_request(udp_listener):
            assert client.set("k", "v") is True
            assert memcached.set("k", "v") is True
    client.close()
    memcached.close()
    packet = receive(udp_listener)
    assert packet.timer_tags() == [cache("set", "other")]  # one timer for both
    assert packet.timer(group="cache", op="set", server="other").hit_count == 2
    logged = {record.getMessage() for record in caplog.records}
    assert logged == {
        "pynba: cannot tell the server of a redis connection pool",
        "pynba: cannot tell the server of a pymemcache client",
    }


def test_in_strict_mode_a_hook_failure_is_raised(
    udp_listener, redis_server, instrumented, monkeypatch
):
    def unreadable(spec):
        raise RuntimeError("cannot read this server")

    monkeypatch.setattr(redis_hooks, "_server", unreadable)
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    with monitored_request(udp_listener):
        with pytest.raises(RuntimeError, match="cannot read this server"):
            client.get("k")  # the test suite's PYNBA_STRICT=1: pynba's own errors raise
    client.close()


# -- turning them on and off ------------------------------------------------


def library_methods():
    """Every method the cache integrations patch, as the classes hold it now."""
    methods = {}
    for module in (redis.client, redis.asyncio.client):
        for cls, name in (
            (module.Redis, "execute_command"),
            (module.Pipeline, "immediate_execute_command"),
            (module.Pipeline, "execute"),
        ):
            methods[(cls, name)] = cls.__dict__[name]
    for name in (*pymemcache_hooks.COMMANDS, "get_multi", "set_multi", "delete_multi"):
        methods[(Client, name)] = Client.__dict__[name]
    return methods


def test_uninstrument_puts_back_the_libraries_own_methods():
    pynba.instrumentation.uninstrument("cache")  # whatever ran before
    before = library_methods()
    assert not any(hasattr(method, "__wrapped__") for method in before.values())
    pynba.instrument("redis", "pymemcache")
    pynba.instrument("cache")  # twice: harmless
    during = library_methods()
    assert all(during[key] is not before[key] for key in before)
    assert all(during[key].__wrapped__ is before[key] for key in before)
    assert Client.get_multi is Client.get_many  # an alias stays one
    pynba.instrumentation.uninstrument("cache")
    pynba.instrumentation.uninstrument("cache")  # twice: harmless
    after = library_methods()
    assert all(after[key] is before[key] for key in before)

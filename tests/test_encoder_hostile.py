"""The compiled encoder's memory safety (kept buffers, borrowed tuple items,
identity cache with a call number per slot).

Each scenario runs in a fresh interpreter: a segfault or a sanitizer report fails
its test instead of ending the run. Every scenario compares the compiled
encoder's bytes with the pure twin's (same call, same inputs).
"""

import gc
import os
import random
import sys
import threading
import time

import pytest

from scripts import isolated


def encoders():
    from pynba.wire import fallback

    if os.environ.get("PYNBA_PURE_PYTHON"):
        return fallback.encode, fallback.encode
    from pynba.wire import _encoder

    return _encoder.encode, fallback.encode


def request(encode, tags, timers, **kw):
    args = dict(
        hostname="h",
        server_name="s",
        script_name="/",
        request_count=1,
        document_size=0,
        memory_peak=0,
        request_time=0.5,
        ru_utime=0.0,
        ru_stime=0.0,
        status=200,
        memory_footprint=0,
        schema=None,
        tags=tags,
        timers=timers,
    )
    args.update(kw)
    return encode(**args)


# ---------------------------------------------------------------- to_bytes not bytes


class EncodesToBytearray(str):
    """A str whose ``encode`` gives a bytearray: the pure module's to_bytes passes it on."""

    def encode(self, *args, **kwargs):
        return bytearray(b"A" * 1000)


class StrReturnsEvil:
    """Not a str: to_bytes takes ``str(value).encode(...)``; __str__ may return a str subclass."""

    def __str__(self):
        return EncodesToBytearray("x")


def to_bytes_not_bytes(where):
    compiled, pure = encoders()
    value = StrReturnsEvil()
    if where == "request tag":
        args = dict(tags={"k": value}, timers=[])
    elif where == "timer tag":
        args = dict(tags={}, timers=[({"k": value}, 0.5, 1, 0.0, 0.0)])
    elif where == "nul str subclass":  # a str with a NUL is converted by to_bytes too
        args = dict(tags={"k": EncodesToBytearray("a\x00b")}, timers=[])
    else:  # hostname
        args = dict(tags={}, timers=[], hostname=value)
    outcome = []
    for encode in (pure, compiled):
        try:
            outcome.append(request(encode, **args))
        except Exception as error:
            outcome.append(type(error).__name__)
    want, got = outcome
    print("same" if got == want else f"DIFFERENT compiled={got!r:.300} pure={want!r:.300}")


@pytest.mark.parametrize("where", ["request tag", "timer tag", "nul str subclass", "hostname"])
def test_to_bytes_returning_a_bytearray_is_not_read_as_bytes(where):
    assert isolated(to_bytes_not_bytes, where).split() == ["same"]


# ---------------------------------------------------------------- str subclass parity


class CountingEncode(str):
    calls = 0

    def encode(self, *args, **kwargs):
        CountingEncode.calls += 1
        return f"enc{CountingEncode.calls}".encode()


def test_str_subclass_with_its_own_encode_gives_the_same_bytes():
    compiled, pure = encoders()
    CountingEncode.calls = 0
    want = request(pure, {"k": CountingEncode("v")}, [])
    CountingEncode.calls = 0
    got = request(compiled, {"k": CountingEncode("v")}, [])
    assert got == want


# ---------------------------------------------------------------- identity cache and address reuse


def address_reuse(rounds):
    compiled, pure = encoders()
    rng = random.Random(1)
    for r in range(rounds):
        # fresh strings every round: freed after the call, their addresses reused by the next
        n = rng.randrange(1, 40)
        names = [
            "".join(rng.choice("abcdef") for _ in range(rng.randrange(1, 6))) for _ in range(n)
        ]
        names = [s.encode().decode() for s in names]  # not interned
        tags = tuple((names[i], names[(i * 7) % n]) for i in range(n))
        timers = tuple(
            (
                (
                    tuple(
                        (names[(i + j) % n], names[(i * j) % n]) for j in range(rng.randrange(3))
                    ),
                    0.5,
                    1,
                    0.0,
                    0.0,
                )
            )
            for i in range(n)
        )
        args = (tags, timers)
        want = request(pure, *args)
        got = request(compiled, *args)
        assert got == want, (r, got, want)
        del tags, timers, names, args
    print("ok", rounds)


def test_identity_cache_does_not_match_objects_of_an_earlier_call():
    assert isolated(address_reuse, 3000).split() == ["ok", "3000"]


class FreesAndAllocates:
    """A tag value whose str() empties a dict (freeing its strings) then allocates new ones."""

    def __init__(self, victim, keep):
        self.victim, self.keep = victim, keep

    def __str__(self):
        self.victim.clear()
        gc.collect()
        self.keep.extend(f"{i:03}".encode().decode() for i in range(200))
        return "trigger"


def address_reuse_within_call(rounds):
    compiled, pure = encoders()
    for r in range(rounds):
        for encode in (pure, compiled):
            keep = []
            a, b, c = (
                f"n{r}a".encode().decode(),
                f"n{r}b".encode().decode(),
                f"n{r}c".encode().decode(),
            )
            tags = {a: b, c: None}
            tags[c] = FreesAndAllocates(tags, keep)
            t2 = {"000": "001", "002": b}
            timers = [({a: b}, 0.5, 1, 0.0, 0.0), (t2, 0.5, 1, 0.0, 0.0)]
            del a, b, c
            out = request(encode, tags, timers)
            if encode is pure:
                want = out
        assert out == want, (r, out, want)
    print("ok")


def test_objects_freed_during_a_call_do_not_match_the_identity_cache():
    assert isolated(address_reuse_within_call, 200).split() == ["ok"]


# ---------------------------------------------------------------- re-entrancy


class Nested:
    """Runs a whole encode (of its own, big enough to grow buffers) when converted."""

    def __init__(self, depth, encode, log):
        self.depth, self.encode, self.log = depth, encode, log

    def _inner(self):
        tags = {f"in{i}".encode().decode(): f"v{i}" for i in range(300)}
        if self.depth:
            tags["deeper"] = Nested(self.depth - 1, self.encode, self.log)
        timers = [({f"t{i}": f"u{i}" * 50, "x": "y"}, 0.5, i + 1, 0.1, 0.1) for i in range(400)]
        self.log.append(request(self.encode, tags, timers, packed=True))

    def __str__(self):
        self._inner()
        return "nested"

    def __float__(self):
        self._inner()
        return 0.25

    def __index__(self):
        self._inner()
        return 3


def reentrant(where):
    compiled, pure = encoders()
    outs = {}
    for encode in (pure, compiled):
        log = []
        nested = Nested(2, encode, log)
        if where == "str":
            args = ({"a": nested}, [({"b": nested}, 0.5, 1, 0.0, 0.0)])
        elif where == "float":
            args = ({"a": "b"}, [({"b": "c"}, nested, 1, nested, nested)])
        elif where == "index":
            args = ({"a": "b"}, [({"b": "c"}, 0.5, nested, 0.0, 0.0)])
        else:  # packed flag: its truth is asked late

            class Flag:
                def __bool__(self):
                    nested._inner()  # noqa: B023 - called within this round
                    return True

            args = ({"a": "b"}, [({"b": "c"}, 0.5, 1, 0.0, 0.0)])
            outs[encode] = (request(encode, *args, packed=Flag()), log)
            continue
        outs[encode] = (request(encode, *args), log)
    # (the pure twin asks ``packed`` twice: the nested encodes may differ in number, not in bytes)
    assert outs[compiled][0] == outs[pure][0]
    assert set(outs[compiled][1]) == set(outs[pure][1])
    print("ok")


@pytest.mark.parametrize("where", ["str", "float", "index", "packed"])
def test_an_encode_inside_an_encode_gives_both_the_pure_bytes(where):
    assert isolated(reentrant, where).split() == ["ok"]


class Finalized:
    """Encodes when freed: by the encoder's release of what it held, or by a collection."""

    def __init__(self, encode, log, cycle):
        self.encode, self.log = encode, log
        self.cycle = self if cycle else None

    def __str__(self):
        return "fin"

    def __del__(self):
        tags = {f"fin{i}": f"v{i}" * 30 for i in range(200)}
        self.log.append(request(self.encode, tags, [({"a": "b"}, 0.5, 1, 0.1, 0.0)]))


def finalizers(rounds):
    compiled, pure = encoders()
    gc.set_threshold(1, 1, 1)
    for r in range(rounds):
        res = {}
        for encode in (pure, compiled):
            log = []
            fin = Finalized(encode, log, cycle=False)  # freed when the encoder lets go
            tags = {"a": "b"}

            class Empties:
                def __str__(self):
                    tags.clear()  # noqa: B023 - this round's; the encoder holds the last reference to fin
                    return "x"

            tags["f"] = fin
            tags["e"] = Empties()
            for _ in range(5):
                Finalized(encode, log, cycle=True)  # cycles: collected at any allocation
            del fin
            out = request(encode, tags, [({f"k{i}": "v"}, 0.5, 1, 0.0, 0.0) for i in range(50)])
            gc.collect()
            res[encode] = (out, set(log))
        # when collections happen differs between the twins: how many finalizer encodes, not what
        assert res[compiled][0] == res[pure][0], r
        assert res[compiled][1] == res[pure][1] and len(res[pure][1]) == 1, r
        assert len(log) >= 6, len(log)
    print("ok")


def test_finalizers_that_encode_during_an_encode_or_its_release():
    assert isolated(finalizers, 50).split() == ["ok"]


def raising_then_big_then_small():
    compiled, pure = encoders()

    class Boom:
        def __str__(self):
            raise RuntimeError("boom")

    for r in range(200):
        try:
            request(compiled, {"a": "b", "c": Boom()}, [({"x": "y"}, 0.5, 1, 0.0, 0.0)])
        except RuntimeError:
            pass
        else:
            raise AssertionError("no error")
        n = 5000 if r % 2 else 3
        big = (
            {f"k{i}-{r}": f"v{i}" * 20 for i in range(n)},
            [({f"t{i}": f"u{i}"}, 0.5, 1, 0.1, 0.0) for i in range(n)],
        )
        assert request(compiled, *big) == request(pure, *big)
        assert request(compiled, *big, packed=True) == request(pure, *big, packed=True)
    print("ok")


def test_errors_and_trimmed_buffers_leave_the_kept_storage_usable():
    assert isolated(raising_then_big_then_small).split() == ["ok"]


# ---------------------------------------------------------------- threads


class Switch:
    def __init__(self, text):
        self.text = text

    def __str__(self):
        time.sleep(0)
        return self.text


def threads_hammering(rounds):
    compiled, pure = encoders()
    sys.setswitchinterval(1e-6)
    errors = []

    def work(seed):
        rng = random.Random(seed)
        try:
            for _ in range(rounds):
                n = rng.randrange(1, 60)
                tags = {
                    f"k{seed}-{i}".encode().decode(): Switch(f"v{i}" * rng.randrange(5))
                    for i in range(n)
                }
                timers = [
                    ({f"t{i}": Switch(f"u{seed}")}, 0.5, Switch and i + 1, 0.1, 0.0)
                    for i in range(n)
                ]
                if request(compiled, tags, timers) != request(pure, tags, timers):
                    errors.append(seed)
        except Exception as e:  # pragma: no cover
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("errors", len(errors), errors[:3])


def test_threads_encoding_at_once_give_the_pure_bytes():
    assert isolated(threads_hammering, 300).split()[:2] == ["errors", "0"]


# ---------------------------------------------------------------- fork


def fork_during_encode():
    compiled, pure = encoders()
    started, go_on = threading.Event(), threading.Event()

    class Waits:
        def __str__(self):
            started.set()
            go_on.wait()
            return "w"

    out = []
    args = ({"a": Waits()}, [({"b": "c"}, 0.5, 1, 0.0, 0.0)])
    thread = threading.Thread(target=lambda: out.append(request(compiled, *args)))
    thread.start()
    started.wait()
    pid = os.fork()
    if pid == 0:  # the child: the encode in the other thread never ends here
        code = 0
        try:
            for i in range(200):
                big = (
                    {f"k{i}": "v" * 100 for i in range(300)},
                    [({"x": f"{i}"}, 0.5, 1, 0.0, 0.0)],
                )
                if request(compiled, *big) != request(pure, *big):
                    code = 3
        except BaseException:
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    go_on.set()
    thread.join()
    assert out[0] == request(pure, {"a": "w"}, [({"b": "c"}, 0.5, 1, 0.0, 0.0)])
    print("child", os.waitstatus_to_exitcode(status))


def test_fork_while_another_thread_encodes():
    assert isolated(fork_during_encode).split() == ["child", "0"]


# ---------------------------------------------------------------- arguments freed mid-call


def kwargs_cleared():
    compiled, pure = encoders()
    for encode in (compiled,):
        for r in range(200):
            kw = {}

            class Clears:
                def __str__(self):
                    kw.clear()  # noqa: B023 - called within this round
                    gc.collect()
                    [f"{i}".encode().decode() for i in range(300)]
                    return "c"

            names = [f"n{r}-{i}".encode().decode() for i in range(20)]
            kw.update(
                hostname="h",
                server_name="s",
                script_name="/",
                request_count=1,
                document_size=0,
                memory_peak=0,
                request_time=0.5,
                ru_utime=0.0,
                ru_stime=0.0,
                status=200,
                memory_footprint=0,
                schema=None,
                tags=tuple((n, n + "v") for n in names) + (("z", Clears()),),
                timers=tuple(((("q", n),), 0.5, 1, 0.0, 0.0) for n in names),
            )
            want_kw = dict(kw)
            want_kw["tags"] = want_kw["tags"][:-1] + (("z", "c"),)
            want = pure(**want_kw)
            del names
            got = encode(**kw)
            assert got == want
    print("ok")


def test_arguments_freed_by_the_caller_during_the_call():
    assert isolated(kwargs_cleared).split() == ["ok"]


# ---------------------------------------------------------------- compiled Timer fields replaced


def timer_fields_replaced(rounds):
    compiled, pure = encoders()
    from pynba.timer import Timer

    for r in range(rounds):
        res = {}
        for encode in (pure, compiled):
            timer = Timer({f"a{r}".encode().decode(): f"b{r}".encode().decode()})
            timer.add(0.5, hit_count=7)

            class Replaces:
                def __str__(self):
                    timer.tags = {f"z{i}".encode().decode(): "q" for i in range(30)}  # noqa: B023 - called within this round
                    timer.add(1.0, hit_count=10**30)  # noqa: B023 - called within this round
                    gc.collect()
                    [f"{i}".encode().decode() for i in range(300)]
                    return "r"

            t2 = Timer({"k": Replaces()}).add(0.25)
            res[encode] = request(encode, {}, [t2, timer])
        assert res[compiled] == res[pure], r
    print("ok")


def test_a_timer_whose_fields_are_replaced_while_encoding():
    assert isolated(timer_fields_replaced, 200).split() == ["ok"]


# ---------------------------------------------------------------- bytes subclass: replace


class ReplacesBadly(bytes):
    """A bytes with a NUL, whose ``replace`` (called by to_bytes) gives a bytearray."""

    def replace(self, *args):
        return bytearray(b"B" * 1000)


def bytes_replace_not_bytes():
    compiled, pure = encoders()
    args = dict(tags={}, timers=[], hostname=ReplacesBadly(b"a\x00b"))
    outcome = []
    for encode in (pure, compiled):
        try:
            outcome.append(request(encode, **args))
        except Exception as error:
            outcome.append(type(error).__name__)
    want, got = outcome
    print("same" if got == want else f"DIFFERENT compiled={got!r:.300} pure={want!r:.300}")


def test_a_bytes_subclass_whose_replace_gives_a_bytearray():
    assert isolated(bytes_replace_not_bytes).split() == ["same"]

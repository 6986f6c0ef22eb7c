"""``timed_calls``: a hook that hands each call on as it came, timed inside a monitored request.

Compiled, the hook is a C object (``instrumentation/_call_hook.pyx``); in
the pure-Python build, a Python function. The suite runs against both.
"""

import copy
import gc
import inspect
import logging
import os
import pickle
import sys
import threading
import time
import types
import warnings
import weakref
from unittest import mock

import pytest

import pynba
from packets import monitored_request
from pynba.instrumentation._hooks import Patches, around_calls, timed_calls


class Callbacks:
    """A hook's ``enter``, ``done`` and ``failed``, recording what they are given."""

    def __init__(self, timed=True, keep=True):
        self.timed = timed
        self.keep = keep  # False: count the calls only (keeps no reference)
        self.entered = []
        self.done = []
        self.failed = []
        self.count = 0

    def enter(self, collector):
        if self.keep:
            self.entered.append(collector)
        return self.timed

    def on_done(self, collector, seconds, *rest):
        self.count += 1
        if self.keep:
            self.done.append((collector, seconds, *rest))

    def on_failed(self, collector, seconds, *rest):
        self.count += 1
        if self.keep:
            self.failed.append((collector, seconds, *rest))

    def hook(self, wrapped, picks=(), outermost=None):
        return timed_calls(wrapped, self.enter, self.on_done, self.on_failed, picks, outermost)


def given(*args, **kwargs):
    return args, kwargs


CALLS = [
    ((), {}),
    ((1,), {}),
    ((1, 2), {}),
    ((1,), {"b": 2}),
    ((), {"a": 1, "b": 2}),
    ((), {"b": 2}),
    ((1, 2, 3, 4), {"x": 5, "y": 6}),
]


def around_hook(wrapped):
    """An ``around_calls`` hook of ``wrapped``: the other kind of the same C object."""
    return around_calls(wrapped, lambda collector, first: "state", lambda state: None)


#: For the tests that hold for both kinds of hook.
HOOK_KINDS = pytest.mark.parametrize(
    "make_hook",
    [lambda wrapped: Callbacks(keep=False).hook(wrapped), around_hook],
    ids=["timed_calls", "around_calls"],
)


@HOOK_KINDS
def test_the_compiled_build_hands_calls_on_in_c(make_hook):
    hook = make_hook(given)
    # _hooks tells the build: _call_hook, which has no twin, loads in both.
    if "instrumentation._hooks" in pynba.compiled_modules():
        assert type(hook).__name__ == "call_hook"
        assert repr(hook) == f"<pynba hook of {given!r}>"
    else:
        assert inspect.isfunction(hook)


@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_outside_a_request_each_call_is_handed_on_as_it_came_and_not_timed(args, kwargs):
    callbacks = Callbacks()
    hook = callbacks.hook(given, ((0, "a"), (1, "b")))
    assert hook(*args, **kwargs) == (args, kwargs)
    assert callbacks.entered == callbacks.done == callbacks.failed == []


@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_inside_a_request_each_call_is_handed_on_and_its_picks_read(args, kwargs, udp_listener):
    callbacks = Callbacks()
    hook = callbacks.hook(given, ((0, "a"), (1, "b"), (7, "y")))
    with monitored_request(udp_listener) as collector:
        result = hook(*args, **kwargs)
    assert result == (args, kwargs)
    assert callbacks.entered == [collector]
    [(done_collector, seconds, a, b, y, done_result)] = callbacks.done
    assert done_collector is collector
    assert type(seconds) is float and 0.0 <= seconds < 1.0
    expected = [
        args[position] if position < len(args) else kwargs.get(keyword)
        for position, keyword in ((0, "a"), (1, "b"), (7, "y"))
    ]
    assert [a, b, y] == expected
    assert done_result is result
    assert callbacks.failed == []


def test_the_seconds_are_those_the_call_took(udp_listener):
    callbacks = Callbacks()
    hook = callbacks.hook(time.sleep, ((0, "seconds"),))
    with monitored_request(udp_listener):
        hook(0.05)
    [(_, seconds, picked, result)] = callbacks.done
    assert (picked, result) == (0.05, None)
    assert 0.05 <= seconds < 1.0


def test_a_call_that_raises_gives_failed_its_picks_and_raises_unchanged(udp_listener):
    error = LookupError("no such row")

    def fails(a, b=None):
        time.sleep(0.02)
        raise error

    callbacks = Callbacks()
    hook = callbacks.hook(fails, ((0, "a"), (1, "b")))
    with monitored_request(udp_listener) as collector:
        with pytest.raises(LookupError) as raised:
            hook("first", b="second")
    assert raised.value is error
    assert raised.traceback[-1].name == "fails"  # the traceback from where it was raised
    [(failed_collector, seconds, a, b)] = callbacks.failed
    assert (failed_collector, a, b) == (collector, "first", "second")
    assert 0.02 <= seconds < 1.0
    assert callbacks.done == []


def test_a_call_enter_refuses_is_handed_on_untimed(udp_listener):
    callbacks = Callbacks(timed=False)
    hook = callbacks.hook(given, ((0, "a"),))
    with monitored_request(udp_listener) as collector:
        assert hook(1, b=2) == ((1,), {"b": 2})
    assert callbacks.entered == [collector]
    assert callbacks.done == callbacks.failed == []


def test_a_pick_by_keyword_is_found_under_a_str_subclass(udp_listener):
    class Name(str):
        def __hash__(self):  # as the call binds it: by equality, whatever its hash
            return 12345

    callbacks = Callbacks()
    hook = callbacks.hook(given, ((0, "a"),))
    with monitored_request(udp_listener):
        hook(**{Name("a"): 1})
    [(_, _, picked, _)] = callbacks.done
    assert picked == 1


class Owner:
    def method(self, a, b=2):
        """The method's own docstring."""
        return self, a, b


def test_a_hook_is_the_method_it_replaces(udp_listener):
    original = Owner.method
    callbacks = Callbacks()
    patches = Patches()
    patches.replace(Owner, "method", lambda method: callbacks.hook(method, ((0, "self"), (1, "a"))))
    try:
        owner = Owner()
        hooked = vars(Owner)["method"]
        assert Owner.method is hooked  # from the class, itself, as a function
        assert hooked.__wrapped__ is original
        assert (hooked.__name__, hooked.__qualname__) == ("method", "Owner.method")
        assert hooked.__doc__ == "The method's own docstring."
        assert inspect.signature(hooked) == inspect.signature(original)
        bound = owner.method
        assert bound.__self__ is owner and bound.__func__ is hooked
        with monitored_request(udp_listener):
            assert owner.method(1) == (owner, 1, 2)
            assert Owner.method(owner, 3, b=4) == (owner, 3, 4)
            assert bound(a=5) == (owner, 5, 2)
            # Through the descriptor's __get__, as a call of owner.method does not go.
            assert getattr(owner, "method")(6) == (owner, 6, 2)  # noqa: B009
        assert [tuple(rest[:2]) for _, _, *rest in callbacks.done] == [
            (owner, a) for a in (1, 3, 5, 6)
        ]
    finally:
        patches.undo()
    assert vars(Owner)["method"] is original


@pytest.fixture
def hooked_owner():
    """``Owner.method`` hooked, for the test, as an integration hooks a library's method."""
    patches = Patches()
    patches.replace(Owner, "method", lambda method: Callbacks().hook(method, ((1, "a"),)))
    yield vars(Owner)["method"]
    patches.undo()


def test_a_hook_is_seen_as_the_function_it_wraps(hooked_owner):
    original = hooked_owner.__wrapped__
    assert isinstance(hooked_owner, types.FunctionType)
    assert inspect.isfunction(hooked_owner)
    assert inspect.signature(hooked_owner) == inspect.signature(original)
    if type(hooked_owner) is not types.FunctionType:  # the C hook: the function's own
        assert inspect.getfullargspec(hooked_owner) == inspect.getfullargspec(original)
        assert hooked_owner.__code__ is original.__code__
        assert hooked_owner.__defaults__ is original.__defaults__
        assert hooked_owner.__globals__ is original.__globals__


def test_a_hook_is_pickled_and_copied_as_a_function_is(hooked_owner):
    assert pickle.loads(pickle.dumps(Owner.method)) is hooked_owner
    assert copy.copy(hooked_owner) is hooked_owner
    assert copy.deepcopy(hooked_owner) is hooked_owner


def test_mock_autospec_of_a_hooked_method_binds_self_and_checks_arguments(hooked_owner):
    owner = Owner()
    with mock.patch.object(Owner, "method", autospec=True) as method:
        owner.method(1, b=3)
        assert method.call_args == mock.call(owner, 1, b=3)
        with pytest.raises(TypeError):
            owner.method()  # a missing argument, as the method's signature says


def test_a_base_exception_of_the_call_goes_through_failed(udp_listener):
    class Stop(BaseException):
        pass

    def stops(a):
        raise Stop

    callbacks = Callbacks()
    hook = callbacks.hook(stops, ((0, "a"),))
    with monitored_request(udp_listener):
        with pytest.raises(Stop):
            hook("first")
    assert [rest for _, _, *rest in callbacks.failed] == [["first"]]
    assert callbacks.done == []


@pytest.fixture
def lenient(monkeypatch):
    monkeypatch.delenv("PYNBA_STRICT", raising=False)


def broken(*args):
    raise RuntimeError("a bug in a hook")


def test_a_failing_enter_leaves_the_call_untimed_and_is_logged(lenient, udp_listener, caplog):
    hook = timed_calls(given, broken, broken, broken, ())
    with caplog.at_level(logging.ERROR, logger="pynba"):
        with monitored_request(udp_listener):
            assert hook(1) == ((1,), {})
    assert "cannot start an automatic timer" in caplog.text


def test_a_keyword_failing_to_compare_leaves_the_call_unmarked_and_untimed(
    lenient, udp_listener, caplog
):
    # The arguments are read before the thread is marked in ``outermost``: a
    # failure reading them must not leave a mark that nothing takes off.
    class Name(str):
        def __eq__(self, other):
            raise RuntimeError("cannot compare")

        __hash__ = str.__hash__

    callbacks = Callbacks()
    calling = set()
    hook = callbacks.hook(given, ((5, "url"),), calling)
    with caplog.at_level(logging.ERROR, logger="pynba"):
        with monitored_request(udp_listener):
            args, kwargs = hook(**{Name("other"): 1})
            assert args == () and list(kwargs.values()) == [1]  # passed on
            assert hook(url=2) == ((), {"url": 2})
    assert "cannot start an automatic timer" in caplog.text
    assert len(callbacks.entered) == 1  # the second call's only
    assert [rest for _, _, *rest in callbacks.done] == [[2, ((), {"url": 2})]]
    assert calling == set()


def test_a_call_made_inside_a_timed_call_of_the_same_outermost_set_is_not_timed(udp_listener):
    # As a redirect requests follows, or urllib3's pool under requests: one timer.
    calling = set()
    outer, inner = Callbacks(), Callbacks()
    inner_hook = inner.hook(given, (), calling)
    seen = []

    def outer_call(n):
        seen.append(set(calling))
        return inner_hook(n + 1)

    outer_hook = outer.hook(outer_call, ((0, "n"),), calling)
    with monitored_request(udp_listener):
        assert outer_hook(1) == ((2,), {})
        assert calling == set()
        assert inner_hook(3) == ((3,), {})  # no outer call now: timed
    assert seen == [{threading.get_ident()}]
    assert [rest for _, _, *rest in outer.done] == [[1, ((2,), {})]]
    assert [rest for _, _, *rest in inner.done] == [[((3,), {})]]
    assert calling == set()


def test_a_timed_call_that_raises_takes_its_mark_off(udp_listener):
    calling = set()
    callbacks = Callbacks()

    def fails():
        assert calling == {threading.get_ident()}
        raise KeyboardInterrupt

    hook = callbacks.hook(fails, (), calling)
    with monitored_request(udp_listener):
        with pytest.raises(KeyboardInterrupt):
            hook()
        assert calling == set()
    assert len(callbacks.failed) == 1


def test_hooks_of_other_outermost_sets_or_none_time_their_calls_inside_another(udp_listener):
    calling = set()
    inner = Callbacks()
    inner_hooks = [inner.hook(given, (), set()), inner.hook(given, ())]
    hook = Callbacks().hook(lambda: [inner_hook(1) for inner_hook in inner_hooks], (), calling)
    with monitored_request(udp_listener):
        hook()
    assert len(inner.done) == 2


def test_each_thread_times_its_own_call_while_another_is_in_one(udp_listener):
    calling = set()
    callbacks = Callbacks()
    inside = threading.Barrier(2, timeout=10)

    def wait(n):
        inside.wait()  # both threads in a timed call at once
        return n

    hook = callbacks.hook(wait, (), calling)
    errors = []

    def one_request(n):
        try:
            with monitored_request(udp_listener):
                assert hook(n) == n
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=one_request, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert sorted(result for *_, result in callbacks.done) == [0, 1]
    assert calling == set()


def test_a_failing_done_still_returns_the_calls_result(lenient, udp_listener, caplog):
    hook = timed_calls(given, lambda collector: True, broken, broken, ())
    with caplog.at_level(logging.ERROR, logger="pynba"):
        with monitored_request(udp_listener):
            assert hook(1) == ((1,), {})
    assert "cannot record an automatic timer" in caplog.text


def test_a_failing_failed_still_raises_the_calls_error(lenient, udp_listener, caplog):
    def fails():
        raise KeyError("the call's own")

    hook = timed_calls(fails, lambda collector: True, broken, broken, ())
    with caplog.at_level(logging.ERROR, logger="pynba"):
        with monitored_request(udp_listener):
            with pytest.raises(KeyError, match="the call's own"):
                hook()
    assert "cannot record an automatic timer" in caplog.text


def test_in_strict_mode_a_failing_callback_raises(udp_listener):
    hook = timed_calls(given, lambda collector: True, broken, broken, ())
    with monitored_request(udp_listener):
        with pytest.raises(RuntimeError, match="a bug in a hook"):
            hook(1)


@pytest.mark.parametrize(
    ("picks", "message"),
    [
        ([(0, "a")], "^picks must be a tuple"),
        (((0,),), "picks"),
        (((-1, "a"),), "picks"),
        (((256, "a"),), "picks"),
        (((True, "a"),), "picks"),
        (((0, b"a"),), "picks"),
        (("a",), "picks"),
        (((0, "a"), (1, "b"), (2, "c"), (3, "d")), "at most 3 picks"),
    ],
)
def test_bad_picks_are_refused_when_the_hook_is_made(picks, message):
    with pytest.raises(TypeError, match=message):
        Callbacks().hook(given, picks)


@pytest.mark.parametrize("ident", ["thread", 1.5, True])
def test_a_thread_ident_that_is_not_an_int_leaves_the_call_untimed_and_unmarked(
    ident, lenient, udp_listener, caplog, monkeypatch
):
    # _thread.get_ident() as a patch may make it: an ident that is not an
    # int might hash otherwise when taken off the set than when put in.
    import _thread

    calling = set()
    callbacks = Callbacks()
    hook = callbacks.hook(given, (), calling)
    monkeypatch.setattr(_thread, "get_ident", lambda: ident)
    with caplog.at_level(logging.ERROR, logger="pynba"):
        with monitored_request(udp_listener):
            assert hook(1) == ((1,), {})
    monkeypatch.undo()
    assert "cannot start an automatic timer" in caplog.text
    assert callbacks.done == [] and calling == set()


@pytest.mark.parametrize(("patch", "error"), [("deleted", AttributeError), ("None", TypeError)])
def test_a_missing_get_ident_is_the_same_error_in_both_builds(
    patch, error, udp_listener, monkeypatch
):
    # Raised here (strict mode), logged in production: the call goes untimed.
    import _thread

    calling = set()
    callbacks = Callbacks()
    hook = callbacks.hook(given, (), calling)
    with monitored_request(udp_listener):
        if patch == "deleted":
            monkeypatch.delattr(_thread, "get_ident")
        else:
            monkeypatch.setattr(_thread, "get_ident", None)
        try:
            with pytest.raises(error):
                hook(1)
        finally:
            monkeypatch.undo()
    assert callbacks.done == [] and calling == set()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork")
def test_a_child_process_starts_with_no_thread_in_a_call():
    from pynba.instrumentation._http_client import IN_CALL

    entered, release = threading.Event(), threading.Event()

    def wait():
        entered.set()
        release.wait(10)

    hook = timed_calls(wait, lambda collector: True, lambda *a: None, lambda *a: None, (), IN_CALL)
    errors = []

    def one_request():
        try:
            with monitored_request(types.SimpleNamespace(address=("127.0.0.1", 9))):
                hook()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=one_request)
    thread.start()
    try:
        assert entered.wait(10)
        assert IN_CALL == {thread.ident}
        with warnings.catch_warnings():  # forking a process with threads
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: a new thread may be given the ident of the parent's
            os._exit(0 if IN_CALL == set() else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        thread.join(10)
    assert os.waitstatus_to_exitcode(status) == 0
    assert errors == [] and IN_CALL == set()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork")
def test_a_child_forked_inside_a_timed_call_goes_on_inside_it():
    # The thread that forks lives on in the child, still in its call: the
    # calls it makes there are part of that call, not timed again.
    from pynba.instrumentation._http_client import IN_CALL

    def fork():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            os._exit(0 if IN_CALL == {threading.get_ident()} else 1)
        return os.waitpid(pid, 0)[1]

    hook = timed_calls(fork, lambda collector: True, lambda *a: None, lambda *a: None, (), IN_CALL)
    with monitored_request(types.SimpleNamespace(address=("127.0.0.1", 9))):
        status = hook()
    assert os.waitstatus_to_exitcode(status) == 0
    assert IN_CALL == set()


def test_an_outermost_that_is_not_a_set_is_refused_by_name():
    with pytest.raises(TypeError, match="^outermost must be a set or None"):
        Callbacks().hook(given, (), [])


@pytest.mark.parametrize("argument", ["wrapped", "enter", "done", "failed"])
def test_a_callback_that_cannot_be_called_is_refused_by_name(argument):
    callbacks = Callbacks()
    arguments = {
        "wrapped": given,
        "enter": callbacks.enter,
        "done": callbacks.on_done,
        "failed": callbacks.on_failed,
    }
    arguments[argument] = "not callable"
    with pytest.raises(TypeError, match=f"^{argument} must be callable"):
        timed_calls(picks=(), **arguments)


def test_no_reference_is_kept_or_lost(udp_listener):
    value, keyword_value, result = object(), object(), object()

    def returns(a, b=None):
        return result

    def raises(a, b=None):
        raise ValueError(a)

    callbacks = Callbacks(keep=False)
    hooks = [callbacks.hook(function, ((0, "a"), (1, "b"))) for function in (returns, raises)]
    counts = [sys.getrefcount(obj) for obj in (value, keyword_value, result)]
    for _ in range(2):  # outside a request, then inside one
        for _ in range(500):
            hooks[0](value, b=keyword_value)
            try:
                hooks[1](value, b=keyword_value)
            except ValueError:
                pass
        with monitored_request(udp_listener):
            for _ in range(500):
                hooks[0](value, keyword_value)
                try:
                    hooks[1](a=value, b=keyword_value)
                except ValueError:
                    pass
    gc.collect()
    assert [sys.getrefcount(obj) for obj in (value, keyword_value, result)] == counts
    assert callbacks.count == 2_000


@HOOK_KINDS
def test_a_hook_in_a_reference_cycle_is_collected(make_hook):
    hook = make_hook(given)
    hook.__dict__["itself"] = hook
    gone = weakref.ref(hook)
    del hook
    gc.collect()
    assert gone() is None


@HOOK_KINDS
def test_a_hooked_function_that_recurses_without_end_raises_recursion_error(
    make_hook, udp_listener
):
    def recurse(depth):
        return hooked(depth + 1)

    hooked = make_hook(recurse)
    for _ in range(2):
        with pytest.raises(RecursionError):
            hooked(0)
        with monitored_request(udp_listener):
            with pytest.raises(RecursionError):
                hooked(0)


@HOOK_KINDS
def test_a_long_chain_of_hooks_raises_recursion_error_and_is_freed(make_hook, udp_listener):
    # Each hook wraps the one before: calls from hook to hook with no Python
    # frame between them, and a chain freed hook by hook.
    chain = given
    for _ in range(200_000):
        chain = make_hook(chain)
    with pytest.raises(RecursionError):
        chain(1)
    with monitored_request(udp_listener):
        with pytest.raises(RecursionError):
            chain(1)
    del chain
    short = given
    for _ in range(50):
        short = make_hook(short)
    assert short(1, b=2) == ((1,), {"b": 2})
    with monitored_request(udp_listener):
        assert short(1, b=2) == ((1,), {"b": 2})


def test_the_c_hook_refuses_a_variable_that_is_not_a_context_variable():
    c_hook = pytest.importorskip("pynba.instrumentation._call_hook")
    callbacks = Callbacks()
    with pytest.raises(TypeError, match="^var must be a contextvars.ContextVar"):
        c_hook.call_hook(given, "var", callbacks.enter, callbacks.on_done, callbacks.on_failed, ())
    with pytest.raises(TypeError, match="^var must be a contextvars.ContextVar"):
        c_hook.around_hook(given, "var", lambda collector, first: None, print)


def recursion_counter():
    """The levels of recursion the interpreter has counted so far, where it can be read.

    From CPython's own test modules: 3.10 and 3.11 count C recursion against
    the recursion limit, 3.13 against a C recursion limit of its own. 3.12
    has no way to read its count.
    """
    testing = pytest.importorskip("_testinternalcapi")
    if sys.version_info < (3, 12):
        return testing.get_recursion_depth
    if not hasattr(testing, "get_c_recursion_remaining"):
        pytest.skip("this CPython has no count of C recursion to read")
    return lambda: -testing.get_c_recursion_remaining()


@HOOK_KINDS
def test_a_compiled_hook_counts_its_levels_of_recursion_and_gives_them_back(
    make_hook, udp_listener
):
    if "instrumentation._hooks" not in pynba.compiled_modules():
        pytest.skip("from source, the interpreter counts the hook's frames itself")
    counted = recursion_counter()
    _, per_hook = recursion_limit_and_levels_a_hook_counts()
    one, two = make_hook(counted), make_hook(make_hook(counted))
    with monitored_request(udp_listener):
        assert two() - one() == per_hook
    outside = counted()
    chain = counted
    for _ in range(200_000):
        chain = make_hook(chain)
    with pytest.raises(RecursionError):
        chain()
    assert counted() == outside


def recursion_limit_and_levels_a_hook_counts():
    """The limit a compiled hook's levels of recursion count against, and how many it counts.

    3.10 and 3.11: the recursion limit, two levels a hook. 3.12 and 3.13: the
    interpreter's C recursion limit (read from CPython's test modules, where
    it has them), two thousandths of it a hook, rounded up.
    """
    if sys.version_info < (3, 12):
        return sys.getrecursionlimit(), 2
    if sys.version_info >= (3, 14):
        pytest.skip("from 3.14, CPython measures the stack: no count of levels")
    if sys.version_info < (3, 13):
        limit = getattr(pytest.importorskip("test.support"), "C_RECURSION_LIMIT", None)
    else:
        limit = getattr(pytest.importorskip("_testcapi"), "Py_C_RECURSION_LIMIT", None)
    if limit is None:
        pytest.skip("this CPython's test modules do not give its C recursion limit")
    return limit, (2 * limit + 999) // 1000


@HOOK_KINDS
def test_a_chain_of_compiled_hooks_ends_after_as_many_hooks_as_the_limit_holds(make_hook):
    if "instrumentation._hooks" not in pynba.compiled_modules():
        pytest.skip("from source, the interpreter counts the hook's frames itself")
    limit, per_hook = recursion_limit_and_levels_a_hook_counts()

    def chain_of(length):
        chain = given
        for _ in range(length):
            chain = make_hook(chain)
        return chain

    def longest_chain_called():
        shortest_failing, longest_called = 4 * limit // per_hook, 0
        while shortest_failing - longest_called > 1:
            length = (shortest_failing + longest_called) // 2
            try:
                chain_of(length)()
                longest_called = length
            except RecursionError:
                shortest_failing = length
        return longest_called

    found = []
    # A new thread: its count starts at the limit, less a few frames of its own.
    thread = threading.Thread(target=lambda: found.append(longest_chain_called()))
    thread.start()
    thread.join()
    assert limit // per_hook - 10 <= found[0] < limit // per_hook

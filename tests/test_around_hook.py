"""``around_calls``: a hook that hands each call on as it came, bracketed inside a request.

Compiled, the hook is a C object (``instrumentation/_call_hook.pyx``, the
object ``timed_calls`` makes, with another call); in the pure-Python build,
a Python function. The suite runs against both. The tests at the end hold
both kinds of C hook to what a caller or a callback may do to them;
test_call_hook.py runs its recursion tests on both kinds too.
"""

import functools
import logging
import sys
import threading
import types

import pytest

from packets import monitored_request
from pynba.instrumentation._hooks import Patches, around_calls, timed_calls
from scripts import isolated, recursion_stack_size

CALLS = [
    ((), {}),
    ((1,), {}),
    ((1, 2), {"b": 3}),
    ((), {"a": 1, "b": 2}),
    ((1, 2, 3, 4), {"x": 5, "y": 6}),
]


class Brackets:
    """A hook's ``begin`` and ``end``, recording what happens in order."""

    def __init__(self, state="state", keep=True):
        self.state = state
        self.keep = keep  # False: count only (keeps no reference)
        self.events = []
        self.count = 0

    def begin(self, collector, first):
        self.count += 1
        if self.keep:
            self.events.append(("begin", collector, first))
        return self.state

    def end(self, state):
        self.count += 1
        if self.keep:
            self.events.append(("end", state))

    def hook(self, wrapped):
        return around_calls(wrapped, self.begin, self.end)


def given(*args, **kwargs):
    return args, kwargs


@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_outside_a_request_each_call_is_handed_on_as_it_came_and_not_bracketed(args, kwargs):
    brackets = Brackets()
    assert brackets.hook(given)(*args, **kwargs) == (args, kwargs)
    assert brackets.events == []


@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_inside_a_request_begin_gets_the_first_argument_and_end_its_state(
    args, kwargs, udp_listener
):
    brackets = Brackets()
    inside = []

    def wrapped(*args, **kwargs):
        inside.append(list(brackets.events))  # what ran before the call
        return args, kwargs

    with monitored_request(udp_listener) as collector:
        assert brackets.hook(wrapped)(*args, **kwargs) == (args, kwargs)
    first = args[0] if args else None
    assert inside == [[("begin", collector, first)]]
    assert brackets.events == [("begin", collector, first), ("end", "state")]


def test_a_call_begin_gives_none_is_handed_on_without_end(udp_listener):
    brackets = Brackets(state=None)
    with monitored_request(udp_listener) as collector:
        assert brackets.hook(given)(1, b=2) == ((1,), {"b": 2})
    assert brackets.events == [("begin", collector, 1)]


def test_a_call_that_raises_is_ended_and_raises_unchanged(udp_listener):
    brackets = Brackets()
    error = KeyboardInterrupt("the call's")

    def failing(*args):
        raise error

    with monitored_request(udp_listener):
        with pytest.raises(KeyboardInterrupt) as raised:
            brackets.hook(failing)("template")
    assert raised.value is error
    assert [event[0] for event in brackets.events] == ["begin", "end"]


def test_a_method_hooked_gets_its_instance_as_the_first_argument(udp_listener):
    brackets = Brackets()

    class Template:
        def render(self, **context):
            return self, context

    patches = Patches()
    patches.replace(Template, "render", brackets.hook)
    template = Template()
    try:
        with monitored_request(udp_listener) as collector:
            assert template.render(name="ada") == (template, {"name": "ada"})
            assert Template.render(template) == (template, {})
    finally:
        patches.undo()
    assert brackets.events[0] == ("begin", collector, template)
    assert brackets.events[2] == ("begin", collector, template)
    assert Template.render.__name__ == "render"


@pytest.fixture
def lenient(monkeypatch):
    monkeypatch.setenv("PYNBA_STRICT", "0")  # as in production: logged, not raised


def broken(*args):
    raise ValueError("pynba's own")


def test_a_failing_begin_leaves_the_call_unbracketed_and_is_logged(lenient, udp_listener, caplog):
    brackets = Brackets()
    hook = around_calls(given, broken, brackets.end)
    with caplog.at_level(logging.ERROR, logger="pynba"), monitored_request(udp_listener):
        assert hook(1) == ((1,), {})
    assert brackets.events == []
    assert "cannot start an automatic timer" in caplog.text


@pytest.mark.parametrize("raises", [False, True])
def test_a_failing_end_leaves_the_result_or_error_as_they_were(
    raises, lenient, udp_listener, caplog
):
    error = LookupError("the call's")

    def call(*args):
        if raises:
            raise error
        return "result"

    hook = around_calls(call, Brackets().begin, broken)
    with caplog.at_level(logging.ERROR, logger="pynba"), monitored_request(udp_listener):
        if raises:
            with pytest.raises(LookupError) as raised:
                hook(1)
            assert raised.value is error
        else:
            assert hook(1) == "result"
    assert "cannot record an automatic timer" in caplog.text


def test_in_strict_mode_a_failing_bracket_raises(udp_listener):
    with monitored_request(udp_listener):
        with pytest.raises(ValueError, match="pynba's own"):
            around_calls(given, broken, Brackets().end)(1)
        with pytest.raises(ValueError, match="pynba's own"):
            around_calls(given, Brackets().begin, broken)(1)


@pytest.mark.parametrize("argument", ["wrapped", "begin", "end"])
def test_a_callback_that_cannot_be_called_is_refused_by_name(argument):
    callbacks = {"wrapped": given, "begin": Brackets().begin, "end": Brackets().end}
    callbacks[argument] = "not callable"
    with pytest.raises(TypeError, match=f"^{argument} must be callable"):
        around_calls(**callbacks)


def test_no_reference_is_kept_or_lost(udp_listener):
    brackets = Brackets(keep=False)
    hook = brackets.hook(given)
    argument, state = object(), object()
    brackets.state = state
    before = sys.getrefcount(argument), sys.getrefcount(state)
    for _ in range(100):
        hook(argument, key=argument)
    with monitored_request(udp_listener):
        for _ in range(100):
            hook(argument, key=argument)
    assert (sys.getrefcount(argument), sys.getrefcount(state)) == before
    assert brackets.count == 200


def listener_at(port):
    """What monitored_request() needs of a listener (in a child, the parent's port)."""
    return types.SimpleNamespace(address=("127.0.0.1", port))


def a_hook_of(kind, wrapped, callback):
    """A hook of ``wrapped`` whose first callback inside a request is ``callback()``."""

    def ignored(*args):
        pass

    if kind == "around":
        return around_calls(wrapped, lambda collector, first: callback() or "state", ignored)
    return timed_calls(wrapped, lambda collector: callback() or True, ignored, ignored, ())


def arguments_freed_by_a_callback(kind, port):
    """A partial's arguments, freed by the hook's callback before it hands them on."""

    def wrapped(*args):
        [bytearray(64) for _ in range(1000)]  # allocations that would reuse freed memory
        return [type(argument).__name__ for argument in args]

    def callback():
        partial.__setstate__((hook, (), {}, None))  # frees the partial's arguments tuple

    hook = a_hook_of(kind, wrapped, callback)
    partial = functools.partial(hook, object(), [object()] * 3)
    with monitored_request(listener_at(port)):
        print(partial())


@pytest.mark.parametrize("kind", ["around", "timed"])
def test_arguments_a_callback_frees_are_handed_on_as_they_came(kind, udp_listener):
    # functools.partial hands on its arguments tuple's items, and its
    # __setstate__ frees that tuple: the compiled hooks hold the arguments
    # before a callback can run.
    assert isolated(arguments_freed_by_a_callback, kind, udp_listener.port) == (
        "['object', 'list']\n"
    )


def a_proxy_wrapping_its_hook(kind, port):
    """A hook and a wrapt proxy that wrap each other, called in a thread of a small stack."""
    import wrapt

    from pynba._implementation import runs_compiled
    from pynba.instrumentation import _hooks

    def call_all():
        proxy = wrapt.CallableObjectProxy(print)
        hook = a_hook_of(kind, proxy, lambda: None)
        proxy.__wrapped__ = hook
        for inside in (False, True):
            for keywords in ({}, {"k": 2}):
                try:
                    if inside:
                        with monitored_request(listener_at(port)):
                            hook(1, **keywords)
                    else:
                        hook(1, **keywords)
                except RecursionError:
                    print("RecursionError")

    threading.stack_size(recursion_stack_size(runs_compiled(_hooks.__file__)))
    thread = threading.Thread(target=call_all)
    thread.start()
    thread.join()


@pytest.mark.parametrize("kind", ["around", "timed"])
def test_a_foreign_proxy_wrapping_its_own_hook_is_a_recursion_error(kind, udp_listener):
    pytest.importorskip("wrapt")
    output = isolated(a_proxy_wrapping_its_hook, kind, udp_listener.port)
    assert output == "RecursionError\n" * 4


def a_hook_freed_while_it_runs(kind, port):
    """The only reference to a hook, a partial's, dropped by Python code the hook runs."""

    reused = []

    def wrapped(*args, **kwargs):
        return "wrapped"

    def other(*args, **kwargs):
        return "other"

    class Keyword(str):
        """A keyword whose comparison (the hook looking for its picks) drops the hook."""

        def __eq__(self, other_keyword):
            if partial.func is not other:
                partial.__setstate__((other, (), {}, None))
                # Objects of the hook's size, kept: its memory now holds one.
                reused.extend(b"A" * 135 for _ in range(20000))
            return False

        __hash__ = str.__hash__

    def begin(collector, first):
        Keyword("k") == "k"  # noqa: B015 - its __eq__ drops the hook
        return "state"

    def ignored(*args):
        pass

    if kind == "around":
        hook = around_calls(wrapped, begin, ignored)
    else:
        picks = ((9, "x"), (9, "y"), (9, "z"))  # each looked for among the keywords
        hook = timed_calls(wrapped, lambda collector: True, ignored, ignored, picks)
    partial = functools.partial(hook)
    del hook
    with monitored_request(listener_at(port)):
        print(partial(**{Keyword("k"): 1}))


@pytest.mark.parametrize("kind", ["around", "timed"])
def test_a_hook_whose_last_reference_goes_while_it_runs_finishes_its_call(kind, udp_listener):
    # functools.partial holds no reference to its function while it calls it.
    assert isolated(a_hook_freed_while_it_runs, kind, udp_listener.port) == "wrapped\n"

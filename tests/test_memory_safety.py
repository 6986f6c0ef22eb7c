"""Memory safety: what crashed the compiled build gives a packet or a clear error instead.

Each scenario runs in a fresh interpreter (``isolated``): a segfault fails its
test, with the signal as the exit status, instead of ending the test run.
That interpreter runs the build under test (compiled, or pure Python under
``PYNBA_PURE_PYTHON=1``) and prints what happened, for the test to check.

- tags that contain themselves (set_tag, pynba.timer, the middleware's tags);
- containers changed while the encoder reads them: by a tag value's
  ``__str__``, a timer value's ``__float__`` or a hit count's ``__index__``
  (hypothesis draws the requests and the changes), and by another thread;
- typed attributes set to None.
"""

import copy
import gc
import inspect
import itertools
import logging
import os
import pickle
import random
import re
import sys
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scripts import isolated

EXAMPLES = max(int(os.environ.get("PYNBA_FUZZ_EXAMPLES", "10000")) // 20, 50)


def log_to_stdout():
    logging.basicConfig(stream=sys.stdout, format="%(levelname)s %(message)s")


def serve(middleware):
    """One request through ``middleware``, made as a WSGI server makes it; the body."""
    result = middleware({"PATH_INFO": "/", "REQUEST_METHOD": "GET"}, lambda *args: None)
    try:
        return b"".join(result).decode()
    finally:
        getattr(result, "close", lambda: None)()


def ok_app(environ, start_response):
    start_response("200 OK", [])
    return [b"ok"]


# -- tags that contain themselves ------------------------------------------------------------


def looped(kind):
    """A list or a dict that contains itself."""
    if kind == "list":
        value = ["x"]
        value.append(value)
    else:
        value = {"k": "x"}
        value["again"] = value
    return value


def self_referencing_tag(kind, where, port):
    from pynba import PynbaMiddleware, pynba

    log_to_stdout()
    address = ("127.0.0.1", port)

    def refused(call):
        try:
            call()
        except ValueError as error:
            print("ValueError:", error)

    def app(environ, start_response):
        if where == "set_tag":
            refused(lambda: pynba.set_tag("f", looped(kind)))
        elif where == "timer":
            refused(lambda: pynba.timer(f=looped(kind)))
        return ok_app(environ, start_response)

    tags = None
    if where == "unbound timer":  # outside any request
        refused(lambda: pynba.timer(f=looped(kind)))
    elif where == "middleware":
        refused(lambda: PynbaMiddleware(ok_app, address, tags={"f": looped(kind)}))
        # A callable is called at the request's end: the tag is left out, with a log line.
        tags = {"f": lambda: looped(kind), "g": "kept"}
    print("body:", serve(PynbaMiddleware(app, address, tags=tags)))


@pytest.mark.parametrize("kind", ["list", "dict"])
@pytest.mark.parametrize("where", ["set_tag", "timer", "unbound timer", "middleware"])
def test_a_tag_that_contains_itself_is_a_value_error_naming_it(udp_listener, kind, where):
    from packets import Packet

    output = isolated(self_referencing_tag, kind, where, udp_listener.port)
    assert "ValueError: tag 'f': its value nests more than MAX_TAG_DEPTH (8)" in output
    assert "body: ok" in output
    packet = Packet(udp_listener.receive())
    if where == "middleware":
        assert "request tag 'f' failed; sent without it" in output
        assert packet.tags == [("g", "kept")]
    else:
        assert packet.tags == []


def tag_setting_itself(how, port):
    """A tag value that sets a tag holding itself, flattened in a thread of a small stack."""
    from collections.abc import Mapping

    from pynba import PynbaMiddleware, pynba

    log_to_stdout()

    def callable_value():
        pynba.set_tag("f", callable_value)
        return "v"

    class Text:
        def __str__(self):
            pynba.set_tag("f", self)
            return "v"

    class Tags(Mapping):
        def __getitem__(self, key):
            return "v"

        def __len__(self):
            return 1

        def __iter__(self):
            pynba.set_tag("f", self)
            return iter(["k"])

    value = {"callable": callable_value, "str": Text, "mapping": Tags}[how]

    def app(environ, start_response):
        try:
            pynba.set_tag("f", value if how == "callable" else value())
        except RecursionError:
            print("RecursionError")
        pynba.set_tag("g", "kept")
        return ok_app(environ, start_response)

    # Under AddressSanitizer (.ci/sanitize), redzones make every C frame
    # several times larger: the guard is checked there on a default-sized stack.
    # CPython 3.13's own recursion through __str__ or a mapping's iteration
    # runs out of 512 KiB.
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        threading.stack_size(8 << 20)
    else:
        threading.stack_size((1 << 20) if sys.version_info >= (3, 13) else (256 << 10))
    thread = threading.Thread(
        target=lambda: print("body:", serve(PynbaMiddleware(app, ("127.0.0.1", port))))
    )
    thread.start()
    thread.join()


def tag_setting_itself_from_each_depth(port):
    """A tag that sets itself while flattened, from C recursion 0 to 80 levels deep."""
    import operator
    import types

    from packets import monitored_request
    from pynba import pynba

    class Text:
        def __str__(self):
            pynba.set_tag("f", self)
            return "v"

    def from_depth(depth):
        if depth:  # a C call, then a Python one: counted as C recursion from 3.12
            return operator.call(from_depth, depth - 1)
        try:
            pynba.set_tag("f", Text())
        except RecursionError:
            return "RecursionError"
        return "no error"

    def each_depth():
        with monitored_request(types.SimpleNamespace(address=("127.0.0.1", port))):
            print(sorted({from_depth(depth) for depth in range(81)}))

    threading.stack_size(16 << 20)  # room for the depth: RecursionError is what ends it
    thread = threading.Thread(target=each_depth)
    thread.start()
    thread.join()


def test_a_tag_that_sets_itself_ends_in_recursion_error_from_any_depth(udp_listener):
    # The levels a flattening step counts are taken at once while the
    # thread's count holds them (80 on CPython 3.13): taken at once past its
    # end, RecursionError was made so far past it that CPython aborted the
    # process, from a third of the depths.
    assert isolated(tag_setting_itself_from_each_depth, udp_listener.port) == (
        "['RecursionError']\n"
    )


@pytest.mark.parametrize("how", ["callable", "str", "mapping"])
def test_a_tag_that_sets_itself_while_flattened_is_a_recursion_error(udp_listener, how):
    """The C frames of flattening count against the recursion limit: no stack overflow."""
    from packets import Packet

    output = isolated(tag_setting_itself, how, udp_listener.port)
    assert "RecursionError" in output
    assert "body: ok" in output
    assert ("g", "kept") in Packet(udp_listener.receive()).tags


# -- containers changed while the encoder reads them: set cases -------------------------------

#: Every string these tests make: new objects, of one size, so that the memory of
#: one that is freed goes to the next ``churn()`` makes (and a dangling read shows).
WORD = re.compile(r"[wt]\d{7}-{40}")
_churned = []


class Words:
    """Makes new strings matching WORD, numbered from 0."""

    def __init__(self):
        self.numbers = itertools.count()

    def __call__(self, prefix="w"):
        return "".join([prefix, f"{next(self.numbers):07d}", "-" * 40])


fresh = Words()


def churn():
    """Allocates strings the size of the tests' words, and bytes the size of a big int.

    They are held until the next example: the memory of what was just freed
    now holds them.
    """
    _churned.append([f"Z{i}".ljust(48, "Z") for i in range(1000)])
    _churned.append([f"Z{i}".encode() for i in range(1000)])


class Trigger:
    """A value that changes the request's containers when the encoder converts it."""

    def __init__(self, change, words=fresh):
        self.change = change
        self.words = words

    def fire(self):
        change, self.change = self.change, None  # once
        if change is not None:
            change()
            churn()

    def __str__(self):
        self.fire()
        return self.words("t")

    def __float__(self):
        self.fire()
        return 0.25

    def __index__(self):
        self.fire()
        return 2


def check_datagram(datagram):
    """The datagram decoded; fails unless pinba2 accepts it and every word is one of ours."""
    from pinba2_rules import assert_valid
    from pinba_pb2 import Request

    assert_valid(datagram)
    message = Request()
    message.ParseFromString(datagram)
    for word in message.dictionary:
        assert WORD.fullmatch(word), f"{word!r} was never a tag of this request"
    return message


def encode_request(tags, timers, encode=None):
    if encode is None:
        from pynba import encode
    return encode("h", "s", "/", 1, 0, 0, 0.5, 0.0, 0.0, 200, 0, None, tags, timers)


def emptied_while_encoding(case):
    from pynba.timer import Timer

    first, second = fresh(), fresh()
    tags = {}
    if case == "request tags":
        tags = {first: second}
        tags[fresh()] = Trigger(tags.clear)
        timers = []
    elif case == "timers list":
        timers = [({first: second}, 0.5, 1, 0.0, 0.0)]
        timers.append(({fresh(): Trigger(timers.clear)}, 0.5, 1, 0.0, 0.0))
    elif case == "timer tags":
        timer_tags = {first: second}
        timer_tags[fresh()] = Trigger(timer_tags.clear)
        timers = [(timer_tags, 0.5, 1, 0.0, 0.0)]
    elif case == "timer value":  # converted after the tags: they are sent
        timer_tags = {first: second}
        timers = [(timer_tags, Trigger(timer_tags.clear), 1, 0.0, 0.0)]
    else:  # "Timer hits": a Timer's hit count is replaced while its tags are read
        timer_tags = {first: second}
        timer = Timer(timer_tags).add(0.5, hit_count=10**30)  # holds timer_tags as they are
        timer_tags[fresh()] = Trigger(lambda: timer.add(0.5, hit_count=10**30))
        timers = [timer]
    wanted = [first.encode().decode(), second.encode().decode()]  # equal, other objects
    del first, second  # the containers hold the only references
    message = check_datagram(encode_request(tags, timers))
    hits = ",".join(str(count) for count in message.timer_hit_count) or "none"
    print(*(word in message.dictionary for word in wanted), hits)


@pytest.mark.parametrize(
    "case, hits",
    [
        ("request tags", "none"),
        ("timers list", "1,1"),
        ("timer tags", "1"),
        ("timer value", "1"),
        ("Timer hits", str(2**32 - 1)),
    ],
)
def test_a_container_emptied_while_encoding_sends_what_it_held(case, hits):
    assert isolated(emptied_while_encoding, case).split() == ["True", "True", hits]


# -- containers changed while the encoder reads them: drawn by hypothesis -----------------------

FORMS = ["dict tags", "tag pairs", "Timer"]
CHANGES = [
    "clear timers",
    "pop timer",
    "add timers",
    "clear tags",
    "pop tag",
    "grow tags",
    "retag a Timer",
    "add to a Timer",
]
PLACES = ["request tag", "timer tag", "timer value", "hit count"]
#: A request to make: how many request tags; each timer's form, number of tags and
#: whether its hit count is a big int (a new object when it changes); the triggers:
#: the change each makes, on which container, and where the trigger goes.
PLANS = st.tuples(
    st.integers(0, 3),
    st.lists(st.tuples(st.sampled_from(FORMS), st.integers(1, 3), st.booleans()), max_size=5),
    st.lists(
        st.tuples(
            st.sampled_from(CHANGES),
            st.integers(0, 99),
            st.sampled_from(PLACES),
            st.integers(0, 99),
        ),
        min_size=1,
        max_size=3,
    ),
)


def build_request(plan, words):
    """Request tags and timers as ``plan`` says, with triggers that change them when encoded."""
    from pynba.timer import Timer

    tag_count, timer_plans, trigger_plans = plan
    request_tags = {words(): words() for _ in range(tag_count)}
    timers = []
    dicts = [request_tags]  # every dict a change may act on
    objects = []  # every Timer
    for form, count, big_hits in timer_plans:
        tags = {words(): words() for _ in range(count)}
        if form == "dict tags":
            timers.append((tags, 0.5, 1, 0.0, 0.0))
            dicts.append(tags)
        elif form == "tag pairs":
            timers.append((tuple(tags.items()), 0.5, 1, 0.0, 0.0))
        else:
            timer = Timer(tags).add(0.5, hit_count=10**30 if big_hits else 1)
            timers.append(timer)
            objects.append(timer)
            dicts.append(tags)  # made from this dict: changing it must not change the Timer

    def change(name, target):
        if name == "clear timers":
            return timers.clear
        if name == "pop timer":
            return lambda: timers and timers.pop(target % len(timers))
        if name == "add timers":  # the list's item array moves
            return lambda: timers.extend(({words(): words()}, 0.5, 1, 0.0, 0.0) for _ in range(40))
        if name in ("retag a Timer", "add to a Timer") and objects:
            timer = objects[target % len(objects)]
            if name == "retag a Timer":
                return lambda: setattr(timer, "tags", {words(): words()})
            return lambda: timer.add(0.25, hit_count=10**30)  # a new hit count object
        tags = dicts[target % len(dicts)]
        if name == "clear tags":
            return tags.clear
        if name == "pop tag":
            return lambda: tags and tags.popitem()
        return lambda: tags.update({words(): words() for _ in range(40)})  # the dict resizes

    for name, target, place, where in trigger_plans:
        trigger = Trigger(change(name, target), words)
        if place == "request tag":
            request_tags[words()] = trigger
        elif place == "timer tag" and len(dicts) > 1:
            dicts[1 + where % (len(dicts) - 1)][words()] = trigger
        elif place == "hit count":
            timers.append(({words(): words()}, 0.5, trigger, 0.0, 0.0))
        else:
            timers.append(({words(): words()}, trigger, 1, 0.0, 0.0))
    return request_tags, timers


def changes_while_encoding(examples):
    from pynba.wire import fallback
    from pynba.wire.encoder import IMPLEMENTATION

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(PLANS)
    def encode_changing_request(plan):
        _churned.clear()
        datagram = encode_request(*build_request(plan, Words()))
        message = check_datagram(datagram)
        assert all(count >= 1 for count in message.timer_hit_count)
        if IMPLEMENTATION == "compiled":
            # The twins convert in the same order: the changes happen at the same
            # points, and the same request, made afresh, gives the same bytes.
            twin = build_request(plan, Words())
            assert encode_request(*twin, encode=fallback.encode) == datagram

    encode_changing_request()
    print("encoded", examples)


def test_containers_changed_while_encoding_never_crash_nor_send_freed_memory():
    assert isolated(changes_while_encoding, EXAMPLES).split() == ["encoded", str(EXAMPLES)]


# -- containers changed by another thread while encoding ---------------------------------------


class Slow:
    """A tag value whose conversion runs Python code: a point where threads switch."""

    def __str__(self):
        return fresh("t")


def changes_from_another_thread(rounds):
    from pynba.timer import Timer

    sys.setswitchinterval(1e-6)
    rng = random.Random(7)
    request_tags = {fresh(): fresh(), fresh(): Slow()}
    timer_tags = {fresh(): fresh(), fresh(): Slow()}
    timer = Timer({fresh(): fresh()}).add(0.5, hit_count=10**30)
    timers = [(timer_tags, 0.5, 1, 0.0, 0.0), timer]
    done = threading.Event()

    def change():
        while not done.is_set():
            choice = rng.randrange(6)
            if choice == 0:
                request_tags.clear()
                request_tags.update({fresh(): fresh() for _ in range(rng.randrange(5))})
                request_tags[fresh()] = Slow()
            elif choice == 1:
                timer_tags.clear()
                timer_tags.update({fresh(): Slow() for _ in range(rng.randrange(1, 5))})
            elif choice == 2:
                timers[:] = [({fresh(): Slow()}, 0.5, 1, 0.0, 0.0) for _ in range(rng.randrange(5))]
                timers.extend([(timer_tags, 0.5, 1, 0.0, 0.0), timer])
            elif choice == 3:
                timer.tags = {fresh(): fresh() for _ in range(rng.randrange(1, 4))}
            elif choice == 4:
                timer.add(0.25, hit_count=10**30)
            else:
                churn()
                del _churned[:-2]

    thread = threading.Thread(target=change)
    thread.start()
    try:
        for _ in range(rounds):
            check_datagram(encode_request(request_tags, timers))
    finally:
        done.set()
        thread.join()
    print("encoded", rounds)


def test_containers_changed_by_another_thread_while_encoding_never_crash():
    assert isolated(changes_from_another_thread, 3000).split() == ["encoded", "3000"]


# -- typed attributes set to None -------------------------------------------------------------

NONE_TARGETS = {
    # attribute set to None: what the request's end (or start) logs, or raises when strict
    "middleware.settings": "TypeError: settings must be a CollectorSettings, not NoneType",
    "middleware.settings.reporter": (
        "AttributeError: 'NoneType' object has no attribute 'report_request'"
    ),
    "middleware.reporter.stats": "AttributeError: 'NoneType' object has no attribute 'get'",
}


def typed_attribute_set_to_none(target, port):
    from pynba import PynbaMiddleware

    log_to_stdout()
    middleware = PynbaMiddleware(ok_app, ("127.0.0.1", port))
    owner, _, name = target.rpartition(".")
    setattr(eval(owner, {"middleware": middleware}), name, None)
    try:
        print("body:", serve(middleware))
    except Exception as error:
        print(f"raised {type(error).__name__}: {error}")


@pytest.mark.parametrize("target", NONE_TARGETS)
def test_a_typed_attribute_set_to_none_is_logged_not_a_crash(udp_listener, target):
    output = isolated(typed_attribute_set_to_none, target, udp_listener.port)
    assert "body: ok" in output
    assert "ERROR pynba: cannot " in output
    assert NONE_TARGETS[target] in output


@pytest.mark.parametrize("target", NONE_TARGETS)
def test_a_typed_attribute_set_to_none_is_raised_when_strict(udp_listener, target):
    output = isolated(typed_attribute_set_to_none, target, udp_listener.port, strict=True)
    assert f"raised {NONE_TARGETS[target]}" in output


# -- a timer's tag fields replaced from Python --------------------------------------------------

REPLACED_TAGS = {
    # (names, values) put in a timer's fields: why its request's packet cannot be encoded
    "values-longer": ((("group",), ("db", "select")), "ValueError"),
    "names-longer": ((("group", "op"), ("db",)), "ValueError"),
    "names-none": ((None, ("gd",)), "TypeError"),
    "values-none": ((("group",), None), "TypeError"),
}


def timer_with_replaced_tags(case, port):
    from packets import make_collector

    class Listener:
        address = ("127.0.0.1", port)

    log_to_stdout()
    collector = make_collector(Listener())
    timer = collector.new_timer({"group": "db"}).add(0.5)
    collector.new_timer({"group": "kept"}).add(0.5)
    # Private fields, set as a careless user could: the compiled build must neither
    # crash nor read one as the other; both builds fail alike.
    timer._names, timer._values = REPLACED_TAGS[case][0]
    collector.finish()
    print("finished")


@pytest.mark.parametrize("case", REPLACED_TAGS)
def test_a_timer_whose_tag_fields_were_replaced_fails_alike_in_both_builds(udp_listener, case):
    output = isolated(timer_with_replaced_tags, case, udp_listener.port)
    assert f"cannot encode the request: {REPLACED_TAGS[case][1]}(" in output
    assert "finished" in output
    assert udp_listener.pending() == []  # no packet with tags read wrongly


# -- a compiled class's method called with another object as self ------------------------------


def compiled_classes():
    """Every class of pynba's compiled modules that is an extension type, by qualified name."""
    import importlib

    from pynba._implementation import COMPILED_MODULES

    found = {}
    for name in COMPILED_MODULES:
        try:
            module = importlib.import_module(f"pynba.{name}")
        except ImportError:  # an integration whose library is not installed
            continue
        for value in vars(module).values():
            if (
                issubclass(type(value), type)  # isinstance() loads a lazy object (Django settings)
                and value.__module__ == module.__name__
                and not value.__flags__ & (1 << 9)  # not a class of Python code
            ):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return found


def methods_called_with_a_wrong_self():
    """Call each method of each compiled class with objects of other types as self."""
    wrong_selves = [object(), 1, "text", None, compiled_classes]
    for qualname, cls in sorted(compiled_classes().items()):
        for name, value in sorted(vars(cls).items()):
            callables = [value]
            if isinstance(value, property):
                callables = [value.fget, value.fset, value.fdel]
            elif type(value).__name__ == "cython_function_or_method":
                print(f"{qualname}.{name}: unchecked")  # it must check its self itself
                callables = [value]
            for method in callables:
                kind = type(method).__name__
                if kind == "checked_method":
                    for attribute in dir(method):  # nothing hands out the unchecked method
                        found = getattr(method, attribute, None)
                        if (
                            type(getattr(found, "__self__", None)).__name__
                            == "cython_function_or_method"
                        ):
                            print(f"{qualname}.{name}: {attribute}.__self__ unchecked")
                    arguments = []
                elif kind == "cython_function_or_method":
                    # It checks its self once its arguments are counted.
                    parameters = inspect.signature(method).parameters.values()
                    arguments = [None] * (len([p for p in parameters if p.default is p.empty]) - 1)
                else:
                    continue
                for self in wrong_selves:
                    try:
                        method(self, *arguments)
                    except TypeError as error:
                        if "as self" not in str(error):
                            print(f"{qualname}.{name}: {error}")
                    else:
                        print(f"{qualname}.{name}: no error")
        print(f"{qualname}: checked")
    raw = [f for f in gc.get_objects() if type(f).__name__ == "cython_function_or_method"]
    for function in raw:
        owner = function.__qualname__.rpartition(".")[0]
        if any(qualname.endswith(f".{owner}") for qualname in compiled_classes()):
            print(f"{function.__qualname__}: unchecked, in gc.get_objects()")
    method = compiled_classes()["pynba.timer.Timer"].stop
    if pickle.loads(pickle.dumps(method)) is not method or copy.deepcopy(method) is not method:
        print("Timer.stop: not pickled as itself")


def test_every_method_of_a_compiled_class_checks_its_self():
    from conftest import compiled_encoder
    from pynba._implementation import pure_python_forced

    if pure_python_forced() or compiled_encoder() is None:
        pytest.skip("the compiled modules are not built, or not used")
    output = isolated(methods_called_with_a_wrong_self)
    unchecked = {line for line in output.splitlines() if "unchecked" in line}
    # Left as they are, as they check their self in their own code (see
    # _implementation.check_self_types); called above with the others.
    self_checking = {
        "pynba.wsgi.PynbaMiddleware": ("default_script_name", "default_server_name"),
        "pynba.reporter.Reporter": ("count", "report_request"),
        "pynba.timer.Timer": ("__enter__", "__exit__"),
    }
    assert unchecked == {
        line
        for owner, names in self_checking.items()
        for name in names
        for line in (
            f"{owner}.{name}: unchecked",
            f"{owner.rpartition('.')[2]}.{name}: unchecked, in gc.get_objects()",
        )
    }
    assert "no error" not in output
    checked = {line.split(":")[0] for line in output.splitlines() if line.endswith(": checked")}
    assert {"pynba.timer.Timer", "pynba.collector.RequestCollector", "pynba.reporter.Reporter",
            "pynba.wsgi.PynbaMiddleware", "pynba._rusage.ThreadCPU"} <= checked  # fmt: skip
    # No other line: each call said "as self".
    assert output.count(": ") == len(checked) + len(unchecked), output

"""Tags: checking what users write and flattening it into (name, value) pairs.

A tag value is a scalar (``str``, ``bytes``, ``int``, ``float``, ``bool`` or
``None``) or something that flattens into scalars:

- a list, tuple, set or frozenset gives one pair per element, all with the
  tag's name (``baz=["a", "b"]`` → ``("baz", "a"), ("baz", "b")``);
- a mapping gives one pair per key, named ``"<name>.<key>"``
  (``qux={"map1": "val1"}`` → ``("qux.map1", "val1")``), recursively;
- a callable is called once, when the tags are checked (for a timer: when it
  is created), and its result is flattened as above.

Containers nest at most ``MAX_TAG_DEPTH`` levels deep (a list in a mapping in
a mapping is three): a value that contains itself is a ``ValueError``, not an
endless recursion. Any other value is sent as ``str(value)``, taken when the
tags are checked (``bytearray`` and ``memoryview`` as their bytes). A
subclass of ``str``, ``bytes``, ``int`` or ``float`` is taken as the plain
value it holds, without calling its methods: nothing of the application's
runs when the packet is made.

Identical pairs are sent once. Names are non-empty ``str``; anything else is
a ``TypeError`` or ``ValueError`` naming the tag, raised where it was written,
as is a value whose ``str()`` fails.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from . import _recursion

__all__ = [
    "MAX_TAG_DEPTH",
    "SplitTags",
    "TagPairs",
    "TagValue",
    "check_split_tags",
    "check_tag_name",
    "flatten_tags",
    "timer_tags",
]

TagValue = str | bytes | int | float | bool | None
TagPairs = tuple[tuple[str, TagValue], ...]
#: Tags as a timer keeps them: the names, and the values in the same order.
SplitTags = tuple[tuple[str, ...], tuple[TagValue, ...]]

#: How many containers (lists, tuples, sets, mappings) a tag value may nest.
MAX_TAG_DEPTH = 8

_SCALARS = (str, bytes, int, float, type(None))  # bool is an int
_SEQUENCES = (list, tuple, set, frozenset)
_BUFFERS = (bytearray, memoryview)


class _TooDeep(Exception):
    """A tag value nests more than MAX_TAG_DEPTH containers (flatten_tags names the tag)."""


def check_tag_name(name: object) -> str:
    """``name`` as a plain ``str`` when it is a non-empty one; else TypeError/ValueError."""
    if type(name) is not str:
        if not isinstance(name, str):
            raise TypeError(f"tag names must be str, got {type(name).__name__} {name!r}")
        name = str.__str__(name)
    if not name:
        raise ValueError("tag names must not be empty")
    return name


def _plain(value: Any) -> Any:
    """A subclass of a scalar type as the plain value it holds, read without calling its methods."""
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bytes):
        return bytes.__getitem__(value, slice(None))
    if isinstance(value, int):  # bool cannot be subclassed
        return int.__index__(value)
    if isinstance(value, float):
        return float.__float__(value)
    return value


def flatten_tags(tags: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> TagPairs:
    """Check ``tags`` (a mapping or (name, value) pairs) and flatten it into pairs."""
    if not tags:
        return ()
    items = tags.items() if isinstance(tags, Mapping) else tags
    out: list[tuple[str, TagValue]] = []
    seen: set[tuple[str, type, TagValue]] = set()
    for item in items:
        try:
            name, value = item
        except (TypeError, ValueError):
            raise TypeError(
                f"tags must be a mapping or (name, value) pairs, got {item!r}"
            ) from None
        try:
            _flatten(check_tag_name(name), value, out, seen, False, MAX_TAG_DEPTH)
        except _TooDeep:
            raise ValueError(
                f"tag {name!r}: its value nests more than MAX_TAG_DEPTH ({MAX_TAG_DEPTH})"
                " containers deep; does it contain itself?"
            ) from None
    return tuple(out)


def timer_tags(tags: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> SplitTags:
    """A timer's tags, checked and flattened (see ``flatten_tags``), as (names, values).

    A timer keeps its tags so: the names of ``pynba.timer(group=..., op=...)``
    are a tuple its caller holds already, and only the values are new. A timer
    needs at least one tag.
    """
    split = _split_dict(tags) if type(tags) is dict else None
    if split is None:
        pairs = flatten_tags(tags)
        split = (tuple([name for name, _ in pairs]), tuple([value for _, value in pairs]))
    if not split[0]:
        raise ValueError("a timer needs at least one tag, e.g. timer(group='db')")
    return split


def check_split_tags(names: Any, values: Any) -> None:
    """TypeError/ValueError unless (names, values) are tags as ``timer_tags`` gives them.

    That is: two tuples, as many values as names, at least one name, every
    name a non-empty ``str``, every value a plain scalar (see ``TagValue``).
    """
    if type(names) is not tuple:
        raise TypeError(f"names must be a tuple of tag names, not {type(names).__name__}")
    if type(values) is not tuple:
        raise TypeError(f"values must be a tuple of tag values, not {type(values).__name__}")
    if len(names) != len(values):
        raise ValueError(
            f"names and values must be as many, got {len(names)} names, {len(values)} values"
        )
    if not names:
        raise ValueError("a timer needs at least one tag, e.g. timer(group='db')")
    for i in range(len(names)):
        name = names[i]
        if type(name) is not str or not name:
            check_tag_name(name)  # names the fault
            raise TypeError(f"tag names must be plain str, got {type(name).__name__}")
        cls = type(values[i])
        if not (
            cls is str
            or cls is bytes
            or cls is int
            or cls is float
            or cls is bool
            or values[i] is None
        ):
            raise TypeError(
                f"tag {name!r}: a checked value is a str, bytes, int, float, bool or None,"
                f" not {cls.__name__} (timer_tags flattens the others)"
            )


def _split_dict(tags: dict[Any, Any]) -> SplitTags | None:
    """``tags`` as (names, values) when they need no flattening (str names and values)."""
    for name, value in tags.items():
        if type(name) is not str or type(value) is not str or not name:
            return None
    return tuple(tags), tuple(tags.values())


def _flatten(name: str, value: Any, out: list, seen: set, called: bool, depth: int) -> None:
    """Adds the pairs of ``value`` to ``out``; ``depth``: how many more containers may nest."""
    # A callable, str() or a container's own iteration may set a tag itself,
    # and so flatten again: each level is counted against the recursion limit
    # (see _recursion.pxd), raising RecursionError before the stack runs out.
    _recursion.enter()
    try:
        _flatten_value(name, value, out, seen, called, depth)
    finally:
        _recursion.leave()


def _flatten_value(name: str, value: Any, out: list, seen: set, called: bool, depth: int) -> None:
    if isinstance(value, _SCALARS):
        cls = type(value)
        if cls is not str and cls is not int and cls is not bytes and cls is not float:
            if cls is not bool and value is not None:
                value = _plain(value)
        # The type is part of the key: 1, 1.0 and True are equal but sent differently.
        key = (name, value.__class__, value)
        if key not in seen:
            seen.add(key)
            out.append((name, value))
    elif isinstance(value, _SEQUENCES):
        if not depth:
            raise _TooDeep
        for element in value:
            if isinstance(element, Mapping):
                raise TypeError(f"tag {name!r}: a mapping inside a sequence is not supported")
            _flatten(name, element, out, seen, called, depth - 1)
    elif isinstance(value, Mapping):
        if not depth:
            raise _TooDeep
        for key, element in value.items():
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise TypeError(f"tag {name!r}: mapping keys must be str or int, got {key!r}")
            _flatten(f"{name}.{_plain(key)}", element, out, seen, called, depth - 1)
    elif callable(value):
        if called:
            raise TypeError(f"tag {name!r}: a callable must return a tag value, not a callable")
        _flatten(name, value(), out, seen, True, depth)
    else:
        _flatten(name, _as_scalar(name, value), out, seen, called, depth)


def _as_scalar(name: str, value: Any) -> str | bytes:
    """What any other value is sent as: its bytes for a binary buffer, else ``str(value)``."""
    try:
        if isinstance(value, _BUFFERS):
            return bytes(value)
        text = str(value)
        return text if type(text) is str else _plain(text)
    except RecursionError:
        raise  # a __str__ that sets a tag holding itself: each level would wrap the error again
    except Exception as error:
        raise TypeError(
            f"tag {name!r}: its {type(value).__name__} value cannot be made a str: {error!r}"
        ) from error

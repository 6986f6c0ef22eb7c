"""Tags: checking what users write and flattening it into (name, value) pairs.

A tag value is a scalar (``str``, ``bytes``, ``int``, ``float``, ``bool`` or
``None``) or something that flattens into scalars:

- a list, tuple, set or frozenset gives one pair per element, all with the
  tag's name (``baz=["a", "b"]`` → ``("baz", "a"), ("baz", "b")``);
- a mapping gives one pair per key, named ``"<name>.<key>"``
  (``qux={"map1": "val1"}`` → ``("qux.map1", "val1")``), recursively;
- a callable is called once, when the tags are checked (for a timer: when it
  is created), and its result is flattened as above.

Identical pairs are sent once. Names are non-empty ``str``; anything else is
a ``TypeError`` or ``ValueError`` naming the tag, raised where it was written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["TagPairs", "TagValue", "check_tag_name", "flatten_tags"]

TagValue = str | bytes | int | float | bool | None
TagPairs = tuple[tuple[str, TagValue], ...]

_SCALARS = (str, bytes, int, float, type(None))  # bool is an int
_SEQUENCES = (list, tuple, set, frozenset)


def check_tag_name(name: object) -> str:
    """``name`` when it is a non-empty ``str``; else TypeError/ValueError."""
    if not isinstance(name, str):
        raise TypeError(f"tag names must be str, got {type(name).__name__} {name!r}")
    if not name:
        raise ValueError("tag names must not be empty")
    return name


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
        _flatten(check_tag_name(name), value, out, seen, called=False)
    return tuple(out)


def _flatten(name: str, value: Any, out: list, seen: set, called: bool) -> None:
    if isinstance(value, _SCALARS):
        # The type is part of the key: 1, 1.0 and True are equal but sent differently.
        key = (name, value.__class__, value)
        if key not in seen:
            seen.add(key)
            out.append((name, value))
    elif isinstance(value, _SEQUENCES):
        for element in value:
            if isinstance(element, Mapping):
                raise TypeError(f"tag {name!r}: a mapping inside a sequence is not supported")
            _flatten(name, element, out, seen, called)
    elif isinstance(value, Mapping):
        for key, element in value.items():
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise TypeError(f"tag {name!r}: mapping keys must be str or int, got {key!r}")
            _flatten(f"{name}.{key}", element, out, seen, called)
    elif callable(value) and not called:
        _flatten(name, value(), out, seen, called=True)
    else:
        raise TypeError(
            f"tag {name!r}: {type(value).__name__} values are not supported; use str, bytes,"
            " int, float, bool or None, or a list, tuple, set, mapping or callable of them"
        )

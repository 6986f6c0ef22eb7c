"""Tag checking and flattening (the old pynba rules for lists, sets, mappings and callables)."""

from decimal import Decimal
from uuid import UUID

import pytest

from pynba.tags import MAX_TAG_DEPTH, check_tag_name, flatten_tags


def test_plain_values_are_kept_as_given():
    pairs = flatten_tags({"s": "x", "b": b"raw", "i": 3, "f": 1.5, "t": True, "n": None})
    assert pairs == (("s", "x"), ("b", b"raw"), ("i", 3), ("f", 1.5), ("t", True), ("n", None))


def test_the_readme_example_gives_four_pairs_for_three_tags():
    pairs = flatten_tags({"foo": "bar", "baz": ["seq1", "seq2"], "qux": {"map1": "val1"}})
    assert sorted(pairs) == [
        ("baz", "seq1"),
        ("baz", "seq2"),
        ("foo", "bar"),
        ("qux.map1", "val1"),
    ]


@pytest.mark.parametrize("container", [list, tuple, set, frozenset])
def test_each_element_of_a_collection_is_a_pair_with_the_same_name(container):
    assert sorted(flatten_tags({"x": container(["a", "b", "c"])})) == [
        ("x", "a"),
        ("x", "b"),
        ("x", "c"),
    ]


def test_mappings_nest_with_dotted_names_and_take_int_keys():
    pairs = flatten_tags({"a": {"b": {"c": 1}, 42: "x", "d": ["p", "q"]}})
    assert sorted(pairs, key=str) == [("a.42", "x"), ("a.b.c", 1), ("a.d", "p"), ("a.d", "q")]


def test_a_callable_is_called_once_and_its_result_flattened():
    calls = []

    def values():
        calls.append(1)
        return ["one", "two"]

    assert flatten_tags({"v": values}) == (("v", "one"), ("v", "two"))
    assert calls == [1]


def test_an_error_in_a_callable_propagates_as_is():
    def broken():
        raise KeyError("nope")

    with pytest.raises(KeyError):
        flatten_tags({"v": broken})


def test_identical_pairs_are_kept_once_but_equal_values_of_other_types_are_not_merged():
    assert flatten_tags({"x": ["a", "a", "b"]}) == (("x", "a"), ("x", "b"))
    assert flatten_tags({"x": [1, 1.0]}) == (("x", 1), ("x", 1.0))


def test_pairs_are_accepted_as_well_as_mappings():
    assert flatten_tags([("a", "1"), ("a", "2")]) == (("a", "1"), ("a", "2"))


def test_empty_input_and_empty_collections_give_no_pairs():
    assert flatten_tags(None) == ()
    assert flatten_tags({}) == ()
    assert flatten_tags({"x": []}) == ()


@pytest.mark.parametrize("name", [1, None, b"bytes", ("a",)])
def test_names_must_be_str(name):
    with pytest.raises(TypeError, match="tag names must be str"):
        flatten_tags({name: "v"})


def test_names_must_not_be_empty():
    with pytest.raises(ValueError, match="must not be empty"):
        flatten_tags({"": "v"})
    with pytest.raises(ValueError):
        check_tag_name("")
    assert check_tag_name("ok") == "ok"


class Money:
    def __str__(self):
        return "2.50 EUR"


class Unprintable:
    def __str__(self):
        raise RuntimeError("no text")


@pytest.mark.parametrize(
    "value, sent",
    [
        (Decimal("2.5"), "2.5"),
        (UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (1j, "1j"),
        (Money(), "2.50 EUR"),
        ([Money(), Decimal("1")], ("2.50 EUR", "1")),
        (lambda: Decimal("3"), "3"),
    ],
)
def test_other_values_are_sent_as_their_str(value, sent):
    expected = tuple(("t", text) for text in (sent if isinstance(sent, tuple) else (sent,)))
    assert flatten_tags({"t": value}) == expected


@pytest.mark.parametrize("value", [bytearray(b"x\xff"), memoryview(b"x\xff")])
def test_binary_buffers_are_sent_as_their_bytes(value):
    assert flatten_tags({"t": value}) == (("t", b"x\xff"),)


@pytest.mark.parametrize("value", [Unprintable(), [Unprintable()], {"k": Unprintable()}])
def test_a_value_whose_str_fails_is_a_type_error_naming_the_tag(value):
    with pytest.raises(TypeError, match=r"tag 'culprit(\.k)?'.*no text"):
        flatten_tags({"fine": "x", "culprit": value})


def _self_referencing_list():
    value = ["a"]
    value.append(value)
    return value


def _self_referencing_dict():
    value = {"a": "b"}
    value["again"] = value
    return value


def _nested(depth):
    """A value of ``depth`` containers: lists in lists, in mappings in mappings."""
    value = "leaf"
    for level in range(depth):
        value = [value] if level < depth // 2 else {"k": value}
    return value


@pytest.mark.parametrize(
    "value",
    [
        _self_referencing_list(),
        _self_referencing_dict(),
        {"a": "x", "loop": _self_referencing_list()},
        lambda: _self_referencing_list(),
        _nested(MAX_TAG_DEPTH + 1),
    ],
)
def test_values_nested_too_deep_are_a_value_error_naming_the_tag(value):
    with pytest.raises(ValueError, match="tag 'culprit'.*MAX_TAG_DEPTH") as raised:
        flatten_tags({"fine": "x", "culprit": value})
    assert raised.value.__suppress_context__  # the internal signal is not shown


def test_values_nested_up_to_the_limit_flatten():
    assert flatten_tags({"n": _nested(MAX_TAG_DEPTH)}) == (
        ("n" + ".k" * (MAX_TAG_DEPTH - MAX_TAG_DEPTH // 2), "leaf"),
    )


def test_a_callable_must_not_return_a_callable():
    with pytest.raises(TypeError, match="tag 'c'"):
        flatten_tags({"c": lambda: lambda: "x"})


def test_bad_mapping_keys_and_mappings_in_sequences_are_refused():
    with pytest.raises(TypeError, match="tag 'm'"):
        flatten_tags({"m": {1.5: "x"}})
    with pytest.raises(TypeError, match="tag 's'"):
        flatten_tags({"s": [{"a": "b"}]})


def test_malformed_pairs_are_refused():
    with pytest.raises(TypeError, match="mapping or"):
        flatten_tags(["abc"])

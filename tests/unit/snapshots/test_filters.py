"""containerd's filter language (cimsnap.snapshots.filters) against a small generic corpus."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cimsnap.errdefs import InvalidArgument
from cimsnap.snapshots.filters import Adaptor, parse, parse_all

# (name, other, labels)
CORPUS: list[tuple[str, str, dict[str, str]]] = [
    ("foo", "", {"foo": "true"}),
    ("bar", "", {}),
    ("foo", "", {"foo": "present", "more complex label": "present"}),
    ("bar", "", {"bar": "true"}),
    ("fooer", "", {'label with \\ and "': "present"}),
    ("fooer", "", {'label with \\ and ".post': "present"}),
    ("baz", "too complex, yo", {}),
    ("bazo", "abc", {}),
    ("compound", "", {"foo": "omg_asdf.asdf-qwer"}),
]


def adapt(entry: tuple[str, str, dict[str, str]]) -> Adaptor:
    name, other, labels = entry

    def field(path: Sequence[str]) -> tuple[str, bool]:
        if path[0] == "name":
            return name, bool(name)
        if path[0] == "other":
            return other, bool(other)
        if path[0] == "labels":
            key = ".".join(path[1:])
            return labels.get(key, ""), key in labels
        return "", False

    return field


MATCHES = [
    ("", list(range(9))),
    ("name", list(range(9))),
    ("labels.foo", [0, 2, 8]),
    ("labels.foo,name", [0, 2, 8]),
    ("labels.foo==true", [0]),
    ("labels.foo==omg_asdf.asdf-qwer", [8]),
    ("name==bar", [1, 3]),
    ("name!=bar", [0, 2, 4, 5, 6, 7, 8]),
    ("name==bar,labels.bar", [3]),
    ('other=="too complex, yo"', [6]),
    ("other~=[abc]+,name!=foo", [6, 7]),
    ("other~=/[abc]+/,name!=foo", [6, 7]),
    ("other~=/[abc]{1,2}/,name!=foo", [6, 7]),
    ('other~=/[abc]{0,1}"\\//,name!=foo', []),  # valid syntax; matches nothing
    ("other~=|y\\|b|", [6, 7]),  # \| escapes the quote inside |...|
    ("name==bar,labels.bar==true", [3]),
    ("name==bar,labels.bar==wrong", []),
    ('name==foo,labels."more complex label"', [2]),
    ('labels."label with \\\\ and \\""==present', [4]),
    ('labels."label with \\\\ and \\"".post==present', [5]),
    ('name=="\\x62\\u0061\\U00000072"', [1, 3]),
    ('name=="\\142ar"', [1, 3]),
    ("other!=abc", [0, 1, 2, 3, 4, 5, 6, 8]),  # absent fields compare as ""
    ("other~=^$", [0, 1, 2, 3, 4, 5, 8]),  # regex runs on "" for absent fields
    ("name==foo ", None),
    ("  name==foo", [0, 2]),
    ("name== foo", [0, 2]),
]


@pytest.mark.parametrize(("text", "expected"), [m for m in MATCHES if m[1] is not None])
def test_matches(text: str, expected: list[int]) -> None:
    f = parse(text)
    assert [i for i, e in enumerate(CORPUS) if f.match(adapt(e))] == expected


ERRORS = [
    ("labels.|foo|==x", "[labels. >|||< foo|==x]: invalid quote encountered"),
    ("name==foo,", "[name==foo,]: expected field or quoted"),
    ("labels.", "[labels.]: expected field or quoted"),
    ("image~=,id?=?fbaq", "[image~= >|,|< id?=?fbaq]: expected value or quoted"),
    ("labels.ns/key==value", "[labels.ns >|/|< key==value]: quoted literal not terminated"),
    ("labels.key==/value", "[labels.key== >|/|< value]: quoted literal not terminated"),
    ("name==foo ", "unexpected input"),
    ("name=foo", 'unsupported operator "="'),
    ("name===foo", 'unsupported operator "==="'),
    ('name=="\\q"', "illegal char escape"),
    ('name=="\\x4"', "illegal char escape"),
    ('name=="\\777"', "unquoting failed"),
    ('name=="\\uD800"', "unquoting failed"),
    ("name==/x/", "invalid quote encountered"),
    ("?", "expected field or quoted"),
    ("name foo", "expected an operator"),
    ("name==", "expected value or quoted"),
    ("a\0b", "illegal character"),
]


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse(text)
    # The message names the input and the position, like containerd's parseError.
    assert message in str(info.value)
    assert str(info.value).startswith("filters: parse error: [")


def test_or_of_several_filters() -> None:
    f = parse_all(["name==bar", "labels.foo==true"])
    assert [i for i, e in enumerate(CORPUS) if f.match(adapt(e))] == [0, 1, 3]
    assert parse_all([]).match(adapt(CORPUS[0]))
    with pytest.raises(InvalidArgument):
        parse_all(["name==bar", "name=="])


def test_bad_regex_matches_nothing() -> None:
    f = parse("name~=(")
    assert not any(f.match(adapt(e)) for e in CORPUS)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_arbitrary_input_parses_or_raises_invalid_argument(text: str) -> None:
    try:
        f = parse(text)
    except InvalidArgument:
        return
    for entry in CORPUS:
        f.match(adapt(entry))


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=20))
def test_quoted_values_round_trip(value: str) -> None:
    escaped = "".join(f"\\U{ord(c):08x}" if not c.isprintable() or c in '"\\' else c for c in value)
    f = parse(f'other=="{escaped}"')
    assert f.match(adapt(("n", value, {}))) == bool(value)

"""containerd's filter language (cimsnap.snapshots.filters) against a small generic corpus."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cimsnap.errdefs import InvalidArgument
from cimsnap.snapshots.filters import (
    MAX_FILTER_BYTES,
    MAX_REGEX_SELECTORS,
    Adaptor,
    parse,
    parse_all,
)
from cimsnap.snapshots.regex import MAX_REGEX_BYTES, compile_regex

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


# -- regular expressions: RE2 semantics and the one rule for unusable patterns -------------


def _matches(text: str, value: str) -> bool:
    return parse(text).match(adapt(("n", value, {})))


@pytest.mark.timeout(60)  # Python re needs ~2**40 steps here; RE2 is linear
def test_backtracking_bomb_is_linear() -> None:
    assert not _matches('other~="(a+)+$"', "a" * 40 + "!")
    assert _matches('other~="(a+)+$"', "a" * 40)
    assert not _matches('other~="(x+x+)+y"', "x" * 4000)


UNUSABLE = [
    "(",  # RE2 syntax error
    "(" * 1000,  # RE2: missing )
    "(" * 5000 + "a" + ")" * 5000,  # more than MAX_REGEX_BYTES
    "a{1001}",  # Go and RE2 limit repetition counts to 1000
    "(?=a)",  # no lookaround in Go
    "(a)\\1",  # no backreferences in Go
    "a\\Z",  # Go has \z, not \Z
    "\\C",  # RE2 accepts "any byte", Go does not
    "x[ab]{1000}[cd]{1000}[ef]{1000}[gh]{1000}[ij]{1000}",  # program > MAX_REGEX_PROGRAM_SIZE
]


@pytest.mark.parametrize("pattern", UNUSABLE, ids=lambda p: p[:20])
def test_unusable_patterns_match_nothing(pattern: str, caplog: pytest.LogCaptureFixture) -> None:
    selector = f"other~={_go_quote(pattern)}"
    assert len(selector.encode()) <= MAX_FILTER_BYTES
    f = parse_all([selector])
    assert not any(f.match(adapt(e)) for e in [*CORPUS, ("n", "", {}), ("n", pattern, {})])
    # Logged once, shortened: never the whole pattern (or a traceback) per call.
    (record,) = [r for r in caplog.records if "cannot be used" in r.getMessage()]
    assert len(record.getMessage()) < 400 and record.exc_info is None
    assert compile_regex(pattern) is None


def _go_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


GO_SYNTAX = [  # (pattern, matching value, non-matching value)
    ("^sha256:[0-9a-f]{64}$", "sha256:" + "ab" * 32, "sha256:" + "ab" * 31),
    ("(?P<word>ab)c", "xabc", "acb"),
    ("(?i)ABC", "xabc", "ab"),
    ("\\pL+\\d", "éé7", "77"),
    ("[[:alpha:]]", "q", "1"),
    ("\\Q.*\\E", "a.*b", "ab"),
    ("\\Q\\C\\E", "\\C", "C"),  # \C quoted is a literal, not the byte escape
    ("a$", "ba", "a\n"),  # $ is end of text (Python re also matched before a final \n)
    ("(?m)a$", "a\nb", "ab"),
    ("(?s)a.b", "a\nb", "ab"),
    ("x\\z", "x", "x\n"),
    ("(" * 500 + "a" + ")" * 500, "a", "b"),
]


@pytest.mark.parametrize(("pattern", "yes", "no"), GO_SYNTAX, ids=lambda p: str(p)[:20])
def test_go_regexp_syntax(pattern: str, yes: str, no: str) -> None:
    f = parse(f"other~={_go_quote(pattern)}")
    assert f.match(adapt(("n", yes, {})))
    assert not f.match(adapt(("n", no, {})))


def test_lone_surrogate_value_matches_nothing() -> None:
    assert not _matches('other~="."', "\udc80")


def test_deep_nesting_is_never_internal() -> None:
    # Once a RecursionError (INTERNAL, 207 KB of traceback per call) in Python re.
    deep = "(" * 100_000
    assert compile_regex(deep) is None
    assert compile_regex(deep + "a" + ")" * 100_000) is None
    with pytest.raises(InvalidArgument):  # the whole filter is over MAX_FILTER_BYTES
        parse_all([f"name~={deep}"])
    assert not _matches(f"other~={deep[:MAX_REGEX_BYTES]}", "(")


def test_request_limits_are_invalid_argument() -> None:
    many = ",".join(f"other~=a{i}" for i in range(MAX_REGEX_SELECTORS + 1))
    with pytest.raises(InvalidArgument):
        parse(many)
    split = ["other~=a"] * (MAX_REGEX_SELECTORS + 1)  # the budget spans the strings of a call
    with pytest.raises(InvalidArgument):
        parse_all(split)
    assert parse_all(split[:MAX_REGEX_SELECTORS]).alternatives
    huge = "name==" + "x" * MAX_FILTER_BYTES
    for call in (parse, lambda t: parse_all([t])):
        with pytest.raises(InvalidArgument):
            call(huge)
    with pytest.raises(InvalidArgument):
        parse_all(["name==x"] * (MAX_FILTER_BYTES // 7 + 1))
    assert MAX_REGEX_BYTES < MAX_FILTER_BYTES

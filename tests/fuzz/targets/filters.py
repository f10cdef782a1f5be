"""Fuzz target: containerd filter parsing and matching (cimsnap.snapshots.filters, .regex).

Input: UTF-8 text (invalid bytes replaced); a first byte below 0x20 selects "regex only"
(the rest is one ``~=`` pattern given straight to the compiler). Only InvalidArgument may
escape parsing; compiling never raises; matching returns a bool on every corpus object;
``parse`` and ``parse_all`` agree, and OR with the empty filter matches everything.
"""

from __future__ import annotations

from collections.abc import Sequence

from cimsnap.errdefs import InvalidArgument
from cimsnap.snapshots.filters import Adaptor, parse, parse_all
from cimsnap.snapshots.regex import compile_regex

OBJECTS = [
    ("name", "", {}),
    ("default/1/sha256:" + "ab" * 32, "default/0/base", {"containerd.io/gc.root": "x"}),
    ("a" * 300 + "!", "", {"a": "a" * 4000 + "!", "": "", "é\u202e": "\U0010ffff"}),
    ("with space, comma", "p", {"k.with.dots": "v\nw", 'q"uote': "\\"}),
]


def _adaptor(obj: tuple[str, str, dict[str, str]]) -> Adaptor:
    name, parent, labels = obj

    def field(path: Sequence[str]) -> tuple[str, bool]:
        if path[0] == "name":
            return name, True
        if path[0] == "parent":
            return parent, bool(parent)
        if path[0] == "labels" and len(path) > 1:
            key = ".".join(path[1:])
            return labels.get(key, ""), key in labels
        return "", False

    return field


def test_one_input(data: bytes) -> None:
    if data[:1] and data[0] < 0x20:
        regex = compile_regex(data[1:].decode("utf-8", "replace"))
        if regex is not None:
            for obj in OBJECTS:
                assert isinstance(regex.search(obj[0]), bool)
        return
    text = data.decode("utf-8", "replace")
    try:
        parsed = parse(text)
    except InvalidArgument:
        try:
            parse_all([text])
        except InvalidArgument:
            return
        raise AssertionError("parse refused what parse_all accepted") from None
    alone = parse_all([text])
    with_empty = parse_all([text, ""])  # OR with "match everything"
    for obj in OBJECTS:
        adaptor = _adaptor(obj)
        matched = parsed.match(adaptor)
        assert isinstance(matched, bool)
        assert alone.match(adaptor) == matched
        assert with_empty.match(adaptor)

"""containerd's filter language (``pkg/filters``), re-expressed for Python.

Grammar (containerd ``pkg/filters/parser.go``)::

    selectors := selector ("," selector)*
    selector  := fieldpath (operator value)?
    fieldpath := field ("." field)*
    field     := quoted | [A-Za-z0-9_]+
    operator  := "==" | "!=" | "~="
    value     := quoted | [^\\s,]+
    quoted    := a Go-style quoted string

* Several filter strings are OR-ed (:func:`parse_all`); the selectors of one string are
  AND-ed. An empty string, or no strings at all, matches everything.
* Quote characters are ``"``, ``/`` and ``|``. ``/`` and ``|`` are accepted only for the
  value of ``~=`` (a regular expression); elsewhere they raise "invalid quote encountered".
  Inside quotes, Go escapes apply (``\\a \\b \\f \\n \\r \\t \\v \\\\``, the quote
  character itself, ``\\ooo``, ``\\xhh``, ``\\uhhhh``, ``\\Uhhhhhhhh``); any other escape is
  a syntax error. [choice] ``\\xhh`` yields the code point U+00hh (Go yields a raw byte;
  label values are UTF-8 strings here, so a lone byte has no representation).
* Semantics of a selector against a field that is ``(value, present)``: presence tests
  ``present``; ``==`` needs ``present and value == v``; ``!=`` is ``value != v`` (an absent
  field has value ``""``); ``~=`` searches the value (unanchored, like Go's
  ``MatchString``).

Regular expressions (``~=``) are compiled by :mod:`cimsnap.snapshots.regex` (RE2, linear
time, bounded size). [choice] As in containerd, a pattern that cannot be used is logged and
its selector matches nothing; it is *not* a parse error.

Request limits (InvalidArgument, before anything is read): the filter strings of one call
together hold at most :data:`MAX_FILTER_BYTES` UTF-8 bytes and at most
:data:`MAX_REGEX_SELECTORS` ``~=`` selectors (each compile of a hostile pattern may cost
tens of milliseconds).

Syntax errors raise InvalidArgument with containerd's message shape:
``filters: parse error: [name==foo >|,|< ]: expected field or quoted: invalid argument``.
This module knows nothing about snapshots: callers supply an adaptor that maps a field
path to ``(value, present)``.
"""

from __future__ import annotations

import enum
import logging
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from cimsnap.errdefs import InvalidArgument
from cimsnap.snapshots.regex import Regex, compile_regex

__all__ = ["MAX_FILTER_BYTES", "MAX_REGEX_SELECTORS", "Adaptor", "Filter", "parse", "parse_all"]

#: Most UTF-8 bytes in the filter strings of one call (more is InvalidArgument).
MAX_FILTER_BYTES: Final = 64 * 1024
#: Most ``~=`` selectors in the filter strings of one call (more is InvalidArgument).
MAX_REGEX_SELECTORS: Final = 16

_log = logging.getLogger(__name__)

#: Maps a field path to ``(value, present)``.
Adaptor = Callable[[Sequence[str]], tuple[str, bool]]

_QUOTES: Final = frozenset('"/|')
_SEPARATORS: Final = frozenset(",.")
_OPERATOR_CHARS: Final = frozenset("=!~")
_SIMPLE_ESCAPES: Final = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
}
_EOF: Final = ""


class _Tok(enum.Enum):
    EOF = "EOF"
    QUOTED = "Quoted"
    VALUE = "Value"
    FIELD = "Field"
    SEPARATOR = "Separator"
    OPERATOR = "Operator"
    ILLEGAL = "Illegal"
    OTHER = "Other"


class _Op(enum.Enum):
    PRESENT = "?"
    EQUAL = "=="
    NOT_EQUAL = "!="
    MATCHES = "~="


def _is_field_char(ch: str) -> bool:
    return ch == "_" or ("a" <= ch <= "z") or ("A" <= ch <= "Z") or ("0" <= ch <= "9")


def _is_value_char(ch: str) -> bool:
    # Go: not ',' and not space, and a letter, digit, number, graphic or punctuation rune.
    if ch == "," or ch.isspace():
        return False
    return unicodedata.category(ch)[0] in "LMNPS"


class _ParseError(Exception):
    def __init__(self, pos: int, message: str) -> None:
        super().__init__(message)
        self.pos = pos
        self.message = message


class _Scanner:
    """A rune scanner with the token rules of containerd's ``scanner.go``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0  # start of the last rune read
        self.next_pos = 0  # index of the next rune
        self.value_mode = False
        self.error = ""

    def next(self) -> str:
        if self.next_pos >= len(self.text):
            self.pos = len(self.text)
            return _EOF
        self.pos = self.next_pos
        ch = self.text[self.next_pos]
        self.next_pos += 1
        return ch

    def peek(self) -> str:
        return self.text[self.next_pos] if self.next_pos < len(self.text) else _EOF

    def scan(self) -> tuple[int, _Tok, str]:
        ch = self.next()
        pos = self.pos
        while ch != _EOF and ch.isspace():
            ch = self.next()
            pos = self.pos
        if ch == _EOF:
            return pos, _Tok.EOF, ""
        if ch == "\0":
            self.error = "illegal character"
            return pos, _Tok.ILLEGAL, ""
        if ch in _QUOTES:
            if not self._scan_quoted(ch):
                return pos, _Tok.ILLEGAL, self.text[pos : self.next_pos]
            return pos, _Tok.QUOTED, self.text[pos : self.next_pos]
        if ch in _SEPARATORS:
            self.value_mode = False
            return pos, _Tok.SEPARATOR, ch
        if ch in _OPERATOR_CHARS:
            while self.peek() in _OPERATOR_CHARS:
                self.next()
            self.value_mode = True
            return pos, _Tok.OPERATOR, self.text[pos : self.next_pos]
        if self.value_mode:
            while self.peek() != _EOF and _is_value_char(self.peek()):
                self.next()
            self.value_mode = False
            return pos, _Tok.VALUE, self.text[pos : self.next_pos]
        if _is_field_char(ch):
            while self.peek() != _EOF and _is_field_char(self.peek()):
                self.next()
            return pos, _Tok.FIELD, self.text[pos : self.next_pos]
        return pos, _Tok.OTHER, ch

    def _scan_quoted(self, quote: str) -> bool:
        ch = self.next()
        while ch != quote:
            if ch in ("\n", _EOF):
                self.error = "quoted literal not terminated"
                return False
            if ch == "\\" and not self._scan_escape(quote):
                self.error = "illegal char escape"
                return False
            ch = self.next()
        return True

    def _scan_escape(self, quote: str) -> bool:
        ch = self.next()
        if ch in _SIMPLE_ESCAPES or ch == quote:
            return True
        digits = {"x": (16, 2), "u": (16, 4), "U": (16, 8)}
        if ch in "01234567" and ch != _EOF:
            base, count, first = 8, 3, True
        elif ch in digits and ch != _EOF:
            (base, count), first = digits[ch], False
        else:
            return False
        for i in range(count):
            digit = ch if first and i == 0 else self.next()
            if digit == _EOF or not _is_digit(digit, base):
                return False
        return True


def _is_digit(ch: str, base: int) -> bool:
    try:
        return int(ch, base) < base
    except ValueError:
        return False


def _unquote(text: str) -> str:
    """Decode a scanned quoted literal (quotes included); raise ValueError if invalid."""
    quote, body = text[0], text[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            if ch == quote:
                raise ValueError("unescaped quote")
            out.append(ch)
            i += 1
            continue
        esc = body[i + 1]
        if esc in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[esc])
            i += 2
        elif esc == quote:
            out.append(quote)
            i += 2
        elif esc in "01234567":
            code = int(body[i + 1 : i + 4], 8)
            if code > 0xFF:
                raise ValueError("octal escape out of range")
            out.append(chr(code))
            i += 4
        else:
            width = {"x": 2, "u": 4, "U": 8}[esc]
            code = int(body[i + 2 : i + 2 + width], 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise ValueError("invalid code point")
            out.append(chr(code))
            i += 2 + width
    return "".join(out)


@dataclass(frozen=True, slots=True)
class _Selector:
    fieldpath: tuple[str, ...]
    operator: _Op
    value: str
    pattern: Regex | None

    def match(self, adaptor: Adaptor) -> bool:
        value, present = adaptor(self.fieldpath)
        match self.operator:
            case _Op.PRESENT:
                return present
            case _Op.EQUAL:
                return present and value == self.value
            case _Op.NOT_EQUAL:
                return value != self.value
            case _Op.MATCHES:
                return self.pattern is not None and self.pattern.search(value)


@dataclass(frozen=True, slots=True)
class Filter:
    """A parsed filter: OR over its alternatives, each an AND of selectors.

    No alternatives means "match everything"; an alternative with no selectors (the empty
    string) matches everything too.
    """

    alternatives: tuple[tuple[_Selector, ...], ...]

    def match(self, adaptor: Adaptor) -> bool:
        """Return whether the object behind ``adaptor`` matches."""
        if not self.alternatives:
            return True
        return any(all(s.match(adaptor) for s in alt) for alt in self.alternatives)


class _Parser:
    def __init__(self, text: str, max_regexes: int = MAX_REGEX_SELECTORS) -> None:
        self.text = text
        self.scanner = _Scanner(text)
        self.max_regexes = max_regexes
        self.regex_count = 0

    def scan(self) -> tuple[int, _Tok, str]:
        """The scanner's next token; an illegal one is a parse error at its position."""
        pos, tok, text = self.scanner.scan()
        if tok is _Tok.ILLEGAL:
            raise _ParseError(pos, self.scanner.error)
        return pos, tok, text

    def selectors(self) -> tuple[_Selector, ...]:
        found = [self.selector()]
        while True:
            ch = self.scanner.peek()
            if ch == ",":
                self.scanner.scan()
                found.append(self.selector())
            elif ch == _EOF:
                return tuple(found)
            else:
                raise _ParseError(self.scanner.next_pos, f"unexpected input: {ch}")

    def selector(self) -> _Selector:
        fieldpath = self.fieldpath()
        if self.scanner.peek() in (",", _EOF):
            return _Selector(fieldpath, _Op.PRESENT, "", None)
        op = self.operator()
        value = self.value(allow_alt_quotes=op is _Op.MATCHES)
        pattern = None
        if op is _Op.MATCHES:
            self.regex_count += 1
            if self.regex_count > self.max_regexes:
                raise _ParseError(
                    self.scanner.pos, f"more than {MAX_REGEX_SELECTORS} regular expressions"
                )
            pattern = compile_regex(value)
        return _Selector(fieldpath, op, value, pattern)

    def fieldpath(self) -> tuple[str, ...]:
        fields = [self.field()]
        while self.scanner.peek() == ".":
            self.scanner.scan()
            fields.append(self.field())
        return tuple(fields)

    def field(self) -> str:
        pos, tok, text = self.scan()
        if tok is _Tok.FIELD:
            return text
        if tok is _Tok.QUOTED:
            return self.unquote(pos, text, allow_alt_quotes=False)
        raise _ParseError(pos, "expected field or quoted")

    def operator(self) -> _Op:
        pos, tok, text = self.scan()
        if tok is _Tok.OPERATOR:
            for op in (_Op.EQUAL, _Op.NOT_EQUAL, _Op.MATCHES):
                if text == op.value:
                    return op
            raise _ParseError(pos, f'unsupported operator "{text}"')
        raise _ParseError(pos, 'expected an operator ("=="|"!="|"~=")')

    def value(self, *, allow_alt_quotes: bool) -> str:
        pos, tok, text = self.scan()
        if tok in (_Tok.VALUE, _Tok.FIELD):
            return text
        if tok is _Tok.QUOTED:
            return self.unquote(pos, text, allow_alt_quotes=allow_alt_quotes)
        raise _ParseError(pos, "expected value or quoted")

    def unquote(self, pos: int, text: str, *, allow_alt_quotes: bool) -> str:
        if not allow_alt_quotes and text[0] != '"':
            raise _ParseError(pos, "invalid quote encountered")
        try:
            return _unquote(text)
        except (ValueError, KeyError, IndexError) as e:
            raise _ParseError(pos, f"unquoting failed: {e}") from e


def _describe(text: str, err: _ParseError) -> str:
    if err.pos < len(text):
        before, at, after = text[: err.pos], text[err.pos], text[err.pos + 1 :]
        return f"filters: parse error: [{before} >|{at}|< {after}]: {err.message}"
    return f"filters: parse error: [{text}]: {err.message}"


def parse(text: str) -> Filter:
    """Parse one filter string (AND of selectors); raise InvalidArgument on bad syntax.

    The request limits of :func:`parse_all` apply to ``text`` alone.
    """
    _check_size([text])
    return _parse(text, MAX_REGEX_SELECTORS)


def _check_size(texts: Sequence[str]) -> None:
    size = sum(_utf8_size(text) for text in texts)
    if size > MAX_FILTER_BYTES:
        raise InvalidArgument(
            f"filters: {size} bytes of filter text, more than the limit of {MAX_FILTER_BYTES}"
            ": invalid argument"
        )


def _parse(text: str, max_regexes: int) -> Filter:
    if text == "":
        return Filter(((),))
    parser = _Parser(text, max_regexes)
    try:
        return Filter((parser.selectors(),))
    except _ParseError as e:
        raise InvalidArgument(f"{_describe(text, e)}: invalid argument") from None


def parse_all(texts: Sequence[str]) -> Filter:
    """Parse several filter strings, OR-ed; no strings match everything.

    Raises InvalidArgument for bad syntax, or when ``texts`` together exceed
    :data:`MAX_FILTER_BYTES` or :data:`MAX_REGEX_SELECTORS` (checked before any parsing).
    """
    _check_size(texts)
    alternatives: list[tuple[_Selector, ...]] = []
    budget = MAX_REGEX_SELECTORS
    for text in texts:
        parsed = _parse(text, budget).alternatives
        budget -= sum(s.operator is _Op.MATCHES for alt in parsed for s in alt)
        alternatives.extend(parsed)
    return Filter(tuple(alternatives))


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))

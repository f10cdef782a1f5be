"""Regular expressions of filters (``~=``): RE2 semantics, linear time, bounded size.

containerd matches ``~=`` with Go's ``regexp`` (RE2 syntax, linear time). cimsnap uses RE2
itself (the ``google-re2`` package): matching takes time linear in the text, never
backtracks, and runs without holding the GIL, so a pattern such as ``(a+)+$`` cannot stall
the server (issue 11, defect 1; Python ``re`` took 67 s on 31 characters).

[choice] The one rule for a pattern that cannot be used, as in containerd (``pkg/filters``
logs "error compiling regexp" and the selector is false): :func:`compile_regex` returns
None, logs one warning quoting at most :data:`_LOGGED_PATTERN_CHARS` characters, and the
selector matches nothing. A pattern cannot be used when

* RE2 rejects it (syntax, backreferences, lookaround, repetition counts over 1000);
* it is longer than :data:`MAX_REGEX_BYTES`, or its compiled program exceeds
  :data:`MAX_REGEX_PROGRAM_SIZE` instructions: together they bound the cost of one match
  (RE2's worst case is text length times program size; measured ~65 ms for a 4 KB label
  value at the bounds on 2 CPUs) and the cost of compiling;
* it uses ``\\C`` (any byte): RE2 accepts it, Go does not, and it could split a UTF-8
  sequence.

Differences from Go that remain, both harmless: RE2 accepts nesting deeper than Go's 1,000
levels (the size bounds apply instead), and Unicode classes follow RE2's tables. Go and
RE2 agree on the rest: ``$`` is the end of the text unless ``(?m)`` (Python ``re`` also
matched before a final newline), ``\\z`` but no ``\\Z``, ``(?i)``, ``(?s)``, ``(?U)``,
``(?P<name>...)``, ``\\Q...\\E``, POSIX classes.
"""

from __future__ import annotations

import logging
from typing import Final

import re2

__all__ = ["MAX_REGEX_BYTES", "MAX_REGEX_PROGRAM_SIZE", "Regex", "compile_regex"]

_log = logging.getLogger(__name__)

#: Longest usable pattern, in UTF-8 bytes (longer ones match nothing).
MAX_REGEX_BYTES: Final = 1024
#: Largest usable compiled pattern, in RE2 program instructions (larger ones match nothing).
#: A 1,000-deep group nesting compiles to about 2,000; ``[0-9a-f]{64}`` to about 70.
MAX_REGEX_PROGRAM_SIZE: Final = 4096
#: How much of a refused pattern a log line quotes.
_LOGGED_PATTERN_CHARS: Final = 80


class Regex:
    """A compiled ``~=`` pattern: RE2, unanchored search (Go's ``MatchString``)."""

    __slots__ = ("_compiled",)

    def __init__(self, compiled: re2._Regexp) -> None:
        self._compiled = compiled

    def search(self, value: str) -> bool:
        """Whether the pattern matches anywhere in ``value``.

        A value that is not valid Unicode (a lone surrogate, possible only in-process: gRPC
        strings are valid UTF-8) matches nothing.
        """
        try:
            return self._compiled.search(value) is not None
        except UnicodeEncodeError:
            return False


def _regex_options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # RE2 would print the whole pattern to stderr
    return options


_OPTIONS: Final = _regex_options()


def compile_regex(pattern: str) -> Regex | None:
    """Compile a ``~=`` pattern; None (logged, shortened) if it cannot be used.

    See the module docstring for the rule and the bounds. Never raises for any ``str``.
    """
    why = _unusable(pattern)
    if why is None:
        try:
            compiled = re2.compile(pattern, _OPTIONS)
        except re2.error as e:
            why = _error_text(e)
        else:
            if compiled.programsize > MAX_REGEX_PROGRAM_SIZE:
                why = (
                    f"compiled size {compiled.programsize} exceeds the limit of "
                    f"{MAX_REGEX_PROGRAM_SIZE}"
                )
            else:
                return Regex(compiled)
    shown = pattern[:_LOGGED_PATTERN_CHARS] + (
        "..." if len(pattern) > _LOGGED_PATTERN_CHARS else ""
    )
    _log.warning("filter regexp %r cannot be used (%s); it matches nothing", shown, why)
    return None


def _unusable(pattern: str) -> str | None:
    """Why ``pattern`` is refused before RE2 sees it, or None."""
    try:
        size = len(pattern.encode("utf-8"))
    except UnicodeEncodeError:
        return "not valid Unicode"
    if size > MAX_REGEX_BYTES:
        return f"{size} bytes, more than the limit of {MAX_REGEX_BYTES}"
    if _has_byte_escape(pattern):
        return r"\C (any byte) is not supported by Go's regexp"
    return None


def _has_byte_escape(pattern: str) -> bool:
    r"""Whether ``pattern`` uses ``\C`` outside a ``\Q...\E`` literal."""
    i = 0
    while i < len(pattern):
        if pattern[i] != "\\":
            i += 1
            continue
        escaped = pattern[i + 1 : i + 2]
        if escaped == "C":
            return True
        if escaped == "Q":
            end = pattern.find("\\E", i + 2)
            if end < 0:
                return False
            i = end + 2
            continue
        i += 2
    return False


def _error_text(error: re2.error) -> str:
    detail = error.args[0] if error.args else ""
    text = detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)
    return text[: _LOGGED_PATTERN_CHARS * 2]

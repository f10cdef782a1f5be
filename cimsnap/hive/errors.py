"""Errors raised by the hive reader, writer and checker.

A :class:`HiveFormatError` says *what* was being read (``"nk cell"``, ``"base block"``),
*where* (a cell offset relative to the first hive bin, or a file offset) and *why*.
Callers test the class, never the text; ``str()`` names all three for people.
"""

from __future__ import annotations

from typing import Final, Literal

__all__ = [
    "ChecksumMismatchError",
    "DirtyHiveError",
    "HiveFormatError",
    "HiveModelError",
    "KeyNotFoundError",
    "OffsetKind",
]

OffsetKind = Literal["cell", "file"]

#: Cell offsets are relative to the first hive bin, which starts at this file offset.
_CELL_BASE: Final = 4096


class HiveFormatError(ValueError):
    """A registry hive file is malformed or unsupported.

    ``what`` names the structure, ``offset`` locates it (``offset_kind`` says whether it is
    a cell offset or a file offset; ``None`` when no position applies) and ``why`` explains.
    """

    def __init__(
        self,
        what: str,
        offset: int | None,
        why: str,
        *,
        offset_kind: OffsetKind = "cell",
    ) -> None:
        self.what = what
        self.offset = offset
        self.offset_kind: OffsetKind = offset_kind
        self.why = why
        super().__init__(str(self))

    @property
    def file_offset(self) -> int | None:
        """The position as a file offset (cell offsets are shifted by the base block)."""
        if self.offset is None:
            return None
        return self.offset + _CELL_BASE if self.offset_kind == "cell" else self.offset

    def __str__(self) -> str:
        if self.offset is None:
            return f"{self.what}: {self.why}"
        if self.offset_kind == "cell":
            return (
                f"{self.what} at cell offset {self.offset:#x} "
                f"(file offset {self.offset + _CELL_BASE:#x}): {self.why}"
            )
        return f"{self.what} at file offset {self.offset:#x}: {self.why}"

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.what, self.offset, self.why, self.offset_kind))


def _rebuild(
    cls: type[HiveFormatError], what: str, offset: int | None, why: str, kind: OffsetKind
) -> HiveFormatError:
    return cls(what, offset, why, offset_kind=kind)


class DirtyHiveError(HiveFormatError):
    """The base block's primary and secondary sequence numbers differ.

    The hive was not cleanly flushed; its ``.LOG1``/``.LOG2`` transaction logs must be
    replayed (load the hive once on Windows, or use a log-aware tool) before cimsnap can
    use it. Replaying logs is out of scope.
    """


class ChecksumMismatchError(HiveFormatError):
    """The base block checksum (§4.1) does not match its contents."""


class HiveModelError(ValueError):
    """An in-memory :class:`~cimsnap.hive.tree.Hive` cannot be written as a valid regf.

    Raised by the writer before any output is produced, e.g. for an empty or over-long
    key name, or a name containing a backslash. ``path`` names the offending key.
    """

    def __init__(self, path: str, why: str) -> None:
        self.path = path
        self.why = why
        super().__init__(f"key {path!r}: {why}")


class KeyNotFoundError(LookupError):
    """A key or value path looked up in a hive does not exist (``path`` names it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"no such key or value: {path!r}")

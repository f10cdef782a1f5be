"""Paths inside an image, as the writer API takes them (§7.2, §12).

Components are separated by ``\\``; one leading and one trailing ``\\`` are ignored
(hcsshim strips the trailing one, "otherwise it trips off the cim writer"); ``""`` is the
root; ``file:stream`` names an alternate stream. Every component must pass
:func:`cimsnap.cim.upcase.check_name` and the whole path must stay within
MAX_PATH_LENGTH UTF-16 code units; violations raise CimInvalidNameError.
"""

from __future__ import annotations

from typing import Final

from cimsnap.cim.errors import CimInvalidNameError
from cimsnap.cim.format import MAX_PATH_LENGTH
from cimsnap.cim.upcase import check_name, name_units

__all__ = ["SEPARATOR", "PathParser", "check_image_name"]

SEPARATOR: Final = "\\"


def check_image_name(name: str) -> None:
    """Raise CimInvalidNameError unless ``name`` is a plain file name for a ``.cim``."""
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise CimInvalidNameError(f"{name!r} is not an image file name")


def _check_length(path: str) -> None:
    if len(path) > MAX_PATH_LENGTH // 2 and name_units(path) > MAX_PATH_LENGTH:
        raise CimInvalidNameError(f"path of {name_units(path)} UTF-16 units is too long")


def split_components(path: str) -> list[str]:
    """Split ``path`` into validated components (see the module docstring)."""
    if path.startswith(SEPARATOR):
        path = path[1:]
    if path.endswith(SEPARATOR):
        path = path[:-1]
    if not path:
        return []
    _check_length(path)
    parts = path.split(SEPARATOR)
    for part in parts:
        check_name(part)
    return parts


#: Parents remembered by a :class:`PathParser` before its memo starts over.
MEMO_LIMIT: Final = 1024


class PathParser:
    """:func:`split_components` with validated parent paths remembered.

    Validity is a pure function of the string, so the memo never goes stale; builds call
    the writer with many paths sharing few parents, which makes this the hot path. The memo
    is bounded (:data:`MEMO_LIMIT` parents, then it starts over): layer tars list siblings
    together, so a small memo keeps nearly every hit, while an unbounded one cost ~30 MB
    (each parent's component strings) on a 250,000-entry layer.
    """

    __slots__ = ("_valid_parents",)

    def __init__(self) -> None:
        self._valid_parents: dict[str, list[str]] = {}

    def components(self, path: str) -> list[str]:
        """Return the validated components of ``path``; raises CimInvalidNameError."""
        parent, separator, name = path.rpartition(SEPARATOR)
        if not separator or not name or parent.endswith(SEPARATOR) or not parent.strip(SEPARATOR):
            return split_components(path)
        components = self._valid_parents.get(parent)
        if components is None:
            if len(self._valid_parents) >= MEMO_LIMIT:
                self._valid_parents.clear()
            components = self._valid_parents[parent] = split_components(parent)
        check_name(name)
        _check_length(path)
        return [*components, name]

    def stream_path(self, path: str) -> tuple[list[str], str]:
        """Split ``file:stream`` into (components of file, stream name)."""
        head, sep, stream = path.rpartition(":")
        if not sep or SEPARATOR in stream:
            raise CimInvalidNameError(f"{path!r} names no alternate stream")
        check_name(stream)
        return self.components(head), stream

"""Name rules of CimFS: the one link-table sort key and name checks.

Every name comparison in :mod:`cimsnap.cim` goes through :class:`NameOrder`: the writer
sorts link tables with it, the reader binary-searches with it, and ``verify`` checks order
and case-insensitive uniqueness with it. An image is self-consistent when its link tables
are sorted with the upcase table *it stores*, so the reader builds its ``NameOrder`` from
the image's own table; the writer uses :meth:`NameOrder.default` (Windows' table from
:mod:`cimsnap.upcase`).

Names are Python ``str`` in which a valid UTF-16 surrogate pair is one supplementary
character and an unpaired surrogate is kept as a lone surrogate code point; that is what
``bytes.decode("utf-16-le", "surrogatepass")`` produces (see :func:`decode_name`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from cimsnap import upcase as windows_upcase
from cimsnap.cim.errors import CimInvalidNameError
from cimsnap.cim.format import MAX_NAME_LENGTH

__all__ = [
    "NameOrder",
    "check_name",
    "decode_name",
    "encode_name",
    "invalid_name_reason",
    "name_units",
]

_SURROGATE: Final = re.compile("[\ud800-\udfff]")
#: Characters Win32 forbids in a file name (NUL and controls, the separators, ``:`` which
#: introduces a stream name, and the wildcard and redirection characters).
_FORBIDDEN: Final = re.compile('[\x00-\x1f<>:"/\\\\|?*]')


def encode_name(name: str) -> bytes:
    """Return the UTF-16LE bytes of ``name`` (lone surrogates kept, §7.2)."""
    return name.encode("utf-16-le", "surrogatepass")


def decode_name(data: bytes | memoryview) -> str:
    """Return the str of UTF-16LE ``data`` (even length); never raises for even lengths."""
    return bytes(data).decode("utf-16-le", "surrogatepass")


def name_units(name: str) -> int:
    """Return the length of ``name`` in UTF-16 code units."""
    return len(encode_name(name)) // 2


def _normalize(name: str) -> str:
    """Join surrogate pairs written as two code points into one character."""
    if _SURROGATE.search(name) is None:
        return name
    return decode_name(encode_name(name))


def invalid_name_reason(name: str) -> str | None:
    """Return why ``name`` cannot be a CimFS name component, or None if it can.

    Rules (§7.2 plus Win32): 1 ... 255 UTF-16 code units; not ``.`` or ``..``; none of
    NUL, U+0001-U+001F, ``< > : " / \\ | ? *``; no unpaired surrogate. [U] whether the
    Windows writer accepts the Win32-forbidden characters NTFS allows: choice, refuse them,
    since Win32 programs in a container could not open such files (an unpaired surrogate
    usually means undecodable bytes from a Linux file name).
    """
    units = name_units(name)
    if units == 0:
        return "name is empty"
    if units > MAX_NAME_LENGTH:
        return f"name is {units} UTF-16 code units long, more than {MAX_NAME_LENGTH}"
    if name in (".", ".."):
        return f"{name!r} is reserved"
    bad = _FORBIDDEN.search(name)
    if bad is not None:
        return f"name contains forbidden character U+{ord(bad.group()):04X}"
    if _SURROGATE.search(_normalize(name)) is not None:
        return "name contains an unpaired UTF-16 surrogate"
    return None


def check_name(name: str) -> None:
    """Raise CimInvalidNameError (naming ``name`` and the reason) if it is not a valid name."""
    reason = invalid_name_reason(name)
    if reason is not None:
        raise CimInvalidNameError(f"{name!r}: {reason}")


@dataclass(frozen=True, slots=True)
class NameOrder:
    """The §7.3 comparison over one upcase table.

    ``key(a) < key(b)`` iff ``a`` sorts before ``b``; ``key(a) == key(b)`` iff the names
    are equal case-insensitively (and so cannot share a link table). Keys are ``str``:
    each BMP code point mapped through the table, supplementary characters unmapped, which
    makes Python's code-point string order exactly the §7.3 order. ``translation`` may be
    shared (every default order uses the one cached Windows mapping) and is never modified.
    """

    translation: dict[int, int] = field(repr=False)

    @classmethod
    def default(cls) -> NameOrder:
        """The order over Windows' upcase table (what cimsnap writes into images)."""
        return cls(windows_upcase.windows_translation())

    @classmethod
    def from_table(cls, table: bytes | memoryview) -> NameOrder:
        """Build the order from a stored 131,072-byte table (u16 LE entries, §5).

        Raises ValueError if the table has the wrong size (the reader checks first and
        raises CimFormatError instead). Windows' own table (what every image cimsnap writes
        holds) reuses the cached mapping of :meth:`default` instead of rebuilding 65,536
        entries: opening a parent for every layer commit paid that each time.
        """
        if table == windows_upcase.upcase_table_bytes():
            return cls.default()
        return cls(windows_upcase.translation_from_table(table))

    def key(self, name: str) -> str:
        """Return the sort key of ``name``."""
        return _normalize(name).translate(self.translation)

    def equal(self, a: str, b: str) -> bool:
        """True if ``a`` and ``b`` are the same name case-insensitively."""
        return self.key(a) == self.key(b)

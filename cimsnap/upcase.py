"""Windows' upcase table: the per-UTF-16-code-unit uppercase mapping of NTFS and CimFS.

CimFS stores this table in every image and sorts link tables with it
(§7.3); the registry compares key and value names with the same per-code-unit mapping.
Python's ``str.upper()`` is not a substitute: it maps
``ß`` to ``SS`` and differs from Windows at 244 BMP code points (µ U+00B5, ı U+0131,
ſ U+017F, the titlecase digraphs U+01C5..., and more).

Provenance of ``data/upcase-delta.bin.gz``: the 131,072-byte ``$UpCase`` file that Debian
bookworm's ``mkntfs`` (ntfs-3g 1:2022.10.3) writes into a freshly formatted volume, read
back with ``ntfscat``, stored as gzipped u16 LE differences ``(table[c] - c) mod 2**16`` (mostly
zeros, so it compresses to a few KiB). ntfs-3g builds it from run tables of the Windows table (the
Vista-and-later mapping Windows itself writes to ``$UpCase``). Regenerate and compare with
``python -m cimsnap.devtools.genupcase`` (needs the ``ntfs-3g`` package); the unit tests
pin the SHA-256 below, so a changed table cannot slip in unnoticed.

Surrogate code units map to themselves; only BMP code units are upcased.
"""

from __future__ import annotations

import array
import gzip
import hashlib
import struct
import sys
from functools import cache
from importlib import resources
from typing import Final

__all__ = [
    "UPCASE_SHA256",
    "UPCASE_TABLE_SIZE",
    "fold_code_units",
    "translation_from_table",
    "upcase_table",
    "upcase_table_bytes",
    "windows_translation",
]

#: Bytes in the on-disk table: 0x10000 little-endian u16 entries.
UPCASE_TABLE_SIZE: Final = 0x10000 * 2

#: Package resource holding the table (see the module docstring for its encoding).
DATA_RESOURCE: Final = "data/upcase-delta.bin.gz"

#: SHA-256 of the 131,072-byte table as CimFS stores it.
UPCASE_SHA256: Final = "41c26bc7a12bdaeb26025c93118697c7e3ef81ee048b00fe5cce2a472e0e0742"


@cache
def upcase_table_bytes() -> bytes:
    """Return the 131,072-byte table exactly as CimFS stores it (u16 LE per code unit).

    Raises RuntimeError if the packaged data is damaged (a broken install, not bad input).
    """
    raw = resources.files("cimsnap").joinpath(DATA_RESOURCE).read_bytes()
    deltas = memoryview(gzip.decompress(raw))
    if len(deltas) != UPCASE_TABLE_SIZE:
        raise RuntimeError(f"cimsnap/{DATA_RESOURCE} is damaged; reinstall cimsnap")
    table = array.array("H", ((c + d) & 0xFFFF for c, d in enumerate(deltas.cast("H"))))
    if sys.byteorder != "little":
        table.byteswap()
    data = table.tobytes()
    if hashlib.sha256(data).hexdigest() != UPCASE_SHA256:
        raise RuntimeError(f"cimsnap/{DATA_RESOURCE} is damaged; reinstall cimsnap")
    return data


@cache
def upcase_table() -> tuple[int, ...]:
    """Return the table as 65,536 ints: entry ``c`` is the uppercase of code unit ``c``."""
    return tuple(struct.unpack(f"<{UPCASE_TABLE_SIZE // 2}H", upcase_table_bytes()))


def translation_from_table(table: bytes | memoryview) -> dict[int, int]:
    """Return the ``str.translate`` mapping of a stored table (u16 LE entries).

    It maps every code unit the table changes, and only those. Raises ValueError unless
    ``table`` is exactly :data:`UPCASE_TABLE_SIZE` bytes.
    """
    if len(table) != UPCASE_TABLE_SIZE:
        raise ValueError(f"upcase table is {len(table)} bytes, not {UPCASE_TABLE_SIZE}")
    units = struct.unpack(f"<{UPCASE_TABLE_SIZE // 2}H", table)
    return {c: u for c, u in enumerate(units) if c != u}


@cache
def windows_translation() -> dict[int, int]:
    """The mapping of Windows' own table, built once. Shared: callers must not modify it."""
    return translation_from_table(upcase_table_bytes())


def fold_code_units(name: str) -> str:
    """Uppercase ``name`` code point by code point with Windows' table.

    Characters outside the BMP are left as they are (the table covers only the BMP), so
    the result always has the same length as ``name``. Use it as the case-insensitive
    identity of a registry or CimFS name.
    """
    return name.translate(windows_translation())

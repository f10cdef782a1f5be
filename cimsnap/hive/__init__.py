"""Registry hive (regf) engine: read, write and check hives (windows-layer-import.md §4).

The in-memory model lives in :mod:`cimsnap.hive.tree`; :func:`read_hive` and
:func:`open_hive` build it from a file, :func:`write_hive` serializes it as a fresh regf.
"""

from cimsnap.hive.errors import (
    ChecksumMismatchError,
    DirtyHiveError,
    HiveFormatError,
    HiveModelError,
)
from cimsnap.hive.reader import open_hive, read_hive
from cimsnap.hive.tree import Hive, Key, LayerSemantics, Value, name_key
from cimsnap.hive.writer import write_hive

__all__ = [
    "ChecksumMismatchError",
    "DirtyHiveError",
    "Hive",
    "HiveFormatError",
    "HiveModelError",
    "Key",
    "LayerSemantics",
    "Value",
    "name_key",
    "open_hive",
    "read_hive",
    "write_hive",
]

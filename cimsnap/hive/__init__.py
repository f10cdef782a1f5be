"""Registry hive (regf) engine: read, write and check hives.

The in-memory model lives in :mod:`cimsnap.hive.tree`; :func:`read_hive` and
:func:`open_hive` build it from a file, :func:`write_hive` serializes it as a fresh regf,
:func:`check_hive` validates an image, :class:`HiveReader` browses one lazily,
:func:`merge` applies a differencing hive to its base (offreg's ORMergeHives) on trees,
:func:`merge_files` does it to files in place, in time and memory that follow the delta, and
:func:`get_value` / :func:`os_build_number` query a hive file without loading it whole.
"""

from cimsnap.hive.check import Problem, check_hive
from cimsnap.hive.errors import (
    ChecksumMismatchError,
    DirtyHiveError,
    HiveFormatError,
    HiveModelError,
    KeyNotFoundError,
)
from cimsnap.hive.merge import HiveMergeError, MergeStats, merge, merge_files
from cimsnap.hive.query import get_value, lookup_value, os_build_number
from cimsnap.hive.reader import open_hive, read_hive
from cimsnap.hive.tree import Hive, Key, LayerSemantics, Value, name_key
from cimsnap.hive.view import HiveReader, KeyView, ValueView, decode_value, read_current_build
from cimsnap.hive.writer import write_hive, write_hive_to

__all__ = [
    "ChecksumMismatchError",
    "DirtyHiveError",
    "Hive",
    "HiveFormatError",
    "HiveMergeError",
    "HiveModelError",
    "HiveReader",
    "Key",
    "KeyNotFoundError",
    "KeyView",
    "LayerSemantics",
    "MergeStats",
    "Problem",
    "Value",
    "ValueView",
    "check_hive",
    "decode_value",
    "get_value",
    "lookup_value",
    "merge",
    "merge_files",
    "name_key",
    "open_hive",
    "os_build_number",
    "read_current_build",
    "read_hive",
    "write_hive",
    "write_hive_to",
]

r"""Read one value out of a hive file without loading the whole hive (§4.2).

The layer writer needs ``Microsoft\Windows NT\CurrentVersion`` ``CurrentBuild`` from a
SOFTWARE hive that may be 100 MB; :func:`get_value` and :func:`os_build_number` map the file
and let :class:`cimsnap.hive.view.HiveReader` decode only the cells on the path asked for.

Errors, by class (callers test the class, never the text):

* :class:`cimsnap.errdefs.NotFound`: the hive file, the key or the value does not exist
  (the message names the hive file and the missing path);
* :class:`cimsnap.hive.errors.HiveFormatError`: the hive is malformed, dirty, or (for
  :func:`os_build_number`) ``CurrentBuild`` is not a REG_SZ decimal build number;
* ``OSError``: the file exists but cannot be read.

**CurrentBuild rules** (seed ``getOsBuildNumberFromRegistry``, §4.2; the choices live in
:func:`cimsnap.hive.view.read_current_build`): the type must be REG_SZ (REG_EXPAND_SZ is
refused, as in the seed); the string is cut at its first NUL, not by dropping the last two
bytes (so an unterminated ``20348`` stays 20348); it must be ASCII digits naming 0..65535
(the seed parses a uint16). The seed's 16-byte buffer limit is *not* copied: a longer value
that still reads as a build number after the NUL cut is accepted (question: would anything
rely on the failure? choice: no, the limit is an artifact of the buffer size).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager

from cimsnap.errdefs import NotFound
from cimsnap.hive.errors import KeyNotFoundError
from cimsnap.hive.view import HiveReader, TypedData, ValueView, read_current_build

__all__ = ["get_value", "lookup_value", "mapped_hive", "os_build_number"]


@contextmanager
def mapped_hive(path: str | os.PathLike[str]) -> Iterator[memoryview]:
    """Yield the bytes of the hive file at ``path``, memory-mapped read-only.

    The view is valid only inside the ``with`` block; copy out anything kept (the view
    classes of :mod:`cimsnap.hive.view` already return ``bytes``/``str``). Raises
    :class:`NotFound` if the file does not exist, ``OSError`` if it cannot be read.
    """
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed in the finally below
    except FileNotFoundError as e:
        raise NotFound(f"hive file {os.fspath(path)!r}: not found") from e
    try:
        size = os.fstat(f.fileno()).st_size
        if size == 0:  # mmap refuses empty files; the reader reports the size
            yield memoryview(b"")
            return
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(mm)
        try:
            yield view
        finally:
            try:
                view.release()
                mm.close()
            except BufferError:
                # A propagating error's traceback still holds a slice of the map; the map
                # is unmapped when that slice is collected. Let the original error through.
                pass
    finally:
        f.close()


def lookup_value(hive_path: str | os.PathLike[str], key_path: str, value_name: str) -> ValueView:
    r"""Return the value ``value_name`` of key ``key_path`` (``\``-separated, below the root).

    Names match case-insensitively (Windows upcase); ``value_name == ""`` is the default
    value. The result holds the type, the raw bytes and the decoded ``data``. Raises as the
    module docstring says.
    """
    with mapped_hive(hive_path) as data:
        reader = HiveReader(data)
        key = reader.find_key(key_path)
        if key is None:
            raise NotFound(f"hive file {os.fspath(hive_path)!r}: no key {key_path!r}")
        value = key.value(value_name)
        del reader, key
    if value is None:
        shown = value_name or "(default)"
        raise NotFound(
            f"hive file {os.fspath(hive_path)!r}: key {key_path!r} has no value {shown!r}"
        )
    return value


def get_value(hive_path: str | os.PathLike[str], key_path: str, value_name: str) -> TypedData:
    """Return the decoded data of one value (str, list[str], int or bytes by REG_* type).

    See :func:`lookup_value` for lookup rules and :func:`cimsnap.hive.view.decode_value`
    for decoding (strings are cut at the first NUL).
    """
    return lookup_value(hive_path, key_path, value_name).data


def os_build_number(software_hive_path: str | os.PathLike[str]) -> int:
    r"""Return the OS build number stored in a SOFTWARE hive (e.g. 20348), per §4.2.

    Raises :class:`NotFound` when the file, ``Microsoft\Windows NT\CurrentVersion`` or its
    ``CurrentBuild`` value is missing, and :class:`HiveFormatError` when the hive is bad or
    the value is not a REG_SZ build number (see the module docstring).
    """
    with mapped_hive(software_hive_path) as data:
        try:
            return read_current_build(data)
        except KeyNotFoundError as e:
            raise NotFound(
                f"SOFTWARE hive {os.fspath(software_hive_path)!r}: no {e.path!r}; "
                "is this really a SOFTWARE hive?"
            ) from e

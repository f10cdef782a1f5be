"""Errors raised by :mod:`cimsnap.cim` (a small hierarchy under :class:`CimError`).

* :class:`CimFormatError`: an image's bytes break the format. It names the
  object, its region and offset, and why.
* :class:`CimApiError` and its subclasses: a request that the Windows CimFS API would refuse,
  raised by the writer and by reader lookups. Each carries the Win32
  error it mirrors in ``winerror``, so callers test classes, never messages.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "CimAccessDeniedError",
    "CimApiError",
    "CimError",
    "CimFileExistsError",
    "CimFormatError",
    "CimInvalidArgumentError",
    "CimInvalidNameError",
    "CimLinkToDirectoryError",
    "CimNotADirectoryError",
    "CimNotFoundError",
    "CimPathNotFoundError",
    "CimSharingViolationError",
    "CimWriteBeyondSizeError",
    "CimWriterStateError",
]


class CimError(Exception):
    """Root of every error this package raises."""


class CimFormatError(CimError):
    """The image is corrupt or not a CIM: ``what`` at ``region``/``offset`` is bad because ``why``.

    ``region`` is the global region index (§3.3), or None when the object is not in a region
    (the ``.cim`` file itself, a missing file). ``offset`` is the byte offset inside that
    region or file, or None when unknown.
    """

    def __init__(
        self, what: str, *, why: str, region: int | None = None, offset: int | None = None
    ):
        self.what = what
        self.why = why
        self.region = region
        self.offset = offset
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.region is not None:
            where.append(f"region {self.region}")
        if self.offset is not None:
            where.append(f"offset {self.offset:#x}")
        location = f" at {' '.join(where)}" if where else ""
        return f"{self.what}{location}: {self.why}"

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_format_error, (self.what, self.why, self.region, self.offset))


def _rebuild_format_error(
    what: str, why: str, region: int | None, offset: int | None
) -> CimFormatError:
    return CimFormatError(what, why=why, region=region, offset=offset)


class CimApiError(CimError):
    """A request the Windows CimFS API would refuse; ``winerror`` is the Win32 code mirrored."""

    winerror: ClassVar[int] = 0


class CimNotFoundError(CimApiError):
    """The file or stream does not exist (ERROR_FILE_NOT_FOUND)."""

    winerror = 2


class CimPathNotFoundError(CimNotFoundError):
    """A directory on the way to the target does not exist (ERROR_PATH_NOT_FOUND)."""

    winerror = 3


class CimNotADirectoryError(CimApiError):
    """A path component used as a directory is a file (ERROR_DIRECTORY)."""

    winerror = 267


class CimFileExistsError(CimApiError):
    """The target exists already (ERROR_FILE_EXISTS)."""

    winerror = 80


class CimWriteBeyondSizeError(CimApiError):
    """More bytes written than the stream's declared size (ERROR_HANDLE_EOF)."""

    winerror = 38


class CimInvalidNameError(CimApiError):
    """A name is empty, too long or holds a forbidden character (ERROR_INVALID_NAME)."""

    winerror = 123


class CimLinkToDirectoryError(CimApiError):
    """A hard link to a directory was requested (E_ACCESSDENIED)."""

    winerror = 0x80070005


class CimSharingViolationError(CimApiError):
    """The image or directory is busy: a stream is still open at commit, or another writer
    holds the directory (ERROR_SHARING_VIOLATION)."""

    winerror = 32


class CimInvalidArgumentError(CimApiError):
    """An argument the API rejects: bad metadata, a write to a directory handle (E_INVALIDARG)."""

    winerror = 0x80070057


class CimAccessDeniedError(CimApiError):
    """The operation is refused on this object, e.g. deleting the root (E_ACCESSDENIED)."""

    winerror = 0x80070005


class CimWriterStateError(CimApiError):
    """The writer or stream handle no longer accepts this call: it was committed, closed,
    or failed earlier, or the stream was closed (ERROR_INVALID_HANDLE). After any error a
    writer only accepts ``close``/``abort`` (it fails closed)."""

    winerror = 6

"""The closed set of errors a layer import, export or destroy raises.

Callers (the differ, the CLI) map these classes, never messages: ``LayerFormatError`` is
the caller's fault (gRPC InvalidArgument), ``LayerParentError`` a missing or damaged parent
(FailedPrecondition), ``LayerBusyError`` a writer that did not get the CIM directory in time
(Unavailable), ``LayerExistsError`` a target that is already there (AlreadyExists),
``LayerCancelledError`` a caller that gave up (Cancelled).
"""

from __future__ import annotations

__all__ = [
    "LayerBusyError",
    "LayerCancelledError",
    "LayerError",
    "LayerExistsError",
    "LayerFormatError",
    "LayerParentError",
    "LayerStateError",
]


class LayerError(Exception):
    """Base class of every error of :mod:`cimsnap.wclayer`."""


class LayerFormatError(LayerError):
    """The layer stream is invalid: a bad tar, PAX record, name, link, whiteout or hive.

    ``entry`` is the tar name of the offending entry (None when no entry was being read),
    ``offset`` the byte offset of its first header block in the uncompressed stream (or of
    the damage, when that is more precise). Both are part of the message.
    """

    def __init__(self, message: str, *, entry: str | None = None, offset: int | None = None):
        where = []
        if entry is not None:
            where.append(f"entry {entry!r}")
        if offset is not None:
            where.append(f"at offset {offset}")
        super().__init__(f"{' '.join(where)}: {message}" if where else message)
        self.entry = entry
        self.offset = offset
        self.reason = message


class LayerStateError(LayerError):
    """The writer was used out of order (a write with no open file, a call after close)."""


class LayerParentError(LayerError):
    """A parent layer (its directory, CIM or ``*_BASE`` hive) is missing or damaged."""


class LayerBusyError(LayerError):
    """Another writer kept the CIM directory longer than the allowed wait."""


class LayerExistsError(LayerError):
    """The layer's CIM or a file the import must create exists already."""


class LayerCancelledError(LayerError):
    """The caller cancelled the import; nothing was committed."""

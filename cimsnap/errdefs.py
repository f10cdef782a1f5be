"""The closed set of error classes passed between cimsnap's layers.

Mirrors containerd's ``errdefs``: each class corresponds to one gRPC status code, and
callers test the class (``isinstance(e, NotFound)``), never the message text. Only
``cimsnap.daemon.server`` maps these classes to ``grpc.StatusCode``; everything below it raises
them (format packages raise their own format errors, which the differ and snapshotter
translate with ``raise InvalidArgument(...) from e``).

Messages follow containerd's style, subject first: ``snapshot "k": not found``.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "Canceled",
    "CimsnapError",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "Unavailable",
    "Unimplemented",
]


class CimsnapError(Exception):
    """Root of the error classes that cross layer boundaries."""


class NotFound(CimsnapError):
    """The subject does not exist (gRPC NOT_FOUND)."""


class AlreadyExists(CimsnapError):
    """The subject exists already (gRPC ALREADY_EXISTS)."""


class InvalidArgument(CimsnapError):
    """The request or its input is malformed (gRPC INVALID_ARGUMENT)."""


class FailedPrecondition(CimsnapError):
    """The subject is not in a state that allows the operation (gRPC FAILED_PRECONDITION)."""


class Unavailable(CimsnapError):
    """A dependency cannot be reached now; retrying may help (gRPC UNAVAILABLE)."""


class Unimplemented(CimsnapError):
    """The operation is not supported (gRPC UNIMPLEMENTED)."""


class Canceled(CimsnapError):
    """The caller went away before the operation finished (gRPC CANCELLED)."""


class Internal(CimsnapError):
    """An invariant of cimsnap itself broke (gRPC INTERNAL)."""

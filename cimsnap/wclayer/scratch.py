"""Turning a plain writable directory (a snapshot's ``scratch/``) into a forked CIM layer.

Wraps the CIM library's directory builder and translates its outcomes into the closed
error classes: the snapshotter never sees CIM exceptions.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cimsnap.cim import CimError, CimFormatError, build_from_directory
from cimsnap.cim.errors import CimSharingViolationError
from cimsnap.errdefs import FailedPrecondition, Unavailable
from cimsnap.wclayer.cim_writer import while_directory_busy
from cimsnap.wclayer.destroy import destroy_cim_layer

__all__ = ["build_scratch_layer"]


def build_scratch_layer(
    source: Path,
    cim_path: Path,
    *,
    parent: Path | None,
    busy_timeout: float = 60.0,
    source_fd: int | None = None,
) -> int:
    """Write ``cim_path`` holding the tree at ``source``, forked from ``parent``'s CIM.

    ``source`` must be a real directory (not a symlink); an empty one gives an empty
    layer. ``source_fd``: the caller's open descriptor of ``source`` (opened without
    following links), read instead of the path; ``source`` then only names entries in
    messages. Nothing below ``source`` is ever followed through a link. Returns the number
    of files written. The builder commits atomically (regions
    fsynced, ``.cim`` renamed into place), so on any error no ``.cim`` remains.

    Raises FailedPrecondition if ``source`` is not a directory, ``parent`` is missing or
    unreadable, or some entries cannot be represented (the first problem is named);
    Unavailable if another CIM writer keeps the directory for more than ``busy_timeout``
    seconds (retried with backoff meanwhile); OSError on I/O failure.
    """
    try:
        mode = source.lstat().st_mode if source_fd is None else os.fstat(source_fd).st_mode
    except FileNotFoundError:
        mode = 0
    if not stat.S_ISDIR(mode):
        raise FailedPrecondition(f"scratch {source} is not a directory: failed precondition")
    if parent is not None and not (parent.is_file() and not parent.is_symlink()):
        raise FailedPrecondition(f"parent layer {parent} is missing: failed precondition")
    try:
        # One CIM writer per directory: another writer, e.g. the differ importing a layer,
        # may hold it. Wait for it, within bounds.
        report = while_directory_busy(
            lambda: build_from_directory(source, cim_path, parent=parent, src_dir_fd=source_fd),
            busy_timeout,
        )
    except CimSharingViolationError as e:
        raise Unavailable(f"layer directory {cim_path.parent} is busy: {e}: unavailable") from e
    except CimFormatError as e:
        raise FailedPrecondition(
            f"parent layer {parent} is damaged: {e}: failed precondition"
        ) from e
    except CimError as e:
        raise FailedPrecondition(
            f"building {cim_path} from {source}: {e}: failed precondition"
        ) from e
    if report.problems:
        # The image was just created under a fresh region-set GUID: nothing references it.
        destroy_cim_layer(cim_path, referenced_elsewhere=frozenset())
        path, why = report.problems[0]
        raise FailedPrecondition(
            f"{len(report.problems)} entries of {source} cannot become a layer; first {path}: "
            f"{why}: failed precondition"
        )
    return report.files

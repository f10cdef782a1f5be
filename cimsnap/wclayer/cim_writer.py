"""Opening the CIM writer of a layer: a fork of the parent's image, under the directory lock.

Only one CIM writer may have an image directory at a time (the CimFS format; the CIM
library takes an exclusive lock on the directory). A layer import waits for it, with
exponential backoff (5 ms doubling up to 250 ms), rather than failing, so two imports into
one ``cim-layers`` directory both succeed, one after the other.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cimsnap.cim import (
    CimError,
    CimFileExistsError,
    CimFormatError,
    CimNotFoundError,
    CimSharingViolationError,
    CimWriter,
)
from cimsnap.wclayer.errors import (
    LayerBusyError,
    LayerCancelledError,
    LayerExistsError,
    LayerParentError,
)

__all__ = ["open_cim_writer", "while_directory_busy"]

_T = TypeVar("_T")


def while_directory_busy(
    attempt: Callable[[], _T], busy_timeout: float, cancelled: threading.Event | None = None
) -> _T:
    """Return ``attempt()``, calling it again while it raises CimSharingViolationError (another
    CIM writer has the directory), with backoff from 5 ms doubling up to 250 ms.

    Re-raises that error once waiting longer would pass ``busy_timeout`` seconds; raises
    LayerCancelledError as soon as ``cancelled`` is set. Other errors pass through.
    """
    deadline = time.monotonic() + busy_timeout
    delay = 0.005
    while True:
        if cancelled is not None and cancelled.is_set():
            raise LayerCancelledError("cancelled while waiting for the CIM directory")
        try:
            return attempt()
        except CimSharingViolationError:
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)


def open_cim_writer(
    cim_path: Path,
    parent_name: str | None,
    busy_timeout: float,
    cancelled: threading.Event | None,
) -> CimWriter:
    """Create the writer of ``cim_path``, a fork of ``parent_name`` in the same directory.

    Waits up to ``busy_timeout`` seconds for another writer of the directory (then
    LayerBusyError), stops early with LayerCancelledError when ``cancelled`` is set.
    LayerExistsError if ``cim_path`` exists; LayerParentError if the parent image is
    missing or unreadable; OSError if the directory cannot be used.
    """
    try:
        return while_directory_busy(
            lambda: CimWriter(cim_path.parent, cim_path.name, parent=parent_name),
            busy_timeout,
            cancelled,
        )
    except CimSharingViolationError as e:
        raise LayerBusyError(
            f"{cim_path.parent}: another CIM writer kept the directory for more than "
            f"{busy_timeout:g} s"
        ) from e
    except CimFileExistsError as e:
        raise LayerExistsError(f"{cim_path} exists already") from e
    except (CimNotFoundError, CimFormatError) as e:
        raise LayerParentError(f"parent CIM of {cim_path}: {e}") from e
    except CimError as e:
        raise LayerParentError(f"cannot fork for {cim_path}: {e}") from e

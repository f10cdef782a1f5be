"""Opening the CIM writer of a layer: a fork of the parent's image, under the directory lock.

Only one CIM writer may have an image directory at a time (the CimFS format; the CIM
library takes an exclusive lock on the directory). A layer import waits for it, with
exponential backoff (5 ms doubling up to 250 ms), rather than failing, so two imports into
one ``cim-layers`` directory both succeed, one after the other.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

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

__all__ = ["open_cim_writer"]


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
    deadline = time.monotonic() + busy_timeout
    delay = 0.005
    while True:
        if cancelled is not None and cancelled.is_set():
            raise LayerCancelledError("cancelled while waiting for the CIM directory")
        try:
            return CimWriter(cim_path.parent, cim_path.name, parent=parent_name)
        except CimSharingViolationError as e:
            if time.monotonic() + delay > deadline:
                raise LayerBusyError(
                    f"{cim_path.parent}: another CIM writer kept the directory for more than "
                    f"{busy_timeout:g} s"
                ) from e
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
        except CimFileExistsError as e:
            raise LayerExistsError(f"{cim_path} exists already") from e
        except (CimNotFoundError, CimFormatError) as e:
            raise LayerParentError(f"parent CIM of {cim_path}: {e}") from e
        except CimError as e:
            raise LayerParentError(f"cannot fork for {cim_path}: {e}") from e

"""Deferred CIM work of a layer writer: std files re-added and links made at close (§3.5).

Deferred work is data: each operation has one :meth:`apply` that performs it on the CIM
writer. :class:`cimsnap.wclayer.layer_writer.CimLayerWriter` queues them in tar order
(std-file adds, links whose target is a std file) and then the base or non-base
processing's own, and applies them all, in order, just before the commit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cimsnap.cim import CimWriter, FileMetadata
from cimsnap.cim.format import FileAttribute
from cimsnap.wclayer.errors import LayerFormatError
from cimsnap.wclayer.fileinfo import FileBasicInfo
from cimsnap.wclayer.metadata import file_metadata

__all__ = ["AddOp", "LinkOp", "PendingOp"]

_COPY_CHUNK: Final = 1 << 20
_DIRECTORY: Final = int(FileAttribute.DIRECTORY)


@dataclass(frozen=True, slots=True)
class AddOp:
    """Add the host file ``host_path`` to the CIM at ``cim_path`` with the given metadata.

    The size is the host file's size *when applied* (a merged hive has its new size).
    With attributes exactly DIRECTORY (the synthesised ``Hives`` directory) nothing is
    copied and the size is 0, as hcsshim does.
    """

    cim_path: str
    host_path: Path
    info: FileBasicInfo
    security_descriptor: bytes | None = None
    extended_attributes: bytes = b""
    reparse_data: bytes = b""

    def apply(self, cim: CimWriter) -> None:
        """Perform the add; raises CimError (writer refusal), OSError, LayerFormatError."""
        if self.info.file_attributes == _DIRECTORY:
            cim.create_file(self.cim_path, self._metadata(0))
            return
        fd = os.open(self.host_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            with cim.create_file(self.cim_path, self._metadata(size)) as stream:
                copied = 0
                while copied < size:
                    chunk = os.read(fd, min(_COPY_CHUNK, size - copied))
                    if not chunk:
                        break
                    stream.write(chunk)
                    copied += len(chunk)
                if copied != size:
                    raise LayerFormatError(
                        f"host copy {self.host_path} shrank while being added "
                        f"({copied} of {size} bytes)"
                    )
        finally:
            os.close(fd)

    def _metadata(self, size: int) -> FileMetadata:
        return file_metadata(
            self.info,
            size,
            self.security_descriptor,
            self.extended_attributes,
            self.reparse_data,
        )


@dataclass(frozen=True, slots=True)
class LinkOp:
    """Give the CIM file ``existing`` the additional name ``new`` (CimCreateHardLink)."""

    new: str
    existing: str

    def apply(self, cim: CimWriter) -> None:
        """Perform the link; raises CimError as :meth:`CimWriter.create_hard_link`."""
        cim.create_hard_link(self.new, self.existing)


PendingOp = AddOp | LinkOp

r"""CimLayerWriter: hcsshim's CIM layer writer (seed ``CimLayerWriter``) over our CimWriter.

Takes the calls the tar import loop makes and turns
them into one forked CIM plus the host-side files of the layer directory (§3.6).

Operations (names are image paths with ``\`` separators, e.g. ``Files\Windows``; one
trailing ``\`` is ignored):

* ``add(name, info, size, sd, ea, reparse)``: a file or directory. Std files (§3.3,
  :mod:`cimsnap.wclayer.routing`) go to the host layer directory with create-new
  semantics, and are added to the CIM at close; everything else goes to the CIM now. A
  file's data (exactly ``size`` bytes) follows through :meth:`write`.
* ``add_link(name, target)``: a hard link. The target must exist (added earlier, or
  inherited from the parent CIM) and not be a directory. A link *named* like a std file
  is refused; a link *to* a std file is made at close.
* ``add_alternate_stream(name, size)``: ``file:stream`` or ``file:stream:$DATA`` (both
  forms, §1.4; other stream types are refused); its data (``size`` bytes, really
  written, unlike hcsshim) follows through :meth:`write`. Not on std files.
* ``remove(name)``: a whiteout. Deletes the path from the CIM (with its subtree); a path
  that does not exist is ignored (seed). Refused: the root, ``Files``, ``Hives``, std
  files, stream names, and every whiteout in a base layer (§5 #19). Deleting never
  changes the parent directory's times (containerd#4301).
* ``write(data)``: data of the current file or stream. Raises LayerStateError when no file
  or stream takes data (after ``add_link``/``remove``, a directory, or a full stream), and
  LayerFormatError past the declared size.
* ``close()``: finishes the last file (LayerFormatError if bytes are missing), runs the
  utility-VM step, the base or non-base processing (:mod:`cimsnap.wclayer.process`),
  applies the pending operations in order and commits the CIM. ``abort()`` gives up.

**Failure is all or nothing.** Any error fails the writer: afterwards only ``abort`` (or
``close``, which then only aborts) is accepted. Aborting, or a failed ``close``, removes
the uncommitted CIM files (CimWriter's own discard) and every host file and directory this
writer created (:class:`HostFiles`), the layer directory too if it created it; nothing it
did not create is touched. Only a successful ``close`` keeps anything.

Errors (closed set of :mod:`cimsnap.wclayer.errors`): LayerFormatError for input a layer
cannot hold (message names the path, not the tar entry: the importer adds that),
LayerStateError for calls out of order, LayerParentError for a missing or damaged parent
(CIM or hive), LayerExistsError when the CIM or a host file exists already,
LayerBusyError when another writer keeps the CIM directory longer than ``busy_timeout``,
LayerCancelledError when ``cancelled`` is set while waiting for it; OSError for I/O.
"""

from __future__ import annotations

import enum
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from cimsnap.cim import CimError, CimStream
from cimsnap.cim.errors import CimWriterStateError
from cimsnap.wclayer.cim_writer import open_cim_writer
from cimsnap.wclayer.destroy import destroy_cim_layer
from cimsnap.wclayer.errors import (
    LayerError,
    LayerExistsError,
    LayerFormatError,
    LayerParentError,
    LayerStateError,
)
from cimsnap.wclayer.fileinfo import FileBasicInfo
from cimsnap.wclayer.host_files import HostFiles
from cimsnap.wclayer.metadata import file_metadata
from cimsnap.wclayer.names import image_components, split_stream_name
from cimsnap.wclayer.pending import AddOp, LinkOp, PendingOp
from cimsnap.wclayer.process import (
    HostStdFile,
    base_layer_ops,
    delta_layer_ops,
    utility_vm_build,
)
from cimsnap.wclayer.routing import (
    CONFIG_DIR,
    HIVES,
    HIVES_DIR,
    UTILITY_VM,
    UVM_SOFTWARE_HIVE,
    HiveName,
    fold_path,
    hive_of_delta,
    std_file_key,
)

__all__ = ["CimLayerWriter"]

_SEPARATOR: Final = "\\"
#: Paths a whiteout must never remove (compared case-insensitively); "" is the root.
_PROTECTED: Final = frozenset(fold_path(p) for p in ("", "Files", HIVES_DIR))
_DIRECTORY_ATTRIBUTE: Final = 0x10


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"
    FAILED = "failed"


class _HostTarget:
    """Data of a std file, going to its host file; exactly ``size`` bytes expected."""

    __slots__ = ("fd", "name", "remaining")

    def __init__(self, name: str, fd: int, size: int) -> None:
        self.name = name
        self.fd = fd
        self.remaining = size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def finish(self) -> None:
        os.close(self.fd)
        self.fd = -1

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _CimTarget:
    """Data of a CIM file or alternate stream; exactly ``size`` bytes expected."""

    __slots__ = ("name", "remaining", "stream")

    def __init__(self, name: str, stream: CimStream, size: int) -> None:
        self.name = name
        self.stream = stream
        self.remaining = size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.stream.write(data)

    def finish(self) -> None:
        self.stream.close()

    def discard(self) -> None:
        """Nothing to do: the CIM writer's abort drops the stream with everything else."""


class CimLayerWriter:
    """Writer of one layer: its CIM ``cim_path`` and its host directory ``layer_path``.

    ``parent_layer_paths`` and ``parent_cim_paths`` list the parents nearest first, as
    containerd passes them; both empty for a base layer. The CIM is a fork of
    ``parent_cim_paths[0]``, which must be in the same directory as ``cim_path``
    (LayerParentError otherwise, or when it is missing or unreadable). The layer directory
    is created if missing (and removed again on failure).

    Only one CIM writer may have a directory at a time: the
    constructor waits for it with backoff up to ``busy_timeout`` seconds (LayerBusyError
    after), giving up early with LayerCancelledError if ``cancelled`` is set. The lock is
    held until close/abort. LayerExistsError if ``cim_path`` exists.
    """

    def __init__(
        self,
        layer_path: Path | str,
        parent_layer_paths: Sequence[Path | str],
        cim_path: Path | str,
        parent_cim_paths: Sequence[Path | str],
        *,
        busy_timeout: float = 0.0,
        cancelled: threading.Event | None = None,
    ) -> None:
        self.layer_path = Path(layer_path)
        self.parent_layer_paths = [Path(p) for p in parent_layer_paths]
        self.cim_path = Path(cim_path)
        self.parent_cim_paths = [Path(p) for p in parent_cim_paths]
        self.is_base = not self.parent_layer_paths
        if self.is_base != (not self.parent_cim_paths):
            raise LayerParentError(
                f"{len(self.parent_layer_paths)} parent layer directories but "
                f"{len(self.parent_cim_paths)} parent CIMs"
            )
        parent_name = None
        if not self.is_base:
            parent = self.parent_cim_paths[0]
            if parent.parent.resolve() != self.cim_path.parent.resolve():
                raise LayerParentError(
                    f"parent CIM {parent} is not in {self.cim_path.parent}: a CIM can only "
                    "fork an image of its own directory"
                )
            parent_name = parent.name
        self.uvm_build: int | None = None
        self._state = _State.OPEN
        self._target: _HostTarget | _CimTarget | None = None
        self._pending: list[PendingOp] = []
        self._std: dict[str, HostStdFile] = {}
        self._has_utility_vm = False
        self._committed = False
        self._host = HostFiles(self.layer_path)
        self._cim = open_cim_writer(self.cim_path, parent_name, busy_timeout, cancelled)
        try:
            self._host.ensure_layer_directory()
        except BaseException:
            self._cim.abort()
            self._host.discard()
            raise

    # --- context management and failure ---------------------------------------------------

    def __enter__(self) -> CimLayerWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None and self._state is _State.OPEN:
            self.close()
        else:
            self.abort()

    @property
    def name_key(self) -> Callable[[str], str]:
        """The CIM's case-insensitive name key: two paths name the same entry iff their
        keys are equal (Windows upcase, or the parent image's table in a fork)."""
        return self._cim.name_key

    @property
    def has_utility_vm(self) -> bool:
        """True once an entry named exactly ``UtilityVM`` was added."""
        return self._has_utility_vm

    def abort(self) -> None:
        """Give up: remove the uncommitted CIM and every host file created (idempotent)."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        if self._target is not None:
            self._target.discard()
            self._target = None
        self._cim.abort()
        if self._committed:
            # Interrupted between the commit and the end of close: the image is visible
            # but its host files are about to go, so it goes too. Its region set is new
            # and nothing forks from it yet.
            destroy_cim_layer(self.cim_path, referenced_elsewhere=frozenset())
        self._host.discard()

    @contextmanager
    def _operation(self) -> Iterator[None]:
        """Run one API call: refuse it unless open; translate errors and fail closed."""
        if self._state is not _State.OPEN:
            raise LayerStateError(f"the layer writer is {self._state.value}")
        try:
            yield
        except LayerError:
            self._state = _State.FAILED
            raise
        except CimWriterStateError as e:
            self._state = _State.FAILED
            raise LayerStateError(str(e)) from e
        except CimError as e:
            self._state = _State.FAILED
            raise LayerFormatError(str(e)) from e
        except BaseException:
            self._state = _State.FAILED
            raise

    def _finish_target(self) -> None:
        target, self._target = self._target, None
        if target is None:
            return
        if target.remaining:
            target.discard()
            raise LayerFormatError(
                f"{target.name}: incomplete data, {target.remaining} bytes missing"
            )
        target.finish()

    # --- the API ------------------------------------------------------------------------

    def add(
        self,
        name: str,
        basic_info: FileBasicInfo,
        size: int,
        security_descriptor: bytes | None,
        extended_attributes: bytes,
        reparse_data: bytes,
    ) -> None:
        """Add a file or directory; see the module docstring."""
        with self._operation():
            self._finish_target()
            name = _strip(name)
            if name == UTILITY_VM:
                self._has_utility_vm = True
            is_directory = bool(basic_info.file_attributes & _DIRECTORY_ATTRIBUTE)
            if is_directory and size:
                raise LayerFormatError(f"{name}: a directory cannot have {size} bytes of data")
            key = std_file_key(name)
            if key is not None:
                self._add_std_file(
                    name,
                    key,
                    basic_info,
                    size,
                    security_descriptor,
                    extended_attributes,
                    reparse_data,
                )
                return
            metadata = file_metadata(
                basic_info, size, security_descriptor, extended_attributes, reparse_data
            )
            stream = self._cim.create_file(name, metadata)
            if not stream.closed:
                self._target = _CimTarget(name, stream, size)

    def _add_std_file(
        self,
        name: str,
        key: str,
        info: FileBasicInfo,
        size: int,
        sd: bytes | None,
        ea: bytes,
        reparse: bytes,
    ) -> None:
        if info.file_attributes & _DIRECTORY_ATTRIBUTE or reparse:
            raise LayerFormatError(f"{name}: a hive or boot file must be a plain file")
        if self.is_base and hive_of_delta(name) is not None:
            raise LayerFormatError(f"{name}: a base layer cannot carry a differencing hive")
        if key in self._std:
            raise LayerFormatError(f"{name}: added twice (as {self._std[key].cim_path})")
        components = image_components(name)
        parent = _SEPARATOR.join(components[:-1])
        if not self._cim.exists(parent):
            raise LayerFormatError(f"{name}: its directory {parent} was not added")
        try:
            host_path, fd = self._host.create_file(components)
        except FileExistsError as e:
            path = self.layer_path.joinpath(*components)
            raise LayerExistsError(f"{path} exists in the layer directory already") from e
        self._std[key] = HostStdFile(name, host_path)
        self._pending.append(AddOp(name, host_path, info, sd or None, ea, b""))
        target = _HostTarget(name, fd, size)
        if size:
            self._target = target
        else:
            target.finish()

    def add_link(self, name: str, target: str) -> None:
        """Add ``name`` as a hard link to the existing file ``target``."""
        with self._operation():
            self._finish_target()
            name, target = _strip(name), _strip(target)
            if std_file_key(name) is not None:
                raise LayerFormatError(f"{name}: unexpected hard link named like a std file")
            image_components(name)
            key = std_file_key(target)
            if key is None:
                self._cim.create_hard_link(name, target)
                return
            if key not in self._std and not self._cim.exists(target):
                raise LayerFormatError(f"{name}: hard link target {target} does not exist")
            self._pending.append(LinkOp(name, target))

    def add_alternate_stream(self, name: str, size: int) -> None:
        """Add alternate stream ``file:stream`` (or ``file:stream:$DATA``) of ``size`` bytes."""
        with self._operation():
            self._finish_target()
            name = _strip(name)
            file, stream = split_stream_name(name)
            if std_file_key(file) is not None:
                raise LayerFormatError(f"{name}: alternate streams of std files are not supported")
            if not self._cim.exists(file):
                raise LayerFormatError(f"{name}: the file {file} does not exist")
            handle = self._cim.create_alternate_stream(f"{file}:{stream}", size)
            if not handle.closed:
                self._target = _CimTarget(name, handle, size)

    def remove(self, name: str) -> None:
        """Delete ``name`` (a whiteout); see the module docstring for what is refused."""
        with self._operation():
            self._finish_target()
            name = _strip(name)
            if self.is_base:
                raise LayerFormatError(f"{name}: a base layer cannot contain whiteouts")
            components = image_components(name)
            if fold_path(name) in _PROTECTED:
                raise LayerFormatError(f"whiteout of {name or 'the layer root'} refused")
            if std_file_key(name) is not None:
                raise LayerFormatError(f"{name}: whiteout of a hive or boot file refused")
            path = _SEPARATOR.join(components)
            if self._cim.exists(path):
                self._cim.delete_path(path)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write the next bytes of the current file or stream; see the module docstring."""
        with self._operation():
            target = self._target
            if target is None:
                raise LayerStateError("write with no file or stream open for data")
            length = len(data)
            if length > target.remaining:
                raise LayerFormatError(
                    f"{target.name}: {length} bytes written with {target.remaining} left"
                )
            target.write(data)
            target.remaining -= length
            if not target.remaining:
                self._target = None
                target.finish()

    def close(self) -> None:
        """Finish the layer and commit the CIM (module docstring); aborts on any error.

        After a failure only aborting is possible: close then aborts and raises
        LayerStateError. Closing twice is an error too.
        """
        if self._state is _State.FAILED:
            self.abort()
            raise LayerStateError("the layer writer failed earlier; nothing was committed")
        try:
            with self._operation():
                self._finish_target()
                self._close_sequence()
            self._cim.close()
            self._host.forget()
        except BaseException:
            self.abort()
            raise
        self._state = _State.CLOSED

    def _close_sequence(self) -> None:
        if self._has_utility_vm:
            self.uvm_build = utility_vm_build(self._host, self._std.get(UVM_SOFTWARE_HIVE))
        ops = list(self._pending)
        std = self._std
        if self.is_base:
            found = {h.config: std[k] for h in HIVES if (k := _config_key(h)) in std}
            ops += base_layer_ops(self._host, found)
        else:
            deltas = {h.delta: std[k] for h in HIVES if (k := _delta_key(h)) in std}
            ops += delta_layer_ops(self._host, deltas, self.parent_layer_paths)
        for op in ops:
            op.apply(self._cim)
        self._host.sync()
        self._cim.commit()
        self._committed = True


def _config_key(hive: HiveName) -> str:
    return fold_path(f"{CONFIG_DIR}{_SEPARATOR}{hive.config}")


def _delta_key(hive: HiveName) -> str:
    return fold_path(f"{HIVES_DIR}{_SEPARATOR}{hive.delta}")


def _strip(name: str) -> str:
    return name[:-1] if name.endswith(_SEPARATOR) else name

"""The host edge of a layer writer: every file and directory it creates in the layer dir.

The only module of the layer writer that touches the layer directory. It creates things
with create-new semantics only (a name that exists already is never reused, overwritten
or followed), remembers each one, and can remove exactly those again (:meth:`discard`),
newest first, so a failed import leaves the layer directory as it was: pre-existing
content is never modified.

Paths are given as component lists relative to the layer directory; callers validate
the components (no ``..``, no separators). An existing component on the way that is a
symbolic link, or not a directory, is refused (:class:`LayerExistsError`), so nothing
is ever written outside the layer directory (the seed's ``safefile`` rule).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

from cimsnap.wclayer.errors import LayerExistsError

__all__ = ["HostFiles"]

_log = logging.getLogger(__name__)


class HostFiles:
    """The files and directories one layer writer created under ``layer_path``."""

    def __init__(self, layer_path: Path) -> None:
        self.layer_path = layer_path
        self._created: list[tuple[Path, bool]] = []  # (path, is_directory), oldest first
        self._created_set: set[Path] = set()

    def created(self, path: Path) -> bool:
        """True if ``path`` was created by this object (and not discarded)."""
        return path in self._created_set

    def _remember(self, path: Path, is_directory: bool) -> None:
        self._created.append((path, is_directory))
        self._created_set.add(path)

    def ensure_layer_directory(self) -> None:
        """Create the layer directory and its missing ancestors (``MkdirAll``), remembered."""
        missing: list[Path] = []
        path = self.layer_path
        while not os.path.lexists(path):
            missing.append(path)
            path = path.parent
        for directory in reversed(missing):
            try:
                directory.mkdir(0o755)
            except FileExistsError:
                continue  # created concurrently by someone else: not ours to remove
            self._remember(directory, True)
        if not self.layer_path.is_dir() or self.layer_path.is_symlink():
            raise LayerExistsError(f"layer path {self.layer_path} exists and is not a directory")

    def directory(self, components: list[str]) -> Path:
        """Return the directory at ``components``, creating missing ones (remembered)."""
        path = self.layer_path
        for name in components:
            path = path / name
            try:
                path.mkdir(0o755)
            except FileExistsError:
                mode = path.lstat().st_mode
                if not stat.S_ISDIR(mode):
                    raise LayerExistsError(
                        f"{path} exists in the layer directory and is not a directory"
                    ) from None
                continue
            self._remember(path, True)
        return path

    def make_directory(self, components: list[str]) -> Path:
        """Create the directory at ``components``; its parent must exist.

        Raises FileExistsError if it exists (the caller decides what that means).
        """
        path = self.directory(components[:-1]) / components[-1]
        path.mkdir(0o755)
        self._remember(path, True)
        return path

    def create_file(self, components: list[str]) -> tuple[Path, int]:
        """Create the new file at ``components`` (parents as needed); return (path, fd).

        The descriptor is open for writing; the caller closes it. Raises FileExistsError
        if the name exists (create-new semantics; symbolic links are not followed).
        """
        path = self.directory(components[:-1]) / components[-1]
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
        )
        self._remember(path, False)
        return path, fd

    def write_new(self, components: list[str], data: bytes) -> Path:
        """Create the new file at ``components`` holding ``data`` (FileExistsError if any)."""
        path, fd = self.create_file(components)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        return path

    def link(self, existing: Path, components: list[str]) -> Path:
        """Hard-link ``existing`` as the new name ``components`` (FileExistsError if any)."""
        path = self.directory(components[:-1]) / components[-1]
        os.link(existing, path, follow_symlinks=False)
        self._remember(path, False)
        return path

    def adopt(self, path: Path) -> None:
        """Remember a file another function created at ``path`` for this writer."""
        self._remember(path, False)

    def sync(self) -> None:
        """fsync every created file and directory (before the CIM that needs them commits)."""
        for path, is_directory in self._created:
            flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if is_directory else 0)
            fd = os.open(path, flags | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(self.layer_path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def discard(self) -> None:
        """Remove everything created, newest first (idempotent).

        A created directory that is not empty any more (someone else put a file there) is
        kept and logged; every other failure to remove is logged too, never raised, so the
        caller's original error stays the one reported.
        """
        created, self._created = self._created, []
        self._created_set = set()
        for path, is_directory in reversed(created):
            try:
                if is_directory:
                    path.rmdir()
                else:
                    path.unlink()
            except FileNotFoundError:
                continue
            except OSError as e:
                _log.warning("cannot remove %s after a failed layer import: %s", path, e)

    def forget(self) -> None:
        """Keep everything created (after a successful commit)."""
        self._created = []
        self._created_set = set()

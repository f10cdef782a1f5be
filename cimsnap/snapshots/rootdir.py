"""The snapshotter root on disk: opened once, checked, and never followed through a link.

The rule for the whole root (issue 11, defects 5-7) [choice: directory descriptors]:

* The root's own directories (``<root>``, ``<root>/snapshots``,
  ``<root>/snapshots/cim-layers``) are created ``0700`` if missing, then opened with
  ``O_DIRECTORY | O_NOFOLLOW``. If one of them is a symbolic link or not a directory the
  snapshotter refuses to open (FailedPrecondition naming the path and what to do). Their
  modes are set to ``0700`` whatever the umask, as containerd does for its own root.
  ``lock`` and ``metadata.db`` (with its ``-wal``/``-shm``) must be regular files, never
  links, and are ``0600``.
* Every entry *inside* ``snapshots/`` (``<id>``, ``rm-<id>``, ``<id>/scratch``) is reached
  through the descriptor of its directory (``mkdir``/``rename``/``unlink``/``rmtree``/
  ``open`` with ``dir_fd`` and ``O_NOFOLLOW``), so a link there is renamed or unlinked as
  itself and never followed. Anything unexpected named like a snapshot (``<id>``,
  ``rm-<id>``: a stray file, a link, a device) is retired (renamed to ``rm-…``) and
  reclaimed. Other names are left alone: they are not the daemon's.
* The CIM library works on directory paths (``snapshots/cim-layers``). Their identity is
  re-checked (:meth:`RootDirs.check`: the path, looked at without following it, is still
  the directory opened at start) before every operation that deletes or builds there;
  inside, ``.cim`` files that are not regular files are never read as images.

What this does not cover, by design: someone who can write the root's own directories can
swap them between the check and the use. Only the daemon's user can (they are ``0700``);
see SECURITY.md.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cimsnap.errdefs import FailedPrecondition
from cimsnap.wclayer.layer_files import CIM_LAYERS_DIR

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "REMOVAL_PREFIX",
    "RootDirs",
    "entry_mode",
    "open_subdir",
    "remove_entry",
    "retire_entry",
]

_log = logging.getLogger(__name__)

#: Mode of every directory the snapshotter creates (and of the root's own directories).
DIR_MODE: Final = 0o700
#: Mode of every file the snapshotter creates (metastore, lock, layer files).
FILE_MODE: Final = 0o600
#: Prefix of entries set aside for deletion: ``rm-<id>`` by Remove, ``rm-<id>[.n][.cim]``
#: by Cleanup and Prepare.
REMOVAL_PREFIX: Final = "rm-"

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_DB_FILES: Final = ("metadata.db", "metadata.db-wal", "metadata.db-shm")


def _refuse(path: Path, why: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"snapshotter root: {path} {why}; cimsnap never follows links in its root and its "
        "own directories must be real directories: move the entry aside (and find out who "
        "made it), then start again: failed precondition"
    )


def open_subdir(dir_fd: int | None, name: str | Path) -> int:
    """Open directory ``name`` (relative to ``dir_fd``) without following a link there.

    Raises NotADirectoryError if it is a link or not a directory, FileNotFoundError if
    it is missing, other OSError as the system reports them.
    """
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:  # O_NOFOLLOW met a link
            raise NotADirectoryError(errno.ENOTDIR, "is a symbolic link", str(name)) from e
        raise


def entry_mode(dir_fd: int, name: str) -> int | None:
    """The ``st_mode`` of entry ``name`` of ``dir_fd`` (links not followed); None if absent."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return None


def remove_entry(dir_fd: int, name: str) -> None:
    """Delete entry ``name`` of ``dir_fd``: a directory tree, or anything else by unlink.

    Never follows a link (shutil.rmtree with ``dir_fd`` walks by descriptors). A missing
    entry is fine; any other failure is logged and left for the next cleanup.
    """
    mode = entry_mode(dir_fd, name)
    if mode is None:
        return
    try:
        if stat.S_ISDIR(mode):
            shutil.rmtree(name, dir_fd=dir_fd, onerror=_log_error)
        else:
            os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as e:
        _log.warning("cannot remove %s, left for cleanup: %s", name, e)


def _log_error(function: object, path: str, exc_info: tuple[type, BaseException, object]) -> None:
    if not isinstance(exc_info[1], FileNotFoundError):
        _log.warning("cannot remove %s, left for cleanup: %s", path, exc_info[1])


def retire_entry(dir_fd: int, name: str, stem: str, suffix: str = "") -> str | None:
    """Rename entry ``name`` of ``dir_fd`` to a free ``rm-<stem>[.n]<suffix>``; return it.

    Returns None if ``name`` vanished meanwhile (someone else reclaimed it: it counts as
    reclaimed). The caller serialises retirements in one directory (the metastore write
    lock), so the free name stays free until the rename.
    """
    target = f"{REMOVAL_PREFIX}{stem}{suffix}"
    n = 0
    while entry_mode(dir_fd, target) is not None:
        n += 1
        target = f"{REMOVAL_PREFIX}{stem}.{n}{suffix}"
    try:
        os.rename(name, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    return target


@dataclass(slots=True)
class RootDirs:
    """The root's own directories, open for the snapshotter's lifetime; see the module
    docstring. ``close()`` is idempotent."""

    root: Path
    snapshots: Path
    cim_layers: Path
    root_fd: int
    snapshots_fd: int
    cim_fd: int

    @classmethod
    def open(cls, root: Path) -> RootDirs:
        """Create (``0700``) and open ``root``, ``snapshots`` and ``cim-layers``.

        Raises FailedPrecondition if one of them, or ``lock``/``metadata.db*``, is a link
        or of the wrong type; OSError if they cannot be created or opened.
        """
        root = Path(root)
        # A link or a file at root: refused below with a clear message.
        with contextlib.suppress(FileExistsError):
            os.makedirs(root, mode=DIR_MODE, exist_ok=True)
        fds: list[int] = []
        try:
            fds.append(_open_own(None, root, root))
            fds.append(_open_own(fds[0], Path("snapshots"), root / "snapshots"))
            fds.append(_open_own(fds[1], Path(CIM_LAYERS_DIR), root / "snapshots" / CIM_LAYERS_DIR))
            for name in ("lock", *_DB_FILES):
                mode = entry_mode(fds[0], name)
                if mode is not None and not stat.S_ISREG(mode):
                    raise _refuse(root / name, "is not a regular file")
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        snapshots = root / "snapshots"
        return cls(root, snapshots, snapshots / CIM_LAYERS_DIR, *fds)

    def check(self) -> None:
        """Raise FailedPrecondition unless the three paths still name the opened directories.

        Called before work that deletes or builds through paths (cleanup, commit).
        """
        for path, fd in (
            (self.root, self.root_fd),
            (self.snapshots, self.snapshots_fd),
            (self.cim_layers, self.cim_fd),
        ):
            try:
                now = os.lstat(path)
            except FileNotFoundError:
                raise _refuse(path, "disappeared while the daemon ran") from None
            held = os.fstat(fd)
            if not stat.S_ISDIR(now.st_mode) or (now.st_dev, now.st_ino) != (
                held.st_dev,
                held.st_ino,
            ):
                raise _refuse(path, "was replaced while the daemon ran")

    def create_private_file(self, name: str) -> None:
        """Create root file ``name`` ``0600`` if absent, and force ``0600`` if present."""
        fd = os.open(
            name,
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            FILE_MODE,
            dir_fd=self.root_fd,
        )
        try:
            os.fchmod(fd, FILE_MODE)
        finally:
            os.close(fd)

    def tighten_metastore(self) -> None:
        """Force ``0600`` on the metastore's files that exist (a root made by an older
        version, or by hand under another umask)."""
        for name in _DB_FILES:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.root_fd)
            except FileNotFoundError:
                continue
            try:
                os.fchmod(fd, FILE_MODE)
            finally:
                os.close(fd)

    def close(self) -> None:
        """Close the three descriptors (idempotent)."""
        for attr in ("cim_fd", "snapshots_fd", "root_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)


def _open_own(dir_fd: int | None, name: Path, path: Path) -> int:
    """Create (``0700``) and open one of the root's own directories; force its mode."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, DIR_MODE, dir_fd=dir_fd)
    try:
        fd = open_subdir(dir_fd, name)
    except NotADirectoryError:
        mode = os.lstat(path).st_mode
        raise _refuse(
            path, "is a symbolic link" if stat.S_ISLNK(mode) else "is not a directory"
        ) from None
    os.fchmod(fd, DIR_MODE)
    return fd

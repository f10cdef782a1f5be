"""Build a CIM (or a fork) from a plain Linux directory tree.

:func:`build_from_directory` is what the CLI and the snapshotter call. Mapping and choices:

* Regular files, directories, hard links (same ``st_dev``/``st_ino`` -> one file object,
  CimCreateHardLink for the later names) and symbolic links are stored. FIFOs, sockets and
  devices have no CIM form: they are reported in ``problems``.
* Symbolic links with a *relative* target become Windows symbolic-link reparse points
  (IO_REPARSE_TAG_SYMLINK, SYMLINK_FLAG_RELATIVE, ``/`` turned into ``\\``), as a file, or
  as a directory when the target resolves to a directory inside ``src_dir``. Absolute
  targets have no faithful meaning inside a Windows layer (``/usr`` is no Windows path):
  they are reported in ``problems`` and skipped.
* Times: LastWrite = ``st_mtime``, Change = ``st_ctime``, LastAccess = ``st_atime``;
  Linux exposes no birth time through ``stat``, so Creation = ``st_mtime``.
* Attributes: DIRECTORY for directories, ARCHIVE for files, READONLY when the mode has no
  write bit.
* Security descriptor: none is derived from Linux modes; every object gets the writer's
  default, the NULL-DACL descriptor ``D:NO_ACCESS_CONTROL`` (full access for everyone),
  the same choice hcsshim makes when a layer supplies none.
* Names Windows cannot hold (``:``, ``\\``, undecodable bytes, > 255 UTF-16 units, ...) and
  names that collide case-insensitively within one directory (the later one in byte order
  loses) are reported in ``problems``. So are unreadable files and directories: a
  directory that cannot be listed is stored empty, a file that cannot be opened is left
  out, one that fails while being read is removed again. The output directory itself, when
  it lies inside ``src_dir``, is not stored (its files are being written). Nothing is
  skipped silently.

Forks (``parent``): the image is the parent's tree with the entries of ``src_dir`` added
on top, replacing what is at the same path (a directory over a directory merges: the
directory takes the new metadata, its other children stay). The root directory keeps the
parent's metadata. Deletions follow the OCI whiteout convention: a file ``.wh.<name>``
deletes ``<name>`` (and its subtree) from the parent, and a file ``.wh..wh..opq`` in a
directory hides every entry the parent had there ("opaque" directory). Whiteout files
themselves are never stored, and a whiteout for a name the parent lacks is ignored. As in
the OCI image spec, a whiteout applies to the parent only: an entry of the same name in
``src_dir`` is stored (whiteouts of a directory are applied before its entries).
Without a parent, whiteouts are ignored too (there is nothing to delete).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cimsnap.cim.errors import CimInvalidArgumentError
from cimsnap.cim.file_metadata import FileMetadata
from cimsnap.cim.format import (
    IO_REPARSE_TAG_SYMLINK,
    REPARSE_DATA_HEADER_SIZE,
    SYMLINK_FLAG_RELATIVE,
    SYMLINK_REPARSE_HEADER,
    FileAttribute,
)
from cimsnap.cim.upcase import encode_name, invalid_name_reason
from cimsnap.cim.writer import CimWriter

__all__ = ["BuildReport", "build_from_directory"]

#: FILETIME of the Unix epoch, in 100 ns units since 1601-01-01.
_EPOCH_FILETIME: Final = 116_444_736_000_000_000
_READ_CHUNK: Final = 1 << 20
_PROGRESS_EVERY: Final = 1024
_MAX_REPARSE: Final = 0xFFFF
_WHITEOUT: Final = ".wh."
_OPAQUE: Final = ".wh..wh..opq"
_DIRECTORY: Final = int(FileAttribute.DIRECTORY)
_ARCHIVE: Final = int(FileAttribute.ARCHIVE)
_READONLY: Final = int(FileAttribute.READONLY)


@dataclass(frozen=True, slots=True)
class BuildReport:
    """Outcome of a build: objects stored, data bytes stored, and every path left out or
    changed, with the reason (``problems``)."""

    files: int
    bytes: int
    problems: list[tuple[Path, str]] = field(default_factory=list)


def _filetime(ns: int) -> int:
    return max(0, ns // 100 + _EPOCH_FILETIME)


def _metadata(
    st: os.stat_result, attributes: int, size: int = 0, reparse: bytes = b""
) -> FileMetadata:
    if not st.st_mode & 0o222:
        attributes |= _READONLY
    if reparse:
        attributes |= int(FileAttribute.REPARSE_POINT)
    mtime = _filetime(st.st_mtime_ns)
    return FileMetadata(
        attributes=attributes,
        size=size,
        creation_time=mtime,
        last_write_time=mtime,
        change_time=_filetime(st.st_ctime_ns),
        last_access_time=_filetime(st.st_atime_ns),
        reparse=reparse,
    )


def symlink_reparse_buffer(target: str) -> bytes:
    """Return the REPARSE_DATA_BUFFER of a relative symbolic link to ``target`` (§8)."""
    name = encode_name(target.replace("/", "\\"))
    header = SYMLINK_REPARSE_HEADER.build(
        {
            "reparse_tag": IO_REPARSE_TAG_SYMLINK,
            "reparse_data_length": SYMLINK_REPARSE_HEADER.sizeof()
            - REPARSE_DATA_HEADER_SIZE
            + 2 * len(name),
            "reserved": 0,
            "substitute_name_offset": 0,
            "substitute_name_length": len(name),
            "print_name_offset": len(name),
            "print_name_length": len(name),
            "flags": SYMLINK_FLAG_RELATIVE,
        }
    )
    return bytes(header) + name + name


#: Flags that open one directory of the tree without following a link in its place.
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Builder:
    """The walk of one source tree; every entry is reached through its directory's
    descriptor (``openat``-style, ``O_NOFOLLOW``), so a symlink swapped into the tree while
    it is read is stored as a link, never followed out of the tree."""

    def __init__(
        self,
        writer: CimWriter,
        src: Path,
        root_fd: int,
        fork: bool,
        progress: Callable[[int, int], None] | None,
        output: os.stat_result,
    ) -> None:
        self.writer = writer
        self.src = src
        self.root_fd = root_fd
        self.fork = fork
        self.output = (output.st_dev, output.st_ino)
        root = os.fstat(root_fd)
        self.output_is_source = (root.st_dev, root.st_ino) == self.output
        self.progress = progress
        self.files = 0
        self.bytes = 0
        self.problems: list[tuple[Path, str]] = []
        self.inodes: dict[tuple[int, int], str] = {}
        self.key = writer.name_key

    def problem(self, path: Path, why: str) -> None:
        self.problems.append((path, why))

    def counted(self, size: int = 0) -> None:
        self.files += 1
        self.bytes += size
        if self.progress is not None and self.files % _PROGRESS_EVERY == 0:
            self.progress(self.files, self.bytes)

    def run(self) -> None:
        """Store the tree in pre-order, holding one descriptor per level of depth."""
        root_dir = _Dir(self.root_fd, self.src, "", ())
        stack: list[tuple[_Dir, Iterator[tuple[str, str]]]] = [
            (root_dir, iter(self.directory(root_dir)))
        ]
        try:
            while stack:
                parent, pending = stack[-1]
                step = next(pending, None)
                if step is None:
                    stack.pop()
                    if parent.fd != self.root_fd:
                        os.close(parent.fd)
                    continue
                name, image = step
                host = parent.host / name
                try:
                    fd = os.open(name, _DIR_FLAGS, dir_fd=parent.fd)
                except OSError as e:
                    self.problem(host, f"cannot open directory: {e.strerror}")
                    continue
                child = _Dir(fd, host, image, (*parent.parts, name))
                stack.append((child, iter(())))  # registered first: the finally closes it
                stack[-1] = (child, iter(self.directory(child)))
        finally:
            for opened, _ in stack:
                if opened.fd != self.root_fd:
                    os.close(opened.fd)

    def _list(self, here: _Dir) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(here.fd) as it:
                entries = list(it)
        except OSError as e:
            self.problem(here.host, f"cannot list directory: {e.strerror}")
            return []
        entries.sort(key=lambda e: os.fsencode(e.name))
        return entries

    def directory(self, here: _Dir) -> list[tuple[str, str]]:
        """Store the entries of one directory; return its subdirectories to visit."""
        host, image = here.host, here.image
        entries = self._list(here)
        if not image and self.output_is_source:
            entries = self._without_own_files(entries)
        names = {e.name for e in entries}
        if self.fork and _OPAQUE in names and not image:
            self.problem(host / _OPAQUE, "an opaque marker at the root is not supported")
        elif self.fork and _OPAQUE in names:
            # Opaque: drop everything the parent had here, keep the directory itself.
            if self.writer.exists(image):
                self.writer.delete_path(image)
            self.writer.create_file(image, _metadata(os.fstat(here.fd), _DIRECTORY))
        # Whiteouts first: they delete from the parent only, never an entry of this layer
        # (OCI image spec), whatever the byte order of the names.
        for entry in entries:
            if entry.name.startswith(_WHITEOUT):
                self.whiteout(host / entry.name, image, entry.name)
        seen: dict[str, str] = {}
        subdirectories: list[tuple[str, str]] = []
        for entry in entries:
            if entry.name.startswith(_WHITEOUT):
                continue
            path = host / entry.name
            reason = invalid_name_reason(entry.name)
            if reason is not None:
                self.problem(path, f"name cannot be stored: {reason}")
                continue
            key = self.key(entry.name)
            if key in seen:
                self.problem(path, f"name collides case-insensitively with {seen[key]!r}")
                continue
            seen[key] = entry.name
            child = f"{image}\\{entry.name}" if image else entry.name
            if self.entry(here, entry, path, child):
                subdirectories.append((entry.name, child))
        return subdirectories

    def _without_own_files(self, entries: list[os.DirEntry[str]]) -> list[os.DirEntry[str]]:
        """Drop (and report) the files of the image being written, when it is written into
        ``src_dir`` itself."""
        guid = str(self.writer.region_set_id)
        kept = []
        for entry in entries:
            if entry.name == self.writer.image_name or guid in entry.name:
                self.problem(self.src / entry.name, "the image's own file is not stored")
            else:
                kept.append(entry)
        return kept

    def whiteout(self, path: Path, image: str, name: str) -> None:
        if name == _OPAQUE or not self.fork:
            return
        target = name[len(_WHITEOUT) :]
        reason = invalid_name_reason(target)
        if reason is not None:
            self.problem(path, f"whiteout names no valid file: {reason}")
            return
        victim = f"{image}\\{target}" if image else target
        if self.writer.exists(victim):
            self.writer.delete_path(victim)

    def entry(self, here: _Dir, entry: os.DirEntry[str], path: Path, image: str) -> bool:
        """Store one entry; True if it is a directory to descend into."""
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError as e:
            self.problem(path, f"cannot stat: {e.strerror}")
            return False
        mode = st.st_mode
        if stat.S_ISDIR(mode) and (st.st_dev, st.st_ino) == self.output:
            self.problem(path, "the image's own output directory is not stored")
            return False
        if stat.S_ISDIR(mode):
            self.writer.create_file(image, _metadata(st, _DIRECTORY))
            self.counted()
            return True
        if stat.S_ISREG(mode):
            self.regular(here, entry.name, path, image, st)
        elif stat.S_ISLNK(mode):
            self.symlink(here, entry.name, path, image, st)
        else:
            self.problem(path, f"file type {stat.S_IFMT(mode):#o} has no CIM form")
        return False

    def regular(self, here: _Dir, name: str, path: Path, image: str, st: os.stat_result) -> None:
        identity = (st.st_dev, st.st_ino)
        if st.st_nlink > 1:
            first = self.inodes.get(identity)
            if first is not None:
                self.writer.create_hard_link(image, first)
                self.counted()
                return
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=here.fd)
        except OSError as e:
            self.problem(path, f"cannot open: {e.strerror}")
            return
        try:
            stream = self.writer.create_file(image, _metadata(st, _ARCHIVE, st.st_size))
            remaining = st.st_size
            failure = None
            try:
                while remaining > 0:
                    chunk = os.read(fd, min(_READ_CHUNK, remaining))
                    if not chunk:
                        break
                    stream.write(chunk)
                    remaining -= len(chunk)
            except OSError as e:
                failure = e
            stream.close()
        finally:
            os.close(fd)
        if failure is not None:
            self.writer.delete_path(image)
            self.problem(path, f"read failed: {failure.strerror}")
            return
        if remaining:
            self.problem(path, f"file shrank while read; {remaining} bytes stored as zeros")
        if st.st_nlink > 1:
            self.inodes[identity] = image
        self.counted(st.st_size)

    def symlink(self, here: _Dir, name: str, path: Path, image: str, st: os.stat_result) -> None:
        try:
            target = os.readlink(name, dir_fd=here.fd)
        except OSError as e:
            self.problem(path, f"cannot read link: {e.strerror}")
            return
        if target.startswith("/"):
            self.problem(path, f"absolute symlink target {target!r} is not stored")
            return
        parts = [part for part in target.split("/") if part not in ("", ".", "..")]
        bad = [reason for reason in map(invalid_name_reason, parts) if reason is not None]
        reparse = symlink_reparse_buffer(target) if target else b""
        if bad or not target or len(reparse) > _MAX_REPARSE:
            self.problem(path, f"symlink target {target!r} cannot be stored")
            return
        is_dir = self._is_tree_directory(here.parts, target)
        self.writer.create_file(
            image, _metadata(st, _DIRECTORY if is_dir else _ARCHIVE, 0, reparse)
        ).close()
        self.counted()

    def _is_tree_directory(self, base: tuple[str, ...], target: str) -> bool:
        """True if relative ``target``, seen from directory ``base`` of the tree, names a
        directory inside the tree, found without following any link (a link to a link
        counts as a file)."""
        parts = list(base)
        for part in target.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    return False  # leaves the tree
                parts.pop()
            else:
                parts.append(part)
        if not parts:
            return True
        fd = self.root_fd
        try:
            for part in parts[:-1]:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                if fd != self.root_fd:
                    os.close(fd)
                fd = next_fd
            final = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except OSError:
            return False
        finally:
            if fd != self.root_fd:
                os.close(fd)
        return stat.S_ISDIR(final.st_mode)


@dataclass(frozen=True, slots=True)
class _Dir:
    """One open directory of the walk: its descriptor, host path (for messages), image
    path and path components below the tree's root."""

    fd: int
    host: Path
    image: str
    parts: tuple[str, ...]


def build_from_directory(
    src_dir: Path,
    cim_path: Path,
    *,
    parent: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    src_dir_fd: int | None = None,
) -> BuildReport:
    """Build the image ``cim_path`` from ``src_dir`` (see the module docstring).

    ``parent``: a ``.cim`` in the same directory as ``cim_path`` to fork. ``progress`` is
    called with (objects done, bytes done) every 1024 objects and once at the end.
    ``src_dir_fd``: an open descriptor of the source directory, which is then read through
    it (``src_dir`` only names entries in ``problems``); the caller keeps ownership. Without
    it ``src_dir`` itself is opened (a link there is the caller's choice and is followed);
    below the top, no link is ever followed.

    Raises CimInvalidArgumentError if ``parent`` is in another directory, the writer's
    errors (CimFileExistsError if ``cim_path`` exists, CimNotFoundError for a missing
    parent, ...) and OSError if ``src_dir`` itself cannot be read or the image cannot be
    written. On any exception no file of the new image is left behind.
    """
    directory = cim_path.parent
    if parent is not None and parent.parent.resolve() != directory.resolve():
        raise CimInvalidArgumentError(f"parent {parent} is not in {directory}")
    root_fd = (
        os.open(src_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if src_dir_fd is None
        else src_dir_fd
    )
    try:
        root_stat = os.fstat(root_fd)
        with CimWriter(
            directory, cim_path.name, parent=None if parent is None else parent.name
        ) as writer:
            builder = _Builder(
                writer, src_dir, root_fd, parent is not None, progress, os.stat(directory)
            )
            if parent is None:
                writer.create_file("", _metadata(root_stat, _DIRECTORY))
            builder.run()
            writer.commit()
    finally:
        if src_dir_fd is None:
            os.close(root_fd)
    if progress is not None:
        progress(builder.files, builder.bytes)
    return BuildReport(files=builder.files, bytes=builder.bytes, problems=builder.problems)

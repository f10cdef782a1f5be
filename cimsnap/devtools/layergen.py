r"""Deterministic generator of realistic OCI Windows layer tars, with the model they declare.

:func:`generate_chain` writes a base layer and ``layers - 1`` delta layers (PAX tars, gzip
optional) and returns one :class:`GeneratedLayer` per tar. Each carries a
:class:`LayerModel`: what a CIM imported from layers ``0..N`` must contain, path by path
(``\``-separated image paths such as ``Files\Windows\System32\kernel32.dll``), as the
tars declare it:

* attributes after the CIM's masking (only READONLY, HIDDEN, SYSTEM, DIRECTORY, ARCHIVE,
  SPARSE_FILE and REPARSE_POINT survive; REPARSE_POINT only on symlinks and junctions);
* the four FILETIMEs, the self-relative security descriptor (the NULL-DACL descriptor when
  an entry carries none), the FILE_FULL_EA_INFORMATION buffer (entries sorted by name, each
  padded to 4 bytes), the reparse buffer;
* data (kept up to ``keep_data_up_to`` bytes, always as size + SHA-256), alternate streams
  (name without ``:$DATA`` -> data), and hard-link groups (names sharing one
  :class:`ModelFile` object).

The model holds only what the tars declare. What an importer synthesises (base layer:
the ``Hives`` directory, the ``Hives\*_BASE`` links to the config hives and ``layout``;
delta layers: the merged ``Hives\*_BASE``) is not in it.

Tar conventions: PAX format; ``Files/`` (and
``Hives/`` in delta layers) at the root; directories before their children, children
sorted by name (whiteouts of a directory first), no trailing slash on directory names;
hard links (typeflag 1) always after their target; symlinks and junctions as typeflag 2
with a ``\``-separated target and ``MSWINDOWS.mountpoint`` for junctions; alternate
streams directly after their file, named ``file:stream:$DATA`` or ``file:stream`` (both
forms occur); whiteouts ``.wh.name`` (zero-length regular entries) only in delta layers.
Every non-link entry carries ``MSWINDOWS.fileattr``, ``MSWINDOWS.rawsd`` (except a few
that carry no SD), ``LIBARCHIVE.creationtime`` and ``mtime``/``atime``/``ctime`` with 100 ns
precision written as Go does (``secs.fraction`` with trailing zeros trimmed); some carry
``MSWINDOWS.xattr.*`` records (deliberately not in name order). uid/gid 0, empty
uname/gname, mode 0644/0755.

No ``UtilityVM`` tree is generated (its import step needs a utility-VM SOFTWARE hive and,
above build 20348, BCD edits that only Windows can do). The base layer carries
``Files/Windows/System32/config/{SYSTEM,SOFTWARE,SAM,SECURITY,DEFAULT}`` written by
:mod:`cimsnap.hive`; every delta layer carries all five
``Hives/*_Delta`` differencing hives, each a valid delta over the merge of the previous
layers' hives (:func:`cimsnap.hive.merge`).

Profiles: ``"small"`` (about 150 entries and a few MB per layer, every feature, data kept
in the model; for tests) and ``"bench"`` (``size`` bytes and ``entries`` entries: ~9%
directories, ``link_fraction`` hard links mostly from ``WinSxS`` into ``System32``,
heavy-tailed file sizes; base layers as Microsoft ships them: no ADS, symlinks or
whiteouts). Data is streamed from a seeded pool of mixed random/text/low-entropy blocks,
never held whole in memory. The same arguments always give byte-identical tars.

:func:`write_oci_image` packs a chain into an OCI image archive (``ctr image import``).

CLI: ``python -m cimsnap.devtools.layergen OUT_DIR [--profile bench] [--size 1GiB]
[--entries 30000] [--layers 1] [--seed 0] [--gzip] [--oci-image FILE]``.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import io
import json
import math
import random
import re
import struct
import sys
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO, Final, Literal

from cimsnap.hive import Hive, Key, LayerSemantics, Value, merge, write_hive
from cimsnap.hive.tree import REG_BINARY, REG_DWORD, REG_EXPAND_SZ, REG_NONE, REG_SZ
from cimsnap.hive.writer import DEFAULT_SECURITY_DESCRIPTOR

__all__ = [
    "BASE_HIVES",
    "DELTA_HIVES",
    "NULL_DACL_SECURITY_DESCRIPTOR",
    "STORED_ATTRIBUTES",
    "GeneratedLayer",
    "LayerModel",
    "ModelFile",
    "Profile",
    "ea_buffer",
    "filetime_to_pax",
    "generate_chain",
    "make_profile",
    "parse_size",
    "reparse_buffer",
    "write_oci_image",
]

#: FILETIME of the Unix epoch (100 ns units since 1601-01-01).
EPOCH_AS_FILETIME: Final = 116_444_736_000_000_000
#: The attribute bits a CIM stores or derives.
STORED_ATTRIBUTES: Final = 0x1 | 0x2 | 0x4 | 0x10 | 0x20 | 0x200 | 0x400
#: What a CIM holds for a file that came with no SD.
NULL_DACL_SECURITY_DESCRIPTOR: Final = bytes([1, 0, 4, 0x80]) + bytes(16)
#: Config hive file -> the name of its differencing hive in a delta layer (§1.2).
BASE_HIVES: Final = ("SYSTEM", "SOFTWARE", "SAM", "SECURITY", "DEFAULT")
DELTA_HIVES: Final = {
    "SYSTEM": "System_Delta",
    "SOFTWARE": "Software_Delta",
    "SAM": "Sam_Delta",
    "SECURITY": "Security_Delta",
    "DEFAULT": "DefaultUser_Delta",
}
CONFIG_DIR: Final = "Files/Windows/System32/config"

_DIRECTORY: Final = 0x10
_REPARSE: Final = 0x400
_SYMLINK_TAG: Final = 0xA000000C
_MOUNT_POINT_TAG: Final = 0xA0000003
_KIB: Final = 1024
_MIB: Final = 1024 * 1024
_COPY_CHUNK: Final = 1 << 20


# -- public model -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelFile:
    """What one file (or directory) of a CIM must hold; hard-linked names share the object.

    ``attributes`` are already masked to :data:`STORED_ATTRIBUTES`. ``data`` is None when
    the file is larger than the generator's ``keep_data_up_to`` (``sha256``/``size`` still
    describe it). ``streams`` maps alternate stream names (no ``:$DATA``) to their data.
    """

    attributes: int
    creation_time: int
    last_access_time: int
    last_write_time: int
    change_time: int
    security_descriptor: bytes
    ea: bytes
    reparse: bytes
    size: int
    sha256: str
    data: bytes | None
    streams: Mapping[str, bytes] = field(default_factory=dict)

    @property
    def is_directory(self) -> bool:
        """True for a directory (a junction or directory symlink is one too)."""
        return bool(self.attributes & _DIRECTORY)


@dataclass(slots=True)
class LayerModel:
    """The merged view of a chain of layers: image path -> :class:`ModelFile`."""

    files: dict[str, ModelFile] = field(default_factory=dict)

    def link_groups(self) -> list[frozenset[str]]:
        """Sets of two or more names that are hard links to one file, sorted."""
        groups: dict[int, set[str]] = {}
        for path, f in self.files.items():
            if not f.is_directory:
                groups.setdefault(id(f), set()).add(path)
        return sorted((frozenset(g) for g in groups.values() if len(g) > 1), key=sorted)

    def copy(self) -> LayerModel:
        """A shallow copy (ModelFile objects, and so link identity, are shared)."""
        return LayerModel(dict(self.files))


@dataclass(frozen=True, slots=True)
class GeneratedLayer:
    """One generated tar. ``diff_id`` is ``sha256:<hex>`` of the uncompressed tar;
    ``digest``/``blob_size`` describe the file as written (equal to the tar's when not
    compressed). ``size_total`` is the importer's size total (sum of regular entry sizes).
    """

    index: int
    path: Path
    compressed: bool
    diff_id: str
    tar_size: int
    digest: str
    blob_size: int
    entries: int
    size_total: int
    model: LayerModel


@dataclass(frozen=True, slots=True)
class Profile:
    """Shape of a generated chain; see :func:`profile` for the named ones."""

    entries: int
    size: int
    dir_fraction: float = 0.09
    link_fraction: float = 0.30
    max_file_size: int = 100 * _MIB
    median_file_size: int = 16 * _KIB
    hive_keys: int = 150
    delta_fraction: float = 0.3
    realistic_base: bool = False
    keep_data_up_to: int = 8 * _MIB


def make_profile(
    name: Literal["small", "bench"], *, size: int | None = None, entries: int | None = None
) -> Profile:
    """The named profile, with ``size`` (file bytes of the base layer) and ``entries``
    (entries of the base layer) overriding its defaults."""
    if name == "small":
        return Profile(
            entries=entries or 150,
            size=size if size is not None else 2 * _MIB,
            max_file_size=256 * _KIB,
            median_file_size=4 * _KIB,
            hive_keys=120,
        )
    if name == "bench":
        return Profile(
            entries=entries or 30_000,
            size=size if size is not None else 1 << 30,
            hive_keys=2_000,
            realistic_base=True,
            keep_data_up_to=0,
        )
    raise ValueError(f"unknown profile {name!r}")


# -- Windows metadata encodings (independent of cimsnap.wclayer, on purpose) ------------


def filetime_to_pax(filetime: int) -> str:
    """Format a FILETIME as a PAX time (``secs[.frac]``, trailing zeros trimmed, as Go)."""
    ticks = filetime - EPOCH_AS_FILETIME
    secs, frac = divmod(ticks, 10_000_000)
    if ticks < 0 and frac:
        raise ValueError("times before 1970 are not generated")
    if not frac:
        return str(secs)
    return f"{secs}.{frac:07d}".rstrip("0")


def ea_buffer(eas: Mapping[str, bytes]) -> bytes:
    """FILE_FULL_EA_INFORMATION chain of ``eas`` (names as UTF-8, sorted by those bytes),
    every entry padded to 4."""
    out = bytearray()
    items = sorted((name.encode("utf-8"), value) for name, value in eas.items())
    for i, (raw, value) in enumerate(items):
        body = struct.pack("<BBH", 0, len(raw), len(value)) + raw + b"\0" + value
        length = 4 + len(body)
        padded = (length + 3) & ~3
        out += struct.pack("<I", padded if i < len(items) - 1 else 0)
        out += body + bytes(padded - length)
    return bytes(out)


def reparse_buffer(target: str, *, mountpoint: bool) -> bytes:
    """The REPARSE_DATA_BUFFER go-winio encodes for a symlink or junction target (§1.3)."""
    relative = False
    if target.startswith("\\\\?\\"):
        nt = "\\??\\" + target[4:]
    elif target.startswith("\\\\"):
        nt = "\\??\\UNC\\" + target[2:]
    elif len(target) >= 2 and target[1] == ":" and target[0].isascii() and target[0].isalpha():
        nt = "\\??\\" + target
    else:
        nt, relative = target, True
    ntb, tb = nt.encode("utf-16-le"), target.encode("utf-16-le")
    names = struct.pack("<HHHH", 0, len(ntb), len(ntb) + 2, len(tb))
    if mountpoint:
        rest = names + ntb + b"\0\0" + tb + b"\0\0"
        tag = _MOUNT_POINT_TAG
    else:
        rest = names + struct.pack("<I", 1 if relative else 0) + ntb + b"\0\0" + tb + b"\0\0"
        tag = _SYMLINK_TAG
    return struct.pack("<IHH", tag, len(rest), 0) + rest


def _sid(authority: int, *subs: int) -> bytes:
    return (
        bytes([1, len(subs)]) + authority.to_bytes(6, "big") + struct.pack(f"<{len(subs)}I", *subs)
    )


_SYSTEM = _sid(5, 18)
_ADMINS = _sid(5, 32, 544)
_USERS = _sid(5, 32, 545)
_EVERYONE = _sid(1, 0)
_AUTH_USERS = _sid(5, 11)
_CREATOR_OWNER = _sid(3, 0)
_APP_PACKAGES = _sid(15, 2, 1)
_RESTRICTED_APPS = _sid(15, 2, 2)
_TRUSTED_INSTALLER = _sid(5, 80, 956008885, 3418522649, 1831038044, 1853292631, 2271478464)

_FULL, _READ_EXEC, _MODIFY = 0x1F01FF, 0x1200A9, 0x1301BF
_GENERIC_ALL, _GENERIC_READ_EXEC = 0x10000000, 0xA0000000
_OI_CI, _INHERIT_ONLY, _INHERITED = 0x3, 0x8, 0x10


def _ace(mask: int, sid: bytes, flags: int = 0) -> bytes:
    return struct.pack("<BBHI", 0, flags, 8 + len(sid), mask) + sid


def _security_descriptor(owner: bytes, group: bytes, aces: Sequence[bytes], control: int) -> bytes:
    body = b"".join(aces)
    acl = struct.pack("<BBHHH", 2, 0, 8 + len(body), len(aces), 0) + body
    owner_at = 20
    group_at = owner_at + len(owner)
    dacl_at = group_at + len(group)
    header = struct.pack("<BBHIIII", 1, 0, 0x8004 | control, owner_at, group_at, 0, dacl_at)
    return header + owner + group + acl


def _sd_pool() -> tuple[list[bytes], list[bytes]]:
    """(file SDs, directory SDs): self-relative, 100-250 bytes, shaped like Windows' own."""
    files = [
        _security_descriptor(
            _TRUSTED_INSTALLER,
            _SYSTEM,
            [
                _ace(_FULL, _TRUSTED_INSTALLER),
                _ace(_READ_EXEC, _SYSTEM),
                _ace(_READ_EXEC, _ADMINS),
                _ace(_READ_EXEC, _USERS),
                _ace(_READ_EXEC, _APP_PACKAGES),
            ],
            0x1000,
        ),
        _security_descriptor(
            _ADMINS,
            _SYSTEM,
            [
                _ace(_FULL, _SYSTEM, _INHERITED),
                _ace(_FULL, _ADMINS, _INHERITED),
                _ace(_READ_EXEC, _USERS, _INHERITED),
            ],
            0x400,
        ),
        _security_descriptor(
            _ADMINS,
            _SYSTEM,
            [
                _ace(_FULL, _SYSTEM, _INHERITED),
                _ace(_FULL, _ADMINS, _INHERITED),
                _ace(_MODIFY, _AUTH_USERS, _INHERITED),
                _ace(_READ_EXEC, _USERS, _INHERITED),
            ],
            0x400,
        ),
        _security_descriptor(
            _TRUSTED_INSTALLER,
            _SYSTEM,
            [
                _ace(_FULL, _TRUSTED_INSTALLER),
                _ace(_READ_EXEC, _SYSTEM),
                _ace(_READ_EXEC, _ADMINS),
                _ace(_READ_EXEC, _USERS),
                _ace(_READ_EXEC, _APP_PACKAGES),
                _ace(_READ_EXEC, _RESTRICTED_APPS),
            ],
            0x1000,
        ),
    ]
    dirs = [
        _security_descriptor(
            _TRUSTED_INSTALLER,
            _SYSTEM,
            [
                _ace(_FULL, _TRUSTED_INSTALLER),
                _ace(_MODIFY, _SYSTEM),
                _ace(_GENERIC_ALL, _SYSTEM, _OI_CI | _INHERIT_ONLY),
                _ace(_MODIFY, _ADMINS),
                _ace(_READ_EXEC, _USERS),
                _ace(_GENERIC_READ_EXEC, _USERS, _OI_CI | _INHERIT_ONLY),
                _ace(_GENERIC_ALL, _CREATOR_OWNER, _OI_CI | _INHERIT_ONLY),
            ],
            0x1000,
        ),
        _security_descriptor(
            _ADMINS,
            _SYSTEM,
            [
                _ace(_FULL, _SYSTEM, _OI_CI | _INHERITED),
                _ace(_FULL, _ADMINS, _OI_CI | _INHERITED),
                _ace(_READ_EXEC, _USERS, _OI_CI | _INHERITED),
                _ace(_GENERIC_ALL, _CREATOR_OWNER, _OI_CI | _INHERIT_ONLY | _INHERITED),
            ],
            0x400,
        ),
        _security_descriptor(
            _SYSTEM,
            _SYSTEM,
            [
                _ace(_FULL, _SYSTEM, _OI_CI),
                _ace(_FULL, _ADMINS, _OI_CI),
                _ace(_MODIFY, _USERS, _OI_CI),
                _ace(_READ_EXEC, _EVERYONE, _OI_CI),
            ],
            0x1000,
        ),
    ]
    return files, dirs


SECURITY_DESCRIPTORS: Final = _sd_pool()

_EA_NAMES: Final = (
    "$KERNEL.PURGE.ESBCACHE",
    "$CI.CATALOGHINT",
    "USER.CIMSNAP.ORIGIN",
    "$KERNEL.PURGE.APPXFICACHE",
)


# -- data payloads ----------------------------------------------------------------------


_LOW_NIBBLE: Final = bytes(i & 0x0F for i in range(256))


class _Pool:
    """A seeded buffer of mixed blocks (random, text-like, low-entropy) that file data is
    cut from, so data costs no PRNG time and compresses about as real binaries do."""

    SIZE: Final = 8 * _MIB
    BLOCK: Final = 4096

    def __init__(self, seed: int) -> None:
        rng = random.Random(f"pool-{seed}")
        words = [w.encode() for w in _WORDS]
        text = bytearray()
        while len(text) < 64 * _KIB:
            text += rng.choice(words) + rng.choice((b" ", b"\r\n", b".", b"\\", b"\0"))
        out = bytearray()
        for i in range(self.SIZE // self.BLOCK):
            kind = i % 8  # 2/8 random, 4/8 text, 2/8 low-entropy: zlib -6 to about 48%
            if kind < 2:
                out += rng.randbytes(self.BLOCK)
            elif kind < 6:
                start = rng.randrange(len(text) - self.BLOCK)
                out += text[start : start + self.BLOCK]
            else:
                out += rng.randbytes(self.BLOCK).translate(_LOW_NIBBLE)
        self.data = bytes(out)
        self.view = memoryview(self.data)


@dataclass(frozen=True, slots=True)
class _Payload:
    """Deterministic data: ``literal`` bytes, or ``size`` bytes of the pool from ``start``
    (``sparse``: zeros except a few pool islands)."""

    size: int
    start: int = 0
    literal: bytes | None = None
    sparse: bool = False

    def chunks(self, pool: _Pool) -> Iterator[memoryview | bytes]:
        if self.literal is not None:
            yield self.literal
            return
        if self.sparse:
            yield from self._sparse_chunks(pool)
            return
        left, at = self.size, self.start % pool.SIZE
        while left:
            n = min(left, pool.SIZE - at, _COPY_CHUNK)
            yield pool.view[at : at + n]
            left -= n
            at = (at + n) % pool.SIZE

    def _sparse_chunks(self, pool: _Pool) -> Iterator[memoryview | bytes]:
        island = min(4096, self.size)
        islands = {0, max(0, self.size // 2 - island), max(0, self.size - island)}
        at = 0
        zero = bytes(min(_COPY_CHUNK, self.size))
        for start in sorted(islands):
            while at < start:
                n = min(start - at, len(zero))
                yield zero[:n]
                at += n
            if start + island > at:
                skip = at - start
                yield pool.view[self.start % 4096 + skip : self.start % 4096 + island]
                at = start + island


class _PayloadReader(io.RawIOBase):
    """File object over a payload for tarfile.addfile; hashes and optionally keeps data."""

    def __init__(self, payload: _Payload, pool: _Pool, keep: bool) -> None:
        self._chunks = payload.chunks(pool)
        self._pending: memoryview = memoryview(b"")
        self.sha256 = hashlib.sha256()
        self.kept: bytearray | None = bytearray() if keep else None

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes; short only at the end (tarfile requires full reads)."""
        parts: list[memoryview] = []
        want = n if n >= 0 else 1 << 62
        while want:
            if not self._pending:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._pending = memoryview(chunk)
            take = self._pending[:want]
            self._pending = self._pending[len(take) :]
            parts.append(take)
            want -= len(take)
        out = b"".join(parts)
        self.sha256.update(out)
        if self.kept is not None:
            self.kept += out
        return out


# -- layer plans -----------------------------------------------------------------------

_WORDS: Final = (
    "kernel", "shell", "ntdll", "user", "gdi", "win", "net", "crypt", "print", "audio", "media",
    "search", "update", "defender", "storage", "input", "speech", "runtime", "policy", "driver",
    "telemetry", "cloud", "sync", "identity", "provider", "handler", "cache", "profile",
    "device", "dxgi", "d3d", "wmi", "rpc", "lsa", "sam", "bcrypt", "msvc", "ucrt", "combase",
)  # fmt: skip
_EXTENSIONS: Final = (
    ".dll",
    ".dll",
    ".dll",
    ".exe",
    ".mui",
    ".cat",
    ".manifest",
    ".sys",
    ".inf",
    ".xml",
    ".dat",
)
_UNICODE_NAMES: Final = (
    "Документы",
    "日本語のファイル.txt",
    "Ünïcödé ñame.dat",
    "emoji 😀 file.txt",
    "Ελληνικά",
)


_NONE: Final[Mapping[str, bytes]] = MappingProxyType({})  # shared by entries without any


@dataclass(slots=True)
class _Entry:
    kind: Literal["dir", "file", "link", "symlink", "whiteout"]
    fileattr: int = 0
    times: tuple[int, int, int, int] = (0, 0, 0, 0)  # creation, access, write, change
    sd: bytes | None = None
    eas: Mapping[str, bytes] = field(default_factory=lambda: _NONE)
    payload: _Payload | None = None
    linkname: str = ""
    mountpoint: bool = False
    streams: tuple[tuple[str, bool, _Payload], ...] = ()


def _sort_key(path: str) -> str:
    """Directories before children, children by name, a directory's whiteouts first (as
    one string: components joined by NUL, whiteouts marked by U+0001; names hold neither)."""
    return "\0".join("\1" + part if part.startswith(".wh.") else part for part in path.split("/"))


class _Planner:
    """Builds the entries of one layer over the model of the layers below."""

    def __init__(self, rng: random.Random, prof: Profile, index: int, below: LayerModel) -> None:
        self.rng = rng
        self.prof = prof
        self.index = index
        self.below = below
        self.entries: dict[str, _Entry] = {}
        self.links_to: dict[str, list[str]] = {}  # file path -> its link entries
        self.names: dict[str, set[str]] = {}  # tar dir -> folded child names (this layer + below)
        self.clock = 132_500_000_000_000_000 + index * 3_000_000_000_000 + rng.randrange(10**9)
        self.file_sds, self.dir_sds = SECURITY_DESCRIPTORS

    # helpers
    def times(self) -> tuple[int, int, int, int]:
        self.clock += self.rng.randrange(1, 50_000_000)
        write = self.clock
        creation = write - self.rng.randrange(0, 10**11)
        return (
            creation,
            write + self.rng.randrange(0, 10**9),
            write,
            write + self.rng.randrange(0, 10**8),
        )

    def meta(self, kind: Literal["dir", "file"], attr: int | None = None) -> _Entry:
        rng = self.rng
        if kind == "dir":
            fileattr = (
                attr if attr is not None else rng.choice((0x10, 0x10, 0x10, 0x12, 0x14, 0x2010))
            )
            sd: bytes | None = rng.choice(self.dir_sds)
        else:
            fileattr = (
                attr
                if attr is not None
                else rng.choice((0x20, 0x20, 0x20, 0x80, 0x21, 0x26, 0x2020, 0x1))
            )
            sd = rng.choice(self.file_sds)
        if rng.random() < 0.03:
            sd = None
        entry = _Entry(kind, fileattr=fileattr, times=self.times(), sd=sd)
        if kind == "file" and rng.random() < 0.12:
            names = sorted(rng.sample(_EA_NAMES, rng.randint(1, 3)), reverse=True)
            # Reverse order on purpose: PAX order is not EA order.
            entry.eas = {name: rng.randbytes(rng.randint(1, 120)) for name in names}
        return entry

    def children(self, parent: str) -> set[str]:
        known = self.names.get(parent)
        if known is None:
            known = set()
            prefix = parent.replace("/", "\\") + "\\"
            for path in self.below.files:
                if path.startswith(prefix) and "\\" not in path[len(prefix) :]:
                    known.add(path[len(prefix) :].upper())
            self.names[parent] = known
        return known

    def exists_below(self, tar_path: str) -> bool:
        return tar_path.replace("/", "\\") in self.below.files

    def unique(self, parent: str, name: str) -> str:
        taken = self.children(parent)
        candidate, n = name, 1
        while candidate.upper() in taken or candidate.startswith(".wh."):
            stem, dot, ext = name.rpartition(".")
            candidate = f"{stem}_{n}.{ext}" if dot and stem else f"{name}_{n}"
            n += 1
        taken.add(candidate.upper())
        return f"{parent}/{candidate}"

    def add(self, path: str, entry: _Entry) -> str:
        self.entries[path] = entry
        self.children(path.rpartition("/")[0]).add(path.rpartition("/")[2].upper())
        return path

    def add_dir(self, parent: str, name: str, attr: int | None = None) -> str:
        return self.add(self.unique(parent, name), self.meta("dir", attr))

    def ensure_dir(self, path: str, attr: int | None = None) -> None:
        """Emit ``path`` and its ancestors (re-emitting existing ones with their model)."""
        parts = path.split("/")
        for depth in range(1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            if sub in self.entries:
                continue
            old = self.below.files.get(sub.replace("/", "\\"))
            if old is not None:
                self.entries[sub] = self.reemit(old)
            else:
                self.add(sub, self.meta("dir", attr if depth == len(parts) else None))

    def reemit(self, old: ModelFile) -> _Entry:
        """A directory entry declaring exactly what the model below holds."""
        sd = old.security_descriptor
        return _Entry(
            "dir",
            fileattr=old.attributes,
            times=(old.creation_time, old.last_access_time, old.last_write_time, old.change_time),
            sd=None if sd == NULL_DACL_SECURITY_DESCRIPTOR else sd,
            eas=_parse_eas(old.ea),
        )

    def touch_parent(self, path: str) -> None:
        """Re-emit the parent directory of a change with new times (as Windows diffs do)."""
        parent = path.rpartition("/")[0]
        self.ensure_dir(parent)
        entry = self.entries[parent]
        if entry.kind == "dir":
            entry.times = (entry.times[0], *self.times()[1:])

    def file_payload(self, size: int) -> _Payload:
        return _Payload(size=size, start=self.rng.randrange(_Pool.SIZE))

    def add_file(self, parent: str, name: str, size: int, attr: int | None = None) -> str:
        entry = self.meta("file", attr)
        entry.payload = self.file_payload(size)
        return self.add(self.unique(parent, name), entry)

    def file_name(self) -> str:
        rng = self.rng
        return (
            rng.choice(_WORDS)
            + rng.choice(("", "32", "svc", "core", "host", "api", "ext"))
            + rng.choice(_EXTENSIONS)
        )

    def sizes(self, count: int, total: int) -> list[int]:
        """Heavy-tailed (log-normal) sizes scaled to about ``total`` bytes."""
        if count <= 0:
            return []
        rng, prof = self.rng, self.prof
        raw = [
            0 if rng.random() < 0.03 else rng.lognormvariate(math.log(prof.median_file_size), 2.0)
            for _ in range(count)
        ]
        raw = [min(r, prof.max_file_size) for r in raw]
        scale = total / max(1.0, sum(raw))
        return [min(int(r * scale), prof.max_file_size) for r in raw]

    def link(self, target: str, link_dir: str, name: str | None = None) -> None:
        """Hard-link ``target`` from ``link_dir``; for two new names the first in tar order
        carries the data."""
        link = self.unique(link_dir, name or target.rpartition("/")[2])
        if target in self.entries and _sort_key(link) < _sort_key(target):
            self.entries[link] = self.entries.pop(target)
            link, target = target, link
            followers = self.links_to.pop(link, [])
            for other in followers:  # earlier links to the moved file follow it
                self.entries[other].linkname = target
            self.links_to[target] = followers
        self.add(link, _Entry("link", linkname=target))
        self.links_to.setdefault(target, []).append(link)

    def symlink(
        self, parent: str, name: str, target: str, *, directory: bool, junction: bool
    ) -> str:
        entry = self.meta("dir" if directory else "file", (0x10 if directory else 0x20) | _REPARSE)
        entry.kind = "symlink"
        entry.linkname = target
        entry.mountpoint = junction
        return self.add(self.unique(parent, name), entry)

    def add_streams(self, path: str, count: int) -> None:
        entry = self.entries[path]
        for i in range(count):
            name = ("Zone.Identifier", "cimsnap.meta", "Ünïcode-stream", "empty")[i % 4]
            size = 0 if name == "empty" else self.rng.randint(1, 300)
            entry.streams += ((name, i % 2 == 0, self.file_payload(size)),)

    # bulk content
    def tree(self, entries: int, size: int, roots: Sequence[str]) -> tuple[list[str], list[str]]:
        """Directories and files under ``roots`` (existing directories); returns both lists."""
        rng, prof = self.rng, self.prof
        n_dirs = max(1, int(entries * prof.dir_fraction))
        n_links = int(entries * prof.link_fraction)
        n_files = max(1, entries - n_dirs - n_links)
        dirs = list(roots)
        winsxs = [d for d in roots if d.endswith("WinSxS")]
        for _ in range(n_dirs):
            if winsxs and rng.random() < 0.5:
                ver = f"10.0.20348.{rng.randrange(1, 3000)}"
                word, tail = rng.choice(_WORDS), f"{rng.getrandbits(64):016x}"
                name = f"amd64_microsoft-windows-{word}_31bf3856ad364e35_{ver}_none_{tail}"
                dirs.append(self.add_dir(winsxs[0], name))
            else:
                dirs.append(self.add_dir(rng.choice(dirs), rng.choice(_WORDS).capitalize()))
        files = [
            self.add_file(rng.choice(dirs), self.file_name(), s) for s in self.sizes(n_files, size)
        ]
        sys32 = [f for f in files if "/System32/" in f]
        sxs_dirs = [d for d in dirs if "WinSxS/" in d] or dirs
        for _ in range(n_links):
            pool = sys32 if sys32 and rng.random() < 0.7 else files
            target = rng.choice(pool)
            if self.entries[target].kind == "link":  # its data moved to an earlier name
                target = self.entries[target].linkname
            self.link(target, rng.choice(sxs_dirs) if rng.random() < 0.8 else rng.choice(dirs))
        return dirs, files

    def specials(self, parent: str, with_ads: bool, with_symlinks: bool) -> None:
        """Sparse and empty files, Unicode, long and deep paths, EAs, ADS, reparse points."""
        rng = self.rng
        special = self.add_dir(parent, f"cimsnap-special-{self.index}")
        sparse = self.meta("file", 0x220 | 0x200)
        sparse.payload = _Payload(
            size=rng.choice((256 * _KIB, 1 * _MIB)), start=rng.randrange(4096), sparse=True
        )
        self.add(self.unique(special, "sparse.vhd"), sparse)
        for i in range(2):
            empty = self.meta("file")
            empty.payload = _Payload(size=0)
            self.add(self.unique(special, f"empty{i}.log"), empty)
        for name in _UNICODE_NAMES:
            if "." in name:
                self.add_file(special, name, rng.randint(0, 2000))
            else:
                sub = self.add_dir(special, name)
                self.add_file(sub, f"{name}.txt", rng.randint(0, 2000))
        deep = special
        for level in range(40):
            deep = self.add_dir(deep, f"d{level:02d}")
        self.add_file(deep, "deep-leaf.txt", 100)
        long_dir = special
        for level in range(8):
            long_dir = self.add_dir(long_dir, f"long{level}_" + "x" * 200)
        self.add_file(long_dir, "L" * 240 + ".txt", 500)
        tagged = self.add_file(special, "with-eas.dll", 3000)
        self.entries[tagged].eas = {
            "USER.Z": b"last",
            "$KERNEL.PURGE.ESBCACHE": rng.randbytes(48),
            "A": b"",
            "ÜNÏCODE.EA": b"\xc3",
        }
        if with_ads:
            ads = self.add_file(special, "with-streams.txt", rng.choice((10, 5000)))
            self.add_streams(ads, 4)
            dir_ads = self.add_file(special, "zero-with-stream", 0)
            self.add_streams(dir_ads, 1)
        if with_symlinks:
            target = next(
                (p for p, e in self.entries.items() if e.kind == "file" and "System32" in p), ""
            )
            if target:
                self.symlink(
                    special,
                    "rel-link.dll",
                    "..\\" + target.split("/", 1)[1].replace("/", "\\"),
                    directory=False,
                    junction=False,
                )
            self.symlink(
                special,
                "abs-link.exe",
                "C:\\Windows\\System32\\notepad.exe",
                directory=False,
                junction=False,
            )
            self.symlink(special, "dir-link", "..\\Windows", directory=True, junction=False)
            self.symlink(special, "junction", "C:\\ProgramData", directory=True, junction=True)
            self.symlink(
                special, "unc-link", "\\\\server\\share\\file.txt", directory=False, junction=False
            )


def _parse_eas(buffer: bytes) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    at = 0
    while at < len(buffer):
        nxt, _, nlen, vlen = struct.unpack_from("<IBBH", buffer, at)
        name = buffer[at + 8 : at + 8 + nlen].decode("utf-8")
        out[name] = buffer[at + 9 + nlen : at + 9 + nlen + vlen]
        if not nxt:
            break
        at += nxt
    return out


# -- hives -----------------------------------------------------------------------------


_HIVE_SKELETON: Final = {
    "SYSTEM": (
        "ControlSet001\\Control\\Session Manager",
        "ControlSet001\\Services",
        "Select",
        "Setup",
    ),
    "SOFTWARE": (
        "Microsoft\\Windows NT\\CurrentVersion",
        "Microsoft\\Windows\\CurrentVersion",
        "Classes\\CLSID",
        "Policies",
    ),
    "SAM": ("SAM\\Domains\\Account\\Users", "SAM\\Domains\\Builtin\\Aliases"),
    "SECURITY": ("Policy\\Accounts", "Policy\\Secrets", "RXACT"),
    "DEFAULT": (
        "Control Panel\\Desktop",
        "Software\\Microsoft\\Windows\\CurrentVersion",
        "Environment",
    ),
}


def _value(rng: random.Random, name: str) -> Value:
    roll = rng.random()
    if roll < 0.4:
        text = "%SystemRoot%\\System32\\" + rng.choice(_WORDS) + ".dll"
        return Value(
            name, REG_EXPAND_SZ if roll < 0.1 else REG_SZ, (text + "\0").encode("utf-16-le")
        )
    if roll < 0.8:
        return Value(name, REG_DWORD, rng.getrandbits(32).to_bytes(4, "little"))
    return Value(name, REG_BINARY, rng.randbytes(rng.choice((8, 40, 300, 5000))))


def _base_hive(kind: str, rng: random.Random, keys: int) -> Hive:
    sd = DEFAULT_SECURITY_DESCRIPTOR
    root = Key("ROOT", security=sd, last_written=132_000_000_000_000_000)
    all_keys = [root]
    for path in _HIVE_SKELETON[kind]:
        node = root
        for part in path.split("\\"):
            node = node.subkey(part) or node.add_subkey(
                Key(part, security=sd, last_written=root.last_written)
            )
            if node not in all_keys:
                all_keys.append(node)
    if kind == "SOFTWARE":
        cv = root.find("Microsoft\\Windows NT\\CurrentVersion")
        assert cv is not None
        cv.values = [Value("CurrentBuild", REG_SZ, "20348\0".encode("utf-16-le"))]
    while len(all_keys) < keys:
        parent = rng.choice(all_keys)
        name = f"{rng.choice(_WORDS).capitalize()}{rng.randrange(10_000)}"
        if parent.subkey(name) is not None:
            continue
        child = parent.add_subkey(
            Key(name, security=sd, last_written=root.last_written + rng.randrange(10**12))
        )
        child.values = [
            _value(rng, f"{rng.choice(_WORDS)}{i}" if i else "") for i in range(rng.randint(0, 4))
        ]
        all_keys.append(child)
    return Hive(root=root, minor_version=5, file_name=kind, last_written=root.last_written)


def _walk_keys(root: Key) -> list[tuple[list[str], Key]]:
    out: list[tuple[list[str], Key]] = []
    stack: list[tuple[list[str], Key]] = [([], root)]
    while stack:
        path, key = stack.pop()
        out.append((path, key))
        for child in sorted(key.subkeys.values(), key=lambda k: k.name):
            stack.append(([*path, child.name], child))
    return out


def _delta_hive(base: Hive, rng: random.Random, name: str, time: int) -> Hive:
    """A differencing hive over ``base``: value edits and tombstones, new keys, a key
    tombstone and a SupersedeTree, with pass-through ancestors (merge + InheritClass)."""
    sd = DEFAULT_SECURITY_DESCRIPTOR
    root = Key("ROOT", inherit_class=True, security=sd, last_written=time)
    keys = _walk_keys(base.root)[1:]

    def along(path: list[str]) -> Key:
        node, lower = root, base.root
        for part in path:
            lower_child = lower.subkey(part) if lower is not None else None
            child = node.subkey(part)
            if child is None:
                child = node.add_subkey(
                    Key(
                        lower_child.name if lower_child else part,
                        inherit_class=True,
                        last_written=time,
                        security=sd,
                    )
                )
            node, lower = child, lower_child  # type: ignore[assignment]
        return node

    touched: list[list[str]] = []
    for path, key in rng.sample(keys, min(len(keys), 6)):
        node = along(path)
        touched.append(path)
        changes = [_value(rng, f"Added{rng.randrange(1000)}")]
        if key.values:
            victim = rng.choice(key.values)
            changes.append(Value(victim.name, REG_NONE, b"", tombstone=True))
        node.values = changes
    for path, _key in rng.sample(keys, min(len(keys), 2)):
        new = along(path).add_subkey(
            Key(f"New{rng.randrange(10**6)}", last_written=time, security=sd)
        )
        new.values = [_value(rng, ""), _value(rng, "Setting")]
        touched.append(path)
    leaves = [
        (p, k) for p, k in keys if not k.subkeys and not any(t[: len(p)] == p for t in touched)
    ]
    if leaves:
        path, _key = rng.choice(leaves)
        along(path[:-1]).add_subkey(Key(path[-1], semantics=LayerSemantics.TOMBSTONE))
        leaves = [(p, k) for p, k in leaves if p != path]
    if leaves:
        path, _key = rng.choice(leaves)
        tree = along(path[:-1]).add_subkey(
            Key(
                path[-1],
                semantics=LayerSemantics.SUPERSEDE_TREE,
                inherit_class=True,
                last_written=time,
                security=sd,
            )
        )
        tree.values = [_value(rng, "Replaced")]
        tree.add_subkey(
            Key("Child", semantics=LayerSemantics.SUPERSEDE_TREE, last_written=time, security=sd)
        )
    return Hive(root=root, minor_version=6, flags=0x2, file_name=name, last_written=time)


# -- writing ---------------------------------------------------------------------------


class _NoSlashTarInfo(tarfile.TarInfo):
    """TarInfo that keeps directory names without the trailing ``/`` tarfile appends."""

    def get_info(self) -> Mapping[str, str | int | bytes | Mapping[str, str]]:
        info = dict(super().get_info())
        name = info["name"]
        if self.type == tarfile.DIRTYPE and isinstance(name, str) and not self.name.endswith("/"):
            info["name"] = name.removesuffix("/")
        return info


class _HashingWriter(io.RawIOBase):
    def __init__(self, out: io.RawIOBase | BinaryIO | gzip.GzipFile) -> None:
        self._out = out
        self.sha256 = hashlib.sha256()
        self.count = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.count

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.sha256.update(b)
        self._out.write(b)
        n = len(b)
        self.count += n
        return n


def _open_gzip(raw: io.RawIOBase | BinaryIO) -> gzip.GzipFile:
    """A deterministic gzip writer (no name, mtime 0): ISA-L when available, else zlib."""
    try:
        from isal import igzip
    except ImportError:  # pragma: no cover - isal is a runtime dependency
        return gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
    writer: gzip.GzipFile = igzip.IGzipFile(  # type: ignore[no-untyped-call]
        filename="", mode="wb", fileobj=raw, mtime=0
    )
    return writer


def _pax_records(entry: _Entry) -> dict[str, str]:
    pax = {"MSWINDOWS.fileattr": str(entry.fileattr)}
    if entry.sd is not None:
        pax["MSWINDOWS.rawsd"] = base64.b64encode(entry.sd).decode("ascii")
    for name, value in entry.eas.items():
        pax[f"MSWINDOWS.xattr.{name}"] = base64.b64encode(value).decode("ascii")
    if entry.kind == "symlink" and entry.mountpoint:
        pax["MSWINDOWS.mountpoint"] = "1"
    creation, access, write, change = entry.times
    pax["LIBARCHIVE.creationtime"] = filetime_to_pax(creation)
    pax["mtime"] = filetime_to_pax(write)
    pax["atime"] = filetime_to_pax(access)
    pax["ctime"] = filetime_to_pax(change)
    return pax


class _LayerWriter:
    def __init__(self, tar: tarfile.TarFile, pool: _Pool, model: LayerModel, keep: int) -> None:
        self.tar = tar
        self.pool = pool
        self.model = model
        self.keep = keep
        self.entries = 0
        self.size_total = 0

    def header(
        self, name: str, kind: bytes, entry: _Entry | None, size: int = 0, linkname: str = ""
    ) -> tarfile.TarInfo:
        info = _NoSlashTarInfo(name)
        info.type = kind
        info.size = size
        info.linkname = linkname
        info.mode = 0o755 if kind in (tarfile.DIRTYPE, tarfile.SYMTYPE) else 0o644
        if entry is not None:
            info.pax_headers = _pax_records(entry)
            info.mtime = (entry.times[2] - EPOCH_AS_FILETIME) // 10_000_000
        return info

    def data(self, info: tarfile.TarInfo, payload: _Payload) -> tuple[str, bytes | None]:
        reader = _PayloadReader(payload, self.pool, payload.size <= self.keep)
        self.tar.addfile(info, reader)
        self.entries += 1
        return reader.sha256.hexdigest(), None if reader.kept is None else bytes(reader.kept)

    def emit(self, path: str, entry: _Entry) -> None:
        image = path.replace("/", "\\")
        files = self.model.files
        if entry.kind == "whiteout":
            self.tar.addfile(self.header(path, tarfile.REGTYPE, None))
            self.entries += 1
            parent, _, base = path.rpartition("/")
            gone = f"{parent}/{base[4:]}".replace("/", "\\")
            for p in [p for p in files if p == gone or p.startswith(gone + "\\")]:
                del files[p]
            return
        if entry.kind == "link":
            self.tar.addfile(self.header(path, tarfile.LNKTYPE, None, linkname=entry.linkname))
            self.entries += 1
            files[image] = files[entry.linkname.replace("/", "\\")]
            return
        reparse = b""
        data: bytes | None
        if entry.kind == "dir":
            self.tar.addfile(self.header(path, tarfile.DIRTYPE, entry))
            self.entries += 1
            digest, data, size = hashlib.sha256().hexdigest(), b"", 0
        elif entry.kind == "symlink":
            self.tar.addfile(self.header(path, tarfile.SYMTYPE, entry, linkname=entry.linkname))
            self.entries += 1
            reparse = reparse_buffer(entry.linkname, mountpoint=entry.mountpoint)
            digest, data, size = hashlib.sha256().hexdigest(), b"", 0
        else:
            assert entry.payload is not None
            size = entry.payload.size
            digest, data = self.data(self.header(path, tarfile.REGTYPE, entry, size), entry.payload)
            self.size_total += size
        written: dict[str, bytes] = {}
        for name, with_suffix, payload in entry.streams:
            tar_name = f"{path}:{name}:$DATA" if with_suffix else f"{path}:{name}"
            _, kept = self.data(self.header(tar_name, tarfile.REGTYPE, None, payload.size), payload)
            written[name] = kept if kept is not None else b""
        streams: Mapping[str, bytes] = written or _NONE
        attributes = entry.fileattr & STORED_ATTRIBUTES & ~_REPARSE
        if reparse:
            attributes |= _REPARSE
        creation, access, write, change = entry.times
        files[image] = ModelFile(
            attributes=attributes,
            creation_time=creation,
            last_access_time=access,
            last_write_time=write,
            change_time=change,
            security_descriptor=entry.sd if entry.sd is not None else NULL_DACL_SECURITY_DESCRIPTOR,
            ea=ea_buffer(entry.eas),
            reparse=reparse,
            size=size,
            sha256=digest,
            data=data,
            streams=streams,
        )


# -- chains ----------------------------------------------------------------------------


def _plan_base(planner: _Planner, hives: dict[str, Hive]) -> None:
    prof = planner.prof
    skeleton = (
        "Files/Windows/System32/config",
        "Files/Windows/System32/drivers/etc",
        "Files/Windows/WinSxS",
        "Files/Program Files/Common Files",
        "Files/ProgramData/Microsoft",
        "Files/Users/Public",
    )
    for path in skeleton:
        planner.ensure_dir(path)
    planner.entries["Files/ProgramData"].fileattr = 0x12
    planner.entries["Files"].fileattr = 0x10
    roots = [
        p for p, e in planner.entries.items() if e.kind == "dir" and p not in ("Files", CONFIG_DIR)
    ]
    for kind in BASE_HIVES:
        data = write_hive(hives[kind])
        entry = planner.meta("file", 0x20)
        entry.payload = _Payload(size=len(data), literal=data)
        planner.add(planner.unique(CONFIG_DIR, kind), entry)
    specials = 40 + len(_UNICODE_NAMES) * 2 + 20
    planner.tree(max(10, prof.entries - len(planner.entries) - specials), prof.size, roots)
    planner.specials(
        "Files", with_ads=not prof.realistic_base, with_symlinks=not prof.realistic_base
    )


def _plan_delta(planner: _Planner, hives: dict[str, Hive]) -> None:
    rng, prof = planner.rng, planner.prof
    below = planner.below
    entries = max(20, int(prof.entries * prof.delta_fraction))
    size = int(prof.size * prof.delta_fraction)
    protected = ("Files\\Windows\\System32\\config", "Files\\cimsnap-special")
    candidates = sorted(
        p
        for p, f in below.files.items()
        if not f.is_directory
        and not f.reparse
        and p.startswith("Files\\")
        and not p.startswith(protected)
    )
    dirs = sorted(
        p
        for p, f in below.files.items()
        if f.is_directory and not f.reparse and p.count("\\") >= 2 and not p.startswith(protected)
    )
    # Whiteouts: files, and one directory subtree; nothing below them is touched again.
    n_whiteouts = max(2, entries // 30)
    gone: list[str] = []
    for path in rng.sample(candidates, min(len(candidates), n_whiteouts)):
        gone.append(path)
    leafy = [d for d in dirs if not any(p.startswith(d + "\\") for p in gone)]
    if leafy:
        gone.append(rng.choice(leafy))

    def alive(p: str) -> bool:
        return not any(p == g or p.startswith(g + "\\") for g in gone)

    for path in gone:
        tar = path.replace("\\", "/")
        parent, _, base = tar.rpartition("/")
        planner.touch_parent(tar)
        planner.entries[f"{parent}/.wh.{base}"] = _Entry("whiteout")
    candidates = [p for p in candidates if alive(p)]
    dirs = [d for d in dirs if alive(d)] or ["Files\\Windows"]
    # Changed files: new data and metadata, or metadata only (same data).
    for path in rng.sample(candidates, min(len(candidates), max(2, entries // 8))):
        tar = path.replace("\\", "/")
        old = below.files[path]
        entry = planner.meta("file")
        if old.data is not None and rng.random() < 0.3:
            entry.payload = _Payload(size=old.size, literal=old.data)
        else:
            entry.payload = planner.file_payload(
                planner.sizes(1, max(1, size // max(1, entries)))[0]
            )
        planner.entries[tar] = entry
        planner.touch_parent(tar)
    # New content under existing directories.
    roots = [d.replace("\\", "/") for d in rng.sample(dirs, min(len(dirs), 12))]
    for r in roots:
        planner.ensure_dir(r)
    _, new_files = planner.tree(entries, size, roots)
    # Hard links to files of the layers below.
    for path in rng.sample(candidates, min(len(candidates), max(1, entries // 20))):
        if path.replace("\\", "/") in planner.entries:
            continue
        link_dir = rng.choice(roots)
        planner.link(path.replace("\\", "/"), link_dir, "link-" + path.rpartition("\\")[2])
        planner.touch_parent(link_dir + "/x")
    # Streams and reparse points.
    plain_new = [
        f
        for f in new_files
        if planner.entries.get(f) is not None and planner.entries[f].kind == "file"
    ]
    for path in rng.sample(plain_new, min(len(plain_new), 3)):
        planner.add_streams(path, rng.randint(1, 3))
    planner.specials("Files", with_ads=True, with_symlinks=True)
    # Registry deltas over the merged hives below.
    planner.ensure_dir("Hives")
    for kind in BASE_HIVES:
        delta = _delta_hive(hives[kind], rng, DELTA_HIVES[kind], planner.clock)
        hives[kind] = merge(hives[kind], delta)
        data = write_hive(delta)
        entry = planner.meta("file", 0x20)
        entry.payload = _Payload(size=len(data), literal=data)
        path = f"Hives/{DELTA_HIVES[kind]}"
        planner.entries[path] = entry


def generate_chain(
    out_dir: str | Path,
    *,
    layers: int = 3,
    seed: int = 0,
    profile: Literal["small", "bench"] = "small",
    size: int | None = None,
    entries: int | None = None,
    compress: bool = False,
    prof: Profile | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[GeneratedLayer]:
    """Write ``layers`` layer tars into ``out_dir`` (``layer0.tar[.gz]`` ... , base first)
    and return them with their models. ``size``/``entries`` override the profile's (base
    layer file bytes and entry count; delta layers get ``delta_fraction`` of both).
    ``progress(layer_index, entries_written)`` is called after each layer.
    Deterministic: the same arguments give byte-identical files.
    """
    if layers < 1:
        raise ValueError("a chain has at least one layer")
    prof = prof or make_profile(profile, size=size, entries=entries)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pool = _Pool(seed)
    hive_rng = random.Random(f"hives-{seed}")
    hives = {kind: _base_hive(kind, hive_rng, prof.hive_keys) for kind in BASE_HIVES}
    model = LayerModel()
    result: list[GeneratedLayer] = []
    for index in range(layers):
        rng = random.Random(f"layer-{seed}-{index}")
        planner = _Planner(rng, prof, index, model)
        if index == 0:
            _plan_base(planner, hives)
        else:
            _plan_delta(planner, hives)
        model = model.copy()
        path = out / f"layer{index}.tar{'.gz' if compress else ''}"
        with path.open("wb") as raw:
            blob = _HashingWriter(raw)
            stream: io.RawIOBase | gzip.GzipFile = _open_gzip(blob) if compress else blob
            plain = _HashingWriter(stream)
            with tarfile.TarFile(
                fileobj=plain,
                mode="w",
                format=tarfile.PAX_FORMAT,
                tarinfo=_NoSlashTarInfo,
                copybufsize=_COPY_CHUNK,
            ) as tar:
                writer = _LayerWriter(tar, pool, model, prof.keep_data_up_to)
                for tar_path in sorted(planner.entries, key=_sort_key):
                    writer.emit(tar_path, planner.entries[tar_path])
            if compress:
                stream.close()
        result.append(
            GeneratedLayer(
                index=index,
                path=path,
                compressed=compress,
                diff_id="sha256:" + plain.sha256.hexdigest(),
                tar_size=plain.count,
                digest="sha256:" + blob.sha256.hexdigest(),
                blob_size=blob.count,
                entries=writer.entries,
                size_total=writer.size_total,
                model=model,
            )
        )
        if progress is not None:
            progress(index, writer.entries)
    return result


# -- OCI image archive -----------------------------------------------------------------

MEDIA_TYPE_LAYER_GZIP: Final = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_INDEX: Final = "application/vnd.oci.image.index.v1+json"


def _sha256_file(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(_COPY_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return "sha256:" + digest.hexdigest(), size


def write_oci_image(
    out_tar: str | Path,
    layers: Sequence[GeneratedLayer],
    ref: str = "docker.io/library/cimsnap-test:latest",
    *,
    os_name: str = "windows",
    architecture: str = "amd64",
    os_version: str = "10.0.20348.1",
) -> str:
    """Write an OCI image archive (``oci-layout``, ``index.json``, ``blobs/sha256/...``) of
    ``layers`` (base first) for ``ctr image import``; return the manifest digest.

    Layers that were not generated compressed are gzipped into a temporary file next to
    ``out_tar``. ``diff_ids`` are the layers' uncompressed digests; the index names the
    image with both ``io.containerd.image.name`` (``ref``) and
    ``org.opencontainers.image.ref.name`` (the tag). Deterministic for the same layers.
    """
    out = Path(out_tar)
    blobs: list[tuple[str, int, Path]] = []
    temporary: list[Path] = []
    try:
        for layer in layers:
            if layer.compressed:
                blobs.append((layer.digest, layer.blob_size, layer.path))
                continue
            gz = out.with_name(f".{out.name}.layer{layer.index}.tar.gz")
            temporary.append(gz)
            with layer.path.open("rb") as src, gz.open("wb") as raw:
                stream = _open_gzip(raw)
                while chunk := src.read(_COPY_CHUNK):
                    stream.write(chunk)
                stream.close()
            digest, size = _sha256_file(gz)
            blobs.append((digest, size, gz))
        config = {
            "architecture": architecture,
            "os": os_name,
            "os.version": os_version,
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            "history": [
                {"created_by": f"cimsnap layergen layer {layer.index}"} for layer in layers
            ],
        }
        config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": {
                "mediaType": MEDIA_TYPE_CONFIG,
                "digest": config_digest,
                "size": len(config_bytes),
            },
            "layers": [
                {"mediaType": MEDIA_TYPE_LAYER_GZIP, "digest": d, "size": s} for d, s, _ in blobs
            ],
        }
        manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        manifest_digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
        tag = ref.rpartition(":")[2] if ":" in ref.rpartition("/")[2] else "latest"
        index = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_INDEX,
            "manifests": [
                {
                    "mediaType": MEDIA_TYPE_MANIFEST,
                    "digest": manifest_digest,
                    "size": len(manifest_bytes),
                    "platform": {
                        "architecture": architecture,
                        "os": os_name,
                        "os.version": os_version,
                    },
                    "annotations": {
                        "io.containerd.image.name": ref,
                        "org.opencontainers.image.ref.name": tag,
                    },
                }
            ],
        }
        index_bytes = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
        layout_bytes = b'{"imageLayoutVersion":"1.0.0"}'
        with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:

            def add_bytes(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))

            def add_dir(name: str) -> None:
                info = tarfile.TarInfo(name)
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)

            add_bytes("oci-layout", layout_bytes)
            add_bytes("index.json", index_bytes)
            add_dir("blobs")
            add_dir("blobs/sha256")
            add_bytes(f"blobs/sha256/{config_digest[7:]}", config_bytes)
            add_bytes(f"blobs/sha256/{manifest_digest[7:]}", manifest_bytes)
            written: set[str] = set()
            for digest, size, path in blobs:
                if digest in written:
                    continue
                written.add(digest)
                info = tarfile.TarInfo(f"blobs/sha256/{digest[7:]}")
                info.size = size
                info.mode = 0o644
                with path.open("rb") as f:
                    tar.addfile(info, f)
        return manifest_digest
    finally:
        for path in temporary:
            path.unlink(missing_ok=True)


# -- CLI -------------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Parse ``1GiB``, ``300MB``, ``512K`` or a plain byte count (binary multiples)."""
    m = _SIZE.match(text)
    if m is None:
        raise ValueError(f"not a size: {text!r}")
    factor = 1024 ** " KMGT".index((m.group(2) or " ").upper())
    return int(float(m.group(1)) * factor)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cimsnap.devtools.layergen OUT_DIR ...``; prints one line per layer."""
    parser = argparse.ArgumentParser(
        prog="python -m cimsnap.devtools.layergen",
        description="Generate a deterministic chain of Windows layer tars (base first).",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--profile", choices=("small", "bench"), default="bench")
    parser.add_argument("--size", type=parse_size, help="file bytes of the base layer (1GiB)")
    parser.add_argument("--entries", type=int, help="entries of the base layer (30000)")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gzip", action="store_true", help="write layerN.tar.gz")
    parser.add_argument("--oci-image", type=Path, help="also write an OCI image archive")
    parser.add_argument("--ref", default="docker.io/library/cimsnap-test:latest")
    args = parser.parse_args(argv)
    try:
        layers = generate_chain(
            args.out_dir,
            layers=args.layers,
            seed=args.seed,
            profile=args.profile,
            size=args.size,
            entries=args.entries,
            compress=args.gzip,
        )
    except ValueError as e:
        parser.error(str(e))
    for layer in layers:
        print(
            f"{layer.path}\tentries={layer.entries}\ttar={layer.tar_size}\t"
            f"blob={layer.blob_size}\t{layer.diff_id}"
        )
    if args.oci_image is not None:
        digest = write_oci_image(args.oci_image, layers, args.ref)
        print(f"{args.oci_image}\t{digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared helpers of the layer writer and importer tests: real hives, trees, snapshots."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import tempfile
from pathlib import Path

from cimsnap.devtools.synthetic_hive import software_base, software_delta
from cimsnap.hive import Hive, Key, Value, merge_files, write_hive
from cimsnap.hive.tree import REG_SZ, LayerSemantics
from cimsnap.wclayer.fileinfo import FileBasicInfo
from cimsnap.wclayer.routing import HIVES
from cimsnap.wclayer.tarstream import TarReader
from cimsnap.wclayer.winmeta import basic_info

CONFIG = "Files\\Windows\\System32\\config"
DIR = FileBasicInfo(
    creation_time=1, last_access_time=2, last_write_time=3, change_time=4, file_attributes=0x10
)
FILE = FileBasicInfo(
    creation_time=5, last_access_time=6, last_write_time=7, change_time=8, file_attributes=0x20
)
BASE_DIRS = ("Files", "Files\\Windows", "Files\\Windows\\System32", CONFIG)


def sz(name: str, text: str) -> Value:
    return Value(name, REG_SZ, (text + "\0").encode("utf-16-le"))


def small_hive(name: str, build: str = "20348") -> bytes:
    """A real normal hive holding ``Microsoft\\Windows NT\\CurrentVersion`` CurrentBuild."""
    root = Key("ROOT")
    nt = root.add_subkey(Key("Microsoft")).add_subkey(Key("Windows NT"))
    nt.add_subkey(Key("CurrentVersion")).values = [sz("CurrentBuild", build)]
    root.add_subkey(Key(name)).values = [sz("Which", name)]
    return write_hive(Hive(root=root, file_name=name))


def base_hives() -> dict[str, bytes]:
    """The five hives of a base layer; SOFTWARE is a SOFTWARE-shaped synthetic hive."""
    hives = {h.config: small_hive(h.config) for h in HIVES}
    hives["SOFTWARE"] = write_hive(software_base(scale=0.002, seed=7))
    return hives


def delta_hive(marker: str) -> bytes:
    """A real differencing hive: adds key ``marker``, tombstones the ``SYSTEM`` test key."""
    root = Key("ROOT", inherit_class=True)
    root.add_subkey(Key(marker)).values = [sz("Added", marker)]
    root.add_subkey(Key("SYSTEM", semantics=LayerSemantics.TOMBSTONE))
    return write_hive(Hive(root=root, minor_version=6, flags=0x2, file_name="delta"))


def software_delta_bytes(seed: int = 3) -> bytes:
    delta, _ = software_delta(software_base(scale=0.002, seed=7), scale=0.005, seed=seed)
    return write_hive(delta)


def snapshot(root: Path) -> dict[str, tuple[str, int, bytes]]:
    """Every path below ``root`` with its kind, mode and content (file bytes, link target).

    Directory times are left out (creating and removing a file changes them); everything
    a failed import could leave behind or damage is in.
    """
    result: dict[str, tuple[str, int, bytes]] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                result[rel] = ("link", st.st_mode, os.readlink(path).encode())
            elif stat.S_ISDIR(st.st_mode):
                result[rel] = ("dir", st.st_mode, b"")
            else:
                result[rel] = ("file", st.st_mode, path.read_bytes())
    return result


# --- layer tars (written with Python's tarfile writer; extraction is never used) ------------

EPOCH_FILETIME = 116_444_736_000_000_000


def filetime(seconds: int) -> int:
    return seconds * 10_000_000 + EPOCH_FILETIME


class LayerTar:
    """A Windows layer tar under construction, PAX format, in memory."""

    def __init__(self, *, global_pax: dict[str, str] | None = None) -> None:
        self.buffer = io.BytesIO()
        self.tar = tarfile.open(  # noqa: SIM115 - closed by bytes()
            fileobj=self.buffer, mode="w", format=tarfile.PAX_FORMAT, pax_headers=global_pax
        )
        self.mtime = 1_600_000_000

    def _info(self, name: str, kind: bytes, pax: dict[str, str] | None) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mtime = self.mtime
        info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
        info.pax_headers = dict(pax or {})
        return info

    def dir(self, name: str, attributes: int | None = 0x10, **pax: str) -> LayerTar:
        if attributes is not None:
            pax.setdefault("MSWINDOWS.fileattr", str(attributes))
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, pax))
        return self

    def file(
        self,
        name: str,
        data: bytes = b"",
        attributes: int | None = 0x20,
        kind: bytes = b"0",
        **pax: str,
    ) -> LayerTar:
        if attributes is not None:
            pax.setdefault("MSWINDOWS.fileattr", str(attributes))
        info = self._info(name, kind, pax)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))
        return self

    def link(self, name: str, target: str) -> LayerTar:
        info = self._info(name, tarfile.LNKTYPE, None)
        info.linkname = target
        self.tar.addfile(info)
        return self

    def symlink(self, name: str, target: str, attributes: int = 0x400, **pax: str) -> LayerTar:
        pax.setdefault("MSWINDOWS.fileattr", str(attributes))
        info = self._info(name, tarfile.SYMTYPE, pax)
        info.linkname = target
        self.tar.addfile(info)
        return self

    def special(self, name: str, kind: bytes) -> LayerTar:
        self.tar.addfile(self._info(name, kind, None))
        return self

    def whiteout(self, name: str) -> LayerTar:
        return self.file(name, attributes=None)

    def base_layout(self, hives: dict[str, bytes]) -> LayerTar:
        self.dir("Files").dir("Files/Windows").dir("Files/Windows/System32")
        self.dir("Files/Windows/System32/config")
        for config, data in hives.items():
            self.file(f"Files/Windows/System32/config/{config}", data)
        return self

    def bytes(self) -> bytes:
        self.tar.close()
        return self.buffer.getvalue()


def merged_hive(base: bytes, delta: bytes) -> bytes:
    """What the hive engine's file merge (the one the importer uses) makes of ``base`` and
    ``delta``: the bytes a layer's merged ``*_BASE`` must equal."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "base").write_bytes(base)
        (d / "delta").write_bytes(delta)
        merge_files(d / "base", d / "delta", d / "out")
        return (d / "out").read_bytes()


def pax_times(tar: bytes) -> list[int]:
    """Every FILETIME the layer tar's PAX records carry (creation, access, write, change of
    each entry that has them), in order, read back through our own TarReader."""
    times = []
    for entry in TarReader(io.BytesIO(tar)):
        if "mtime" in entry.header.pax:
            info = basic_info(entry.header)
            times += [info.creation_time, info.last_access_time, info.last_write_time]
            times.append(info.change_time)
    return times

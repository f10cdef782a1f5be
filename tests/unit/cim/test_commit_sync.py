"""The commit's durability order with concurrent fsyncs, and the shared upcase mapping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cimsnap.cim.content import State
from cimsnap.cim.upcase import NameOrder
from cimsnap.cim.writer import CimWriter
from cimsnap.upcase import upcase_table_bytes, windows_translation
from tests.unit.cim.test_writer_commit import sample_image, write_file


def test_every_file_and_the_directory_are_fsynced_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src: object, dst: object) -> None:
        events.append(("rename", str(dst)))
        real_rename(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    sample_image(tmp_path)
    monkeypatch.undo()
    names = sorted(os.listdir(tmp_path))
    files = {str(tmp_path / n) for n in names if n != "s.cim"}
    rename_at = events.index(("rename", str(tmp_path / "s.cim")))
    before = events[:rename_at]
    synced = {path for kind, path in before if kind == "fsync" and path != str(tmp_path)}
    # Every region and objectid file, the .cim's temporary file and the directory (their
    # names) are durable before the rename, in any order among themselves...
    assert files <= synced
    assert any(".s.cim." in p for p in synced)
    assert ("fsync", str(tmp_path)) in before
    # ...and the directory is fsynced once more after the rename (the rename itself).
    assert events[rename_at + 1 :] == [("fsync", str(tmp_path))]


def test_a_failed_fsync_fails_the_commit_and_leaves_no_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync
    calls = 0

    def flaky(fd: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(5, "simulated I/O error")
        real_fsync(fd)

    fds_before = len(os.listdir("/proc/self/fd"))
    writer = CimWriter(tmp_path, "a.cim")
    write_file(writer, "f", b"data" * 3000)
    monkeypatch.setattr(os, "fsync", flaky)
    with pytest.raises(OSError):
        writer.commit()
    monkeypatch.undo()
    assert writer.state is State.FAILED
    assert not (tmp_path / "a.cim").exists()
    writer.close()
    assert os.listdir(tmp_path) == []
    assert len(os.listdir("/proc/self/fd")) == fds_before  # every descriptor closed


def test_windows_table_reuses_the_shared_mapping_and_others_do_not() -> None:
    table = upcase_table_bytes()
    assert NameOrder.from_table(table).translation is windows_translation()
    assert NameOrder.from_table(memoryview(table)).translation is windows_translation()
    changed = bytearray(table)
    changed[2 * ord("a") : 2 * ord("a") + 2] = ord("a").to_bytes(2, "little")  # 'a' stays 'a'
    other = NameOrder.from_table(bytes(changed))
    assert other.translation is not windows_translation()
    assert ord("a") not in other.translation and ord("b") in other.translation

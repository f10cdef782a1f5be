"""The commit's durability order with concurrent fsyncs, and the shared upcase mapping."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from cimsnap.cim.content import State
from cimsnap.cim.image_files import FSYNC_THREADS, fsync_all
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


def test_a_failed_fsync_is_raised_after_every_other_fsync_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The caller closes the descriptors once fsync_all raises: no fsync may still be
    # running on one of them then.
    fds = [os.open(tmp_path / f"f{i}", os.O_WRONLY | os.O_CREAT) for i in range(4)]
    finished: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if fd == fds[0]:
            raise OSError(5, "simulated I/O error")
        time.sleep(0.05)
        real_fsync(fd)
        finished.append(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    try:
        with pytest.raises(OSError, match="simulated"):
            fsync_all(fds)
        assert sorted(finished) == sorted(fds[1:])
    finally:
        for fd in fds:
            os.close(fd)


def image_in(directory: Path) -> None:
    directory.mkdir()
    sample_image(directory)


def fsync_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("cimsnap-fsync")}


def test_commits_share_the_fsync_threads(tmp_path: Path) -> None:
    for i in range(3):
        image_in(tmp_path / str(i))
    shared = fsync_threads()
    assert 0 < len(shared) <= FSYNC_THREADS
    for i in range(3, 6):
        image_in(tmp_path / str(i))
    assert fsync_threads() == shared  # none started for the later commits


def test_a_forked_child_starts_fsync_threads_of_its_own(tmp_path: Path) -> None:
    image_in(tmp_path / "parent")  # the parent's pool exists
    fds = [os.open(tmp_path / f"f{i}", os.O_WRONLY | os.O_CREAT) for i in range(3)]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            fsync_all(fds)  # would wait forever for the parent's threads, which are not here
        finally:
            os._exit(0)
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                assert os.waitstatus_to_exitcode(status) == 0
                return
            time.sleep(0.01)
        pytest.fail("the forked child's fsync_all never returned")
    finally:
        for fd in fds:
            os.close(fd)
        with contextlib.suppress(ProcessLookupError, ChildProcessError):  # reaped already
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_windows_table_reuses_the_shared_mapping_and_others_do_not() -> None:
    table = upcase_table_bytes()
    assert NameOrder.from_table(table).translation is windows_translation()
    assert NameOrder.from_table(memoryview(table)).translation is windows_translation()
    changed = bytearray(table)
    changed[2 * ord("a") : 2 * ord("a") + 2] = ord("a").to_bytes(2, "little")  # 'a' stays 'a'
    other = NameOrder.from_table(bytes(changed))
    assert other.translation is not windows_translation()
    assert ord("a") not in other.translation and ord("b") in other.translation

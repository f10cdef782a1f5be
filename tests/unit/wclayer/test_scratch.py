"""build_scratch_layer: error translation and waiting for another writer of the directory."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

import pytest

from cimsnap.cim import read_image_header
from cimsnap.errdefs import FailedPrecondition, Unavailable
from cimsnap.wclayer.scratch import build_scratch_layer


@pytest.fixture
def layers(tmp_path: Path) -> Path:
    d = tmp_path / "cim-layers"
    d.mkdir()
    return d


def src(tmp_path: Path, **files: str) -> Path:
    s = tmp_path / "scratch"
    s.mkdir()
    for name, text in files.items():
        (s / name).write_text(text)
    return s


def test_builds_and_forks(tmp_path: Path, layers: Path) -> None:
    assert build_scratch_layer(src(tmp_path, a="1"), layers / "1.cim", parent=None) >= 1
    empty = tmp_path / "empty"
    empty.mkdir()
    build_scratch_layer(empty, layers / "2.cim", parent=layers / "1.cim")
    assert read_image_header(layers / "2.cim").parents == (read_image_header(layers / "1.cim").own,)


def test_refusals(tmp_path: Path, layers: Path) -> None:
    s = src(tmp_path)
    with pytest.raises(FailedPrecondition):
        build_scratch_layer(s, layers / "1.cim", parent=layers / "missing.cim")
    (tmp_path / "link").symlink_to(s)
    with pytest.raises(FailedPrecondition):
        build_scratch_layer(tmp_path / "link", layers / "1.cim", parent=None)
    (layers / "bad.cim").write_bytes(b"garbage")
    with pytest.raises(FailedPrecondition):
        build_scratch_layer(s, layers / "1.cim", parent=layers / "bad.cim")
    os.mkfifo(s / "fifo")
    with pytest.raises(FailedPrecondition):
        build_scratch_layer(s, layers / "1.cim", parent=None)
    assert sorted(os.listdir(layers)) == ["bad.cim"]


def hold_directory(directory: Path) -> int:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_waits_for_another_writer(tmp_path: Path, layers: Path) -> None:
    fd = hold_directory(layers)
    threading.Timer(0.3, os.close, args=(fd,)).start()
    build_scratch_layer(src(tmp_path, a="1"), layers / "1.cim", parent=None, busy_timeout=10)
    assert (layers / "1.cim").is_file()


def test_gives_up_after_the_timeout(tmp_path: Path, layers: Path) -> None:
    fd = hold_directory(layers)
    try:
        with pytest.raises(Unavailable):
            build_scratch_layer(src(tmp_path), layers / "1.cim", parent=None, busy_timeout=0.2)
    finally:
        os.close(fd)
    assert os.listdir(layers) == []

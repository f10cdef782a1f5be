"""disk_usage: allocated blocks, inodes counted once, no symlink following."""

from __future__ import annotations

import os
from pathlib import Path

from cimsnap.snapshots.usage import disk_usage


def test_counts_blocks_and_unique_inodes(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "d").mkdir()
    (root / "d" / "f").write_bytes(b"x" * 10_000)
    os.link(root / "d" / "f", root / "hard")
    (root / "sym").symlink_to("/usr")  # not followed
    usage = disk_usage(root)
    expected = {
        (os.lstat(p).st_dev, os.lstat(p).st_ino): os.lstat(p).st_blocks * 512
        for p in [root, root / "d", root / "d" / "f", root / "sym"]
    }
    assert usage.inodes == len(expected) == 4
    assert usage.size == sum(expected.values())


def test_exclude_and_missing(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "scratch").mkdir(parents=True)
    (root / "scratch" / "big").write_bytes(b"x" * 100_000)
    assert disk_usage(root, exclude=frozenset({"scratch"})).inodes == 1
    assert disk_usage(tmp_path / "missing").inodes == 0


def test_sparse_file_counts_allocated_bytes(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    with open(root / "sparse", "wb") as f:
        f.truncate(50 * 1024 * 1024)
    assert disk_usage(root).size < 1024 * 1024


def test_a_link_at_the_root_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "big"
    target.mkdir()
    (target / "f").write_bytes(b"x" * 100_000)
    link = tmp_path / "r"
    link.symlink_to(target)
    assert disk_usage(link).inodes == 1

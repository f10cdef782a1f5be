"""The committed modules in cimsnap/api are exactly what proto/ generates."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cimsnap.devtools import genproto

pytest.importorskip("grpc_tools")  # a dev dependency; always installed by `make test`


def test_committed_code_matches_a_fresh_generation() -> None:
    assert genproto.check() == []


def test_check_reports_an_edited_and_a_stray_file(tmp_path: Path) -> None:
    shutil.copytree(genproto.PROTO_ROOT, tmp_path / "proto")
    genproto.generate(tmp_path, tmp_path / "proto")
    mount = tmp_path / "cimsnap/api/containerd/types/mount_pb2.py"
    mount.write_text(mount.read_text() + "# edited\n")
    (tmp_path / "cimsnap/api/containerd/types/extra_pb2.py").write_text("")
    problems = genproto.check(tmp_path)
    assert "differs: cimsnap/api/containerd/types/mount_pb2.py" in problems
    assert "not generated from proto/: cimsnap/api/containerd/types/extra_pb2.py" in problems


def test_write_removes_stale_generated_files(tmp_path: Path) -> None:
    shutil.copytree(genproto.PROTO_ROOT, tmp_path / "proto")
    stale = tmp_path / "cimsnap/api/containerd/types/gone_pb2.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("")
    genproto.write(tmp_path)
    assert not stale.exists()
    assert genproto.check(tmp_path) == []

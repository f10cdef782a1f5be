"""``cimsnap serve`` started by hand under umask 022: a private root, a 0660 socket."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.grpc_harness import ServeProcess
from tests.unit.daemon.test_serve_process import serve_args


def test_modes_under_umask_022(tmp_path: Path, sock_dir: Path) -> None:
    sock = sock_dir / "cimsnap.sock"
    root = tmp_path / "root"
    old = os.umask(0o022)  # inherited by the server process
    try:
        proc = ServeProcess(serve_args(tmp_path, sock), sock_dir)
    finally:
        os.umask(old)
    try:
        assert proc.next_notification() == "READY=1"
        modes = {
            path: stat.S_IMODE(path.lstat().st_mode)
            for path in [
                sock,
                root,
                root / "snapshots",
                root / "snapshots" / "cim-layers",
                root / "metadata.db",
                root / "lock",
            ]
        }
    finally:
        code, err = proc.terminate()
    assert code == 0, err
    assert modes == {
        sock: 0o660,
        root: 0o700,
        root / "snapshots": 0o700,
        root / "snapshots" / "cim-layers": 0o700,
        root / "metadata.db": 0o600,
        root / "lock": 0o600,
    }

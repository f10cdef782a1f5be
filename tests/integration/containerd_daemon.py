"""Real containerd daemons on private roots and sockets, for the integration tests.

* Debian's containerd 1.6.20 (``containerd``/``ctr`` on PATH, from scripts/system-deps.sh).
* Debian trixie's containerd 1.7.24, unpacked (not installed) by scripts/containerd-1.7.sh
  into a cache folder: found through ``$CIMSNAP_CONTAINERD17_BIN``, else the script's cache
  (``$CIMSNAP_CONTAINERD17_CACHE``, else ``${XDG_CACHE_HOME:-~/.cache}/cimsnap/...``).

A missing daemon fails the test when the ``CI`` environment variable is set, and skips it
otherwise. Daemons are stopped by PID and waited for (§6.4).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.grpc_harness import ServerThread, server_config, short_socket_dir
from tests.integration.containerd_harness import Containerd, containerd16_bin, require

__all__ = [
    "Containerd",
    "cimsnap_beside_containerd",
    "containerd16_bin",
    "containerd17_bin",
    "deploy_config",
    "tree_depths",
]

REPO_ROOT = Path(__file__).resolve().parents[2]


def containerd17_bin() -> Path:
    """The directory holding containerd 1.7.24 and its ctr (see the module docstring)."""
    env = os.environ.get("CIMSNAP_CONTAINERD17_BIN")
    cache = os.environ.get("CIMSNAP_CONTAINERD17_CACHE")
    if not cache:
        xdg = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        cache = str(xdg / "cimsnap" / "containerd-1.7.24")
    directory = Path(env) if env else Path(cache) / "root" / "usr" / "bin"
    require(
        (directory / "containerd").is_file() and (directory / "ctr").is_file(),
        f"containerd 1.7.24 not found in {directory} (run scripts/containerd-1.7.sh)",
    )
    require(os.geteuid() == 0, "containerd needs root")
    return directory


def deploy_config(name: str, base: Path, proxy_socket: str, cimsnap_root: Path) -> str:
    """deploy/containerd/<name> as shipped (a snippet to merge into containerd's config),
    with only cimsnap's socket and root changed, inside a private root/state/socket config.
    """
    text = (REPO_ROOT / "deploy" / "containerd" / name).read_text()
    for old, new in {
        '"/run/cimsnap/cimsnap.sock"': f'"{proxy_socket}"',
        '"/var/lib/cimsnap"': f'"{cimsnap_root}"',
    }.items():
        assert old in text, f"{name} no longer has {old}"
        text = text.replace(old, new)
    head, sep, rest = text.partition("version = 2\n")
    assert sep, f"{name}: not a version 2 config"
    private = f'root = "{base}/root"\nstate = "{base}/state"\n'
    tables = (
        f'\n[grpc]\n  address = "{base}/containerd.sock"\n'
        f'[ttrpc]\n  address = "{base}/containerd.sock.ttrpc"\n'
        f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{base}/opt"\n'
    )
    return head + sep + private + rest + tables


def tree_depths(tree: str) -> dict[str, int]:
    """``ctr snapshots tree`` output as name -> indentation (children indent deeper)."""
    return {line.split()[-1]: line.index(line.split()[-1]) for line in tree.splitlines() if line}


@contextlib.contextmanager
def cimsnap_beside_containerd(
    bin_dir: Path, config: Callable[[Path, ServerThread], str]
) -> Iterator[tuple[Containerd, ServerThread, Path]]:
    """A cimsnap server (reading blobs from the containerd below) and a containerd from
    ``bin_dir`` whose config ``config(base, server)`` returns, in one private directory;
    both stopped and the directory removed on exit (also when containerd fails to start).
    """
    base = short_socket_dir()
    socket = base / "containerd.sock"
    server = ServerThread(
        server_config(base / "cimsnap", base, containerd_address=str(socket))
    ).start()
    try:
        containerd = Containerd(bin_dir, base, config(base, server), cimsnap=server.address)
    except BaseException:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
        raise
    try:
        yield containerd, server, base
    finally:
        containerd.stop()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)

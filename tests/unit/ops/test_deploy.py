"""deploy/: every containerd config key checked against containerd's rules; the systemd unit.

The rules (docs/containerd.md):

* ``[proxy_plugins]`` is a map keyed by plugin name. containerd 1.6 accepts only the types
  ``snapshot`` and ``content`` (a ``diff`` proxy crashes it) and only the keys ``type`` and
  ``address``; 1.7.4+ adds ``diff``; 1.7.16+ adds ``platform`` and ``exports``; 1.7.23+
  ``capabilities``; 2.x accepts all of them (and ``sandbox``).
* cimsnap's address and ``exports.root`` are cimsnap's defaults; every proxy shares it.
* The transfer service's ``unpack_config`` entries have ``platform``, ``snapshotter`` and
  ``differ`` (2.1+: ``config_type``, ``layer_types``; 2.3+: ``optional``). Any entry replaces
  the built-in default, so the Linux default (overlayfs + walking) must be restated.
* Every snapshotter or differ a config names is built in or a proxy of that type.
* The diff service's ``default`` order lists only loaded differs; a proxy differ that is
  listed must come before ``walking``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from cimsnap.daemon.config import Config
from tests.grpc_harness import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
CONTAINERD = DEPLOY / "containerd"

SNAPSHOT_BUILTINS = {"overlayfs", "native", "btrfs", "zfs", "devmapper", "erofs"}
DIFF_BUILTINS = {"walking", "erofs"}
TRANSFER = "io.containerd.transfer.v1.local"
DIFF_SERVICE = "io.containerd.service.v1.diff-service"
UNPACK_KEYS_3 = {"platform", "snapshotter", "differ", "config_type", "layer_types"}

# Per config file: the config version, the proxy types and keys that version accepts, and
# the top-level sections it may set.
RULES: dict[str, dict[str, Any]] = {
    "config-1.6.toml": {
        "version": 2,
        "types": {"snapshot", "content"},
        "keys": {"type", "address"},
        "plugins": set(),
    },
    "config-1.7.toml": {
        "version": 2,
        "types": {"snapshot", "content", "diff"},
        # platform and exports take effect from 1.7.16 (earlier 1.7 releases ignore them).
        "keys": {"type", "address", "platform", "exports"},
        "plugins": {DIFF_SERVICE, TRANSFER},
    },
    "config-2.x.toml": {
        "version": 3,
        "types": {"snapshot", "content", "diff", "sandbox"},
        "keys": {"type", "address", "platform", "exports", "capabilities"},
        "plugins": {TRANSFER, DIFF_SERVICE},
    },
}


def configs() -> list[Path]:
    return sorted(CONTAINERD.glob("*.toml"))


def test_every_config_has_rules() -> None:
    names = {p.name for p in configs()}
    assert {"config-1.6.toml", "config-2.x.toml"} <= names
    assert names <= set(RULES), f"add rules for {names - set(RULES)}"


@pytest.mark.parametrize("path", configs(), ids=lambda p: p.name)
def test_config_keys_follow_the_rules(path: Path) -> None:
    rules = RULES[path.name]
    doc = tomllib.loads(path.read_text())
    assert set(doc) <= {"version", "proxy_plugins", "plugins"}, set(doc)
    assert doc["version"] == rules["version"]
    default = Config()
    proxies = doc["proxy_plugins"]
    assert proxies, "no proxy plugin"
    by_type: dict[str, set[str]] = {}
    for name, proxy in proxies.items():
        assert set(proxy) <= rules["keys"], (name, set(proxy) - rules["keys"])
        assert proxy["type"] in rules["types"], (name, proxy["type"])
        assert proxy["address"] == default.address, name
        by_type.setdefault(proxy["type"], set()).add(name)
        if "exports" in proxy:
            assert proxy["type"] == "snapshot"
            assert set(proxy["exports"]) <= {"root", "enable_remote_snapshot_annotations"}
            assert proxy["exports"]["root"] == default.root
        if "capabilities" in proxy:
            assert set(proxy["capabilities"]) <= {"rebase"}
    assert by_type.get("snapshot") == {"cimsnap"}
    if "diff" in by_type:
        assert by_type["diff"] == {"cimsnap-diff"}
        if "platform" in rules["keys"]:
            assert proxies["cimsnap-diff"]["platform"] == "windows/amd64"
    snapshotters = SNAPSHOT_BUILTINS | by_type.get("snapshot", set())
    differs = DIFF_BUILTINS | by_type.get("diff", set())
    plugins = doc.get("plugins", {})
    assert set(plugins) <= rules["plugins"], set(plugins)
    if TRANSFER in plugins:
        _check_unpack_config(plugins[TRANSFER], snapshotters, differs)
    if DIFF_SERVICE in plugins:
        order = plugins[DIFF_SERVICE]["default"]
        assert set(plugins[DIFF_SERVICE]) == {"default"}
        assert set(order) <= differs, order
        assert order[0] == "cimsnap-diff" and "walking" in order


def _check_unpack_config(transfer: dict[str, Any], snapshotters: set[str], differs: set[str]):
    assert set(transfer) == {"unpack_config"}
    entries = transfer["unpack_config"]
    for entry in entries:
        assert set(entry) <= UNPACK_KEYS_3, entry
        assert entry["snapshotter"] in snapshotters, entry
        assert entry["differ"] in differs, entry
        assert re.fullmatch(r"[a-z0-9]+/[a-z0-9]+", entry["platform"]), entry
    windows = [e for e in entries if e["platform"] == "windows/amd64"]
    assert windows == [
        {"platform": "windows/amd64", "snapshotter": "cimsnap", "differ": "cimsnap-diff"}
    ]
    # The restated Linux default, or Linux images stop unpacking.
    assert {"platform": "linux/amd64", "snapshotter": "overlayfs", "differ": "walking"} in entries


def test_1_6_config_has_no_diff_proxy_and_says_why() -> None:
    text = (CONTAINERD / "config-1.6.toml").read_text()
    assert all(p["type"] != "diff" for p in tomllib.loads(text)["proxy_plugins"].values())
    assert "cimsnap unpack" in text and "crashes" in text


def unit() -> dict[str, list[str]]:
    """deploy/cimsnap.service as {"Section.Key": [values...]} (repeated keys accumulate)."""
    result: dict[str, list[str]] = {}
    section = ""
    for line in (DEPLOY / "cimsnap.service").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        result.setdefault(f"{section}.{key}", []).append(value)
    return result


def test_unit_settings() -> None:
    u = unit()
    default = Config()
    assert u["Service.Type"] == ["notify"]
    assert u["Service.ExecStart"][0].split()[1] == "serve"
    assert "containerd.service" in u["Unit.Before"][0].split()
    assert u["Service.Restart"] == ["always"]
    assert u["Service.RestartPreventExitStatus"] == ["2"]  # cimsnap serve: config error
    # RuntimeDirectory/StateDirectory are cimsnap's default socket directory and root.
    assert f"/run/{u['Service.RuntimeDirectory'][0]}" == os.path.dirname(default.address)
    assert f"/var/lib/{u['Service.StateDirectory'][0]}" == default.root
    # ProtectSystem=strict: the directories cimsnap writes must be listed.
    assert u["Service.ProtectSystem"] == ["strict"]
    writable = u["Service.ReadWritePaths"][0].split()
    assert default.root in writable and os.path.dirname(default.address) in writable
    # Hardening that would break it: no network namespace (containerd's socket), no
    # read-only state, and the capabilities to read layer files of any owner.
    assert "Service.PrivateNetwork" not in u
    caps = set(u["Service.CapabilityBoundingSet"][0].split())
    assert {"CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER"} <= caps
    assert "AF_UNIX" in u["Service.RestrictAddressFamilies"][0].split()


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing (scripts/system-deps.sh installs systemd)")
        pytest.skip("systemd-analyze is not installed")
    # Only ExecStart changes: verify checks that the binary exists.
    cimsnap = Path(sys.executable).with_name("cimsnap")
    assert cimsnap.exists()
    text = (DEPLOY / "cimsnap.service").read_text()
    text = text.replace("ExecStart=/usr/local/bin/cimsnap ", f"ExecStart={cimsnap} ")
    (tmp_path / "cimsnap.service").write_text(text)
    out = subprocess.run(
        [tool, "verify", "cimsnap.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "cimsnap.service" not in out.stderr, out.stderr  # no warning about our unit

"""The CLI dispatcher: version, help, an unknown command, and a platform without POSIX."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cimsnap import __version__
from cimsnap.cli import main


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"cimsnap {__version__}"


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: cimsnap" in capsys.readouterr().err


def test_unknown_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


def test_console_entry_runs_as_module() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cimsnap", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert __version__ in out.stdout


# Runs the CLI in a fresh interpreter where importing fcntl fails, as it does on Windows.
_WITHOUT_FCNTL = """
import sys
sys.modules["fcntl"] = None
from cimsnap.cli import main
sys.exit(main(sys.argv[1:]))
"""


def without_fcntl(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_FCNTL, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )


def test_without_posix_file_calls_the_cli_still_starts_and_says_what_cannot_run(
    tmp_path: Path,
) -> None:
    assert without_fcntl(tmp_path, "--version").stdout.strip() == f"cimsnap {__version__}"
    listed = without_fcntl(tmp_path, "--help")
    assert listed.returncode == 0 and "(needs Linux: no fcntl module here)" in listed.stdout
    assert without_fcntl(tmp_path, "hive", "--help").returncode == 0
    # A command whose module needs fcntl at import, and one that imports it when it runs.
    root = tmp_path / "root"
    for args in (
        ["layer", "import", "layer.tar", str(tmp_path / "layer")],
        ["serve", "--address", str(tmp_path / "s.sock"), "--root", str(root)],
    ):
        done = without_fcntl(tmp_path, *args)
        assert done.returncode == 1, done.stderr
        assert f"cimsnap: '{args[0]}' needs Linux" in done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "s.sock").exists() and not root.exists()  # nothing created

"""Configuration loading: precedence, strictness, and the documented default file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cimsnap.cli import main
from cimsnap.daemon import config as config_module
from cimsnap.daemon.config import Config, default_toml, load_config
from cimsnap.errdefs import InvalidArgument, NotFound


@pytest.fixture
def no_default_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point the default config path at a file that does not exist."""
    missing = tmp_path / "etc" / "config.toml"
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", missing)
    return missing


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_missing_default_file_gives_defaults(no_default_file: Path) -> None:
    assert load_config() == Config()


def test_default_file_is_read_when_present(no_default_file: Path) -> None:
    no_default_file.parent.mkdir()
    no_default_file.write_text('root = "/srv/cimsnap"\n')
    assert load_config().root == "/srv/cimsnap"


def test_missing_explicit_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as e:
        load_config(tmp_path / "absent.toml")
    assert "absent.toml" in str(e.value)


def test_precedence_defaults_then_file_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, 'root = "/from/file"\nlog_level = "debug"\nmax_workers = 3\n')
    cfg = load_config(path, {"root": "/from/flag", "log_level": None, "address": None})
    assert cfg.root == "/from/flag"  # flag beats file
    assert cfg.log_level == "debug"  # file beats default; a None flag is "not given"
    assert cfg.max_workers == 3
    assert cfg.address == Config().address  # default


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'adress = "/x.sock"\n')
    with pytest.raises(InvalidArgument) as e:
        load_config(path)
    assert "'adress'" in str(e.value) and str(path) in str(e.value)


def test_unknown_table_is_an_unknown_key(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        load_config(write(tmp_path, "[metrics]\naddress = ':9110'\n"))


@pytest.mark.parametrize(
    "text",
    [
        "insecure_listen = 1\n",  # int is not bool
        'max_workers = "8"\n',
        "shutdown_grace_seconds = true\n",  # bool is not a number
        'log_level = "verbose"\n',
        'log_format = "xml"\n',
        "shutdown_grace_seconds = -1\n",
        "socket_mode = 0o1777\n",
        "max_workers = 0\n",
        "root = \n",  # not TOML
    ],
)
def test_bad_values_are_invalid_argument(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InvalidArgument) as e:
        load_config(path)
    assert str(path) in str(e.value)


def test_integer_grace_is_accepted_as_float(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "shutdown_grace_seconds = 3\n"))
    assert cfg.shutdown_grace_seconds == 3.0 and isinstance(cfg.shutdown_grace_seconds, float)


def test_bad_flag_value_blames_the_command_line(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as e:
        load_config(write(tmp_path, ""), {"log_level": "loud"})
    assert "command line" in str(e.value)


def test_default_toml_round_trips(tmp_path: Path) -> None:
    text = default_toml()
    assert load_config(write(tmp_path, text)) == Config()
    # Every key is documented by a comment line right above it.
    lines = text.splitlines()
    for name in Config.__dataclass_fields__:
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{name} = "))
        assert lines[index - 1].startswith("# ")


def test_config_default_command_prints_loadable_toml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "default"]) == 0
    out = capsys.readouterr().out
    assert load_config(write(tmp_path, out)) == Config()


def test_serve_rejects_bad_config_with_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, "bogus = 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "cimsnap", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "'bogus'" in proc.stderr

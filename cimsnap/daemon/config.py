"""The daemon's configuration: a TOML file, typed as one frozen dataclass.

Precedence is defaults < file < command-line flags. The default file
(``/etc/cimsnap/config.toml``) may be absent; a file named explicitly (``--config``) must
exist. Every key is checked: an unknown key, a wrong type or a bad value raises
``InvalidArgument`` naming the key and the file, so a typo never silently falls back to a
default. ``default_toml()`` renders the documented defaults, and loading its output gives
back ``Config()`` exactly (tests pin this).
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cimsnap.errdefs import InvalidArgument, NotFound

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "Config",
    "default_toml",
    "load_config",
]

DEFAULT_CONFIG_PATH: Final = Path("/etc/cimsnap/config.toml")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("text", "json")


@dataclass(frozen=True, slots=True)
class Config:
    """Everything ``cimsnap serve`` needs; field docs are rendered by ``default_toml()``."""

    address: str = field(
        default="/run/cimsnap/cimsnap.sock",
        metadata={
            "doc": "Where the gRPC server listens: a unix socket path (or unix:///path), or\n"
            "tcp://127.0.0.1:PORT (for Windows hosts; loopback only unless insecure_listen)."
        },
    )
    root: str = field(
        default="/var/lib/cimsnap",
        metadata={"doc": "State directory: the metadata database and the layers."},
    )
    log_level: str = field(default="info", metadata={"doc": "One of: debug, info, warning, error."})
    log_format: str = field(
        default="text", metadata={"doc": "text (human readable) or json (one object per line)."}
    )
    metrics_address: str = field(
        default="",
        metadata={
            "doc": 'Prometheus metrics on http://HOST:PORT/metrics, e.g. "127.0.0.1:9110";\n'
            "empty disables the endpoint."
        },
    )
    shutdown_grace_seconds: float = field(
        default=10.0,
        metadata={
            "doc": "On SIGTERM/SIGINT, how long running RPCs may take to finish before they\n"
            "are cancelled."
        },
    )
    insecure_listen: bool = field(
        default=False,
        metadata={"doc": "Allow a tcp:// address that is not loopback (no authentication!)."},
    )
    socket_mode: int = field(default=0o660, metadata={"doc": "Permission bits of the unix socket."})
    reflection: bool = field(
        default=True,
        metadata={"doc": "Serve gRPC reflection, so grpcurl works without .proto files."},
    )
    max_workers: int = field(
        default=8,
        metadata={"doc": "Threads that run snapshotter and differ calls (blocking file I/O)."},
    )
    containerd_address: str = field(
        default="/run/containerd/containerd.sock",
        metadata={"doc": "containerd's own gRPC socket; the Diff service reads blobs there."},
    )
    containerd_content_dir: str = field(
        default="",
        metadata={
            "doc": "Fast path for Diff/Apply: containerd's content directory, e.g.\n"
            '"/var/lib/containerd/io.containerd.content.v1.content". Blobs are then read\n'
            "from disk (digest verified) instead of streamed over gRPC; empty disables it."
        },
    )
    max_concurrent_applies: int = field(
        default=2,
        metadata={"doc": "How many Diff Apply/Compare calls run at once; more wait in line."},
    )

    def __post_init__(self) -> None:
        if self.log_level not in LOG_LEVELS:
            raise InvalidArgument(f"log_level {self.log_level!r}: must be one of {LOG_LEVELS}")
        if self.log_format not in LOG_FORMATS:
            raise InvalidArgument(f"log_format {self.log_format!r}: must be one of {LOG_FORMATS}")
        if not self.address:
            raise InvalidArgument("address: must not be empty")
        if not self.root:
            raise InvalidArgument("root: must not be empty")
        if self.shutdown_grace_seconds < 0:
            raise InvalidArgument("shutdown_grace_seconds: must not be negative")
        if not 0 <= self.socket_mode <= 0o777:
            raise InvalidArgument(f"socket_mode {self.socket_mode:#o}: not a permission mode")
        if self.max_workers < 1:
            raise InvalidArgument("max_workers: must be at least 1")
        if self.max_concurrent_applies < 1:
            raise InvalidArgument("max_concurrent_applies: must be at least 1")
        if not self.containerd_address:
            raise InvalidArgument("containerd_address: must not be empty")

    @property
    def root_path(self) -> Path:
        """``root`` as a ``Path``."""
        return Path(self.root)


_FIELDS: Final = {f.name: f for f in dataclasses.fields(Config)}
# The Python type each key must have in TOML, from Config's annotations (plain classes
# only; bool is checked before int: bool is an int).
_TYPES: Final[Mapping[str, type]] = typing.get_type_hints(Config)


def _checked(values: Mapping[str, object], source: str) -> dict[str, object]:
    """Return ``values`` with types checked against ``Config``; raise ``InvalidArgument``."""
    out: dict[str, object] = {}
    for key, value in values.items():
        expected = _TYPES.get(key)
        if expected is None:
            known = ", ".join(sorted(_TYPES))
            raise InvalidArgument(f"{source}: unknown key {key!r} (known keys: {known})")
        ok = (
            isinstance(value, bool)
            if expected is bool
            else isinstance(value, expected) and not isinstance(value, bool)
        )
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise InvalidArgument(
                f"{source}: key {key!r} must be a {expected.__name__}, got {value!r}"
            )
        out[key] = value
    return out


def load_config(path: Path | None = None, overrides: Mapping[str, object] | None = None) -> Config:
    """Build the effective configuration: defaults, then the file, then ``overrides``.

    ``path=None`` reads ``DEFAULT_CONFIG_PATH`` if it exists. An explicit ``path`` that does
    not exist raises ``NotFound``. Bad TOML, unknown keys, wrong types and invalid values raise
    ``InvalidArgument`` naming the file (or "command line") and the key. ``overrides`` holds
    flag values by key; ``None`` values mean "flag not given" and are skipped.
    """
    values: dict[str, object] = {}
    file = path if path is not None else DEFAULT_CONFIG_PATH
    source = f"config file {str(file)!r}"
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        if path is not None:
            raise NotFound(f"config file {str(file)!r}: not found") from None
        data = b""
    except OSError as e:
        raise InvalidArgument(f"config file {str(file)!r}: {e.strerror}") from e
    if data:
        try:
            parsed = tomllib.loads(data.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise InvalidArgument(f"{source}: {e}") from e
        values.update(_checked(parsed, source))
        _build(values, source)
    if overrides:
        given = {k: v for k, v in overrides.items() if v is not None}
        values.update(_checked(given, "command line"))
    return _build(values, "command line")


def _build(values: Mapping[str, object], source: str) -> Config:
    try:
        return Config(**values)  # type: ignore[arg-type]  # types checked by _checked
    except InvalidArgument as e:
        raise InvalidArgument(f"{source}: {e}") from e


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    return repr(value)


def default_toml() -> str:
    """Return a commented TOML file that sets every key to its default.

    ``load_config(path_of(default_toml()))`` equals ``Config()``.
    """
    defaults = Config()
    lines = [
        "# cimsnap configuration (TOML). Values shown are the defaults.",
        f"# Default location: {DEFAULT_CONFIG_PATH}; flags of `cimsnap serve` override it.",
        "",
    ]
    for name, f in _FIELDS.items():
        lines += [f"# {line}" for line in str(f.metadata["doc"]).splitlines()]
        value = getattr(defaults, name)
        text = f"0o{value:o}" if name == "socket_mode" else _toml_value(value)
        lines += [f"{name} = {text}", ""]
    return "\n".join(lines)

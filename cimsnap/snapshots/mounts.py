"""The ``CimFS`` mount that containerd's cimfs snapshotter returns (containerd-integration §3.2).

Exactly one mount: ``type="CimFS"``, ``source=<root>/snapshots/<id>``, and options in this
order: ``rw`` (``ro`` for a view); ``cimpath=<root>/snapshots/cim-layers/<id>.cim``; and,
when there are parents, ``parentLayerPaths=<json>`` then ``parentCimPaths=<json>``, both
running from the immediate parent to the base and encoded exactly like Go's
``json.Marshal`` of a ``[]string``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "CIMFS_MOUNT_TYPE",
    "LAYER_CIM_PATH_FLAG",
    "PARENT_LAYER_CIM_PATHS_FLAG",
    "PARENT_LAYER_PATHS_FLAG",
    "Mount",
    "cimfs_mount",
    "go_json_strings",
]

# Constants of containerd core/mount/mount_windows.go.
CIMFS_MOUNT_TYPE: Final = "CimFS"
LAYER_CIM_PATH_FLAG: Final = "cimpath="
PARENT_LAYER_PATHS_FLAG: Final = "parentLayerPaths="
PARENT_LAYER_CIM_PATHS_FLAG: Final = "parentCimPaths="

#: Characters Go's encoder escapes beyond what Python's json escapes (HTML-safe escaping
#: of ``<``, ``>``, ``&`` and the JavaScript line separators).
_GO_EXTRA_ESCAPES: Final = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


@dataclass(frozen=True, slots=True)
class Mount:
    """One mount as containerd's ``types.Mount``: ``type``, ``source``, ``target``, options."""

    type: str
    source: str
    target: str
    options: tuple[str, ...]


def go_json_strings(values: Sequence[str]) -> str:
    """Encode ``values`` like Go's ``json.Marshal([]string)``: compact, HTML-escaped.

    Go writes non-ASCII runes verbatim, escapes ``"``, ``\\``, control characters
    (``\\n``, ``\\r``, ``\\t``, ``\\b``, ``\\f`` short forms, others ``\\u00XX``), and
    also ``<``, ``>``, ``&``, U+2028 and U+2029. Python's encoder with
    ``ensure_ascii=False`` matches it except for the last five, which are translated here.
    """
    text = json.dumps(list(values), ensure_ascii=False, separators=(",", ":"))
    return text.translate(_GO_EXTRA_ESCAPES)


def cimfs_mount(
    snapshots_dir: Path,
    cim_dir: Path,
    snapshot_id: int,
    parent_ids: Sequence[int],
    *,
    readonly: bool,
) -> Mount:
    """Build the mount of snapshot ``snapshot_id`` whose parents are ``parent_ids``.

    ``snapshots_dir`` is ``<root>/snapshots`` and ``cim_dir`` is its ``cim-layers``;
    ``parent_ids`` runs from the immediate parent to the base.
    """
    options = ["ro" if readonly else "rw", f"{LAYER_CIM_PATH_FLAG}{cim_dir / f'{snapshot_id}.cim'}"]
    if parent_ids:
        layer_paths = [str(snapshots_dir / str(pid)) for pid in parent_ids]
        cim_paths = [str(cim_dir / f"{pid}.cim") for pid in parent_ids]
        options.append(PARENT_LAYER_PATHS_FLAG + go_json_strings(layer_paths))
        options.append(PARENT_LAYER_CIM_PATHS_FLAG + go_json_strings(cim_paths))
    return Mount(
        type=CIMFS_MOUNT_TYPE,
        source=str(snapshots_dir / str(snapshot_id)),
        target="",
        options=tuple(options),
    )

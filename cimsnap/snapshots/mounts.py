"""The ``CimFS`` mount that containerd's cimfs snapshotter returns.

Exactly one mount: ``type="CimFS"``, ``source=<root>/snapshots/<id>``, and options in this
order: ``rw`` (``ro`` for a view); ``cimpath=<root>/snapshots/cim-layers/<id>.cim``; and,
when there are parents, ``parentLayerPaths=<json>`` then ``parentCimPaths=<json>``, both
running from the immediate parent to the base and encoded exactly like Go's
``json.Marshal`` of a ``[]string``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cimsnap.errdefs import InvalidArgument

__all__ = [
    "CIMFS_MOUNT_TYPE",
    "LAYER_CIM_PATH_FLAG",
    "PARENT_LAYER_CIM_PATHS_FLAG",
    "PARENT_LAYER_PATHS_FLAG",
    "CimfsMountSpec",
    "Mount",
    "cimfs_mount",
    "go_json_strings",
    "parse_cimfs_mount",
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
    # os.path.join on the two strings, not Path arithmetic: the same text (both are
    # normalised Paths), at a fraction of the cost for every parent of a deep chain.
    layers, cims = str(snapshots_dir), str(cim_dir)
    join = os.path.join
    options = [
        "ro" if readonly else "rw",
        f"{LAYER_CIM_PATH_FLAG}{join(cims, f'{snapshot_id}.cim')}",
    ]
    if parent_ids:
        layer_paths = [join(layers, str(pid)) for pid in parent_ids]
        cim_paths = [join(cims, f"{pid}.cim") for pid in parent_ids]
        options.append(PARENT_LAYER_PATHS_FLAG + go_json_strings(layer_paths))
        options.append(PARENT_LAYER_CIM_PATHS_FLAG + go_json_strings(cim_paths))
    return Mount(
        type=CIMFS_MOUNT_TYPE,
        source=join(layers, str(snapshot_id)),
        target="",
        options=tuple(options),
    )


@dataclass(frozen=True, slots=True)
class CimfsMountSpec:
    """What a ``CimFS`` mount names: the inverse of :func:`cimfs_mount`.

    ``parent_layer_paths`` and ``parent_cim_paths`` run from the immediate parent to the
    base and have the same length.
    """

    source: str
    readonly: bool
    cim_path: str
    parent_layer_paths: tuple[str, ...]
    parent_cim_paths: tuple[str, ...]


def _json_paths(flag: str, text: str) -> tuple[str, ...]:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise InvalidArgument(f"mount option {flag}: not a JSON array: {e}") from e
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidArgument(f"mount option {flag}: must be a JSON array of non-empty strings")
    return tuple(value)


def parse_cimfs_mount(mount: Mount) -> CimfsMountSpec:
    """Parse a ``CimFS`` mount the way containerd's cimfs differ does (§3.5).

    Options other than ``rw``/``ro``, ``cimpath=``, ``parentLayerPaths=`` and
    ``parentCimPaths=`` are ignored, as containerd ignores them. Raises InvalidArgument for
    another mount type, an empty source, a missing or repeated ``cimpath=``, malformed
    JSON, or parent arrays of different lengths.
    """
    if mount.type != CIMFS_MOUNT_TYPE:
        raise InvalidArgument(f"mount type {mount.type!r}: not {CIMFS_MOUNT_TYPE}")
    if not mount.source:
        raise InvalidArgument("CimFS mount: empty source")
    cim_paths = [
        o[len(LAYER_CIM_PATH_FLAG) :] for o in mount.options if o.startswith(LAYER_CIM_PATH_FLAG)
    ]
    if len(cim_paths) != 1 or not cim_paths[0]:
        raise InvalidArgument(
            f"CimFS mount {mount.source}: needs exactly one {LAYER_CIM_PATH_FLAG}"
        )
    layers: tuple[str, ...] = ()
    cims: tuple[str, ...] = ()
    for option in mount.options:
        if option.startswith(PARENT_LAYER_PATHS_FLAG):
            layers = _json_paths(PARENT_LAYER_PATHS_FLAG, option[len(PARENT_LAYER_PATHS_FLAG) :])
        elif option.startswith(PARENT_LAYER_CIM_PATHS_FLAG):
            cims = _json_paths(
                PARENT_LAYER_CIM_PATHS_FLAG, option[len(PARENT_LAYER_CIM_PATHS_FLAG) :]
            )
    if len(layers) != len(cims):
        raise InvalidArgument(
            f"CimFS mount {mount.source}: {len(layers)} parent layer paths but "
            f"{len(cims)} parent CIM paths"
        )
    return CimfsMountSpec(
        source=mount.source,
        readonly="ro" in mount.options,
        cim_path=cim_paths[0],
        parent_layer_paths=layers,
        parent_cim_paths=cims,
    )

r"""The close-time processing of a layer: the utility-VM step, base hives, delta merges (§3.5).

Each function does its host-side work through :class:`HostFiles` (so a failed import
removes it again) and returns the CIM operations to queue; nothing here touches the CIM.

**Synthesised entries** (``Hives``, ``Hives\<X>_BASE`` and ``layout``) get all four times
0 and the NULL-DACL security descriptor: hcsshim HEAD's behaviour (the seed used the
current time), which makes a CIM a pure function of its tar. The ``layout`` file and the
merged hives are NORMAL (0x80) in hcsshim; a CIM cannot store that bit, so they carry no
attribute (see :mod:`cimsnap.wclayer.metadata`).

**Deviations from the seed, by choice:**

* A non-base layer's ``*_DELTA`` is merged with the *nearest* parent that has a host
  ``Hives\<X>_BASE`` (the seed looks only at the immediate parent, which fails when that
  parent carried no delta for X: §3.5 "Fragility", §5 #30). None at all:
  :class:`LayerParentError`. Host names are matched case-insensitively.
* The utility-VM step follows hcsshim HEAD for the Windows-only part: the BCD store and
  the UVM VHDs (seed ``processUtilityVMLayer``, for builds above 20348) need bcdedit and
  HCS, which Linux lacks; they are never faked. Such a layer imports like any other, and
  a warning says that Hyper-V isolation with this UVM needs that Windows-side step. The
  ``uvmbuildversion`` file the seed writes *is* written (the decimal build, no newline;
  mode 0644 rather than the seed's 0777, like every host file the import creates).
* A ``UtilityVM`` without its SOFTWARE hive: the seed fails; HEAD never reads it. Choice:
  HEAD (skip the step, no ``uvmbuildversion``; logged), so minimal base layers such as
  buildpacks/imgutil's import. A SOFTWARE hive that is present but unreadable, or whose
  ``CurrentBuild`` is not a REG_SZ build number, is a :class:`LayerFormatError`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cimsnap.cim.format import FileAttribute
from cimsnap.errdefs import AlreadyExists, NotFound
from cimsnap.hive import (
    HiveFormatError,
    HiveMergeError,
    HiveModelError,
    LayerSemantics,
    merge_files,
    open_hive,
    os_build_number,
)
from cimsnap.wclayer.errors import LayerExistsError, LayerFormatError, LayerParentError
from cimsnap.wclayer.fileinfo import FileBasicInfo
from cimsnap.wclayer.host_files import HostFiles
from cimsnap.wclayer.pending import AddOp, LinkOp, PendingOp
from cimsnap.wclayer.routing import CONFIG_DIR, HIVES, HIVES_DIR, fold_path

__all__ = [
    "LAYOUT_CONTENT",
    "LAYOUT_FILE",
    "LTSC2022_BUILD",
    "UVM_BUILD_FILE",
    "HostStdFile",
    "base_layer_ops",
    "delta_layer_ops",
    "utility_vm_build",
]

_log = logging.getLogger(__name__)

LAYOUT_FILE: Final = "layout"
LAYOUT_CONTENT: Final = b"vhd-with-hives\n"
UVM_BUILD_FILE: Final = "uvmbuildversion"
#: Above this build the seed edits the UVM's BCD and builds VHDs (Windows only).
LTSC2022_BUILD: Final = 20348
_SYNTHESISED_DIRECTORY: Final = FileBasicInfo(file_attributes=int(FileAttribute.DIRECTORY))
_SYNTHESISED_FILE: Final = FileBasicInfo()


@dataclass(frozen=True, slots=True)
class HostStdFile:
    """A std file this layer wrote to the host: its CIM path as added and its host path."""

    cim_path: str
    host_path: Path


def utility_vm_build(host: HostFiles, uvm_software: HostStdFile | None) -> int | None:
    """Read CurrentBuild of the UVM SOFTWARE hive and write ``uvmbuildversion``.

    Returns the build, or None when the hive is absent (skipped, module docstring).
    Raises LayerFormatError for a bad hive or value, LayerExistsError if the layer
    directory has a ``uvmbuildversion`` already.
    """
    if uvm_software is None:
        _log.warning(
            "layer %s has a UtilityVM but no UtilityVM SOFTWARE hive; no uvmbuildversion",
            host.layer_path,
        )
        return None
    try:
        build = os_build_number(uvm_software.host_path)
    except (HiveFormatError, NotFound) as e:
        raise LayerFormatError(f"cannot read the OS build from {uvm_software.cim_path}: {e}") from e
    try:
        host.write_new([UVM_BUILD_FILE], str(build).encode())
    except FileExistsError as e:
        raise LayerExistsError(f"{host.layer_path / UVM_BUILD_FILE} exists already") from e
    if build > LTSC2022_BUILD:
        _log.warning(
            "layer %s: UtilityVM build %d needs its BCD store and VHDs prepared for CIM boot, "
            "which only Windows can do; the UVM was imported unchanged (hcsshim HEAD "
            "behaviour); Hyper-V isolated containers cannot boot it as is",
            host.layer_path,
            build,
        )
    return build


def base_layer_ops(host: HostFiles, config_hives: dict[str, HostStdFile]) -> list[PendingOp]:
    r"""Host ``Hives`` with the five ``<X>_BASE`` hard links, and ``layout`` (base layer).

    ``config_hives`` maps each :attr:`HiveName.config` to the hive file this layer added.
    Raises LayerFormatError naming a missing hive, LayerExistsError if the layer directory
    has a ``Hives`` or ``layout`` already.
    """
    missing = [h.config for h in HIVES if h.config not in config_hives]
    if missing:
        shown = ", ".join(f"{CONFIG_DIR}\\{name}" for name in missing)
        raise LayerFormatError(f"a base layer must contain every registry hive; missing {shown}")
    try:
        hives_dir = host.make_directory([HIVES_DIR])
    except FileExistsError as e:
        raise LayerExistsError(f"{host.layer_path / HIVES_DIR} exists already") from e
    ops: list[PendingOp] = [AddOp(HIVES_DIR, hives_dir, _SYNTHESISED_DIRECTORY)]
    for hive in HIVES:
        added = config_hives[hive.config]
        host.link(added.host_path, [HIVES_DIR, hive.base])
        ops.append(LinkOp(f"{HIVES_DIR}\\{hive.base}", added.cim_path))
    try:
        layout = host.write_new([LAYOUT_FILE], LAYOUT_CONTENT)
    except FileExistsError as e:
        raise LayerExistsError(f"{host.layer_path / LAYOUT_FILE} exists already") from e
    ops.append(AddOp(LAYOUT_FILE, layout, _SYNTHESISED_FILE))
    return ops


def delta_layer_ops(
    host: HostFiles, deltas: dict[str, HostStdFile], parent_layer_paths: list[Path]
) -> list[PendingOp]:
    r"""Merge each ``Hives\<X>_DELTA`` this layer added over its parent's ``<X>_BASE``.

    ``deltas`` maps :attr:`HiveName.delta` to the delta file this layer added. Writes the
    host ``Hives\<X>_BASE`` (in :data:`HIVES` order) and returns their add operations.
    Raises LayerFormatError for a bad delta (naming it), LayerParentError when no parent
    has the base hive or it is bad, LayerExistsError if the output exists already.
    """
    ops: list[PendingOp] = []
    for hive in HIVES:
        delta = deltas.get(hive.delta)
        if delta is None:
            continue
        base = _parent_base_hive(hive.base, parent_layer_paths)
        try:
            delta_hive = open_hive(delta.host_path)
        except HiveFormatError as e:
            raise LayerFormatError(f"{delta.cim_path} is not a valid registry hive: {e}") from e
        if delta_hive.root.semantics == LayerSemantics.TOMBSTONE:
            raise LayerFormatError(f"{delta.cim_path}: the delta hive's root is a tombstone")
        del delta_hive
        out = host.directory([HIVES_DIR]) / hive.base
        try:
            merge_files(base, delta.host_path, out)
        except AlreadyExists as e:
            raise LayerExistsError(f"{out} exists already") from e
        except NotFound as e:
            raise LayerParentError(f"parent hive {base} vanished: {e}") from e
        except HiveModelError as e:
            # The reader accepts keys the writer cannot store (a name over 255 units); only
            # the delta brings new keys, so the delta is at fault.
            raise LayerFormatError(f"{delta.cim_path} holds a key a hive cannot store: {e}") from e
        except (HiveFormatError, HiveMergeError) as e:
            # The delta parsed above, so what fails is the parent's base hive.
            raise LayerParentError(
                f"cannot merge {delta.cim_path} over the parent's {base}: {e}"
            ) from e
        host.adopt(out)
        ops.append(AddOp(f"{HIVES_DIR}\\{hive.base}", out, _SYNTHESISED_FILE))
    return ops


def _parent_base_hive(name: str, parent_layer_paths: list[Path]) -> Path:
    """The nearest parent's host ``Hives\\<name>`` (case-insensitive), see the docstring."""
    wanted = fold_path(name)
    for parent in parent_layer_paths:
        try:
            with os.scandir(parent / HIVES_DIR) as entries:
                for entry in entries:
                    if fold_path(entry.name) == wanted and entry.is_file(follow_symlinks=False):
                        return Path(entry.path)
        except (FileNotFoundError, NotADirectoryError):
            continue
    shown = ", ".join(str(p) for p in parent_layer_paths)
    raise LayerParentError(f"no parent layer ({shown}) has the base hive {HIVES_DIR}\\{name}")

r"""Which layer paths are "std files", kept on the host instead of in the CIM (§3.3).

Pure data and predicates, no I/O. Paths are image paths with ``\`` separators, as
:class:`cimsnap.wclayer.layer_writer.CimLayerWriter` receives them.

* The five registry hives (:data:`HIVES`): ``Files\Windows\System32\config\<X>`` (full hives
  of a base layer) and ``Hives\<X>_DELTA`` (differencing hives of a non-base layer). Matched
  **case-insensitively** (Windows upcase), as hcsshim's ``strings.EqualFold``.
* The utility-VM boot files (:data:`UVM_STD_FILES`), matched **case-sensitively** (exact
  string comparison), as hcsshim does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cimsnap.hive import name_key

__all__ = [
    "CONFIG_DIR",
    "HIVES",
    "HIVES_DIR",
    "UTILITY_VM",
    "UVM_BCD",
    "UVM_BOOTMGR",
    "UVM_SOFTWARE_HIVE",
    "UVM_STD_FILES",
    "UVM_SYSTEM_HIVE",
    "HiveName",
    "config_hive",
    "fold_path",
    "hive_of_delta",
    "is_std_file",
    "std_file_key",
]


@dataclass(frozen=True, slots=True)
class HiveName:
    """One registry hive of a layer: its ``config`` file name and its ``Hives`` names."""

    config: str  # under Files\Windows\System32\config
    base: str  # Hives\<base>: the full hive of this layer (base: a hard link; else merged)
    delta: str  # Hives\<delta>: this layer's differencing hive (non-base layers)


#: hcsshim's ``hives`` table. Note DEFAULT <-> DEFAULTUSER_*.
HIVES: Final = (
    HiveName("SYSTEM", "SYSTEM_BASE", "SYSTEM_DELTA"),
    HiveName("SOFTWARE", "SOFTWARE_BASE", "SOFTWARE_DELTA"),
    HiveName("SAM", "SAM_BASE", "SAM_DELTA"),
    HiveName("SECURITY", "SECURITY_BASE", "SECURITY_DELTA"),
    HiveName("DEFAULT", "DEFAULTUSER_BASE", "DEFAULTUSER_DELTA"),
)

HIVES_DIR: Final = "Hives"
CONFIG_DIR: Final = "Files\\Windows\\System32\\config"
UTILITY_VM: Final = "UtilityVM"
UVM_SOFTWARE_HIVE: Final = "UtilityVM\\Files\\Windows\\System32\\config\\SOFTWARE"
UVM_SYSTEM_HIVE: Final = "UtilityVM\\Files\\Windows\\System32\\config\\SYSTEM"
UVM_BCD: Final = "UtilityVM\\Files\\EFI\\Microsoft\\Boot\\BCD"
UVM_BOOTMGR: Final = "UtilityVM\\Files\\EFI\\Microsoft\\Boot\\bootmgfw.efi"

#: Case-sensitive std files of the utility VM.
UVM_STD_FILES: Final = frozenset((UVM_SYSTEM_HIVE, UVM_SOFTWARE_HIVE, UVM_BCD, UVM_BOOTMGR))


def fold_path(path: str) -> str:
    """Return the case-insensitive identity of a ``\\``-separated path (Windows upcase)."""
    return name_key(path)


_CONFIG_HIVES: Final = {fold_path(f"{CONFIG_DIR}\\{h.config}"): h for h in HIVES}
_DELTA_HIVES: Final = {fold_path(f"{HIVES_DIR}\\{h.delta}"): h for h in HIVES}


def config_hive(path: str) -> HiveName | None:
    """The hive whose ``config`` file ``path`` names (case-insensitively), or None."""
    return _CONFIG_HIVES.get(fold_path(path))


def hive_of_delta(path: str) -> HiveName | None:
    """The hive whose ``Hives\\<X>_DELTA`` file ``path`` names (case-insensitively), or None."""
    return _DELTA_HIVES.get(fold_path(path))


def std_file_key(path: str) -> str | None:
    """Return the routing identity of std file ``path``, or None for a CIM path.

    Two spellings of one hive path (``System_Delta``, ``SYSTEM_DELTA``) get the same key;
    a utility-VM std file's key is its exact path.
    """
    if path in UVM_STD_FILES:
        return path
    key = fold_path(path)
    if key in _CONFIG_HIVES or key in _DELTA_HIVES:
        return key
    return None


def is_std_file(path: str) -> bool:
    """True if ``path`` is written to the host layer directory rather than the CIM."""
    return std_file_key(path) is not None

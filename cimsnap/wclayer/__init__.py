"""Windows container layers on top of ``cim`` and ``hive``."""

from cimsnap.wclayer.destroy import (
    Sweep,
    destroy_cim_layer,
    referenced_region_sets,
    sweep_regions,
    sweep_unreferenced_regions,
)

__all__ = [
    "Sweep",
    "destroy_cim_layer",
    "referenced_region_sets",
    "sweep_regions",
    "sweep_unreferenced_regions",
]

"""Windows container layers on top of ``cim`` and ``hive``."""

from cimsnap.wclayer.destroy import (
    destroy_cim_layer,
    referenced_region_sets,
    sweep_unreferenced_regions,
)

__all__ = ["destroy_cim_layer", "referenced_region_sets", "sweep_unreferenced_regions"]

"""Samplers placing chips inside AOI polygons, optionally aligned with the files' tiling.

- :mod:`~geodino.samplers.aoi`: :class:`AOISampler`, random or grid chips inside AOIs.
- :mod:`~geodino.samplers.geometry`: where chip centres may fall, uniform draws there.
- :mod:`~geodino.samplers.blocks`: the files' internal tiling and chips aligned with it.

AOI files themselves are read and repaired by :mod:`geodino.aoi` (:func:`read_aoi`, also
importable from here).
"""

from geodino.aoi import read_aoi
from geodino.samplers.aoi import AOISampler, Query
from geodino.samplers.blocks import align_to_blocks, block_grids

__all__ = ["AOISampler", "Query", "align_to_blocks", "block_grids", "read_aoi"]

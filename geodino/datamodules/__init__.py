"""Lightning data modules: raw chips from workers, normalisation and multi-crop on the device.

- :mod:`~geodino.datamodules.stream`: the seeded sample stream, sharded over ranks and workers.
- :mod:`~geodino.datamodules.base`: what both data modules share (statistics, transforms,
  loaders, resumption).
- :mod:`~geodino.datamodules.geo`: chips of TorchGeo raster datasets inside AOIs.
- :mod:`~geodino.datamodules.folder`: samples of map-style (non-geo) datasets.
- :mod:`~geodino.datamodules.mixed`: chips of several sources with different band sets, one
  source a batch (mixed-sensor pretraining of wavelength-aware backbones).
- :mod:`~geodino.datamodules.protocols`: what the task may read from any data module.
"""

from geodino.datamodules.base import DINODataModule, available_cpus
from geodino.datamodules.folder import FolderDINODataModule, IndexDraw
from geodino.datamodules.geo import GeoChipDraw, GeoDINODataModule
from geodino.datamodules.mixed import MixedGeoDataModule, MixedSampleStream
from geodino.datamodules.protocols import PretrainingData
from geodino.datamodules.stream import Draw, RawDraw, SampleStream, collate

__all__ = [
    "DINODataModule",
    "Draw",
    "FolderDINODataModule",
    "GeoChipDraw",
    "GeoDINODataModule",
    "IndexDraw",
    "MixedGeoDataModule",
    "MixedSampleStream",
    "PretrainingData",
    "RawDraw",
    "SampleStream",
    "available_cpus",
    "collate",
]

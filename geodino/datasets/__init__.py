"""Data sources: GeoTIFF and STAC catalogs (TorchGeo raster datasets) and non-geo folders."""

from geodino.datasets.folders import AnnotatedImages, ImageFolder, NpyFolder
from geodino.datasets.geotiff import MultiBandGeoTIFF
from geodino.datasets.paired import PairedDataset
from geodino.datasets.remote import RemoteSettings
from geodino.datasets.sentinel import S1_BANDS, S2_BANDS, Sentinel1, Sentinel2
from geodino.datasets.stac import STACCatalog
from geodino.datasets.timeseries import TimeSeries

__all__ = [
    "S1_BANDS",
    "S2_BANDS",
    "AnnotatedImages",
    "ImageFolder",
    "MultiBandGeoTIFF",
    "NpyFolder",
    "PairedDataset",
    "RemoteSettings",
    "STACCatalog",
    "Sentinel1",
    "Sentinel2",
    "TimeSeries",
]

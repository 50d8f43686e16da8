"""Inference with a pretrained backbone on rasters: embeddings, similarity search, maps.

- :mod:`~geodino.inference.regions`: the part of each raster to embed and its windows.
- :mod:`~geodino.inference.embedding`: ``geodino embed`` (GeoTIFF / GeoParquet, resumable).
- :mod:`~geodino.inference.search`: ``geodino search`` (cosine similarity to a query).
- :mod:`~geodino.inference.maps`: ``geodino maps`` (PCA and attention figures).
- :mod:`~geodino.inference.cog`: the Cloud-Optimised GeoTIFF writer.

PCA lives in :mod:`geodino.pca` (shared with :mod:`geodino.plotting`).
"""

from geodino.inference.cog import write_cog
from geodino.inference.embedding import (
    RASTER_SUFFIXES,
    TABLE_SUFFIXES,
    embed,
    embed_batches,
    embed_region,
)
from geodino.inference.maps import write_maps
from geodino.inference.regions import RasterRegion, plan_region, plan_regions, read_window
from geodino.inference.search import similarity_search
from geodino.pca import PCA_SAMPLES, fit_pca, project

__all__ = [
    "PCA_SAMPLES",
    "RASTER_SUFFIXES",
    "TABLE_SUFFIXES",
    "RasterRegion",
    "embed",
    "embed_batches",
    "embed_region",
    "fit_pca",
    "plan_region",
    "plan_regions",
    "project",
    "read_window",
    "similarity_search",
    "write_cog",
    "write_maps",
]

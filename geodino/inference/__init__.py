"""Inference with a pretrained backbone on rasters: embeddings, similarity search, maps.

- :mod:`~geodino.inference.regions`: the part of each raster to embed and its windows.
- :mod:`~geodino.inference.embedding`: ``geodino embed`` (GeoTIFF / chip table, resumable).
- :mod:`~geodino.inference.items`: ``geodino embed --catalog`` (STAC items as rasters).
- :mod:`~geodino.inference.search`: ``geodino similar`` (cosine similarity to a query).
- :mod:`~geodino.inference.maps`: ``geodino maps`` (PCA and attention figures).
- :mod:`~geodino.inference.cog`: the Cloud-Optimised GeoTIFF writer (statistics, overviews).
- :mod:`~geodino.inference.tables`: the chunked vector table writer (GeoPackage,
  FlatGeobuf, GeoParquet, GeoJSON).
- :mod:`~geodino.inference.provenance`: the metadata every output carries.

PCA lives in :mod:`geodino.pca` (shared with :mod:`geodino.plotting`).
"""

from geodino.inference.cog import band_statistics, write_cog
from geodino.inference.embedding import (
    RASTER_SUFFIXES,
    TABLE_SUFFIXES,
    embed,
    embed_batches,
    embed_region,
)
from geodino.inference.items import embed_items
from geodino.inference.maps import write_maps
from geodino.inference.provenance import describe, provenance
from geodino.inference.regions import RasterRegion, plan_region, plan_regions, read_window
from geodino.inference.search import similarity_search
from geodino.inference.tables import (
    CHUNK_ROWS,
    TABLE_FORMATS,
    read_metadata,
    table_format,
    vector_columns,
    write_table,
)
from geodino.pca import PCA_SAMPLES, fit_pca, project

__all__ = [
    "CHUNK_ROWS",
    "PCA_SAMPLES",
    "RASTER_SUFFIXES",
    "TABLE_FORMATS",
    "TABLE_SUFFIXES",
    "RasterRegion",
    "band_statistics",
    "describe",
    "embed",
    "embed_batches",
    "embed_items",
    "embed_region",
    "fit_pca",
    "plan_region",
    "plan_regions",
    "project",
    "provenance",
    "read_metadata",
    "read_window",
    "similarity_search",
    "table_format",
    "vector_columns",
    "write_cog",
    "write_maps",
    "write_table",
]

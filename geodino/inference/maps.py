"""Visual checks of a backbone on a raster: PCA maps and attention maps."""

import math
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from geodino.errors import DataError
from geodino.inference.cog import write_cog
from geodino.inference.embedding import embed_region
from geodino.inference.provenance import provenance
from geodino.inference.regions import (
    RasterRegion,
    chip_pixels,
    for_rasters,
    plan_regions,
    point_in_crs,
    read_window,
)


def write_maps(
    weights: str | Path,
    raster: str | Path,
    out_dir: str | Path,
    aoi: Any = None,
    point: tuple[float, float] | None = None,
    crs: Any = None,
    chip_size: int | None = None,
    batch_size: int = 16,
    embeddings: str | Path | None = None,
) -> dict[str, Path]:
    """Visual checks of a backbone on a raster: PCA map and attention maps.

    A PCA map of the raster's patch embeddings (PNG, and a Cloud-Optimised GeoTIFF whose
    three uint8 bands ``pc1``..``pc3`` are marked red, green and blue, with statistics and
    overviews, so that a GIS opens it as a colour image) and the attention maps of one chip
    (PNG).

    Args:
        weights: a ``geodino export`` folder or a ``geodino fit`` checkpoint.
        raster: a GeoTIFF with the backbone's bands (a wavelength-aware backbone: any
            subset of them, named in the band descriptions).
        out_dir: folder for ``pca_map.png``, ``pca_map.tif`` and ``attention.png``.
        aoi: AOI polygons: map only inside them.
        point: centre ``(x, y)`` of the attention chip (default: the region's centre).
        crs: CRS of ``point`` (default: the raster's).
        chip_size: window side in pixels (default: the backbone's training size).
        batch_size: windows per forward pass.
        embeddings: a full-dimension embeddings GeoTIFF of this raster and AOI already
            written by :func:`embed` with the same chip size: mapped instead of embedding
            the raster again.

    Returns:
        the written files by kind.
    """
    from geodino.export import load_backbone
    from geodino.plotting import pca_rgb, plot_feature_maps, plot_pca_map, rgb_bands, to_rgb

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backbone = for_rasters(load_backbone(weights), [raster])
    region = plan_regions(backbone, [raster], aoi)[0]
    chip = chip_pixels(backbone, chip_size)
    if embeddings is not None:
        with rasterio.open(embeddings) as src:
            if (src.height, src.width) != (region.height, region.width) or (
                src.transform != region.out_transform or src.count != backbone.embed_dim
            ):
                raise DataError(
                    f"{embeddings} is not the full-dimension embedding grid of {raster} "
                    "(other bounds, transform or band count); embed it again or leave "
                    "embeddings out."
                )
            grid = src.read().astype(np.float32)
    else:
        grid, _ = embed_region(backbone, region, chip, batch_size)
    p = region.patch
    bands = rgb_bands(backbone.band_names) if backbone.band_names else None
    with rasterio.open(region.path) as src:
        # an RGB preview of the region, at most ~512 px a side
        scale = max(1, math.ceil(max(region.height, region.width) * p / 512))
        window = Window(region.col, region.row, region.width * p, region.height * p)
        shape = (max(1, window.height // scale), max(1, window.width // scale))
        preview = src.read(
            [b + 1 for b in bands or [0]],
            window=window,
            boundless=True,
            out_shape=(len(bands or [0]), *shape),
            out_dtype="float32",
        )
        if src.nodata is not None:
            preview[preview == np.float32(src.nodata)] = np.nan
        x, y = point_in_crs(region.crs, *point, crs) if point else (None, None)
        if point:
            col, row = ~region.transform @ (x, y)
            if not (0 <= row < src.height and 0 <= col < src.width):
                raise DataError(f"point {point} lies outside raster {region.path}.")
        else:
            row = region.row + region.height * p / 2
            col = region.col + region.width * p / 2
        # the chip centred on the point, on the patch grid, inside the raster where possible
        r0 = int(np.clip(round((row - chip / 2) / p), 0, max(0, src.height // p - chip // p)))
        c0 = int(np.clip(round((col - chip / 2) / p), 0, max(0, src.width // p - chip // p)))
        chip_region = RasterRegion(
            region.path,
            region.crs,
            region.transform,
            r0 * p,
            c0 * p,
            chip // p,
            chip // p,
            p,
            np.ones((chip // p,) * 2, bool),
        )
        image = read_window(src, chip_region, (0, 0, chip // p, chip // p))
    rgb = to_rgb(torch.from_numpy(np.nan_to_num(preview)), [0, 1, 2] if bands else [0, 0, 0])
    paths = {
        "pca_png": plot_pca_map(grid, out / "pca_map.png", f"{region.path.name}", rgb),
        "attention_png": plot_feature_maps(
            backbone,
            torch.from_numpy(image),
            out / "attention.png",
            f"{region.path.name}, chip at row {r0 * p}, col {c0 * p}",
        ),
    }
    colours = (pca_rgb(grid) * 255).round().astype(np.uint8).transpose(2, 0, 1)
    write_cog(
        out / "pca_map.tif",
        colours,
        region.crs,
        region.out_transform,
        ["pc1", "pc2", "pc3"],
        {**provenance(backbone, weights, chip), "source_raster": str(region.path)},
        rgb=True,
    )
    paths["pca_tif"] = out / "pca_map.tif"
    return paths

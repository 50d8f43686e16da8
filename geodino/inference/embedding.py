"""Embeddings of rasters for GIS: patch embeddings as COGs, chip CLS embeddings as tables.

A raster is cut into windows of ``chip_size`` pixels aligned on its own patch grid. Each
window goes through the backbone once; its patch tokens become one pixel each of an output
raster on the input's grid coarsened by the patch size (transform scaled by the patch size),
and its CLS token becomes one row of a table (GeoPackage, FlatGeobuf, GeoParquet or GeoJSON)
with the window's polygon. Windows tile the region without overlap except the last of a row
or column, which is moved back inside the region. Rasters are read window by window with
rasterio on their own grid, never resampled. An interrupted run resumes from the batches it
saved; tables are written from those batches chunk by chunk.
"""

import hashlib
import json
import math
import os
import shutil
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
import torch

from geodino.errors import DataError
from geodino.inference.cog import write_cog
from geodino.inference.provenance import describe, provenance
from geodino.inference.regions import (
    RasterRegion,
    chip_pixels,
    for_rasters,
    plan_regions,
    read_window,
)
from geodino.inference.tables import (
    CHUNK_ROWS,
    TABLE_FORMATS,
    rechunk,
    vector_columns,
    write_table,
)
from geodino.pca import PCA_SAMPLES, fit_pca, project
from geodino.seeding import numpy_rng

if TYPE_CHECKING:
    from geopandas import GeoDataFrame

    from geodino.export import PretrainedBackbone

#: Output suffixes and what they write: patch embeddings as COGs, chip tables.
RASTER_SUFFIXES = (".tif", ".tiff")
TABLE_SUFFIXES = tuple(TABLE_FORMATS)


def embed_batches(
    backbone: "PretrainedBackbone",
    region: RasterRegion,
    chip_size: int,
    batch_size: int,
    skip: Collection[int] = (),
) -> Iterator[tuple[int, list[tuple[int, int, int, int]], np.ndarray, np.ndarray]]:
    """Run the backbone over a region's windows, a batch at a time.

    Args:
        backbone: the frozen backbone.
        region: what to embed.
        chip_size: window side in pixels (a multiple of the patch size).
        batch_size: windows per forward pass.
        skip: batch indices already done (resuming).

    Yields:
        batch index, its windows, CLS embeddings (B, D) and patch embeddings (B, D, h, w),
        NaN for patches whose pixels are all nodata.
    """
    windows = region.windows(chip_size // region.patch)
    p = region.patch
    with rasterio.open(region.path) as src:
        for index, start in enumerate(range(0, len(windows), batch_size)):
            if index in skip:
                continue
            batch = windows[start : start + batch_size]
            images = torch.from_numpy(np.stack([read_window(src, region, w) for w in batch]))
            tokens = backbone.tokens(images)
            cls = tokens[:, 0].float()
            h, w = batch[0][2], batch[0][3]
            patches = tokens[:, backbone.model.num_prefix_tokens :].float()
            patches = patches.reshape(len(batch), h, w, -1).permute(0, 3, 1, 2).contiguous()
            empty = torch.isnan(images).all(1).reshape(len(batch), h, p, w, p).all(4).all(2)
            patches = patches.masked_fill(empty.unsqueeze(1), float("nan"))
            yield index, batch, cls.numpy(), patches.numpy()


def embed_region(
    backbone: "PretrainedBackbone",
    region: RasterRegion,
    chip_size: int | None = None,
    batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Patch and CLS embeddings of a region, in memory.

    Args:
        backbone: the frozen backbone.
        region: what to embed.
        chip_size: window side in pixels (default: the backbone's training size).
        batch_size: windows per forward pass.

    Returns:
        (D, height, width) patch embeddings on the region's grid (NaN outside the mask and
        on nodata) and (windows, D) CLS embeddings.
    """
    chip = chip_pixels(backbone, chip_size)
    grid = np.full((backbone.embed_dim, region.height, region.width), np.nan, np.float32)
    cls = []
    for _, windows, batch_cls, patches in embed_batches(backbone, region, chip, batch_size):
        for (r, c, h, w), values in zip(windows, patches, strict=True):
            grid[:, r : r + h, c : c + w] = values
        cls.append(batch_cls)
    grid[:, ~region.mask] = np.nan
    return grid, np.concatenate(cls)


def _fingerprint(**values: Any) -> str:
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _save_part(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
    os.replace(tmp, path)


def _output_paths(out: Path, regions: Sequence[RasterRegion]) -> list[Path]:
    if len(regions) == 1:
        return [out]
    stems = [r.path.stem for r in regions]
    if len(set(stems)) < len(stems):
        stems = [f"{i:03d}_{s}" for i, s in enumerate(stems)]
    return [out.with_name(f"{out.stem}_{s}{out.suffix}") for s in stems]


def embed(
    weights: str | Path,
    rasters: Sequence[str | Path],
    out: str | Path,
    aoi: Any = None,
    pca: int | None = None,
    chip_size: int | None = None,
    batch_size: int = 16,
    overwrite: bool = False,
    progress: bool = True,
    chunk_rows: int = CHUNK_ROWS,
) -> list[Path]:
    """Embed rasters with a backbone and write Cloud-Optimised GeoTIFFs or a chip table.

    The work is saved batch by batch in ``OUT.parts/``; a run that stops resumes there with
    the same arguments, and the folder is removed once the output is written.

    Args:
        weights: a ``geodino export`` folder or a ``geodino fit`` checkpoint.
        rasters: GeoTIFFs with the backbone's bands.
        out: ``.tif`` for patch embeddings (one file per raster when several are given,
            named ``OUT_<raster stem>.tif``); ``.gpkg`` (GeoPackage), ``.fgb``
            (FlatGeobuf), ``.parquet`` (GeoParquet) or ``.geojson`` for chip polygons with
            CLS embeddings (one table for all rasters, in the first raster's CRS).
        aoi: AOI polygons (file or GeoDataFrame): only embed inside them.
        pca: reduce embeddings to this many principal components (fitted on all rasters).
        chip_size: window side in pixels (default: the backbone's training size).
        batch_size: windows per forward pass.
        overwrite: replace an existing output and discard saved parts.
        progress: show a progress bar.
        chunk_rows: rows of a chip table written at a time (the table is never held whole
            in memory).

    Returns:
        the written files.

    Raises:
        DataError: for a bad output suffix, an existing output, rasters with other bands than
            the backbone's, or an AOI outside the rasters.
    """
    from tqdm.auto import tqdm

    from geodino.export import load_backbone

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in RASTER_SUFFIXES + TABLE_SUFFIXES:
        tables = ", ".join(TABLE_SUFFIXES)
        raise DataError(
            f"--out {out}: give a .tif (patch embeddings as a Cloud-Optimised GeoTIFF) or a "
            f"vector table of chip polygons with CLS embeddings ({tables})."
        )
    as_raster = suffix in RASTER_SUFFIXES
    backbone = for_rasters(load_backbone(weights), rasters)
    if pca is not None and not 1 <= pca <= backbone.embed_dim:
        raise DataError(
            f"--pca {pca} must lie between 1 and the embedding size {backbone.embed_dim}."
        )
    chip = chip_pixels(backbone, chip_size)
    regions = plan_regions(backbone, rasters, aoi)
    targets = _output_paths(out, regions) if as_raster else [out]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise DataError(f"{', '.join(existing)} exists; pass --overwrite true to replace it.")

    parts = out.with_name(out.name + ".parts")
    key = _fingerprint(
        weights=str(Path(weights).resolve()),
        rasters=[str(r.path.resolve()) for r in regions],
        aoi=str(aoi),
        chip=chip,
        batch_size=batch_size,
        raster=as_raster,
    )
    manifest = parts / "manifest.json"
    if parts.exists() and (
        overwrite or not manifest.is_file() or json.loads(manifest.read_text()).get("key") != key
    ):
        if not overwrite and manifest.is_file():
            raise DataError(
                f"{parts} holds the saved work of an embedding run with other arguments; "
                "rerun with the same arguments to resume, or pass --overwrite true."
            )
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"key": key}))

    total = sum(math.ceil(len(r.windows(chip // r.patch)) / batch_size) for r in regions)
    bar = tqdm(
        total=total, desc=f"embedding {len(regions)} raster(s)", unit="batch", disable=not progress
    )
    for i, region in enumerate(regions):
        done = {int(p.stem.split("_")[1]) for p in parts.glob(f"{i:03d}_*.npz")}
        bar.update(len(done))
        for index, windows, cls, patches in embed_batches(
            backbone, region, chip, batch_size, skip=done
        ):
            arrays = {"windows": np.asarray(windows), "cls": cls}
            if as_raster:
                arrays["patches"] = patches
            _save_part(parts / f"{i:03d}_{index:06d}.npz", **arrays)
            bar.update(1)
    bar.close()

    part_files = [sorted(parts.glob(f"{i:03d}_*.npz")) for i in range(len(regions))]
    metadata = provenance(backbone, weights, chip)
    if as_raster:
        grids = []
        for region, files in zip(regions, part_files, strict=True):
            grid = np.full((backbone.embed_dim, region.height, region.width), np.nan, np.float32)
            for file in files:
                with np.load(file) as part:
                    for (r, c, h, w), values in zip(part["windows"], part["patches"], strict=True):
                        grid[:, r : r + h, c : c + w] = values
            grid[:, ~region.mask] = np.nan
            grids.append(grid)
        names = [f"emb_{j:03d}" for j in range(backbone.embed_dim)]
        if pca:
            flat = np.concatenate([g.reshape(len(g), -1).T for g in grids])
            mean, components = fit_pca(flat[np.isfinite(flat).all(1)], pca)
            grids = [
                project(g.transpose(1, 2, 0), mean, components).transpose(2, 0, 1) for g in grids
            ]
            names = [f"pc{j + 1}" for j in range(pca)]
            metadata["pca_components"] = str(pca)
        for target, region, grid in zip(targets, regions, grids, strict=True):
            write_cog(
                target,
                grid,
                region.crs,
                region.out_transform,
                names,
                {**metadata, "source_raster": str(region.path)},
                rgb=pca == 3,
            )
    else:
        _write_table(out, regions, part_files, pca, metadata, chunk_rows)
    shutil.rmtree(parts)
    return targets


def _write_table(
    out: Path,
    regions: Sequence[RasterRegion],
    parts: Sequence[Sequence[Path]],
    pca: int | None,
    metadata: dict[str, str],
    chunk_rows: int,
) -> None:
    """Write the chip table from the saved parts, ``chunk_rows`` rows at a time.

    With ``pca``, the components are fitted first on a sample of the CLS embeddings (at
    most :data:`~geodino.pca.PCA_SAMPLES` rows, read from the parts), then every chunk is
    projected as it is written.
    """
    projection = _fit_table_pca(parts, pca) if pca else None
    if pca:
        metadata = {**metadata, "pca_components": str(pca)}
    crs = regions[0].crs
    write_table(
        out,
        rechunk(_chip_frames(regions, parts, crs, projection), chunk_rows),
        crs,
        metadata,
        description=f"geodino chip embeddings ({'PCA' if pca else 'CLS'}): {describe(metadata)}",
    )


def _chip_frames(
    regions: Sequence[RasterRegion],
    parts: Sequence[Sequence[Path]],
    crs: Any,
    projection: tuple[np.ndarray, np.ndarray] | None,
) -> Iterator["GeoDataFrame"]:
    """One GeoDataFrame per saved batch: window polygons in ``crs`` and their vectors."""
    import geopandas as gpd

    for region, files in zip(regions, parts, strict=True):
        p = region.patch
        for file in files:
            with np.load(file) as part:
                values = part["cls"]
                windows = [(int(r), int(c), int(h), int(w)) for r, c, h, w in part["windows"]]
            if projection is not None:
                scores = project(values, *projection)
                columns = {f"pc{j + 1}": scores[:, j] for j in range(scores.shape[1])}
            else:
                columns = vector_columns(values)
            yield gpd.GeoDataFrame(
                {
                    "raster": str(region.path),
                    "row": [region.row + w[0] * p for w in windows],
                    "col": [region.col + w[1] * p for w in windows],
                    "size": [w[2] * p for w in windows],
                    **columns,
                },
                geometry=[region.polygon(w) for w in windows],
                crs=region.crs,
            ).to_crs(crs)


def _fit_table_pca(parts: Sequence[Sequence[Path]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """PCA of the saved CLS embeddings, fitted on at most PCA_SAMPLES of them."""
    files = [file for region_files in parts for file in region_files]
    sizes = []
    for file in files:
        with np.load(file) as part:
            sizes.append(len(part["windows"]))
    total = sum(sizes)
    keep = np.arange(total)
    if total > PCA_SAMPLES:
        keep = np.sort(numpy_rng(0).choice(total, PCA_SAMPLES, replace=False))
    samples, start = [], 0
    for file, size in zip(files, sizes, strict=True):
        rows = keep[(keep >= start) & (keep < start + size)] - start
        if len(rows):
            with np.load(file) as part:
                samples.append(part["cls"][rows])
        start += size
    return fit_pca(np.concatenate(samples), k)

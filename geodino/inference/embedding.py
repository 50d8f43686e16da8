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
import logging
import math
import os
import shutil
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from geodino import pca as pca_fit
from geodino.errors import DataError
from geodino.inference.cog import cache_bytes, finish_cog, staging_profile
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
from geodino.pca import fit_pca, project
from geodino.seeding import numpy_rng

if TYPE_CHECKING:
    from geopandas import GeoDataFrame

    from geodino.export import PretrainedBackbone

log = logging.getLogger(__name__)

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


def window_row_bytes(region: RasterRegion, chip: int) -> int:
    """Bytes of the raster's blocks that a row of windows touches, all bands.

    Args:
        region: the region.
        chip: window side in pixels.

    Returns:
        the bytes GDAL's cache must hold for each block to be read once per row of windows.
    """
    with rasterio.open(region.path) as src:
        block = src.block_shapes[0][0]
        itemsize = max(np.dtype(d).itemsize for d in src.dtypes)
        rows = (math.ceil(chip / block) + 1) * block
        return int(rows * src.width * src.count * itemsize)


def process_share(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """This process's rank and the number of processes sharing the work.

    Args:
        rank: given rank, or None to read ``RANK`` (torchrun) or ``SLURM_PROCID``.
        world_size: given count, or None to read ``WORLD_SIZE`` or ``SLURM_NTASKS``.

    Returns:
        ``(rank, world_size)``, ``(0, 1)`` outside a launcher.

    Raises:
        DataError: if the rank is not in ``[0, world_size)``.
    """

    def environment(*names: str) -> int | None:
        for name in names:
            value = os.environ.get(name)
            if value:
                try:
                    return int(value)
                except ValueError:
                    raise DataError(f"{name}={value!r} is not a whole number.") from None
        return None

    if world_size is None:
        world_size = environment("WORLD_SIZE", "SLURM_NTASKS") or 1
    if rank is None:
        rank = environment("RANK", "SLURM_PROCID") or 0
    if not 0 <= rank < world_size:
        raise DataError(
            f"rank {rank} is not one of the {world_size} processes (0 to {world_size - 1}); "
            "check RANK/WORLD_SIZE (torchrun) or SLURM_PROCID/SLURM_NTASKS."
        )
    return rank, world_size


def _fingerprint(**values: Any) -> str:
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _save_part(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
    os.replace(tmp, path)


def output_paths(out: Path, stems: Sequence[str]) -> list[Path]:
    """The COG of each raster: ``out`` for one, ``OUT_<stem>.tif`` for several.

    Args:
        out: the output asked for.
        stems: the rasters' file stems (item ids), in order.

    Returns:
        one path per raster (stems that repeat are numbered).
    """
    if len(stems) == 1:
        return [out]
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
    rank: int | None = None,
    world_size: int | None = None,
) -> list[Path]:
    """Embed rasters with a backbone and write Cloud-Optimised GeoTIFFs or a chip table.

    The work is saved batch by batch in ``OUT.parts/``; a run that stops resumes there with
    the same arguments, and the folder is removed once the output is written. COGs are
    assembled on disk window by window, never as a whole grid in memory (docs/outputs.md).

    Several processes (``torchrun``, SLURM tasks, any launcher) share the rasters of one
    call: process ``rank`` of ``world_size`` embeds rasters ``rank``, ``rank +
    world_size``, ... of the list, writing the files a single process would write for them
    and saving its work in ``OUT.rank<R>of<W>.parts/``. No process waits for another.

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
        rank: this process's share of the rasters (default: ``RANK`` or ``SLURM_PROCID``
            from the environment, else 0).
        world_size: processes sharing the rasters (default: ``WORLD_SIZE`` or
            ``SLURM_NTASKS``, else 1).

    Returns:
        the files this process wrote.

    Raises:
        DataError: for a bad output suffix, an existing output, rasters with other bands than
            the backbone's, an AOI outside the rasters, a bad rank, or a table or ``pca``
            asked of several processes (both need every raster in one process).
    """
    from geodino.export import load_backbone

    out = Path(out)
    as_raster = output_kind(out)
    backbone = for_rasters(load_backbone(weights), rasters)
    rank, world_size = process_share(rank, world_size)
    check_share(out, as_raster, pca, rank, world_size)
    regions = plan_regions(backbone, rasters, aoi)
    targets = output_paths(out, [r.path.stem for r in regions]) if as_raster else [out]
    if world_size > 1:
        regions, targets = regions[rank::world_size], targets[rank::world_size]
        if not regions:
            log.info("process %d of %d: no raster left to embed", rank, world_size)
            return []
    return embed_regions(
        backbone,
        weights,
        regions,
        targets,
        out,
        aoi=aoi,
        pca=pca,
        chip_size=chip_size,
        batch_size=batch_size,
        overwrite=overwrite,
        progress=progress,
        chunk_rows=chunk_rows,
        rank=rank,
        world_size=world_size,
    )


def output_kind(out: Path) -> bool:
    """Whether ``out`` asks for COGs (True) or a chip table (False).

    Args:
        out: the output file.

    Returns:
        True for ``.tif``/``.tiff``.

    Raises:
        DataError: for another suffix.
    """
    suffix = out.suffix.lower()
    if suffix not in RASTER_SUFFIXES + TABLE_SUFFIXES:
        tables = ", ".join(TABLE_SUFFIXES)
        raise DataError(
            f"--out {out}: give a .tif (patch embeddings as a Cloud-Optimised GeoTIFF) or a "
            f"vector table of chip polygons with CLS embeddings ({tables})."
        )
    return suffix in RASTER_SUFFIXES


def check_share(out: Path, as_raster: bool, pca: int | None, rank: int, world_size: int) -> None:
    """Refuse outputs that one process must write when several share the work.

    Args:
        out: the output.
        as_raster: whether it is COGs.
        pca: principal components asked for.
        rank: this process.
        world_size: processes sharing the work.

    Raises:
        DataError: for a table or ``pca`` asked of several processes.
    """
    if world_size > 1 and (not as_raster or pca):
        what = "one table of all rasters" if not as_raster else "a PCA fitted on all rasters"
        raise DataError(
            f"--out {out.name}{' with --pca' if pca else ''} asks for {what}, which one process "
            f"must write; this is process {rank} of {world_size}. Embed across processes to "
            ".tif outputs without --pca, or run this output in one process."
        )


def embed_regions(
    backbone: "PretrainedBackbone",
    weights: str | Path,
    regions: Sequence[RasterRegion],
    targets: Sequence[Path],
    out: Path,
    aoi: Any = None,
    pca: int | None = None,
    chip_size: int | None = None,
    batch_size: int = 16,
    overwrite: bool = False,
    progress: bool = True,
    chunk_rows: int = CHUNK_ROWS,
    rank: int = 0,
    world_size: int = 1,
) -> list[Path]:
    """Embed planned regions into their outputs (the work of :func:`embed` once planned).

    Args:
        backbone: the backbone, ready for the regions' bands.
        weights: where it was loaded from (recorded in the outputs).
        regions: this process's regions.
        targets: their COGs, or ``[out]`` for a chip table.
        out: the output asked for (the saved work goes in ``OUT.parts/``, or
            ``OUT.rank<R>of<W>.parts/`` when several processes share the work).
        aoi: the AOI the regions were planned with (part of the saved work's key).
        pca: principal components.
        chip_size: window side in pixels (default: the backbone's training size).
        batch_size: windows per forward pass.
        overwrite: replace existing outputs and discard saved parts.
        progress: show progress bars.
        chunk_rows: rows of a chip table written at a time.
        rank: this process's rank among those sharing the work.
        world_size: processes sharing the work.

    Returns:
        the files written.

    Raises:
        DataError: for an existing output, saved work of other arguments or a bad ``pca``.
    """
    from tqdm.auto import tqdm

    as_raster = output_kind(out)
    if pca is not None and not 1 <= pca <= backbone.embed_dim:
        raise DataError(
            f"--pca {pca} must lie between 1 and the embedding size {backbone.embed_dim}."
        )
    chip = chip_pixels(backbone, chip_size)
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise DataError(f"{', '.join(existing)} exists; pass --overwrite true to replace it.")

    share = "" if world_size == 1 else f".rank{rank}of{world_size}"
    parts = out.with_name(f"{out.name}{share}.parts")
    key = _fingerprint(
        weights=str(Path(weights).resolve()),
        rasters=[r.label or str(r.path.resolve()) for r in regions],
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
        # GDAL's default cache (5 % of the machine's memory) would keep the raster's blocks
        with rasterio.Env(GDAL_CACHEMAX=cache_bytes(window_row_bytes(region, chip))):
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
        _write_rasters(
            targets, regions, part_files, parts, backbone.embed_dim, chip, pca, metadata, progress
        )
    else:
        _write_table(out, regions, part_files, pca, metadata, chunk_rows)
    shutil.rmtree(parts)
    return list(targets)


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
                    "raster": region.source,
                    "row": [region.row + w[0] * p for w in windows],
                    "col": [region.col + w[1] * p for w in windows],
                    "size": [w[2] * p for w in windows],
                    **columns,
                },
                geometry=[region.polygon(w) for w in windows],
                crs=region.crs,
            ).to_crs(crs)


def _fit_table_pca(parts: Sequence[Sequence[Path]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """PCA of the saved CLS embeddings, fitted on at most ``PCA_SAMPLES`` of them."""
    files = [file for region_files in parts for file in region_files]
    sizes = []
    for file in files:
        with np.load(file) as part:
            sizes.append(len(part["windows"]))
    total = sum(sizes)
    keep = np.arange(total)
    if total > pca_fit.PCA_SAMPLES:
        keep = np.sort(numpy_rng(0).choice(total, pca_fit.PCA_SAMPLES, replace=False))
    samples, start = [], 0
    for file, size in zip(files, sizes, strict=True):
        rows = keep[(keep >= start) & (keep < start + size)] - start
        if len(rows):
            with np.load(file) as part:
                samples.append(part["cls"][rows])
        start += size
    return fit_pca(np.concatenate(samples), k)


#: Bytes of embeddings read or written at a time while an output raster is assembled.
CHUNK_BYTES = 16 * 2**20


def _row_chunks(height: int, row_bytes: int) -> Iterator[tuple[int, int]]:
    """Row ranges ``(start, stop)`` of about :data:`CHUNK_BYTES` each."""
    rows = max(1, CHUNK_BYTES // max(row_bytes, 1))
    for start in range(0, height, rows):
        yield start, min(start + rows, height)


def _stage_grid(
    path: Path,
    region: RasterRegion,
    files: Sequence[Path],
    dim: int,
    chip: int,
    step: Callable[[int], object],
) -> None:
    """Write a region's saved patch embeddings into a ``dim``-band GeoTIFF, window by window.

    Windows are written in the order they were embedded (a later window overwrites the
    overlap of an earlier one, as in memory); what no window covers stays NaN, and pixels
    outside the mask are set to NaN afterwards, a band-interleaved chunk of rows at a time.
    One strip per band holds a row of windows, and GDAL's cache holds a few such rows.
    """
    strip = min(chip // region.patch, region.height)
    profile = staging_profile(
        region.width,
        region.height,
        dim,
        "float32",
        region.crs,
        region.out_transform,
        rows_per_strip=strip,
    )
    row_bytes = 4 * dim * region.width
    with (
        rasterio.Env(GDAL_CACHEMAX=cache_bytes(3 * strip * row_bytes)),
        rasterio.open(path, "w+", **profile) as dst,
    ):
        for file in files:
            with np.load(file) as part:
                for (r, c, h, w), values in zip(part["windows"], part["patches"], strict=True):
                    dst.write(values, window=Window(int(c), int(r), int(w), int(h)))
            step(1)
        if not region.mask.all():
            for start, stop in _row_chunks(region.height, row_bytes):
                window = Window(0, start, region.width, stop - start)
                values = dst.read(window=window)
                values[:, ~region.mask[start:stop]] = np.nan
                dst.write(values, window=window)


def _pixel_rows(path: Path) -> Iterator[np.ndarray]:
    """A staged grid's pixels as (n, D) vectors, row-major, a chunk of rows at a time."""
    with rasterio.open(path) as src:
        for start, stop in _row_chunks(src.height, 4 * src.count * src.width):
            values = src.read(window=Window(0, start, src.width, stop - start))
            yield values.reshape(len(values), -1).T


def _fit_grid_pca(staged: Sequence[Path], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The PCA of every finite pixel of the staged grids, fitted without holding them.

    The same fit as :func:`~geodino.pca.fit_pca` on all finite pixels of the grids in
    row-major order, raster after raster: the same ``PCA_SAMPLES`` of them are picked (by
    their rank among the finite pixels) and passed in the same order.
    """
    total = 0
    for path in staged:
        for rows in _pixel_rows(path):
            total += int(np.isfinite(rows).all(1).sum())
    if total < 2:
        raise DataError("PCA needs at least two embedding vectors; embed a larger region.")
    keep = min(total, pca_fit.PCA_SAMPLES)
    pick = (
        numpy_rng(0).choice(total, keep, replace=False)
        if total > pca_fit.PCA_SAMPLES
        else np.arange(total)
    )
    order = np.argsort(pick)
    wanted = pick[order]
    samples: np.ndarray | None = None
    seen = 0
    for path in staged:
        for rows in _pixel_rows(path):
            finite = rows[np.isfinite(rows).all(1)]
            if samples is None:
                samples = np.empty((keep, rows.shape[1]), np.float32)
            lo, hi = np.searchsorted(wanted, [seen, seen + len(finite)])
            samples[order[lo:hi]] = finite[wanted[lo:hi] - seen]
            seen += len(finite)
    assert samples is not None
    return fit_pca(samples, k)


def _project_grid(
    staged: Path, out: Path, projection: tuple[np.ndarray, np.ndarray], rgb: bool
) -> None:
    """Project a staged grid onto PCA components, a chunk of rows at a time, into ``out``."""
    mean, components = projection
    with rasterio.open(staged) as src:
        profile = staging_profile(
            src.width,
            src.height,
            len(components),
            "float32",
            src.crs,
            src.transform,
            rgb,
            rows_per_strip=min(src.height, 64),
        )
        with rasterio.open(out, "w", **profile) as dst:
            for start, stop in _row_chunks(src.height, 4 * src.count * src.width):
                window = Window(0, start, src.width, stop - start)
                values = src.read(window=window)
                scores = project(values.transpose(1, 2, 0), mean, components)
                dst.write(scores.transpose(2, 0, 1), window=window)
    staged.unlink()


def _write_rasters(
    targets: Sequence[Path],
    regions: Sequence[RasterRegion],
    part_files: Sequence[Sequence[Path]],
    parts: Path,
    dim: int,
    chip: int,
    pca: int | None,
    metadata: dict[str, str],
    progress: bool,
) -> None:
    """Assemble each raster's embeddings on disk from its saved batches and write its COG.

    Nothing holds a whole grid: windows go into a staged GeoTIFF in ``parts``, the PCA
    (fitted on all rasters) is applied a chunk of rows at a time, band statistics are
    read a band at a time, and GDAL's cache is capped (see
    :func:`~geodino.inference.cog.finish_cog`). A progress bar per raster runs until its
    COG is complete.
    """
    from tqdm.auto import tqdm

    staged = [parts / f"{i:03d}_grid.tif" for i in range(len(regions))]
    bands = pca or dim
    bars = [
        tqdm(
            total=len(files) + bands + 2,
            desc=f"writing {target.name}",
            unit="step",
            disable=not progress,
        )
        for target, files in zip(targets, part_files, strict=True)
    ]
    for path, region, files, bar in zip(staged, regions, part_files, bars, strict=True):
        _stage_grid(path, region, files, dim, chip, bar.update)
    names = [f"emb_{j:03d}" for j in range(dim)]
    if pca:
        projection = _fit_grid_pca(staged, pca)
        projected = [path.with_name(path.stem + "_pca.tif") for path in staged]
        for path, out in zip(staged, projected, strict=True):
            _project_grid(path, out, projection, rgb=pca == 3)
        staged = projected
        names = [f"pc{j + 1}" for j in range(pca)]
        metadata = {**metadata, "pca_components": str(pca)}
    for path, target, region, bar in zip(staged, targets, regions, bars, strict=True):
        finish_cog(
            path,
            target,
            names,
            {**metadata, "source_raster": region.source},
            rgb=pca == 3,
            advance=bar.update,
        )
        bar.close()

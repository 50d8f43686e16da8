"""Embeddings of rasters for GIS: patch embeddings as a Cloud-Optimised GeoTIFF, chip CLS
embeddings as GeoParquet.

A raster is cut into windows of ``chip_size`` pixels aligned on its own patch grid. Each
window goes through the backbone once; its patch tokens become one pixel each of an output
raster on the input's grid coarsened by the patch size (transform scaled by the patch size),
and its CLS token becomes one row of a table with the window's polygon. Windows tile the
region without overlap except the last of a row or column, which is moved back inside the
region. Rasters are read window by window with rasterio on their own grid, never resampled.
"""

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.windows import Window

from geodino.errors import DataError

if TYPE_CHECKING:
    from geopandas import GeoDataFrame

    from geodino.export import PretrainedBackbone

log = logging.getLogger(__name__)

#: Output suffixes and what they write.
RASTER_SUFFIXES = (".tif", ".tiff")
TABLE_SUFFIXES = (".parquet",)
#: Embedding pixels sampled to fit the PCA.
PCA_SAMPLES = 100_000
#: Fraction of a patch by which AOI bounds may cross a patch edge and still snap inside it.
_SNAP = 1e-6


@dataclass
class RasterRegion:
    """The part of a raster to embed, on the raster's patch grid.

    Args:
        path: the raster file.
        crs: its CRS.
        transform: its pixel-to-CRS transform.
        row: first pixel row of the region (a multiple of the patch size).
        col: first pixel column of the region (a multiple of the patch size).
        height: region height in patches.
        width: region width in patches.
        patch: patch side in pixels.
        mask: (height, width) bool, True for embedding pixels to keep (inside the AOI).
    """

    path: Path
    crs: Any
    transform: Affine
    row: int
    col: int
    height: int
    width: int
    patch: int
    mask: np.ndarray

    @property
    def out_transform(self) -> Affine:
        """Transform of the embedding grid: the raster's, moved to the region, scaled by the
        patch size.
        """
        return self.transform @ Affine.translation(self.col, self.row) @ Affine.scale(self.patch)

    def windows(self, chip: int) -> list[tuple[int, int, int, int]]:
        """Windows that cover the region, in patch units relative to it.

        Args:
            chip: window side in patches.

        Returns:
            ``(row, col, height, width)`` of each window overlapping the mask, row-major.
        """
        h, w = min(chip, self.height), min(chip, self.width)

        def starts(size: int, step: int) -> list[int]:
            out = list(range(0, size - step + 1, step))
            if out[-1] + step < size:
                out.append(size - step)  # the last window moves back inside the region
            return out

        return [
            (r, c, h, w)
            for r in starts(self.height, h)
            for c in starts(self.width, w)
            if self.mask[r : r + h, c : c + w].any()
        ]

    def polygon(self, window: tuple[int, int, int, int]) -> Any:
        """The window's footprint in the raster's CRS.

        Args:
            window: ``(row, col, height, width)`` in patch units.

        Returns:
            a shapely box.
        """
        from shapely.geometry import box

        r, c, h, w = window
        x0, y0 = self.out_transform @ (c, r)
        x1, y1 = self.out_transform @ (c + w, r + h)
        return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def plan_region(path: Path, patch: int, aoi: "GeoDataFrame | None" = None) -> RasterRegion | None:
    """The region of a raster to embed: all of it, or the AOI's bounds snapped to patches.

    Args:
        path: the raster.
        patch: patch side in pixels.
        aoi: AOI polygons (any CRS), or None for the whole raster.

    Returns:
        the region, or None when the AOI does not touch the raster.

    Raises:
        DataError: if the raster cannot be read, has no CRS or a rotated grid.
    """
    from rasterio.features import geometry_mask

    try:
        with rasterio.open(path) as src:
            crs, transform, height, width = src.crs, src.transform, src.height, src.width
    except rasterio.errors.RasterioIOError as error:
        raise DataError(f"raster {path} cannot be read ({error}); check the path.") from None
    if crs is None:
        raise DataError(
            f"raster {path} has no CRS; georeference it (QGIS: Raster > Projections > Assign "
            "Projection, or gdal_edit.py -a_srs) before embedding it."
        )
    if transform.b != 0 or transform.d != 0:
        raise DataError(
            f"raster {path} has a rotated grid ({transform}); warp it north-up first (gdalwarp)."
        )
    rows, cols = math.ceil(height / patch), math.ceil(width / patch)
    if aoi is None:
        return RasterRegion(
            path, crs, transform, 0, 0, rows, cols, patch, np.ones((rows, cols), dtype=bool)
        )
    import shapely
    from shapely.geometry import box

    shape = shapely.union_all(aoi.to_crs(crs).geometry.to_numpy())
    x0, y0 = transform @ (0, 0)
    x1, y1 = transform @ (width, height)
    inside = shape.intersection(box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    if inside.is_empty or inside.area == 0:
        return None
    minx, miny, maxx, maxy = inside.bounds
    inverse = ~transform
    cs, rs = zip(*(inverse @ (x, y) for x in (minx, maxx) for y in (miny, maxy)), strict=True)
    # AOI vertices that went through a CRS round trip are off by ~1e-9 px: not a patch more
    r0 = max(0, math.floor(min(rs) / patch + _SNAP))
    c0 = max(0, math.floor(min(cs) / patch + _SNAP))
    r1 = min(rows, math.ceil(max(rs) / patch - _SNAP))
    c1 = min(cols, math.ceil(max(cs) / patch - _SNAP))
    region = RasterRegion(
        path,
        crs,
        transform,
        r0 * patch,
        c0 * patch,
        r1 - r0,
        c1 - c0,
        patch,
        np.ones((r1 - r0, c1 - c0), dtype=bool),
    )
    region.mask = geometry_mask(
        [inside],
        (region.height, region.width),
        region.out_transform,
        all_touched=True,
        invert=True,
    )
    return region


def read_window(src: Any, region: RasterRegion, window: tuple[int, int, int, int]) -> np.ndarray:
    """Raw pixels of a window as float32, nodata and pixels past the raster's edge as NaN.

    Args:
        src: the open rasterio dataset of ``region``.
        region: the region the window belongs to.
        window: ``(row, col, height, width)`` in patch units relative to the region.

    Returns:
        (C, H, W) float32 array.
    """
    p = region.patch
    r, c, h, w = window
    pixels = Window(region.col + c * p, region.row + r * p, w * p, h * p)
    past_edge = pixels.row_off + pixels.height > src.height or (
        pixels.col_off + pixels.width > src.width
    )
    fill = src.nodata if src.nodata is not None else np.nan
    data = src.read(window=pixels, boundless=past_edge, fill_value=fill, out_dtype="float32")
    if src.nodata is not None:
        data[data == np.float32(src.nodata)] = np.nan
    return data


def _raster_bands(src: Any) -> list[str] | None:
    from geodino.bands import described_band_names

    return described_band_names(src.descriptions)


def embed_batches(
    backbone: "PretrainedBackbone",
    region: RasterRegion,
    chip_size: int,
    batch_size: int,
    skip: Sequence[int] = (),
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


def _check_raster(backbone: "PretrainedBackbone", path: Path) -> None:
    try:
        with rasterio.open(path) as src:
            backbone.check_bands(_raster_bands(src), src.count, f"raster {path}")
    except rasterio.errors.RasterioIOError as error:
        raise DataError(f"raster {path} cannot be read ({error}); check the path.") from None


def plan_regions(
    backbone: "PretrainedBackbone", rasters: Sequence[str | Path], aoi: Any = None
) -> list[RasterRegion]:
    """Check the rasters' bands and plan the region of each inside the AOI.

    Args:
        backbone: the frozen backbone.
        rasters: the raster files.
        aoi: AOI file or GeoDataFrame, or None for whole rasters.

    Returns:
        one region per raster the AOI touches.

    Raises:
        DataError: for rasters with other bands than the backbone's, or an AOI that touches
            none of them.
    """
    from geodino.samplers import read_aoi

    if not rasters:
        raise DataError("no raster given; pass one or more GeoTIFFs to embed.")
    polygons = read_aoi(aoi) if aoi is not None else None
    regions, outside = [], []
    for path in map(Path, rasters):
        _check_raster(backbone, path)
        region = plan_region(path, backbone.patch_size, polygons)
        if region is None:
            outside.append(str(path))
        else:
            regions.append(region)
    if not regions:
        bounds = [round(v, 6) for v in polygons.total_bounds] if polygons is not None else []
        raise DataError(
            f"the AOI {aoi} (bounds {bounds} in {polygons.crs if polygons is not None else ''}) "
            f"lies outside every raster ({', '.join(outside)}); draw the AOI over the imagery "
            "or pass the rasters that cover it."
        )
    if outside:
        log.warning("the AOI does not touch %d rasters, not embedded: %s", len(outside), outside)
    return regions


def _chip_pixels(backbone: "PretrainedBackbone", chip_size: int | None) -> int:
    p = backbone.patch_size
    size = chip_size or backbone.chip_size
    if size < p:
        raise DataError(f"chip_size {size} is smaller than the backbone's patch ({p} px).")
    return size // p * p


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
    chip = _chip_pixels(backbone, chip_size)
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
        np.savez(handle, **arrays)
    os.replace(tmp, path)


def fit_pca(samples: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Principal components of embedding vectors.

    Args:
        samples: (N, D) finite vectors.
        k: components to keep.
        seed: seed of the subsample when N exceeds :data:`PCA_SAMPLES`.

    Returns:
        the mean (D,) and the components (k, D), largest variance first.

    Raises:
        DataError: if k is not in [1, D] or there are fewer than two samples.
    """
    dim = samples.shape[1]
    if not 1 <= k <= dim:
        raise DataError(f"--pca {k} must lie between 1 and the embedding size {dim}.")
    if len(samples) < 2:
        raise DataError("PCA needs at least two embedding vectors; embed a larger region.")
    if len(samples) > PCA_SAMPLES:
        pick = np.random.default_rng(seed).choice(len(samples), PCA_SAMPLES, replace=False)
        samples = samples[pick]
    x = samples.astype(np.float64)
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    # a sign convention, so reruns colour maps alike
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])
    return mean, (vt * signs[:, None])[:k]


def project(values: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Project (..., D) vectors onto PCA components; NaN stays NaN.

    Args:
        values: (..., D) vectors.
        mean: (D,) PCA mean.
        components: (k, D) PCA components.

    Returns:
        (..., k) float32 scores.
    """
    return ((values.astype(np.float64) - mean) @ components.T).astype(np.float32)


def _output_paths(out: Path, regions: Sequence[RasterRegion]) -> list[Path]:
    if len(regions) == 1:
        return [out]
    stems = [r.path.stem for r in regions]
    if len(set(stems)) < len(stems):
        stems = [f"{i:03d}_{s}" for i, s in enumerate(stems)]
    return [out.with_name(f"{out.stem}_{s}{out.suffix}") for s in stems]


def write_cog(
    path: Path,
    data: np.ndarray,
    crs: Any,
    transform: Affine,
    names: Sequence[str],
    tags: dict[str, Any],
) -> Path:
    """Write a float32 Cloud-Optimised GeoTIFF (DEFLATE, overviews, NaN as nodata).

    Args:
        path: the file.
        data: (bands, H, W) values.
        crs: its CRS.
        transform: its transform.
        names: band descriptions.
        tags: metadata tags (non-strings stored as JSON).

    Returns:
        the path.
    """
    from rasterio.shutil import copy as copy_raster

    tmp = path.with_name(path.name + ".tmp.tif")
    profile = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": len(data),
        "dtype": "float32",
        "crs": crs,
        "transform": transform,
        "nodata": float("nan"),
    }
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data.astype(np.float32))
        dst.descriptions = tuple(names)
        dst.update_tags(
            **{k: json.dumps(v) if not isinstance(v, str) else v for k, v in tags.items()}
        )
    copy_raster(
        tmp,
        path,
        driver="COG",
        COMPRESS="DEFLATE",
        PREDICTOR="YES",
        BLOCKSIZE=256,
        OVERVIEWS="AUTO",
        RESAMPLING="AVERAGE",
    )
    tmp.unlink()
    return path


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
) -> list[Path]:
    """Embed rasters with a backbone and write a Cloud-Optimised GeoTIFF or a GeoParquet.

    The work is saved batch by batch in ``OUT.parts/``; a run that stops resumes there with
    the same arguments, and the folder is removed once the output is written.

    Args:
        weights: a ``geodino export`` folder or a ``geodino fit`` checkpoint.
        rasters: GeoTIFFs with the backbone's bands.
        out: ``.tif`` for patch embeddings (one file per raster when several are given,
            named ``OUT_<raster stem>.tif``), ``.parquet`` for chip polygons with CLS
            embeddings (one table for all rasters, in the first raster's CRS).
        aoi: AOI polygons (file or GeoDataFrame): only embed inside them.
        pca: reduce embeddings to this many principal components (fitted on all rasters).
        chip_size: window side in pixels (default: the backbone's training size).
        batch_size: windows per forward pass.
        overwrite: replace an existing output and discard saved parts.
        progress: show a progress bar.

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
        raise DataError(
            f"--out {out}: give a .tif (patch embeddings as a GeoTIFF) or a .parquet (chip "
            "polygons with CLS embeddings) file."
        )
    as_raster = suffix in RASTER_SUFFIXES
    backbone = load_backbone(weights)
    if pca is not None and not 1 <= pca <= backbone.embed_dim:
        raise DataError(
            f"--pca {pca} must lie between 1 and the embedding size {backbone.embed_dim}."
        )
    chip = _chip_pixels(backbone, chip_size)
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

    def load(i: int) -> list[Any]:
        return [np.load(p) for p in sorted(parts.glob(f"{i:03d}_*.npz"))]

    tags = {
        "geodino_weights": str(weights),
        "geodino_model": backbone.meta.get("model", ""),
        "patch_size": backbone.patch_size,
        "chip_size": chip,
    }
    if as_raster:
        grids = []
        for i, region in enumerate(regions):
            grid = np.full((backbone.embed_dim, region.height, region.width), np.nan, np.float32)
            for part in load(i):
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
            tags["pca_components"] = pca
        for target, region, grid in zip(targets, regions, grids, strict=True):
            write_cog(
                target,
                grid,
                region.crs,
                region.out_transform,
                names,
                {**tags, "source_raster": str(region.path)},
            )
    else:
        _write_table(out, regions, [load(i) for i in range(len(regions))], pca, tags)
    shutil.rmtree(parts)
    return targets


def _write_table(
    out: Path,
    regions: Sequence[RasterRegion],
    parts: Sequence[Sequence[Any]],
    pca: int | None,
    tags: dict[str, Any],
) -> None:
    import geopandas as gpd
    import pandas as pd

    frames, vectors = [], []
    crs = regions[0].crs
    for region, region_parts in zip(regions, parts, strict=True):
        windows = [tuple(int(v) for v in w) for part in region_parts for w in part["windows"]]
        p = region.patch
        frame = gpd.GeoDataFrame(
            {
                "raster": str(region.path),
                "row": [region.row + w[0] * p for w in windows],
                "col": [region.col + w[1] * p for w in windows],
                "size": [w[2] * p for w in windows],
            },
            geometry=[region.polygon(w) for w in windows],
            crs=region.crs,
        ).to_crs(crs)
        frames.append(frame)
        vectors.append(np.concatenate([part["cls"] for part in region_parts]))
    values = np.concatenate(vectors)
    names = [f"emb_{j:03d}" for j in range(values.shape[1])]
    if pca:
        mean, components = fit_pca(values, pca)
        values, names = project(values, mean, components), [f"pc{j + 1}" for j in range(pca)]
    table = pd.concat(frames, ignore_index=True)
    columns = {name: values[:, j] for j, name in enumerate(names)}
    table = gpd.GeoDataFrame(pd.concat([table, pd.DataFrame(columns)], axis=1), crs=crs)
    table.attrs.update(tags)
    table.to_parquet(out)


def _point_in(crs: Any, x: float, y: float, point_crs: Any) -> tuple[float, float]:
    if point_crs is None:
        return x, y
    from pyproj import Transformer

    return Transformer.from_crs(point_crs, crs, always_xy=True).transform(x, y)


def similarity_search(
    embeddings: str | Path,
    out: str | Path,
    point: tuple[float, float] | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    crs: Any = None,
    top_k: int = 10,
) -> tuple[Path, Path]:
    """Cosine similarity of every embedding pixel to a query point or box, and the top matches.

    Args:
        embeddings: a full-dimension patch-embedding GeoTIFF written by :func:`embed`.
        out: the similarity GeoTIFF to write (one band in [-1, 1], on the embeddings' grid);
            the matches go beside it as ``<stem>_matches.geojson``.
        point: query ``(x, y)``: the embedding pixel under it.
        bbox: query ``(xmin, ymin, xmax, ymax)`` (a query chip): the mean embedding of the
            pixels whose centres fall inside.
        crs: CRS of ``point``/``bbox`` (default: the embeddings').
        top_k: matches to list, best first, the query pixels excluded.

    Returns:
        the similarity GeoTIFF and the matches GeoJSON.

    Raises:
        DataError: without exactly one query, or a query off the grid or on empty pixels.
    """
    import geopandas as gpd
    from shapely.geometry import box

    if (point is None) == (bbox is None):
        raise DataError("give the query as a point (--x/--y) or as a box (--bbox), not both.")
    embeddings, out = Path(embeddings), Path(out)
    with rasterio.open(embeddings) as src:
        grid, transform, grid_crs = src.read().astype(np.float32), src.transform, src.crs
        bounds = list(src.bounds)
    d, h, w = grid.shape
    rows, cols = np.mgrid[0:h, 0:w]
    if point is not None:
        x, y = _point_in(grid_crs, *point, crs)
        col, row = ~transform @ (x, y)
        query = np.zeros((h, w), dtype=bool)
        if 0 <= row < h and 0 <= col < w:
            query[int(row), int(col)] = True
        where = f"point ({point[0]}, {point[1]})"
    else:
        x0, y0 = _point_in(grid_crs, bbox[0], bbox[1], crs)
        x1, y1 = _point_in(grid_crs, bbox[2], bbox[3], crs)
        cx, cy = transform @ (cols + 0.5, rows + 0.5)
        query = (
            (cx >= min(x0, x1)) & (cx <= max(x0, x1)) & (cy >= min(y0, y1)) & (cy <= max(y0, y1))
        )
        where = f"box {list(bbox)}"
    vectors = grid[:, query & np.isfinite(grid).all(0)]
    if not vectors.size:
        raise DataError(
            f"the query {where} falls on no embedding pixel of {embeddings} (outside its "
            f"bounds {bounds} in {grid_crs}, or on nodata); give --crs if the "
            "coordinates are in another CRS."
        )
    target = vectors.mean(1)
    norms = np.linalg.norm(grid, axis=0) * np.linalg.norm(target)
    similarity = np.einsum("dhw,d->hw", grid, target) / np.maximum(norms, 1e-12)
    write_cog(
        out,
        similarity[None],
        grid_crs,
        transform,
        ["cosine_similarity"],
        {"query": where, "source_embeddings": str(embeddings)},
    )
    ranked = np.where(query | ~np.isfinite(similarity), -np.inf, similarity).ravel()
    best = [i for i in np.argsort(-ranked, kind="stable")[:top_k] if np.isfinite(ranked[i])]
    cells = []
    for rank, index in enumerate(best, 1):
        r, c = divmod(int(index), w)
        (ax, ay), (bx, by) = transform @ (c, r), transform @ (c + 1, r + 1)
        cells.append(
            {
                "rank": rank,
                "similarity": float(ranked[index]),
                "row": r,
                "col": c,
                "geometry": box(min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)),
            }
        )
    matches = out.with_name(f"{out.stem}_matches.geojson")
    gpd.GeoDataFrame(cells, geometry="geometry", crs=grid_crs).to_file(matches)
    return out, matches


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
    """Visual checks of a backbone on a raster: a PCA map of its patch embeddings (PNG and a
    3-band GeoTIFF) and the attention maps of one chip (PNG).

    Args:
        weights: a ``geodino export`` folder or a ``geodino fit`` checkpoint.
        raster: a GeoTIFF with the backbone's bands.
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
    backbone = load_backbone(weights)
    region = plan_regions(backbone, [raster], aoi)[0]
    chip = _chip_pixels(backbone, chip_size)
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
        x, y = _point_in(region.crs, *point, crs) if point else (None, None)
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
    with rasterio.open(
        out / "pca_map.tif",
        "w",
        driver="GTiff",
        width=region.width,
        height=region.height,
        count=3,
        dtype="uint8",
        crs=region.crs,
        transform=region.out_transform,
        photometric="RGB",
    ) as dst:
        dst.write(colours)
    paths["pca_tif"] = out / "pca_map.tif"
    return paths

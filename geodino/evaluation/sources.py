"""Labelled images to evaluate a backbone on.

Class folders, JSON annotations, or labelled points/polygons over rasters.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from geodino.errors import DataError

log = logging.getLogger(__name__)

#: Vector formats read as labelled points/polygons.
VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".parquet", ".fgb")


@dataclass
class LabelledImages:
    """Images, their class and group, as an evaluation reads them.

    Args:
        images: (N, C, H, W) raw images, or (N, T, C, H, W) time series.
        labels: (N,) class indices.
        class_names: name of each class index.
        groups: group of each image (e.g. ``group_id``), or None when the source has none.
        band_names: names of the bands when the source names them, else None.
        split: ``train``/``test`` of each image when the source fixes the split, else None.
        source: what was read, for messages and reports.
        doy: (N, T) days of year of time series (0 for padding), else None.
    """

    images: Tensor
    labels: Tensor
    class_names: list[str]
    groups: list[str] | None = None
    band_names: list[str] | None = None
    split: list[str] | None = None
    source: str = ""
    doy: Tensor | None = None

    def __len__(self) -> int:
        """Number of images."""
        return len(self.labels)


def _stack(images: Sequence[Tensor], paths: Sequence[Any], source: str) -> Tensor:
    shapes = {tuple(i.shape) for i in images}
    if len(shapes) > 1:
        by_shape = {tuple(i.shape): p for i, p in zip(images, paths, strict=True)}
        examples = ", ".join(f"{p} {s}" for s, p in list(by_shape.items())[:3])
        raise DataError(
            f"the images of {source} differ in size ({examples}); evaluation stacks them: "
            "crop or resize them to one size."
        )
    return torch.stack(list(images))


def read_folder_source(
    source: Path, band_names: Sequence[str] | None = None, group_column: str = "group_id"
) -> LabelledImages:
    """Read class folders (a folder with ``labels.txt``) or a JSON annotation file.

    Args:
        source: the class-folder root or the ``.json`` annotation file.
        band_names: names of the images' bands, when the files do not say.
        group_column: unused for folders (JSON annotations carry ``group_id``).

    Returns:
        the labelled images; JSON annotations give groups.
    """
    from geodino.datasets.folders import AnnotatedImages, ImageFolder

    dataset: Any
    if source.is_dir():
        dataset = ImageFolder(source, band_names=band_names)
        paths = [p for p, _ in dataset.samples]
        groups = None
    else:
        dataset = AnnotatedImages(source, band_names=band_names)
        paths, groups = list(dataset.samples), list(dataset.groups)
    images = _stack([dataset[i]["image"] for i in range(len(dataset))], paths, str(source))
    return LabelledImages(
        images,
        torch.as_tensor(dataset.targets, dtype=torch.int64),
        list(dataset.classes),
        groups,
        list(band_names) if band_names else None,
        None,
        str(source),
    )


def read_vector_source(
    source: Path | Any,
    rasters: Sequence[str | Path],
    chip_size: int,
    label_column: str = "label",
    group_column: str = "group_id",
    split_column: str | None = None,
    band_names: Sequence[str] | None = None,
    date_regex: str | None = None,
    date_format: str = "%Y%m%d",
) -> LabelledImages:
    """Chips of rasters centred on labelled points or polygons (their representative point).

    With ``date_regex`` the rasters are dated acquisitions and each chip is a time series of
    every date under it (:class:`~geodino.datasets.TimeSeries`, padded to the number of
    dates), with its days of year.

    Args:
        source: a vector file (GeoPackage, GeoJSON, Shapefile, GeoParquet) or a GeoDataFrame.
        rasters: GeoTIFF files or folders under the features (read with TorchGeo, warped to
            the first file's CRS).
        chip_size: chip side in pixels.
        label_column: column holding the class (names or integers).
        group_column: column holding the group of each feature, if present.
        split_column: column saying ``train`` or another value (test) per feature, if the
            split is fixed by the source.
        band_names: names of the rasters' bands, one per band (default: their band
            descriptions, when these name the bands).
        date_regex: regex of the raster file names with a ``(?P<date>...)`` group: read
            time series.
        date_format: ``strptime`` format of the date group.

    Returns:
        one chip (or series) per feature.

    Raises:
        DataError: for a missing file or column, no CRS, or no feature over the rasters.
    """
    import geopandas as gpd

    from geodino.datasets import MultiBandGeoTIFF, TimeSeries
    from geodino.datasets.timeseries import DatedGeoTIFF

    if isinstance(source, gpd.GeoDataFrame):
        gdf, name = source, "the labels GeoDataFrame"
    else:
        name = f"labels file {source}"
        if not Path(source).is_file():
            raise DataError(f"{name} does not exist; check the path.")
        try:
            gdf = (
                gpd.read_parquet(source)
                if Path(source).suffix == ".parquet"
                else gpd.read_file(source)
            )
        except Exception as error:
            raise DataError(f"{name} cannot be read as vector data ({error}).") from None
    if gdf.crs is None:
        raise DataError(f"{name} has no CRS; set it (QGIS: Layer > Set CRS) and save again.")
    for column in (label_column, split_column):
        if column and column not in gdf.columns:
            raise DataError(
                f"{name} has no column {column!r}; its columns are "
                f"{[c for c in gdf.columns if c != gdf.geometry.name]}: pass --label_column "
                "(and --split_column) naming the right ones."
            )
    if not rasters:
        raise DataError(f"{name} is a vector source: pass --rasters with the imagery under it.")
    dataset: MultiBandGeoTIFF = (
        MultiBandGeoTIFF(list(rasters), band_names=band_names)
        if date_regex is None
        else DatedGeoTIFF(list(rasters), date_regex, date_format, band_names=band_names)
    )
    series = None
    if date_regex is not None:
        series = TimeSeries(dataset, length=len(set(dataset.index.index)))
    doys = []
    xres, yres = dataset.res
    bounds = dataset.bounds
    points = gdf.to_crs(dataset.crs).geometry.representative_point()
    half_w, half_h = chip_size * xres / 2, chip_size * yres / 2
    chips, keep, outside = [], [], []
    for row, point in zip(gdf.index, points, strict=True):
        # the chip's corner snapped to the raster's pixel grid
        x0 = bounds[0].start + round((point.x - half_w - bounds[0].start) / xres) * xres
        y0 = bounds[1].start + round((point.y - half_h - bounds[1].start) / yres) * yres
        x1, y1 = x0 + chip_size * xres, y0 + chip_size * yres
        if (
            x0 < bounds[0].start
            or y0 < bounds[1].start
            or x1 > bounds[0].stop
            or (y1 > bounds[1].stop)
        ):
            outside.append(row)
            continue
        query = (slice(x0, x1, xres), slice(y0, y1, yres), bounds[2])
        if series is None:
            chips.append(dataset[query]["image"])
        else:
            sample = series[query]
            chips.append(sample["image"])
            doys.append(sample["doy"])
        keep.append(row)
    if not keep:
        raise DataError(
            f"no feature of {name} has a {chip_size}-px chip inside the rasters "
            f"{list(map(str, rasters))[:3]}; check that labels and imagery overlap."
        )
    if outside:
        log.warning(
            "%s: %d feature(s) too close to or outside the rasters' edge are not used (rows %s)",
            name,
            len(outside),
            outside[:10],
        )
    used = gdf.loc[keep]
    values = used[label_column].to_numpy()
    if np.issubdtype(values.dtype, np.number):
        classes = sorted({int(v) for v in values})
        class_names = [str(c) for c in classes]
        labels = [classes.index(int(v)) for v in values]
    else:
        class_names = sorted({str(v) for v in values})
        labels = [class_names.index(str(v)) for v in values]
    groups = [str(g) for g in used[group_column]] if group_column in used.columns else None
    split = None
    if split_column:
        split = ["train" if str(v) == "train" else "test" for v in used[split_column]]
    # names given or described by the files (the B1..Bn stand-ins say nothing of the bands)
    names = list(dataset.band_names)
    stand_ins = names == [f"B{i + 1}" for i in range(len(names))]
    named = names if band_names or not stand_ins else None
    return LabelledImages(
        torch.stack(chips),
        torch.as_tensor(labels),
        class_names,
        groups,
        named,
        split,
        name,
        torch.stack(doys) if doys else None,
    )


def read_labelled_source(
    source: str | Path | Any,
    rasters: Sequence[str | Path] | None = None,
    chip_size: int = 224,
    label_column: str = "label",
    group_column: str = "group_id",
    split_column: str | None = None,
    band_names: Sequence[str] | None = None,
    date_regex: str | None = None,
    date_format: str = "%Y%m%d",
) -> LabelledImages:
    """Read any labelled source: class folders, JSON annotations or labelled vector features.

    Args:
        source: a folder with ``labels.txt`` and class folders, a JSON annotation file
            (``metainfo.classes`` + ``data_list``), or a vector file/GeoDataFrame of labelled
            points or polygons (then ``rasters`` gives the imagery).
        rasters: GeoTIFFs under vector features.
        chip_size: chip side in pixels for vector features.
        label_column: class column of vector features.
        group_column: group column of vector features.
        split_column: column fixing the train/test split of vector features.
        band_names: band names of the images or rasters, when the files do not name them.
        date_regex: regex of dated raster file names (a ``(?P<date>...)`` group): vector
            features then read time series of the rasters.
        date_format: ``strptime`` format of the date group.

    Returns:
        the labelled images.

    Raises:
        DataError: if the source is none of these.
    """
    import geopandas as gpd

    if isinstance(source, gpd.GeoDataFrame):
        return read_vector_source(
            source,
            rasters or [],
            chip_size,
            label_column,
            group_column,
            split_column,
            band_names,
            date_regex,
            date_format,
        )
    path = Path(source)
    if path.is_dir():
        return read_folder_source(path, band_names)
    if not path.is_file():
        raise DataError(f"labelled source {path} does not exist; check the path.")
    if path.suffix == ".json" and not rasters:
        return read_folder_source(path, band_names)
    if path.suffix.lower() in VECTOR_SUFFIXES:
        return read_vector_source(
            path,
            rasters or [],
            chip_size,
            label_column,
            group_column,
            split_column,
            band_names,
            date_regex,
            date_format,
        )
    raise DataError(
        f"labelled source {path} is neither a class folder (with labels.txt), a JSON "
        f"annotation file, nor a vector file ({', '.join(VECTOR_SUFFIXES)})."
    )
